"""Slow and greedy clients on the main listener (README "What the listener refuses").

* a request body that stalls for ``timeouts.body_read_s`` is 408 and the connection closes;
  the upstream, which had begun receiving it, sees its connection cut, never a request left
  hanging; a body that keeps moving, however slowly, is not cut;
* more than ``limits.max_connections`` open connections: the next one's first request is 503
  with ``Connection: close`` and ``Retry-After``; past the refusal slots a connection is closed
  on accept; both counted in ``agentgate_connections_refused_total{reason}``;
* an idle keep-alive connection is closed after ``timeouts.idle_s``;
* a caller that stops reading a response is cut off after ``timeouts.send_s``.

The slow request head (``header_read_s``) is tested in test_limits.py. Every bound here is
asserted with a wide margin (the machine is shared); none is a performance target.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.net.listener import REFUSAL_SLOTS
from tests.integration.conftest import GatewayFactory, admin_url, echo_route
from tests.support import Upstream, http_request, read_response, wait_until

pytestmark = pytest.mark.integration

BODY_READ_S = 1.0
IDLE_S = 1.0
SEND_S = 1.0
MAX_CONNECTIONS = 3
MARGIN_S = 4.0  # what a loaded machine may add to any deadline here


async def metric(gw: Gateway, name: str, **labels: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url(gw) + "/metrics") as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_metric(gw: Gateway, name: str, value: float, **labels: str) -> None:
    """Scrape until ``name{labels}`` equals ``value``; fail after MARGIN_S seconds."""
    deadline = time.monotonic() + MARGIN_S
    while (seen := await metric(gw, name, **labels)) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {seen}, not {value}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def connection(
    gw: Gateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    assert gw.main_address is not None
    reader, writer = await asyncio.open_connection(*gw.main_address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:  # noqa: ASYNC109
    """Everything up to the gateway's close; fails the test if it does not close in time."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    except TimeoutError:
        raise AssertionError(f"the gateway kept the connection open past {timeout}s") from None
    except ConnectionResetError:
        return b""


# --------------------------------------------------------------------------- slow bodies


@pytest.fixture
async def gw(gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await gateway(
        routes=[echo_route(upstream)],
        server={
            "timeouts": {
                "body_read_s": BODY_READ_S,
                "idle_s": IDLE_S,
                "send_s": SEND_S,
                "header_read_s": 5,
            },
            "limits": {"max_connections": MAX_CONNECTIONS},
        },
    )


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(
            http_request("POST", "/slow", [("Content-Length", "100")]), id="content-length"
        ),
        pytest.param(
            http_request("POST", "/slow", [("Transfer-Encoding", "chunked")]) + b"5\r\n",
            id="chunked",
        ),
    ],
)
async def test_a_stalled_body_is_408_and_the_upstream_is_not_left_hanging(
    gw: Gateway, upstream: Upstream, head: bytes
) -> None:
    async with connection(gw) as (reader, writer):
        started = time.monotonic()
        writer.write(head + b"hello")
        await writer.drain()
        received = await read_to_eof(reader, BODY_READ_S + MARGIN_S)
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b'"reason":"body_timeout"' in received
    assert b"\r\nConnection: close\r\n" in received
    assert elapsed >= BODY_READ_S * 0.9
    # The upstream had the head and the first bytes; its connection is cut, never held open.
    assert [hit.path for hit in upstream.hits] == ["/slow"]
    await wait_until(lambda: upstream.hits[0].finished, timeout=MARGIN_S)
    assert not upstream.hits[0].complete
    assert upstream.hits[0].body_len == 5
    assert await metric(gw, "agentgate_requests_total", status="408", reason="body_timeout") == 1


async def test_a_slow_body_that_keeps_moving_is_served(gw: Gateway, upstream: Upstream) -> None:
    # The deadline is per gap (nginx client_body_timeout), not for the whole body: eight
    # bytes a quarter of the deadline apart take twice the deadline in all.
    gap = BODY_READ_S / 4
    async with connection(gw) as (reader, writer):
        writer.write(http_request("POST", "/trickle", [("Content-Length", "8")]))
        started = time.monotonic()
        for byte in b"abcdefgh":
            await asyncio.sleep(gap)
            writer.write(bytes([byte]))
        async with asyncio.timeout(MARGIN_S):
            resp = await read_response(reader)
        elapsed = time.monotonic() - started
    assert resp.status == 200, resp
    assert resp.json()["body_len"] == 8
    assert elapsed >= BODY_READ_S * 1.5  # slower in all than one deadline
    assert upstream.hits[0].complete


