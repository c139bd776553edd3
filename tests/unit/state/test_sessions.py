"""gateway.state.sessions: MCP session ids bound to the first subject that claims them."""

from __future__ import annotations

import asyncio

import pytest

from gateway.state import StateUnavailable
from gateway.state.memory import MemoryState
from gateway.state.sessions import MemorySessionBindings


async def test_first_claim_wins_and_others_are_refused() -> None:
    sessions = MemorySessionBindings()
    assert await sessions.claim("s-1", "alice", 60) is True
    assert await sessions.claim("s-1", "alice", 60) is True  # the owner refreshes it
    assert await sessions.claim("s-1", "mallory", 60) is False
    assert await sessions.owned_by("s-1", "alice") is True
    assert await sessions.owned_by("s-1", "mallory") is False
    assert await sessions.owned_by("s-2", "alice") is None


async def test_concurrent_claims_have_one_owner() -> None:
    sessions = MemorySessionBindings()
    owners = [f"subject-{i}" for i in range(20)]
    results = await asyncio.gather(*(sessions.claim("s", o, 60) for o in owners))
    assert results.count(True) == 1
    winner = owners[results.index(True)]
    assert await sessions.owned_by("s", winner) is True


async def test_release_only_by_the_owner() -> None:
    sessions = MemorySessionBindings()
    await sessions.claim("s", "alice", 60)
    await sessions.release("s", "mallory")
    assert await sessions.owned_by("s", "alice") is True
    await sessions.release("s", "alice")
    assert await sessions.owned_by("s", "alice") is None
    assert await sessions.claim("s", "bob", 60) is True  # ended: the id is free again


async def test_expired_binding_is_unknown_then_claimable() -> None:
    sessions = MemorySessionBindings()
    await sessions.claim("s", "alice", 0.02)
    await asyncio.sleep(0.05)
    assert await sessions.owned_by("s", "alice") is None
    assert await sessions.claim("s", "bob", 60) is True


async def test_full_store_fails_closed_instead_of_evicting_a_live_binding() -> None:
    sessions = MemorySessionBindings(max_entries=2)
    await sessions.claim("a", "alice", 60)
    await sessions.claim("b", "alice", 60)
    with pytest.raises(StateUnavailable):
        await sessions.claim("c", "bob", 60)
    assert await sessions.owned_by("a", "alice") is True  # nothing was evicted


async def test_full_store_reclaims_expired_entries() -> None:
    sessions = MemorySessionBindings(max_entries=1)
    await sessions.claim("a", "alice", 0.02)
    await asyncio.sleep(0.05)
    assert await sessions.claim("b", "bob", 60) is True


async def test_nothing_stored_in_clear() -> None:
    sessions = MemorySessionBindings()
    await sessions.claim("session-secret", "alice@example", 60)
    stored = repr(sessions._bound)
    assert "session-secret" not in stored
    assert "alice" not in stored


def test_memory_state_has_session_bindings() -> None:
    assert isinstance(MemoryState().sessions, MemorySessionBindings)
