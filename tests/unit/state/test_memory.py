"""gateway.state.memory: the single-process backend (replay cache and the State bundle)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.settings import StateSettings
from gateway.state import State, StateUnavailable
from gateway.state.factory import build_state
from gateway.state.memory import MemoryReplayCache, MemoryState


async def test_first_use_then_replay() -> None:
    cache = MemoryReplayCache()
    assert await cache.first_use("jti-1", 60) is True
    assert await cache.first_use("jti-1", 60) is False
    assert await cache.first_use("jti-2", 60) is True


async def test_expired_key_is_new_again() -> None:
    cache = MemoryReplayCache()
    assert await cache.first_use("k", 0.01)
    await asyncio.sleep(0.03)
    assert await cache.first_use("k", 60)


async def test_concurrent_first_use_exactly_one_true() -> None:
    cache = MemoryReplayCache()
    results = await asyncio.gather(*(cache.first_use("same", 60) for _ in range(50)))
    assert results.count(True) == 1


async def test_full_cache_fails_closed() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert await cache.first_use("a", 60)
    assert await cache.first_use("b", 60)
    with pytest.raises(StateUnavailable):
        await cache.first_use("c", 60)
    assert await cache.first_use("a", 60) is False  # a live entry is never forgotten


async def test_build_state_memory_is_the_default() -> None:
    state = build_state(StateSettings())
    assert isinstance(state, MemoryState)
    assert isinstance(state, State)
    assert state.backend == "memory"
    await state.start()
    assert state.ready()
    assert await state.replay.first_use("x", 1)
    assert (await state.limiter.hit("k", 1.0, 1)).allowed
    assert (
        await state.revocations.check(
            subject=None, agent=None, cert_sha256=None, jti=None, txn=None
        )
        is None
    )
    await state.close()
