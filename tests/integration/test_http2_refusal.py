"""HTTP/2 prior knowledge on the HTTP/1.1 listener is refused clearly (issue 13 item 7).

Before the fix a client that opened with the HTTP/2 connection preface (RFC 9113 §3.3,
``curl --http2-prior-knowledge``) got an empty reply. Now the listener answers with the server
preface (an empty SETTINGS frame) and ``GOAWAY`` (last stream 0, ``HTTP_1_1_REQUIRED`` = 0xd,
RFC 9113 §7) and closes; curl reports ``received GOAWAY, error=13``. HTTP/1.1 and 1.0 are
served as before; the refusal is counted (route ``-``, status 505, ``http2_unsupported``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import aiohttp
import pytest

from gateway.app import Gateway
from tests.integration.conftest import GatewayFactory, admin_url, echo_route, tls_block
from tests.support import TestPKI, Upstream, client_context, raw_request

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLIENT_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame


async def read_frames(reader: asyncio.StreamReader) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of every frame until the server closes (bounded)."""
    frames: list[tuple[int, int, bytes]] = []
    async with asyncio.timeout(10):
        while len(frames) < 8:
            head = await reader.read(9)
            if not head:
                return frames  # closed, on a frame boundary
            head += await reader.readexactly(9 - len(head))
            length = int.from_bytes(head[:3], "big")
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            frames.append((head[3], stream, await reader.readexactly(length)))
    return frames


async def preface_answer(address: tuple[str, int]) -> list[tuple[int, int, bytes]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(PREFACE + CLIENT_SETTINGS)
        await writer.drain()
        return await read_frames(reader)
    finally:
        writer.close()


def assert_goaway(frames: list[tuple[int, int, bytes]]) -> None:
    assert [f[0] for f in frames] == [0x4, 0x7], frames  # SETTINGS, then GOAWAY
    settings, goaway = frames
    assert settings[1:] == (0, b"")
    _, stream, payload = goaway
    assert stream == 0
    assert int.from_bytes(payload[:4], "big") == 0  # last-stream-id: nothing was processed
    assert int.from_bytes(payload[4:8], "big") == 0xD  # HTTP_1_1_REQUIRED
    assert payload[8:] == b"agentgate speaks HTTP/1.1 only"


@pytest.fixture
async def plain(gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await gateway(routes=[echo_route(upstream)])


async def test_prior_knowledge_gets_goaway_http_1_1_required(plain: Gateway) -> None:
    assert plain.main_address is not None
    assert_goaway(await preface_answer(plain.main_address))


async def test_preface_split_across_writes_still_refused(plain: Gateway) -> None:
    assert plain.main_address is not None
    reader, writer = await asyncio.open_connection(*plain.main_address)
    try:
        writer.write(PREFACE[:16])  # "PRI * HTTP/2.0\r\n" then the rest
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(PREFACE[16:] + CLIENT_SETTINGS)
        await writer.drain()
        assert_goaway(await read_frames(reader))
    finally:
        writer.close()


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_http1_still_served(plain: Gateway, upstream: Upstream, version: str) -> None:
    assert plain.main_address is not None
    head = f"GET /x HTTP/{version}\r\nHost: gw.test\r\nConnection: close\r\n\r\n".encode()
    response = await raw_request(plain.main_address, head)
    assert response.status == 200
    assert len(upstream.hits) == 1


async def test_refusal_is_counted(plain: Gateway) -> None:
    assert plain.main_address is not None
    await preface_answer(plain.main_address)
    async with aiohttp.ClientSession() as s, s.get(admin_url(plain) + "/metrics") as resp:
        text = await resp.text()
    line = 'agentgate_requests_total{reason="http2_unsupported",route="-",status="505"} 1.0'
    assert line in text


async def test_tls_listener_refuses_prior_knowledge_too(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await gateway(routes=[echo_route(upstream)], server={"tls": tls_block(pki, "off")})
    assert gw.main_address is not None
    ctx = client_context(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    reader, writer = await asyncio.open_connection(
        *gw.main_address, ssl=ctx, server_hostname="localhost"
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "http/1.1"  # h2 is never offered
        writer.write(PREFACE + CLIENT_SETTINGS)
        await writer.drain()
        assert_goaway(await read_frames(reader))
    finally:
        writer.close()


def _curl_http2() -> str | None:
    curl = shutil.which("curl")
    if curl is None:
        return None
    features = subprocess.run([curl, "-V"], capture_output=True, text=True, check=False).stdout
    return curl if "HTTP2" in features else None


async def test_curl_http2_prior_knowledge_reports_the_goaway(plain: Gateway) -> None:
    curl = _curl_http2()
    if curl is None:
        if os.environ.get("CI") == "true":  # a skipped test proves nothing in CI
            pytest.fail("CI requires curl with HTTP/2 support (Debian's curl has it)")
        pytest.skip("curl with HTTP/2 support is not installed")
    assert plain.main_address is not None
    host, port = plain.main_address
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-sv",
        "--max-time",
        "10",
        "--http2-prior-knowledge",
        f"http://{host}:{port}/x",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    text = stderr.decode(errors="replace")
    assert proc.returncode == 16, text  # CURLE_HTTP2, not 52 "empty reply from server"
    assert "GOAWAY" in text
    assert "error=13" in text  # HTTP_1_1_REQUIRED
    assert "Empty reply" not in text
