"""Redis (``state.backend: redis``) is killed or frozen under a steady stream of requests.

A gateway subprocess keeps its rate-limit buckets and revocation replica in a real
``redis-server``; the route has a per-subject rate limit far above the stream's rate, so every
request runs the bucket script in Redis. While a paced bearer stream runs (40/s, 5 s client
timeout), Redis is

* killed (SIGKILL: a crash, every connection reset) and started again, empty, on its port;
* frozen (SIGSTOP: connections stay open, nothing answers) and thawed (SIGCONT).

Every answer is 2xx or 503 (fail closed: a limit that cannot be checked is not skipped), a
frozen Redis costs a request ``state.timeout_s``, not the client's patience, the stream is
all 2xx again shortly after Redis is back, the gateway was never restarted, and the upstream
saw each 2xx exactly once and nothing else.

The other Redis failure modes live with their features: ``test_redis_state.py`` (each
operation against a stopped/frozen/restarted server, in process) and ``test_scaleout.py``
(two nodes, Redis stopped then restarted, one request at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.faults import (
    CountingUpstream,
    Outcome,
    Schedule,
    Signer,
    assert_accounted,
    between,
    expect,
    freeze,
    gateway_config,
    issuer_config,
    stream,
    tally,
    thaw,
)
from tests.redis_server import RedisServer
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration

RATE = 40.0
TIMEOUT_S = 0.25  # state.timeout_s
RECOVERY_S = 1.5  # reconnect + revocation replica reload, with slack for a busy machine

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                server.proc.send_signal(signal.SIGCONT)  # never leave it frozen
        server.stop()


@pytest.fixture
async def counting() -> AsyncIterator[CountingUpstream]:
    up = CountingUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


@pytest.fixture
async def gw(
    gateway_process: GatewayStarter,
    tmp_path: Path,
    redis_server: RedisServer,
    counting: CountingUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[GatewayProcess, Signer]:
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk()]}))
    monkeypatch.setenv("FAULTS_REDIS_URL", redis_server.url)  # inherited by the subprocess
    config = gateway_config(
        counting.url,
        issuer=issuer_config(jwks_file=str(jwks)),
        state={
            "backend": "redis",
            "redis_url": "env:FAULTS_REDIS_URL",
            "key_prefix": f"faults-{uuid.uuid4().hex[:8]}:",
            "timeout_s": TIMEOUT_S,
        },
        route={"rate_limits": [{"per": "subject", "rate": 10_000, "burst": 10_000}]},
    )
    return await gateway_process(config), signer


def check(
    outcomes: list[Outcome],
    upstream: CountingUpstream,
    gw: GatewayProcess,
    *,
    fault_from: float,
    fault_to: float,
    back_at: float,
) -> None:
    print(f"redis: {tally(outcomes)}; fault {fault_from:.1f}-{fault_to:.1f}s, back {back_at:.1f}s")
    assert_accounted(outcomes, upstream)
    assert {o.status for o in outcomes} <= {200, 503}, tally(outcomes)
    expect(between(outcomes, 0, fault_from), {200})
    # Requests sent shortly before the end may still be waiting when Redis answers again.
    expect(between(outcomes, fault_from + 0.3, fault_to - TIMEOUT_S * 2), {503})
    expect(between(outcomes, back_at + RECOVERY_S), {200}, at_least=int(RATE))
    assert gw.proc.returncode is None


async def test_redis_killed_then_restarted(
    gw: tuple[GatewayProcess, Signer], redis_server: RedisServer, counting: CountingUpstream
) -> None:
    gateway, signer = gw
    schedule = Schedule(
        (1.5, "kill", lambda: asyncio.to_thread(redis_server.kill)),
        (4.0, "restart", lambda: asyncio.to_thread(redis_server.start)),
    )
    outcomes = await stream(
        gateway.url,
        rate=RATE,
        duration_s=8.0,
        headers=lambda i: {"Authorization": f"Bearer {signer.token()}", "Host": "gw.test"},
        schedule=schedule,
    )
    kill, restart = schedule["kill"], schedule["restart"]
    check(
        outcomes,
        counting,
        gateway,
        fault_from=kill.t_start,
        fault_to=restart.t_start,
        back_at=restart.t_end,
    )


async def test_redis_frozen_then_thawed(
    gw: tuple[GatewayProcess, Signer], redis_server: RedisServer, counting: CountingUpstream
) -> None:
    gateway, signer = gw
    assert redis_server.proc is not None
    pid = redis_server.proc.pid

    async def frozen() -> None:
        freeze(pid)

    async def thawed() -> None:
        thaw(pid)

    schedule = Schedule((1.5, "freeze", frozen), (4.0, "thaw", thawed))
    outcomes = await stream(
        gateway.url,
        rate=RATE,
        duration_s=8.0,
        headers=lambda i: {"Authorization": f"Bearer {signer.token()}", "Host": "gw.test"},
        schedule=schedule,
    )
    freeze_step, thaw_step = schedule["freeze"], schedule["thaw"]
    check(
        outcomes,
        counting,
        gateway,
        fault_from=freeze_step.t_start,
        fault_to=thaw_step.t_start,
        back_at=thaw_step.t_end,
    )
    # Each refusal waited for the Redis budget, not for the client's timeout.
    hung = between(outcomes, freeze_step.t_start + 0.3, thaw_step.t_start - 0.5)
    assert max(o.latency_s for o in hung) < TIMEOUT_S * 4 + 1.0
