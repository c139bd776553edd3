"""Behaviour windows in Redis: shared by workers, same figures as the memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.observability.behavior import MemoryBehaviorStore
from gateway.settings import Secret, StateSettings
from gateway.state import StateUnavailable
from gateway.state.redis import RedisBehaviorStore, RedisState
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

AGENT = "spiffe://example.org/agent/travel"
# (route, status, denied) as the pipeline records them.
EVENTS = [
    ("flights", 200, False),
    ("flights", 403, True),
    ("billing", 403, True),
    ("flights", 502, False),
    ("internal", 200, False),
]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
async def states(redis_server: RedisServer) -> AsyncIterator[list[RedisState]]:
    settings = StateSettings(
        backend="redis",
        redis_url=Secret("env:REDIS_URL", redis_server.url.encode()),
        key_prefix="behaviour-test:",
    )
    two = [RedisState(settings), RedisState(settings)]  # two workers
    for state in two:
        await state.start()
    yield two
    for state in two:
        await state.close()


def _store(state: RedisState, window_s: float = 60.0) -> RedisBehaviorStore:
    return RedisBehaviorStore(state.link, "behaviour-test:", window_s=window_s)


async def test_two_workers_share_one_window_with_memory_semantics(
    states: list[RedisState],
) -> None:
    first, second = _store(states[0]), _store(states[1])
    memory = MemoryBehaviorStore(window_s=60.0, max_agents=10)
    for i, (route, status, denied) in enumerate(EVENTS):
        store = first if i % 2 == 0 else second  # requests land on either worker
        await store.record(AGENT, route=route, status=status, denied=denied)
        await memory.record(AGENT, route=route, status=status, denied=denied)
    shared = await second.snapshot(AGENT)
    assert shared == await first.snapshot(AGENT)
    assert shared == await memory.snapshot(AGENT)
    assert shared["requests"] == 5
    assert shared["denies"] == 2
    assert shared["errors"] == 1
    assert shared["distinct_routes"] == 3
    assert (await first.snapshot("spiffe://example.org/agent/other"))["requests"] == 0


async def test_window_passes(states: list[RedisState]) -> None:
    store = _store(states[0], window_s=1.2)  # 12 slots of 0.1 s
    await store.record(AGENT, route="flights", status=403, denied=True)
    assert (await store.snapshot(AGENT))["denies"] == 1
    await asyncio.sleep(1.4)
    assert (await store.snapshot(AGENT))["denies"] == 0


async def test_redis_down_fails_closed_and_recovers(
    states: list[RedisState], redis_server: RedisServer
) -> None:
    store = _store(states[0])
    redis_server.stop()
    with pytest.raises(StateUnavailable):
        await store.snapshot(AGENT)
    redis_server.restart()
    await store.record(AGENT, route="flights", status=200, denied=False)
    assert (await store.snapshot(AGENT))["requests"] == 1
