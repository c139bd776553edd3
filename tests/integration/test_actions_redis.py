"""The action log in a real Redis: shared atomic seqs, windows, bounds, expiry, hashed keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.agents.heartbeat import canonical_action
from gateway.settings import Secret, StateSettings
from gateway.state import StateUnavailable
from gateway.state.redis import RedisState
from gateway.state.redis.actions import RedisActionLog
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

AGENT = "spiffe://example.org/agent/travel"
OTHER = "spiffe://example.org/agent/flights"


def act(seq: int) -> bytes:
    return canonical_action(seq, f"r-{seq}", "GET", 200)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


PREFIX = f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def states(redis_server: RedisServer) -> AsyncIterator[list[RedisState]]:
    settings = StateSettings(
        backend="redis",
        redis_url=Secret("env:REDIS_URL", redis_server.url.encode()),
        key_prefix=PREFIX,
        # 50 concurrent calls queue for the pool's connections: atomicity is tested here,
        # not latency, so a loaded machine must not turn a wait into StateUnavailable.
        timeout_s=2,
    )
    two = [RedisState(settings), RedisState(settings)]  # two workers or nodes
    for state in two:
        await state.start()
    yield two
    for state in two:
        await state.close()


def _log(state: RedisState, max_actions: int = 4096, ttl_s: float = 86_400.0) -> RedisActionLog:
    return RedisActionLog(state.link, PREFIX, max_actions=max_actions, ttl_s=ttl_s)


async def test_two_nodes_share_seqs_atomically(states: list[RedisState]) -> None:
    first, second = _log(states[0]), _log(states[1])
    seqs = await asyncio.gather(*(log.reserve(AGENT) for log in [first, second] * 25))
    assert sorted(seqs) == list(range(1, 51))
    assert await second.reserve(OTHER) == 1
    assert (await first.head(AGENT), await second.head(OTHER), await first.head("nobody")) == (
        50,
        1,
        0,
    )


async def test_window_and_missing_across_nodes(states: list[RedisState]) -> None:
    first, second = _log(states[0]), _log(states[1])
    for _ in range(6):
        await first.reserve(AGENT)
    for seq in (5, 2, 3, 6):  # recorded out of order on both nodes; 1 and 4 in flight
        await (first if seq % 2 else second).record(AGENT, seq, act(seq))
    assert await second.window(AGENT, 0, 6) == ([(s, act(s)) for s in (2, 3, 5, 6)], 2)
    assert await first.window(AGENT, 2, 5) == ([(3, act(3)), (5, act(5))], 1)
    assert await first.window(AGENT, 4, 4) == ([], 0)
    await second.record(AGENT, 3, b"forged")  # recorded already: ignored
    await second.record(AGENT, 99, b"forged")  # never reserved: ignored
    assert await first.window(AGENT, 2, 3) == ([(3, act(3))], 0)


async def test_bounds_drop_the_oldest(states: list[RedisState]) -> None:
    log = _log(states[0], max_actions=4)
    for _ in range(6):
        seq = await log.reserve(AGENT)
        await log.record(AGENT, seq, act(seq))
    for _ in range(6):
        await log.reserve(AGENT)  # pending seqs 7..12: only the newest 4 kept
    assert await log.window(AGENT, 0, 12) == ([(s, act(s)) for s in (3, 4, 5, 6)], 4)


async def test_beats_are_shared(states: list[RedisState]) -> None:
    first, second = _log(states[0]), _log(states[1])
    assert await second.last_beat(AGENT) is None
    await first.beat(AGENT, 1765150000.25, "healthy", 4)
    assert await second.last_beat(AGENT) == (1765150000.25, "healthy", 4)
    await second.beat(AGENT, 1765150010.5, "mismatch", 9)
    assert await first.last_beat(AGENT) == (1765150010.5, "mismatch", 9)


async def test_every_key_expires_after_ttl_and_names_are_hashed(
    states: list[RedisState], redis_server: RedisServer
) -> None:
    log = _log(states[0], ttl_s=0.3)
    await log.reserve(AGENT)
    await log.reserve(AGENT)
    await log.record(AGENT, 1, act(1))
    await log.beat(AGENT, 1.0, "healthy", 1)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        names = [bytes(k) for k in await raw.keys(PREFIX + "*")]
        assert len(names) == 4
        assert not any(b"spiffe" in name or b"travel" in name for name in names)
        ttls = [await raw.pttl(name) for name in names]
        assert all(0 < ttl <= 300 for ttl in ttls), ttls
        for _ in range(100):  # expiry is Redis's: wait for it, bounded
            if not await raw.keys(PREFIX + "*"):
                break
            await asyncio.sleep(0.05)
    finally:
        await raw.aclose()
    assert await log.window(AGENT, 0, 2) == ([], 0)
    assert await log.last_beat(AGENT) is None
    assert await log.reserve(AGENT) == 1


async def test_redis_down_fails_closed(states: list[RedisState], redis_server: RedisServer) -> None:
    log = _log(states[0])
    await log.reserve(AGENT)
    redis_server.stop()
    for call in (
        log.reserve(AGENT),
        log.record(AGENT, 1, act(1)),
        log.window(AGENT, 0, 1),
        log.head(AGENT),
        log.beat(AGENT, 1.0, "healthy", 1),
        log.last_beat(AGENT),
    ):
        with pytest.raises(StateUnavailable):
            await call
