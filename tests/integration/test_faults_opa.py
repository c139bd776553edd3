"""The PDP fails and comes back under a steady stream of requests; the gateway is never restarted.

A real ``opa run --server`` decides for a gateway subprocess (``pdp.engine: opa``, decision
cache off, so every request asks OPA). While a paced stream of bearer requests runs (40/s,
each bounded by a 5 s client timeout), OPA is

* stopped and started again on the same port,
* frozen (SIGSTOP: the socket accepts, nothing answers) and thawed (SIGCONT),
* made slow: a delaying TCP proxy in front of it holds each answer past ``pdp_s``, then
  a little (within the budget), then not at all.

Every answer is 2xx or 503 -- never a 500, never a hang (no client timeout) -- answers before
the fault and after recovery are all 2xx, the fault window shows 503s (it did bite), the
gateway process is the same one at the end, and the upstream saw each 2xx request exactly
once and nothing else (counted by ``X-Fault-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.faults import (
    CountingUpstream,
    FaultProxy,
    Outcome,
    Schedule,
    Signer,
    assert_accounted,
    between,
    expect,
    freeze,
    gateway_config,
    issuer_config,
    metric_lines,
    opa_paths,
    stream,
    tally,
    thaw,
)
from tests.opa_server import OPAServer
from tests.support import GatewayProcess, require_real

pytestmark = pytest.mark.integration

RATE = 40.0
PDP_S = 0.5
GRACE_S = 1.0  # after the dependency is back, requests already waiting may still fail

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


@pytest.fixture
def signer() -> Signer:
    return Signer("k1")


@pytest.fixture
def opa(tmp_path: Path) -> Iterator[OPAServer]:
    require_real("opa")
    server = OPAServer(opa_paths(tmp_path), tmp_path / "opa").start()
    try:
        yield server
    finally:
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                thaw(server.proc.pid)  # a failed test must not leave OPA frozen
        server.stop()


@pytest.fixture
async def counting() -> AsyncIterator[CountingUpstream]:
    up = CountingUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


async def start_gateway(
    gateway_process: GatewayStarter,
    tmp_path: Path,
    signer: Signer,
    upstream: CountingUpstream,
    pdp_url: str,
) -> GatewayProcess:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk()]}))
    config = gateway_config(
        upstream.url,
        issuer=issuer_config(jwks_file=str(jwks)),
        pdp={"engine": "opa", "url": pdp_url, "cache": {"ttl_s": 0, "max_entries": 0}},
    )
    config["server"]["timeouts"]["pdp_s"] = PDP_S
    return await gateway_process(config)


def check_fault_stream(
    outcomes: list[Outcome],
    upstream: CountingUpstream,
    gw: GatewayProcess,
    *,
    fault_from: float,
    fault_to: float,
    recovered_at: float,
) -> None:
    """The properties every PDP fault must keep (module docstring)."""
    print(f"stream: {tally(outcomes)}; fault {fault_from:.1f}-{fault_to:.1f}s")
    assert_accounted(outcomes, upstream)
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 503}, f"answers other than 200/503: {tally(outcomes)}"
    expect(between(outcomes, 0, fault_from), {200})
    during = between(outcomes, fault_from + 0.2, fault_to)
    assert any(o.status == 503 for o in during), "the fault never showed: nothing was refused"
    expect(between(outcomes, recovered_at + GRACE_S), {200}, at_least=int(RATE))
    assert gw.proc.returncode is None, "the gateway process died"


async def test_opa_stopped_then_restarted(
    gateway_process: GatewayStarter,
    tmp_path: Path,
    signer: Signer,
    opa: OPAServer,
    counting: CountingUpstream,
) -> None:
    gw = await start_gateway(gateway_process, tmp_path, signer, counting, opa.url)
    pid = gw.pid
    schedule = Schedule(
        (1.5, "stop", lambda: asyncio.to_thread(opa.stop)),
        (4.5, "start", lambda: asyncio.to_thread(opa.start)),
    )
    outcomes = await stream(
        gw.url,
        rate=RATE,
        duration_s=9.0,
        headers=lambda i: {"Authorization": f"Bearer {signer.token()}", "Host": "gw.test"},
        schedule=schedule,
    )
    stop, start = schedule["stop"], schedule["start"]
    check_fault_stream(
        outcomes,
        counting,
        gw,
        fault_from=stop.t_start,
        fault_to=start.t_start,
        recovered_at=start.t_end,
    )
    # While OPA was down its refusals were fast (connection refused), not the pdp_s budget.
    refused = [o for o in between(outcomes, stop.t_end + 0.2, start.t_start) if o.status == 503]
    assert refused
    assert max(o.latency_s for o in refused) < PDP_S + 1.0
    errors = await metric_lines(gw.admin_url, "agentgate_pdp_errors_total")
    assert any("pdp_unavailable" in line for line in errors), errors
    assert gw.pid == pid


async def test_opa_frozen_then_thawed(
    gateway_process: GatewayStarter,
    tmp_path: Path,
    signer: Signer,
    opa: OPAServer,
    counting: CountingUpstream,
) -> None:
    gw = await start_gateway(gateway_process, tmp_path, signer, counting, opa.url)
    assert opa.proc is not None
    pid = opa.proc.pid

    async def frozen() -> None:
        freeze(pid)

    async def thawed() -> None:
        thaw(pid)

    schedule = Schedule((1.5, "freeze", frozen), (4.5, "thaw", thawed))
    outcomes = await stream(
        gw.url,
        rate=RATE,
        duration_s=8.0,
        headers=lambda i: {"Authorization": f"Bearer {signer.token()}", "Host": "gw.test"},
        schedule=schedule,
    )
    freeze_step, thaw_step = schedule["freeze"], schedule["thaw"]
    check_fault_stream(
        outcomes,
        counting,
        gw,
        fault_from=freeze_step.t_start,
        fault_to=thaw_step.t_start,
        recovered_at=thaw_step.t_end,
    )
    # A hung OPA costs each request the pdp_s budget, not the client's patience.
    hung = between(outcomes, freeze_step.t_start + 0.2, thaw_step.t_start - PDP_S)
    expect(hung, {503})
    assert max(o.latency_s for o in hung) < PDP_S + 1.5
    assert opa.running


async def test_opa_slow_then_fast(
    gateway_process: GatewayStarter,
    tmp_path: Path,
    signer: Signer,
    opa: OPAServer,
    counting: CountingUpstream,
) -> None:
    proxy = FaultProxy(opa.port)
    await proxy.start()
    try:
        gw = await start_gateway(gateway_process, tmp_path, signer, counting, proxy.url)

        def delay(seconds: float) -> Callable[[], Awaitable[None]]:
            async def set_delay() -> None:
                proxy.delay_s = seconds

            return set_delay

        # Slower than pdp_s, then slow but within it, then normal.
        schedule = Schedule(
            (1.5, "slow", delay(PDP_S + 0.7)),
            (4.5, "slowish", delay(0.1)),
            (6.5, "fast", delay(0.0)),
        )
        outcomes = await stream(
            gw.url,
            rate=RATE,
            duration_s=9.0,
            headers=lambda i: {"Authorization": f"Bearer {signer.token()}", "Host": "gw.test"},
            schedule=schedule,
        )
    finally:
        await proxy.close()
    slow, slowish = schedule["slow"], schedule["slowish"]
    check_fault_stream(
        outcomes,
        counting,
        gw,
        fault_from=slow.t_start,
        fault_to=slowish.t_start,
        recovered_at=slowish.t_end,
    )
    # Past the budget: every decision in the slow window is refused, within pdp_s + slack.
    too_slow = between(outcomes, slow.t_start + 0.2, slowish.t_start - 1.2)
    expect(too_slow, {503})
    assert max(o.latency_s for o in too_slow) < PDP_S + 1.5
    # Within the budget: slow answers are answers (200), not refusals.
    expect(between(outcomes, slowish.t_end + 1.5, schedule["fast"].t_start), {200})
