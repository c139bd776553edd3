"""Process lifecycle of ``agentgate run`` (DESIGN.md §3): startup line, SIGTERM/SIGINT drain.

The gateway runs as a real subprocess (``python -m gateway run -c <yaml>``) so that signals,
exit codes and stderr are the ones an operator sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import echo_route, tls_block
from tests.support import GatewayProcess, TestPKI, Upstream, client_context, wait_until

pytestmark = pytest.mark.integration

ProcessFactory = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


def config(upstream: Upstream, *, drain_s: float, **server: Any) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "timeouts": {"drain_s": drain_s},
            **server,
        },
        "routes": [echo_route(upstream)],
    }


async def refused(address: tuple[str, int]) -> bool:
    try:
        _, writer = await asyncio.open_connection(*address)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def wait_until_refused(address: tuple[str, int], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not await refused(address):  # noqa: ASYNC110 - polling another process's socket
            await asyncio.sleep(0.02)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def test_sigterm_drains_in_flight_request_then_exits_0(
    gateway_process: ProcessFactory, upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    drain_s = 5.0
    gw = await gateway_process(config(upstream, drain_s=drain_s))
    loop = asyncio.get_running_loop()
    in_flight = asyncio.create_task(get(session, gw.url + "/hold"))
    await wait_until(lambda: "/hold" in upstream.paths())
    arrived = loop.time()

    gw.send_signal(signal.SIGTERM)
    sigterm_at = loop.time()
    # The listener closes at once: new connections are refused while the request is in flight
    # (the upstream holds it until released below, so "in flight" holds however slow we are).
    await wait_until_refused(gw.main_address)
    assert not in_flight.done()
    # Readiness drops during the drain so a load balancer stops sending traffic.
    status, body = await get(session, gw.admin_url + "/readyz")
    assert (status, body["ready"]) == (503, False)
    # The upstream answers 1.5 s after the request reached it (or now, if that has passed).
    loop.call_at(max(loop.time(), arrived + 1.5), upstream.gate.set)

    async with asyncio.timeout(drain_s + 5):
        status, body = await in_flight
    assert (status, body) == (200, {"held": True})
    code = await gw.wait(timeout=drain_s + 10)
    exited_after = loop.time() - sigterm_at
    assert code == 0, "\n".join(gw.lines)
    assert exited_after < drain_s, f"exit took {exited_after:.1f}s, drain_s is {drain_s}"
    assert any("shutting down" in line for line in gw.lines)
    assert any("agentgate stopped" in line for line in gw.lines)


async def test_request_outliving_drain_is_cut_and_process_still_exits_0(
    gateway_process: ProcessFactory, upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    drain_s = 1.0
    gw = await gateway_process(config(upstream, drain_s=drain_s))
    in_flight = asyncio.create_task(get(session, gw.url + "/hold"))  # never released
    await wait_until(lambda: "/hold" in upstream.paths())
    loop = asyncio.get_running_loop()
    gw.send_signal(signal.SIGTERM)
    sigterm_at = loop.time()
    code = await gw.wait(timeout=drain_s * 2 + 10)
    assert code == 0, "\n".join(gw.lines)
    # aiohttp waits drain_s for the handler, then cancels it and waits at most drain_s more.
    assert loop.time() - sigterm_at < drain_s * 2 + 3
    with pytest.raises(aiohttp.ClientError):
        async with asyncio.timeout(10):
            await in_flight


async def test_sigint_exits_0(gateway_process: ProcessFactory, upstream: Upstream) -> None:
    gw = await gateway_process(config(upstream, drain_s=5))
    assert not await refused(gw.main_address)
    gw.send_signal(signal.SIGINT)
    code = await gw.wait(timeout=15)
    assert code == 0, "\n".join(gw.lines)
    assert any("agentgate stopped" in line for line in gw.lines)
    assert not any("Traceback" in line for line in gw.lines), "\n".join(gw.lines)


async def test_startup_line_names_each_listener(
    gateway_process: ProcessFactory,
    upstream: Upstream,
    pki: TestPKI,
    session: aiohttp.ClientSession,
) -> None:
    gw = await gateway_process(config(upstream, drain_s=1, tls=tls_block(pki, "required")))
    line = gw.listening_line
    assert "agentgate listening: main https://127.0.0.1:" in line
    assert "(mTLS required)" in line
    assert f"admin http://127.0.0.1:{gw.admin_address[1]}" in line
    assert "1 route(s)" in line
    assert [ln for ln in gw.lines if "agentgate listening:" in ln] == [line]
    # The ports in the line are the ones actually bound.
    status, _ = await get(session, gw.admin_url + "/healthz")
    assert status == 200
    ctx = client_context(pki, pki.agents["planner"])
    async with session.get(gw.url + "/ping", ssl=ctx) as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "/ping"
