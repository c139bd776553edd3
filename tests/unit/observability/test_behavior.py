"""gateway.observability.behavior: per-agent sliding windows and the agent key."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.context import Actor, Identity
from gateway.observability.behavior import (
    BehaviorStore,
    MemoryBehaviorStore,
    agent_key,
    empty_snapshot,
)
from gateway.settings import BehaviorSettings
from tests.unit.observability.builders import PEER, make_identity

AGENT = "spiffe://example.org/agent/travel"


class Clock:
    """Monotonic seconds under test control (the store reads time, nothing else)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryBehaviorStore:
    return MemoryBehaviorStore(window_s=60, max_agents=100, buckets=12, clock=clock)


def test_memory_store_satisfies_the_protocol(store: MemoryBehaviorStore) -> None:
    checked: BehaviorStore = store
    assert checked is store


async def test_unknown_agent_has_an_empty_window(store: MemoryBehaviorStore) -> None:
    assert await store.snapshot(AGENT) == {
        "window_s": 60.0,
        "requests": 0,
        "errors": 0,
        "denies": 0,
        "distinct_routes": 0,
        "deny_rate": 0.0,
        "error_rate": 0.0,
    }
    assert await store.snapshot(AGENT) == empty_snapshot(60.0)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [("flights", 200, False)] * 3,
            {"requests": 3, "errors": 0, "denies": 0, "distinct_routes": 1},
            id="ok-requests",
        ),
        pytest.param(
            [("flights", 403, True), ("flights", 403, True), ("billing", 200, False)],
            {"requests": 3, "denies": 2, "errors": 0, "distinct_routes": 2, "deny_rate": 0.6667},
            id="denies-are-not-errors",
        ),
        pytest.param(
            [("a", 500, False), ("b", 404, False), ("c", 429, False), ("d", 302, False)],
            {"requests": 4, "errors": 3, "denies": 0, "distinct_routes": 4, "error_rate": 0.75},
            id="status-400-and-up-are-errors",
        ),
    ],
)
async def test_counts_and_rates(
    store: MemoryBehaviorStore,
    events: list[tuple[str, int, bool]],
    expected: dict[str, float],
) -> None:
    for route, status, denied in events:
        await store.record(AGENT, route=route, status=status, denied=denied)
    snapshot = await store.snapshot(AGENT)
    for key, value in expected.items():
        assert snapshot[key] == value, key


async def test_agents_are_independent(store: MemoryBehaviorStore) -> None:
    await store.record(AGENT, route="r", status=403, denied=True)
    await store.record("other", route="r", status=200, denied=False)
    assert (await store.snapshot(AGENT))["denies"] == 1
    assert (await store.snapshot("other"))["denies"] == 0


async def test_events_leave_the_window_after_window_s(
    store: MemoryBehaviorStore, clock: Clock
) -> None:
    await store.record(AGENT, route="a", status=403, denied=True)
    clock.now += 30
    await store.record(AGENT, route="b", status=403, denied=True)
    assert (await store.snapshot(AGENT))["denies"] == 2
    clock.now += 30  # 60 s after the first event: it has left, the second has not
    snapshot = await store.snapshot(AGENT)
    assert (snapshot["denies"], snapshot["distinct_routes"]) == (1, 1)
    clock.now += 30
    assert await store.snapshot(AGENT) == empty_snapshot(60.0)


async def test_event_stays_at_least_window_minus_one_bucket(
    store: MemoryBehaviorStore, clock: Clock
) -> None:
    clock.now = 1200.0  # a bucket boundary (bucket width is 5 s)
    await store.record(AGENT, route="a", status=200, denied=False)
    clock.now += 54.99
    assert (await store.snapshot(AGENT))["requests"] == 1
    clock.now = 1200.0 + 60
    assert (await store.snapshot(AGENT))["requests"] == 0


async def test_ring_slots_are_reused_without_leaking_old_counts(
    store: MemoryBehaviorStore, clock: Clock
) -> None:
    for _ in range(5):
        await store.record(AGENT, route="a", status=500, denied=False)
    clock.now += 60 * 7  # the same ring slot comes round again, seven windows later
    await store.record(AGENT, route="b", status=200, denied=False)
    snapshot = await store.snapshot(AGENT)
    assert (snapshot["requests"], snapshot["errors"], snapshot["distinct_routes"]) == (1, 0, 1)


async def test_sliding_not_tumbling(store: MemoryBehaviorStore, clock: Clock) -> None:
    for _ in range(60):  # one request per second for a minute
        await store.record(AGENT, route="a", status=200, denied=False)
        clock.now += 1
    counts = []
    for _ in range(30):
        await store.record(AGENT, route="a", status=200, denied=False)
        counts.append((await store.snapshot(AGENT))["requests"])
        clock.now += 1
    assert min(counts) >= 55  # never drops to zero at a window edge
    assert max(counts) <= 61


async def test_least_recently_seen_agent_is_evicted(clock: Clock) -> None:
    store = MemoryBehaviorStore(window_s=60, max_agents=2, clock=clock)
    await store.record("a", route="r", status=403, denied=True)
    await store.record("b", route="r", status=403, denied=True)
    await store.snapshot("a")  # a is now more recent than b
    await store.record("c", route="r", status=403, denied=True)
    assert len(store) == 2
    assert (await store.snapshot("a"))["denies"] == 1
    assert (await store.snapshot("b"))["denies"] == 0  # forgotten: more lenient, never stricter
    assert (await store.snapshot("c"))["denies"] == 1


def test_from_settings() -> None:
    store = MemoryBehaviorStore.from_settings(BehaviorSettings(window_s=5, max_agents=3))
    assert store.window_s == 5.0


@pytest.mark.parametrize(
    "kwargs", [{"window_s": 0, "max_agents": 1}, {"window_s": 1, "max_agents": 0}]
)
def test_invalid_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="required"):
        MemoryBehaviorStore(**kwargs)  # type: ignore[arg-type]


def _agent_identity() -> Identity:
    return make_identity(
        method="jwt_assertion", subject="agent-7", subject_type="agent", client_id=None, actors=()
    )


def _user_via_agent() -> Identity:
    return make_identity(actors=(Actor("spiffe://example.org/agent/planner"),))


def _user_from_agent_client() -> Identity:
    identity = make_identity(actors=(), client_id="travel-app")
    return dataclasses.replace(identity, caller="agent")


def _human() -> Identity:
    identity = make_identity(actors=(), client_id="browser-app")
    return dataclasses.replace(identity, caller="human_browser")


@pytest.mark.parametrize(
    ("identity", "with_peer", "expected"),
    [
        pytest.param(_agent_identity(), True, "agent-7", id="principal-is-an-agent"),
        pytest.param(
            _user_via_agent(),
            True,
            "spiffe://example.org/agent/planner",
            id="current-actor-of-a-delegation",
        ),
        pytest.param(_user_from_agent_client(), True, "travel-app", id="agent-oauth-client"),
        pytest.param(_human(), True, AGENT, id="human-over-agent-mtls-falls-back-to-peer"),
        pytest.param(_human(), False, None, id="human-without-certificate-is-not-tracked"),
        pytest.param(None, True, AGENT, id="unauthenticated-peer-certificate"),
        pytest.param(None, False, None, id="nothing-verified"),
    ],
)
def test_agent_key(identity: Identity | None, with_peer: bool, expected: str | None) -> None:
    assert agent_key(identity, PEER if with_peer else None) == expected
