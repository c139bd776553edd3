"""An issuer's ``jwks_uri`` misbehaves under a steady stream of bearer requests.

A gateway subprocess verifies ES256 access tokens against a scriptable JWKS endpoint
(:class:`tests.faults.JWKSServer`: a real HTTP server that publishes keys, counts fetches and
on cue goes down, answers slowly or answers garbage). The contract (README "JWKS"): an unknown
``kid`` triggers at most one refetch per ``min_refresh_s``, shared by concurrent requests; a
failed refresh keeps the last good keys for ``max_stale_s`` past their freshness, then
requests fail closed with 503 ``jwks_unavailable``; recovery needs no restart.

Cases (each a paced stream, every request bounded by a client timeout, every request
accounted for at the upstream by ``X-Fault-Id``):

* rotation: a new ``kid`` is published and used -> its tokens verify after exactly one refetch;
* down, within the cache lifetime: known keys keep working; a new ``kid`` is 401 (the refetch
  fails), and verifies once the endpoint is back;
* down past ``max_stale_s``: 503, then 2xx again when the endpoint returns;
* slow (slower than ``fetch_timeout_s``): known keys are served without waiting; a new ``kid``
  is 401 within the fetch timeout; when the endpoint is fast enough again, it verifies;
* garbage (200 with a body that is not a JWKS): the last good set is kept; 401 for a new
  ``kid``; 503 once stale beyond ``max_stale_s``; recovery when the endpoint is fixed;
* a flood of unknown ``kid``s (500 requests with random kids): at most one fetch per
  ``min_refresh_s`` (the default 30 s and 1 s), never one per request; valid tokens in the
  same stream keep working.

No answer is ever a 500 or missing.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from tests.faults import (
    CountingUpstream,
    JWKSServer,
    Outcome,
    Schedule,
    Signer,
    assert_accounted,
    between,
    expect,
    gateway_config,
    issuer_config,
    stream,
    tally,
)
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration

RATE = 40.0
FETCH_TIMEOUT_S = 0.5

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


@pytest.fixture
async def jwks() -> AsyncIterator[JWKSServer]:
    server = JWKSServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def counting() -> AsyncIterator[CountingUpstream]:
    up = CountingUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


class Tokens:
    """Which signer (and so which ``kid``) request ``i`` uses, decided at send time."""

    def __init__(self, default: Signer) -> None:
        self.default = default
        self.pick: Callable[[int], Signer] = lambda i: self.default
        self.used: dict[int, str] = {}

    def headers(self, i: int) -> dict[str, str]:
        signer = self.pick(i)
        self.used[i] = signer.kid
        return {"Authorization": f"Bearer {signer.token()}", "Host": "gw.test"}

    def of(self, outcomes: list[Outcome], kid: str) -> list[Outcome]:
        return [o for o in outcomes if self.used[o.index] == kid]


async def start_gateway(
    gateway_process: GatewayStarter, jwks: JWKSServer, upstream: CountingUpstream, **cache: float
) -> GatewayProcess:
    issuer = issuer_config(jwks_uri=jwks.url, cache={"fetch_timeout_s": FETCH_TIMEOUT_S, **cache})
    gw = await gateway_process(gateway_config(upstream.url, issuer=issuer))
    assert jwks.fetches == 1, "the gateway fetches the JWKS once at startup"
    return gw


def statuses(outcomes: list[Outcome]) -> set[int | None]:
    return {o.status for o in outcomes}


def step(action: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        result = action()
        if asyncio.iscoroutine(result):
            await result

    return run


async def test_rotation_new_kid_verifies_after_exactly_one_refetch(
    gateway_process: GatewayStarter, jwks: JWKSServer, counting: CountingUpstream
) -> None:
    k1, k2 = Signer("k1"), Signer("k2")
    jwks.publish(k1)
    gw = await start_gateway(
        gateway_process, jwks, counting, min_refresh_s=1, default_ttl_s=300, max_stale_s=600
    )
    await asyncio.sleep(1.1)  # the startup fetch is older than min_refresh_s
    tokens = Tokens(k1)
    fetches: dict[str, int] = {}

    def rotate() -> None:
        fetches["before"] = jwks.fetches
        jwks.publish(k1, k2)
        tokens.pick = lambda i: k2 if i % 2 else k1  # the issuer signs with k2 from now on

    schedule = Schedule((1.0, "rotate", step(rotate)))
    outcomes = await stream(
        gw.url, rate=RATE, duration_s=4.0, headers=tokens.headers, schedule=schedule
    )
    print(f"rotation: {tally(outcomes)}; fetches {jwks.fetches}")
    assert_accounted(outcomes, counting)
    expect(outcomes, {200})
    expect(tokens.of(outcomes, "k2"), {200}, at_least=40)
    assert jwks.fetches - fetches["before"] == 1, "one refetch for the new kid, shared by all"


async def test_down_cached_keys_serve_new_kid_refused_until_back(
    gateway_process: GatewayStarter, jwks: JWKSServer, counting: CountingUpstream
) -> None:
    k1, k2 = Signer("k1"), Signer("k2")
    jwks.publish(k1)
    gw = await start_gateway(
        gateway_process, jwks, counting, min_refresh_s=0.5, default_ttl_s=1, max_stale_s=60
    )
    tokens = Tokens(k1)

    def new_kid() -> None:
        tokens.pick = lambda i: k2 if i % 2 else k1  # the IdP rotated while we cannot see it

    async def back() -> None:
        jwks.publish(k1, k2)
        await jwks.start()

    schedule = Schedule(
        (1.0, "down", jwks.stop), (2.0, "new-kid", step(new_kid)), (4.5, "back", back)
    )
    outcomes = await stream(
        gw.url, rate=RATE, duration_s=7.5, headers=tokens.headers, schedule=schedule
    )
    print(f"down: {tally(outcomes)}; fetches {jwks.fetches}")
    assert_accounted(outcomes, counting)
    back_step = schedule["back"]
    # Known keys: served from the cache all along, down or not (well within max_stale_s).
    expect(tokens.of(outcomes, "k1"), {200})
    # The new kid while the endpoint is down: an unknown key, 401 -- never 5xx.
    expect(between(tokens.of(outcomes, "k2"), 0, back_step.t_start), {401})
    # Back: after at most one min_refresh_s, the new kid verifies.
    expect(between(tokens.of(outcomes, "k2"), back_step.t_end + 0.5 + 0.5), {200}, at_least=20)
    assert gw.proc.returncode is None


async def test_down_past_max_stale_fails_closed_then_recovers(
    gateway_process: GatewayStarter, jwks: JWKSServer, counting: CountingUpstream
) -> None:
    k1 = Signer("k1")
    jwks.publish(k1)
    ttl, stale = 1.0, 1.5
    gw = await start_gateway(
        gateway_process, jwks, counting, min_refresh_s=0.5, default_ttl_s=ttl, max_stale_s=stale
    )
    tokens = Tokens(k1)
    marks: dict[str, float] = {}

    async def down() -> None:
        await jwks.stop()
        marks["last_ok"] = jwks.last_ok

    schedule = Schedule((1.0, "down", down), (5.0, "back", jwks.start))
    t0 = time.monotonic()
    outcomes = await stream(
        gw.url, rate=RATE, duration_s=8.0, headers=tokens.headers, schedule=schedule
    )
    print(f"stale: {tally(outcomes)}")
    assert_accounted(outcomes, counting)
    assert statuses(outcomes) <= {200, 503}, tally(outcomes)
    back = schedule["back"]
    unusable_at = marks["last_ok"] - t0 + ttl + stale  # stream time the cached set dies
    assert unusable_at < back.t_start - 1.0, "the machine is too slow for this schedule"
    expect(between(outcomes, 0, unusable_at - 0.3), {200})
    expect(between(outcomes, unusable_at + 0.3, back.t_start), {503})
    expect(between(outcomes, back.t_end + 1.0), {200}, at_least=40)


async def test_slow_endpoint_never_stalls_known_keys(
    gateway_process: GatewayStarter, jwks: JWKSServer, counting: CountingUpstream
) -> None:
    k1, k2 = Signer("k1"), Signer("k2")
    jwks.publish(k1)
    gw = await start_gateway(
        gateway_process, jwks, counting, min_refresh_s=0.5, default_ttl_s=1, max_stale_s=60
    )
    tokens = Tokens(k1)

    def slow() -> None:
        jwks.mode, jwks.delay_s = "slow", FETCH_TIMEOUT_S * 4
        jwks.publish(k1, k2)
        tokens.pick = lambda i: k2 if i % 2 else k1

    def fast_enough() -> None:
        jwks.delay_s = FETCH_TIMEOUT_S / 5

    schedule = Schedule((1.0, "slow", step(slow)), (4.0, "fast-enough", step(fast_enough)))
    outcomes = await stream(
        gw.url, rate=RATE, duration_s=7.0, headers=tokens.headers, schedule=schedule
    )
    print(f"slow: {tally(outcomes)}; fetches {jwks.fetches}")
    assert_accounted(outcomes, counting)
    fixed = schedule["fast-enough"].t_start
    known = tokens.of(outcomes, "k1")
    expect(known, {200})
    # Served from the cached set while refreshes hang: no request waits for the endpoint.
    assert max(o.latency_s for o in known) < FETCH_TIMEOUT_S + 1.0
    waiting = between(tokens.of(outcomes, "k2"), 0, fixed)
    expect(waiting, {401})
    assert max(o.latency_s for o in waiting) < FETCH_TIMEOUT_S + 1.5  # bounded by the timeout
    verified = between(tokens.of(outcomes, "k2"), fixed + 0.5 + FETCH_TIMEOUT_S + 0.5)
    expect(verified, {200}, at_least=20)


async def test_garbage_keeps_last_good_set_then_fails_closed_then_recovers(
    gateway_process: GatewayStarter, jwks: JWKSServer, counting: CountingUpstream
) -> None:
    k1, k2 = Signer("k1"), Signer("k2")
    jwks.publish(k1)
    ttl, stale = 1.0, 2.0
    gw = await start_gateway(
        gateway_process, jwks, counting, min_refresh_s=0.5, default_ttl_s=ttl, max_stale_s=stale
    )
    tokens = Tokens(k1)
    marks: dict[str, float] = {}

    def garbage() -> None:
        marks["last_ok"] = jwks.last_ok
        jwks.mode = "garbage"
        jwks.publish(k1, k2)  # what it would say, if it could
        tokens.pick = lambda i: k2 if i % 2 else k1

    def fixed() -> None:
        jwks.mode = "ok"

    schedule = Schedule((1.0, "garbage", step(garbage)), (6.0, "fixed", step(fixed)))
    t0 = time.monotonic()
    outcomes = await stream(
        gw.url, rate=RATE, duration_s=9.0, headers=tokens.headers, schedule=schedule
    )
    print(f"garbage: {tally(outcomes)}; fetches {jwks.fetches}")
    assert_accounted(outcomes, counting)
    assert statuses(outcomes) <= {200, 401, 503}, tally(outcomes)
    fix = schedule["fixed"]
    unusable_at = marks["last_ok"] - t0 + ttl + stale
    assert unusable_at < fix.t_start - 1.0, "the machine is too slow for this schedule"
    # The last good set keeps serving k1 ...
    expect(between(tokens.of(outcomes, "k1"), 0, unusable_at - 0.3), {200})
    # ... a kid it does not hold is unknown (401) while that set is usable ...
    expect(between(tokens.of(outcomes, "k2"), 0, unusable_at - 0.3), {401})
    # ... and once it is stale beyond max_stale_s, everything fails closed.
    expect(between(outcomes, unusable_at + 0.3, fix.t_start), {503})
    expect(between(outcomes, fix.t_end + 1.0), {200}, at_least=40)
    assert gw.proc.returncode is None


@pytest.mark.parametrize("min_refresh_s", [1.0, None], ids=["min_refresh_1s", "default_30s"])
async def test_flood_of_unknown_kids_does_not_fetch_per_request(
    gateway_process: GatewayStarter,
    jwks: JWKSServer,
    counting: CountingUpstream,
    min_refresh_s: float | None,
) -> None:
    k1 = Signer("k1")
    jwks.publish(k1)
    cache: dict[str, float] = {"default_ttl_s": 300}
    if min_refresh_s is not None:
        cache["min_refresh_s"] = min_refresh_s
    gw = await start_gateway(gateway_process, jwks, counting, **cache)
    rate, duration = 100.0, 6.0
    total = int(rate * duration)

    def headers(i: int) -> dict[str, str]:
        kid = "k1" if i % 6 == 0 else "rnd-" + secrets.token_hex(8)  # 5 of 6 random
        token = k1.token(kid=kid)
        return {"Authorization": f"Bearer {token}", "Host": "gw.test"}

    outcomes = await stream(gw.url, rate=rate, duration_s=duration, headers=headers)
    fetched = jwks.fetches - 1
    print(f"flood: {tally(outcomes)}; {fetched} fetches for {total * 5 // 6} unknown kids")
    assert_accounted(outcomes, counting)
    valid = [o for o in outcomes if o.index % 6 == 0]
    flood = [o for o in outcomes if o.index % 6 != 0]
    expect(valid, {200})
    expect(flood, {401}, at_least=500)
    bound = 1 + math.ceil(duration / (min_refresh_s or 30.0))
    assert fetched <= bound, f"{fetched} fetches for {len(flood)} unknown kids (bound {bound})"
