"""WebSocket through the real gateway, with the ``websockets`` client (issue 13.6).

The upstream is a real aiohttp WebSocket echo server that records the upgrade's headers.

* Text and binary messages are echoed both ways, and the upstream saw the gateway's
  ``X-Forwarded-*`` and ``X-Request-Id`` (the normal pipeline ran up to forward).
* A message over ``websocket_max_message_bytes`` is refused with close 1009.
* ``idle_s`` without a message closes the session (1001) and the audit record says
  ``websocket_idle_timeout``.
* The upstream's close code reaches the client.
* An upgrade on a route without ``websocket: true`` is 403 and never reaches the upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from aiohttp import WSMsgType, web
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import GatewayProcess, wait_until

pytestmark = pytest.mark.integration

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


class EchoUpstream:
    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.upgrades: list[dict[str, str]] = []
        self.plain: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            self.plain.append(dict(request.headers))
            return web.Response(text="plain")
        self.upgrades.append(dict(request.headers))
        ws = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data == "close-4001":
                    await ws.close(code=4001, message=b"bye")
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


@pytest.fixture
async def echo() -> AsyncIterator[EchoUpstream]:
    up = EchoUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


def config(up: EchoUpstream, audit: Path) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "timeouts": {"drain_s": 1, "upstream_connect_s": 1, "upstream_total_s": 1},
        },
        "telemetry": {"audit_log": str(audit)},
        "routes": [
            {
                "name": "ws",
                "match": {"path_prefix": "/ws/"},
                "upstream": up.url,
                "websocket": True,
                "websocket_max_message_bytes": 4096,
                "timeouts": {"idle_s": 1.0},
            },
            {
                "name": "wsauth",
                "match": {"path_prefix": "/secure/"},
                "upstream": up.url,
                "websocket": True,
                "authn": "api_key",
            },
            {"name": "plain", "upstream": up.url},
        ],
        "authn": {"api_key": {"header": "X-API-Key", "keys_file": str(keys_file(audit.parent))}},
    }


def keys_file(d: Path) -> Path:
    path = d / "api-keys.yaml"
    digest = hashlib.sha256(b"ak_websocket-test-key-0123456789abcdef").hexdigest()
    path.write_text(
        yaml.safe_dump({"keys": [{"id": "k1", "sha256": digest, "subject": "agent-1"}]})
    )
    return path


def ws_url(gw: GatewayProcess, path: str) -> str:
    return gw.url.replace("http://", "ws://") + path


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class TestRelay:
    async def test_echo_text_and_binary_both_ways(
        self, gateway_process: GatewayStarter, echo: EchoUpstream, tmp_path: Path
    ) -> None:
        gw = await gateway_process(config(echo, tmp_path / "audit.jsonl"))
        async with websockets.connect(ws_url(gw, "/ws/chat")) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 5) == "hello"
            await ws.send(b"\x00\x01\xff" * 100)
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01\xff" * 100
        assert len(echo.upgrades) == 1
        seen = {k.lower(): v for k, v in echo.upgrades[0].items()}
        assert seen["x-forwarded-proto"] == "http"
        assert "x-request-id" in seen

    async def test_oversized_message_is_1009(
        self, gateway_process: GatewayStarter, echo: EchoUpstream, tmp_path: Path
    ) -> None:
        gw = await gateway_process(config(echo, tmp_path / "audit.jsonl"))
        async with websockets.connect(ws_url(gw, "/ws/chat"), max_size=None) as ws:
            await ws.send("x" * 10_000)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009

    async def test_idle_session_is_closed_and_audited(
        self, gateway_process: GatewayStarter, echo: EchoUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(echo, audit))
        async with websockets.connect(ws_url(gw, "/ws/chat")) as ws:
            await ws.send("one")
            assert await asyncio.wait_for(ws.recv(), 5) == "one"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 6)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        await wait_until(lambda: any(r.get("route") == "ws" for r in records(audit)), timeout=5)
        record = next(r for r in records(audit) if r.get("route") == "ws")
        assert (record["status"], record["reason"]) == (101, "websocket_idle_timeout")

    async def test_upstream_close_code_reaches_the_client(
        self, gateway_process: GatewayStarter, echo: EchoUpstream, tmp_path: Path
    ) -> None:
        gw = await gateway_process(config(echo, tmp_path / "audit.jsonl"))
        async with websockets.connect(ws_url(gw, "/ws/chat")) as ws:
            await ws.send("close-4001")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001


class TestRefusal:
    async def test_upgrade_on_a_plain_route_is_403_and_never_forwarded(
        self, gateway_process: GatewayStarter, echo: EchoUpstream, tmp_path: Path
    ) -> None:
        gw = await gateway_process(config(echo, tmp_path / "audit.jsonl"))
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(gw, "/other")):
                pass
        assert refused.value.response.status_code == 403
        assert echo.upgrades == []
        assert echo.plain == []

    async def test_unauthenticated_upgrade_is_401_and_never_forwarded(
        self, gateway_process: GatewayStarter, echo: EchoUpstream, tmp_path: Path
    ) -> None:
        gw = await gateway_process(config(echo, tmp_path / "audit.jsonl"))
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(gw, "/secure/x")):
                pass
        assert refused.value.response.status_code == 401
        assert echo.upgrades == []
        assert echo.plain == []