async def test_time_the_upstream_takes_to_read_the_body_is_not_the_clients(
    gateway: GatewayFactory,
) -> None:
    # An upstream that reads nothing for 2.5 deadlines: the gateway stops reading the client
    # (backpressure), and that wait is not the client's stall. Only a wait for bytes the
    # client owes is bounded.
    size = 8 * 1024 * 1024

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(BODY_READ_S * 2.5)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway(
            routes=[{"name": "sluggish", "upstream": f"http://127.0.0.1:{port}"}],
            server={
                "timeouts": {"body_read_s": BODY_READ_S},
                "limits": {"max_body_bytes": 2 * size},
            },
        )
        async with connection(gw) as (reader, writer):
            writer.write(http_request("POST", "/up", [("Content-Length", str(size))]))
            writer.write(b"b" * size)
            async with asyncio.timeout(BODY_READ_S * 2.5 + 3 * MARGIN_S):
                await writer.drain()
                resp = await read_response(reader)
        assert resp.status == 200, resp
        assert resp.body == b"ok"
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- the connection cap


async def _served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(http_request("GET", path))
    async with asyncio.timeout(MARGIN_S):
        return (await read_response(reader)).status


async def test_connections_past_the_cap_get_503_and_close(gw: Gateway, upstream: Upstream) -> None:
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connection(gw)) for _ in range(MAX_CONNECTIONS)]
        for i, (reader, writer) in enumerate(held):  # each one served: counted, kept alive
            assert await _served(reader, writer, f"/held{i}") == 200
        assert await metric(gw, "agentgate_connections_open") == MAX_CONNECTIONS

        async with connection(gw) as (reader, writer):
            writer.write(http_request("GET", "/over"))
            async with asyncio.timeout(MARGIN_S):
                resp = await read_response(reader)
            assert resp.status == 503, resp
            assert resp.json()["reason"] == "max_connections"
            assert resp.header("Connection") == "close"
            assert resp.header("Retry-After") == "1"
            assert resp.all("Server") == ["agentgate"]
            assert await read_to_eof(reader, MARGIN_S) == b""
        assert "/over" not in upstream.paths()
        assert (
            await metric(gw, "agentgate_connections_refused_total", reason="max_connections") == 1
        )

        # One held connection goes: the next newcomer is served again.
        held[0][1].close()
        await wait_metric(gw, "agentgate_connections_open", MAX_CONNECTIONS - 1)
        async with connection(gw) as (reader, writer):
            assert await _served(reader, writer, "/again") == 200
        assert upstream.paths()[-1] == "/again"


async def test_past_the_refusal_slots_a_connection_is_closed_on_accept(
    gw: Gateway, upstream: Upstream
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):  # the cap, reached by connections that say nothing
            await stack.enter_async_context(connection(gw))
        await wait_metric(gw, "agentgate_connections_open", MAX_CONNECTIONS)
        for _ in range(REFUSAL_SLOTS):  # every refusal slot, taken the same way
            await stack.enter_async_context(connection(gw))
        await asyncio.sleep(0.3)  # let the gateway accept them all
        reader, writer = await stack.enter_async_context(connection(gw))
        writer.write(http_request("GET", "/overflow"))
        assert await read_to_eof(reader, MARGIN_S) == b""  # no answer: closed at once
    assert upstream.hits == []
    assert (
        await metric(gw, "agentgate_connections_refused_total", reason="max_connections_overflow")
        >= 1
    )


# --------------------------------------------------------------------------- idle and greedy


async def test_an_idle_keep_alive_connection_is_closed_after_idle_s(
    gw: Gateway, upstream: Upstream
) -> None:
    async with connection(gw) as (reader, writer):
        # Requests closer together than idle_s keep the connection: idle_s is per idle gap.
        for i in range(3):
            assert await _served(reader, writer, f"/k{i}") == 200
            await asyncio.sleep(IDLE_S / 3)
        started = time.monotonic()
        assert await read_to_eof(reader, IDLE_S + MARGIN_S) == b""  # closed without a word
        elapsed = time.monotonic() - started
    assert elapsed >= IDLE_S * 0.5  # the idle gap had already run for IDLE_S / 3
    assert upstream.paths() == ["/k0", "/k1", "/k2"]


async def test_a_client_that_stops_reading_is_cut_off_after_send_s(
    gw: Gateway, upstream: Upstream
) -> None:
    size = 64 * 1024 * 1024
    async with connection(gw) as (reader, writer):
        writer.write(http_request("GET", "/big?mb=64"))
        await writer.drain()
        # Read nothing: the kernel's buffers fill, the gateway's writes stop draining.
        await asyncio.sleep(SEND_S)
        await wait_metric(
            gw, "agentgate_requests_total", 1, route="echo", reason="client_send_timeout"
        )
        received = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(MARGIN_S * 2):
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
    assert upstream.paths() == ["/big?mb=64"]
    assert received < size  # cut off, not delivered
