"""Size and time limits on the main listener (DESIGN.md §4 ``limits``/``timeouts``, §5).

``max_header_bytes`` bounds the whole header block (431), the request line is bounded too (414),
``max_body_bytes`` bounds ``Content-Length`` and chunked bodies alike (413), and a client that
trickles its request head gets 408 after ``header_read_s``. Rejected requests never reach the
upstream, except a chunked body that turns out too large only after forwarding began: the
upstream then sees a truncated body on a connection the gateway aborts, and the client gets 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest

from gateway.app import Gateway
from tests.integration.conftest import GatewayFactory, echo_route, tls_block
from tests.support import (
    RawResponse,
    TestPKI,
    Upstream,
    http_request,
    raw_request,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_HEADER = 4096
MAX_BODY = 64 * 1024
HEADER_READ_S = 1.0


@pytest.fixture
async def gw(gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await gateway(
        routes=[echo_route(upstream)],
        server={
            "limits": {"max_header_bytes": MAX_HEADER, "max_body_bytes": MAX_BODY},
            "timeouts": {"header_read_s": HEADER_READ_S},
        },
    )


async def send(gw: Gateway, data: bytes) -> RawResponse:
    assert gw.main_address is not None
    return await raw_request(gw.main_address, data)


def assert_problem(resp: RawResponse, status: int, reason: str) -> None:
    assert resp.status == status, resp
    assert resp.header("Content-Type") == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert (body["status"], body["reason"]) == (status, reason)
    request_id = resp.header("X-Request-Id")
    assert request_id is not None
    assert body["request_id"] == request_id
    uuid.UUID(request_id)
    # No library name or version, in the body or the Server header (DESIGN.md §5).
    assert resp.all("Server") == ["agentgate"], resp.all("Server")
    assert b"aiohttp" not in resp.body
    assert b"Python" not in resp.body


# --------------------------------------------------------------------------- header block


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("X-Big", "a" * (MAX_HEADER + 1))], id="one-huge-header"),
        pytest.param([(f"X-M{i}", "a" * 600) for i in range(8)], id="many-medium-headers"),
        pytest.param([(f"X-N{i}", "a") for i in range(150)], id="too-many-headers"),
    ],
)
async def test_header_block_over_the_limit_is_431(
    gw: Gateway, upstream: Upstream, headers: list[tuple[str, str]]
) -> None:
    resp = await send(gw, http_request("GET", "/h", headers))
    assert_problem(resp, 431, "headers_too_large")
    assert upstream.hits == []


async def test_header_block_just_under_the_limit_is_forwarded(
    gw: Gateway, upstream: Upstream
) -> None:
    # The gateway counts "name: value\r\n" per field; Host adds 4 + 4 + 7 bytes.
    filler = MAX_HEADER - len("Host: gw.test\r\n") - len("X-Fill: \r\n")
    resp = await send(gw, http_request("GET", "/h", [("X-Fill", "a" * filler)]))
    assert resp.status == 200
    assert upstream.paths() == ["/h"]


async def test_request_line_too_long_is_414(gw: Gateway, upstream: Upstream) -> None:
    resp = await send(gw, http_request("GET", "/" + "a" * (MAX_HEADER + 1)))
    assert_problem(resp, 414, "uri_too_long")
    assert upstream.hits == []


async def test_malformed_request_is_400_without_version_leak(
    gw: Gateway, upstream: Upstream
) -> None:
    resp = await send(gw, b"GARBAGE\r\n\r\n")
    assert_problem(resp, 400, "bad_request")
    assert upstream.hits == []


# --------------------------------------------------------------------------- body


@pytest.mark.parametrize("length", [MAX_BODY + 1, 10 * MAX_BODY, 2**40])
async def test_content_length_over_the_limit_is_413_before_upstream(
    gw: Gateway, upstream: Upstream, length: int
) -> None:
    # Only the head is sent: the gateway must answer without waiting for the body.
    resp = await send(gw, http_request("POST", "/b", [("Content-Length", str(length))]))
    assert_problem(resp, 413, "body_too_large")
    assert upstream.hits == []


async def test_content_length_at_the_limit_is_forwarded(gw: Gateway, upstream: Upstream) -> None:
    resp = await send(gw, http_request("POST", "/b", body=b"x" * MAX_BODY))
    assert resp.status == 200
    assert resp.json()["body_len"] == MAX_BODY


def chunked(total: int, chunk: int = 16 * 1024) -> bytes:
    out = bytearray()
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        out += b"%x\r\n" % size + b"c" * size + b"\r\n"
        sent += size
    return bytes(out + b"0\r\n\r\n")


async def test_chunked_body_at_the_limit_is_forwarded(gw: Gateway, upstream: Upstream) -> None:
    head = http_request("POST", "/c", [("Transfer-Encoding", "chunked")])
    resp = await send(gw, head + chunked(MAX_BODY))
    assert resp.status == 200
    assert resp.json()["body_len"] == MAX_BODY


async def test_chunked_body_over_the_limit_is_413(gw: Gateway, upstream: Upstream) -> None:
    head = http_request("POST", "/c", [("Transfer-Encoding", "chunked")])
    resp = await send(gw, head + chunked(4 * MAX_BODY))
    assert_problem(resp, 413, "body_too_large")
    # Forwarding had begun, so the upstream may have seen a prefix of the body, never more
    # than the limit and never as a complete request: the gateway aborts that connection.
    assert len(upstream.hits) <= 1
    for hit in upstream.hits:
        assert hit.body_len <= MAX_BODY
    # The upstream notices the aborted connection a moment after the client got 413.
    await wait_until(lambda: all(hit.finished for hit in upstream.hits))
    assert not any(hit.complete for hit in upstream.hits)


# --------------------------------------------------------------------------- slow clients


async def _trickle(
    gw: Gateway, first: bytes, slow: bytes, *, interval: float = 0.5, deadline_s: float = 10.0
) -> tuple[float, bytes]:
    """Send ``first`` at once, then ``slow`` one byte per ``interval``; read until EOF.

    Fails with ``TimeoutError`` if the gateway keeps the connection open past ``deadline_s``.
    """
    assert gw.main_address is not None
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*gw.main_address)

    async def feed() -> None:
        writer.write(first)
        for byte in slow:
            await asyncio.sleep(interval)
            writer.write(bytes([byte]))

    started = loop.time()
    feeder = asyncio.create_task(feed())
    try:
        try:
            async with asyncio.timeout(deadline_s):
                received = await reader.read()  # everything up to the gateway's close
        except TimeoutError:
            raise AssertionError(
                f"the gateway kept the connection open past {deadline_s}s"
            ) from None
        return loop.time() - started, received
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await feeder
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slow_header_trickle_gets_408_and_close(gw: Gateway, upstream: Upstream) -> None:
    elapsed, received = await _trickle(gw, b"", http_request("GET", "/slowloris"))
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert HEADER_READ_S * 0.9 <= elapsed < HEADER_READ_S + 2.0
    assert upstream.hits == []


async def test_silent_connection_gets_408_and_close(gw: Gateway) -> None:
    elapsed, received = await _trickle(gw, b"", b"")
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert HEADER_READ_S * 0.9 <= elapsed < HEADER_READ_S + 2.0
    # Like every response, the 408 carries a request id (DESIGN.md §5).
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert "\r\nx-request-id: " in head, head


async def test_header_deadline_rearms_for_the_next_request_on_a_kept_alive_connection(
    gw: Gateway, upstream: Upstream
) -> None:
    first = http_request("GET", "/first")
    elapsed, received = await _trickle(gw, first, http_request("GET", "/second"))
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert b"HTTP/1.1 408 " in received
    assert elapsed < HEADER_READ_S + 2.5
    assert upstream.paths() == ["/first"]


async def test_silent_tls_connection_is_closed_within_header_read_s(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    # header_read_s must bound the TLS handshake too: asyncio's own default is 60 s, long
    # enough for a few thousand idle sockets to exhaust the gateway's file descriptors.
    gw = await gateway(
        routes=[echo_route(upstream)],
        server={"tls": tls_block(pki, "required"), "timeouts": {"header_read_s": HEADER_READ_S}},
    )
    elapsed, received = await _trickle(gw, b"", b"", deadline_s=HEADER_READ_S + 2.0)
    assert received == b""
    assert elapsed < HEADER_READ_S + 2.0
