"""The memory action log: seqs, records once, windows with missing seqs, bounds, expiry."""

from __future__ import annotations

import asyncio

import pytest

from gateway.agents.heartbeat import canonical_action
from gateway.state import StateUnavailable
from gateway.state.actions import MemoryActionLog

AGENT = "spiffe://example.org/agent/travel"
OTHER = "spiffe://example.org/agent/flights"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def act(seq: int) -> bytes:
    return canonical_action(seq, f"r-{seq}", "GET", 200)


async def test_reserve_counts_per_agent_from_one() -> None:
    log = MemoryActionLog()
    assert [await log.reserve(AGENT) for _ in range(3)] == [1, 2, 3]
    assert await log.reserve(OTHER) == 1
    assert (await log.head(AGENT), await log.head(OTHER), await log.head("nobody")) == (3, 1, 0)


async def test_concurrent_reserves_are_distinct() -> None:
    log = MemoryActionLog()
    seqs = await asyncio.gather(*(log.reserve(AGENT) for _ in range(50)))
    assert sorted(seqs) == list(range(1, 51))


async def test_window_in_seq_order_with_missing() -> None:
    log = MemoryActionLog()
    for _ in range(6):
        await log.reserve(AGENT)
    for seq in (5, 2, 3, 6):  # recorded out of order, 1 and 4 still in flight
        await log.record(AGENT, seq, act(seq))
    assert await log.window(AGENT, 0, 6) == ([(s, act(s)) for s in (2, 3, 5, 6)], 2)
    assert await log.window(AGENT, 2, 5) == ([(3, act(3)), (5, act(5))], 1)
    assert await log.window(AGENT, 4, 4) == ([], 0)
    assert await log.window("nobody", 0, 10) == ([], 0)


@pytest.mark.parametrize(
    ("seq", "why"),
    [(9, "never reserved"), (1, "recorded already")],
    ids=["unreserved", "twice"],
)
async def test_record_only_once_per_reserved_seq(seq: int, why: str) -> None:
    log = MemoryActionLog()
    await log.reserve(AGENT)
    await log.record(AGENT, 1, act(1))
    await log.record(AGENT, seq, b"forged")
    assert await log.window(AGENT, 0, 10) == ([(1, act(1))], 0), why


async def test_bounds_drop_the_oldest_actions() -> None:
    log = MemoryActionLog(max_actions=4)
    for _ in range(6):
        seq = await log.reserve(AGENT)
        await log.record(AGENT, seq, act(seq))
    assert await log.window(AGENT, 0, 6) == ([(s, act(s)) for s in (3, 4, 5, 6)], 0)


async def test_pending_seqs_are_bounded_too() -> None:
    log = MemoryActionLog(max_actions=3)
    for _ in range(5):
        await log.reserve(AGENT)
    assert (await log.window(AGENT, 0, 5))[1] == 3


async def test_full_log_fails_closed_for_a_new_agent() -> None:
    clock = Clock()
    log = MemoryActionLog(max_agents=1, ttl_s=10.0, clock=clock)
    await log.reserve(AGENT)
    with pytest.raises(StateUnavailable):
        await log.reserve(OTHER)
    assert await log.reserve(AGENT) == 2  # the known agent goes on
    clock.now += 11.0  # AGENT expired: room again
    assert await log.reserve(OTHER) == 1


async def test_entries_expire_after_ttl_without_activity() -> None:
    clock = Clock()
    log = MemoryActionLog(ttl_s=10.0, clock=clock)
    await log.reserve(AGENT)
    await log.record(AGENT, 1, act(1))
    await log.beat(AGENT, 5.0, "healthy", 1)
    clock.now += 9.0
    await log.reserve(AGENT)  # activity pushes the expiry back
    clock.now += 9.0
    assert await log.window(AGENT, 0, 2) == ([(1, act(1))], 1)
    clock.now += 10.5
    assert await log.window(AGENT, 0, 2) == ([], 0)
    assert await log.last_beat(AGENT) is None
    assert await log.reserve(AGENT) == 1


@pytest.mark.parametrize(
    ("beats", "expected"),
    [
        ([], None),
        ([(1.0, "healthy", 4)], (1.0, "healthy", 4)),
        ([(1.0, "healthy", 4), (2.0, "mismatch", 9)], (2.0, "mismatch", 9)),
    ],
    ids=["never", "healthy", "latest-wins"],
)
async def test_last_beat(
    beats: list[tuple[float, str, int]], expected: tuple[float, str, int] | None
) -> None:
    log = MemoryActionLog()
    for at, verdict, last in beats:
        await log.beat(AGENT, at, verdict, last)
    assert await log.last_beat(AGENT) == expected
