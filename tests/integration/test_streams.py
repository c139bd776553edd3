"""Long-lived response streams through the real gateway (issue 13.1).

The upstream is a real aiohttp server writing an SSE event every 0.2 s (``/events?n=N``), or
pausing (``/events?n=N&gap=G`` stops for G seconds after the third event), or holding the
response head back (``/late?after=S``). The gateway runs as a subprocess with small budgets
(``upstream_total_s`` 1 s, ``upstream_idle_s`` 0.8 s) so each case takes a few seconds.

* A ``stream: true`` route is not bounded by ``upstream_total_s``: a 2.4 s stream arrives whole,
  and its audit record says ``200 ok``.
* An idle gap longer than ``idle_s`` cuts the stream: the caller sees a broken body, the audit
  record and ``agentgate_upstream_errors_total`` say ``upstream_idle_timeout``.
* ``max_s`` caps a stream route: the record says ``stream_max_duration``.
* A non-stream route is still bounded by ``upstream_total_s`` (body included:
  ``upstream_total_timeout``) and answers 504 when the head does not come within ``headers_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import GatewayProcess, wait_until

pytestmark = pytest.mark.integration

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]
EVENT_S = 0.2


class EventUpstream:
    """A real SSE-style server on loopback."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/events", self._events)
        app.router.add_get("/late", self._late)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        gap = float(request.query.get("gap", "0"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(n):
                await response.write(f"id: {i}\ndata: event {i}\n\n".encode())
                await asyncio.sleep(gap if (gap and i == 2) else EVENT_S)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    async def _late(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("after", "2")))
        return web.Response(text="late")


@pytest.fixture
async def events() -> AsyncIterator[EventUpstream]:
    up = EventUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


def config(up: EventUpstream, audit: Path) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "timeouts": {
                "drain_s": 1,
                "upstream_connect_s": 1,
                "upstream_total_s": 1,
                "upstream_headers_s": 1,
                "upstream_idle_s": 0.8,
            },
        },
        "telemetry": {"audit_log": str(audit)},
        "routes": [
            {
                "name": "capped",
                "match": {"path_prefix": "/capped/"},
                "upstream": up.url,
                "strip_prefix": True,
                "stream": True,
                "timeouts": {"max_s": 1.5},
            },
            {
                "name": "sse",
                "match": {"path_prefix": "/sse/"},
                "upstream": up.url,
                "strip_prefix": True,
                "stream": True,
            },
            {"name": "plain", "upstream": up.url},
        ],
    }


async def read_events(url: str) -> tuple[int, list[str], str | None, float]:
    """Status, the ``data:`` lines received, the error that ended the body (if any), seconds."""
    started = time.monotonic()
    lines: list[str] = []
    error: str | None = None
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        try:
            async for raw in response.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    lines.append(line)
        except aiohttp.ClientPayloadError as exc:
            error = type(exc).__name__
        return response.status, lines, error, time.monotonic() - started


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def record_for(path: Path, route: str) -> dict[str, Any]:
    await wait_until(lambda: any(r.get("route") == route for r in records(path)), timeout=5)
    return next(r for r in records(path) if r.get("route") == route)


async def upstream_errors(gw: GatewayProcess, kind: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("agentgate_upstream_errors_total{") and f'kind="{kind}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class TestStreamRoute:
    async def test_stream_outlives_upstream_total(
        self, gateway_process: GatewayStarter, events: EventUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(events, audit))
        status, lines, error, seconds = await read_events(gw.url + "/sse/events?n=12")
        assert status == 200
        assert error is None
        assert lines == [f"data: event {i}" for i in range(12)]
        assert seconds > 2.0  # more than twice upstream_total_s
        record = await record_for(audit, "sse")
        assert (record["status"], record["reason"]) == (200, "ok")

    async def test_idle_gap_cuts_the_stream_with_a_reason(
        self, gateway_process: GatewayStarter, events: EventUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(events, audit))
        status, lines, error, _ = await read_events(gw.url + "/sse/events?n=8&gap=3")
        assert status == 200
        assert lines == [f"data: event {i}" for i in range(3)]  # nothing after the gap
        assert error is not None  # a broken body, never a short one that looks complete
        record = await record_for(audit, "sse")
        assert (record["status"], record["reason"]) == (200, "upstream_idle_timeout")
        assert await upstream_errors(gw, "upstream_idle_timeout") == 1

    async def test_max_s_caps_a_stream(
        self, gateway_process: GatewayStarter, events: EventUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(events, audit))
        status, lines, error, seconds = await read_events(gw.url + "/capped/events?n=20")
        assert status == 200
        assert error is not None
        assert 3 <= len(lines) < 20
        assert seconds < 3.5
        record = await record_for(audit, "capped")
        assert record["reason"] == "stream_max_duration"
        assert await upstream_errors(gw, "stream_max_duration") == 1


class TestNonStreamRoute:
    async def test_total_still_bounds_the_body(
        self, gateway_process: GatewayStarter, events: EventUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(events, audit))
        status, lines, error, seconds = await read_events(gw.url + "/events?n=12")
        assert status == 200
        assert error is not None
        assert len(lines) < 12
        assert seconds < 2.5
        record = await record_for(audit, "plain")
        assert record["reason"] == "upstream_total_timeout"

    async def test_late_head_is_504(
        self, gateway_process: GatewayStarter, events: EventUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(events, audit))
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.url + "/late?after=3") as response,
        ):
            assert response.status == 504
        record = await record_for(audit, "plain")
        assert (record["status"], record["reason"]) == (504, "upstream_timeout")

    async def test_late_head_on_a_stream_route_is_504_too(
        self, gateway_process: GatewayStarter, events: EventUpstream, tmp_path: Path
    ) -> None:
        audit = tmp_path / "audit.jsonl"
        gw = await gateway_process(config(events, audit))
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.url + "/sse/late?after=3") as response,
        ):
            assert response.status == 504
