"""Soak: 20,000 requests at a bounded rate through a gateway subprocess (loopback only).

After a warm-up (pools filled, caches built, allocator settled) the gateway's RSS must
not grow by more than 20 MB over 20,000 more requests, and once the clients are gone
its open file descriptors must come back to the warm-up baseline: no leaked sockets,
no unbounded cache. The mix covers the common paths: proxied 200s over keep-alive and
over fresh connections, 404 (no route) and 502 (upstream refused).

Bounded for CI: ~300 requests/s, so about 70-90 s on a two-core machine.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support import LOCALHOST, GatewayProcess, Upstream, closed_port

pytestmark = pytest.mark.integration

WARMUP = 2_000
TOTAL = 20_000
RATE_PER_S = 300.0
CONCURRENCY = 16
MAX_RSS_GROWTH = 20 * 1024 * 1024
FD_SLACK = 2  # e.g. one upstream keep-alive connection more or less than at the baseline

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


def _target(i: int) -> tuple[str, int, bool]:
    """(path, expected status, fresh connection?) for request number ``i``."""
    if i % 20 == 7:
        return "/nowhere", 404, False
    if i % 20 == 13:
        return "/dead/x", 502, False
    return f"/echo/item/{i}?q={i % 97}", 200, i % 5 == 0


async def _drive(gw: GatewayProcess, count: int, offset: int, rate: float | None) -> dict[int, int]:
    """Send ``count`` requests, paced at ``rate``/s when given; status -> count."""
    statuses: collections.Counter[int] = collections.Counter()
    timeout = aiohttp.ClientTimeout(total=30)
    keep = aiohttp.TCPConnector(limit=CONCURRENCY)
    fresh = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=True)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(offset, offset + count):
        queue.put_nowait(i)
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(connector=keep, timeout=timeout) as keep_session,
        aiohttp.ClientSession(connector=fresh, timeout=timeout) as fresh_session,
    ):

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if rate is not None:
                    due = started + (i - offset) / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                path, expected, new_connection = _target(i)
                session = fresh_session if new_connection else keep_session
                async with session.get(gw.url + path, headers={"Host": "gw.test"}) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                    assert resp.status == expected, f"{path}: {resp.status}"

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return dict(statuses)


async def _settled_fds(proc: psutil.Process, *, at_most: int | None = None) -> int:
    """num_fds once it stops changing (or drops to ``at_most``), within 20 s."""
    deadline = time.monotonic() + 20
    last = proc.num_fds()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = proc.num_fds()
        if at_most is not None and now <= at_most:
            return now
        if now != last:
            last, stable_since = now, time.monotonic()
        elif at_most is None and time.monotonic() - stable_since >= 1.5:
            return now
    return last


async def test_soak_rss_and_fds_stay_bounded(
    gateway_process: GatewayStarter, upstream: Upstream
) -> None:
    gw = await gateway_process(
        {
            "server": {
                "listen": f"{LOCALHOST}:0",
                "admin_listen": f"{LOCALHOST}:0",
                "timeouts": {"drain_s": 1, "upstream_connect_s": 1},
            },
            "routes": [
                {"name": "echo", "match": {"path_prefix": "/echo/"}, "upstream": upstream.url},
                {
                    "name": "dead",
                    "match": {"path_prefix": "/dead/"},
                    "upstream": f"http://{LOCALHOST}:{closed_port()}",
                },
            ],
        }
    )
    proc = psutil.Process(gw.pid)

    await _drive(gw, WARMUP, 0, rate=None)
    fds_before = await _settled_fds(proc)
    rss_before = proc.memory_info().rss

    started = time.monotonic()
    statuses = await _drive(gw, TOTAL, WARMUP, rate=RATE_PER_S)
    took = time.monotonic() - started
    rss_after = proc.memory_info().rss
    fds_after = await _settled_fds(proc, at_most=fds_before + FD_SLACK)

    print(
        f"soak: {TOTAL} requests in {took:.1f}s ({TOTAL / took:.0f}/s) {statuses}; "
        f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB; "
        f"fds {fds_before} -> {fds_after}"
    )
    assert sum(statuses.values()) == TOTAL
    assert rss_after - rss_before < MAX_RSS_GROWTH
    assert fds_after <= fds_before + FD_SLACK
    assert gw.proc.returncode is None
