"""gateway.agents.baseline: per-agent baselines and the drift score of a new call."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.baseline import OTHER, BaselineStore, Drift, Profile

DAY = 86400.0
# 2023-11-14 00:00:00 UTC: a day boundary, so hours of day read plainly.
MIDNIGHT = 19675 * DAY
AGENT = "spiffe://example.org/agent/travel"
TOOLS = ("search_flights", "get_booking", "list_fares")


@dataclass
class Learned:
    store: BaselineStore
    now: float  # the time of the next call at the learned rate
    interval: float


def learn(
    store: BaselineStore,
    start: float,
    calls: int,
    interval: float,
    *,
    deny_every: int = 0,
    error_every: int = 0,
) -> float:
    """A steady MCP agent: three tools in turn on one route, GET/POST, at ``interval``."""
    t = start
    for i in range(calls):
        denied = bool(deny_every) and i % deny_every == 0
        failed = bool(error_every) and i % error_every == 0
        status = 403 if denied else 502 if failed else 200
        method = "POST" if i % 2 else "GET"
        store.observe(AGENT, t, "mcp", TOOLS[i % 3], method, status, denied)
        t += interval
    return t


@pytest.fixture
def steady() -> Learned:
    store = BaselineStore()
    # One hour at one call every 2 s (1800 calls, 1 % errors) from 10:00 UTC.
    now = learn(store, MIDNIGHT + 10 * 3600, 1800, 2.0, error_every=100)
    return Learned(store, now, 2.0)


def names(drift: Drift) -> list[str]:
    return [f.name for f in drift.features]


@pytest.mark.parametrize("tool", TOOLS, ids=TOOLS)
def test_steady_agent_scores_low(steady: Learned, tool: str) -> None:
    drift = steady.store.drift(AGENT, steady.now, "mcp", tool, "GET")
    assert not drift.learning
    assert drift.score < 0.2
    assert drift.baseline_age_s == pytest.approx(3600.0)


def test_new_tools_at_ten_times_the_rate_score_high(steady: Learned) -> None:
    t = steady.now
    fast = steady.interval / 10
    for _ in range(8):
        steady.store.observe(AGENT, t, "mcp", "transfer_funds", "POST", 200, False)
        t += fast
    drift = steady.store.drift(AGENT, t, "mcp", "transfer_funds", "POST")
    assert drift.score > 0.7
    assert names(drift)[:2] == ["tool:transfer_funds", "rate"]
    tool, rate = drift.features[:2]
    assert tool.value == 0.0  # never in the baseline
    assert tool.baseline == pytest.approx(1 / 3)
    assert rate.value / rate.baseline == pytest.approx(10.0, rel=0.05)


@pytest.mark.parametrize(
    ("route", "tool", "method", "top"),
    [
        pytest.param("payments", None, "POST", "route:payments", id="new-route"),
        pytest.param("mcp", "drop_table", "POST", "tool:drop_table", id="new-tool"),
        pytest.param("mcp", TOOLS[0], "DELETE", "method:DELETE", id="new-method"),
    ],
)
def test_novel_key_at_ten_times_the_rate(
    steady: Learned, route: str, tool: str | None, method: str, top: str
) -> None:
    t = steady.now
    for _ in range(8):
        steady.store.observe(AGENT, t, route, tool, method, 200, False)
        t += steady.interval / 10
    drift = steady.store.drift(AGENT, t, route, tool, method)
    # A method weighs less than a route or a tool (a new verb alone is weaker evidence), so
    # the rate may come first.
    assert set(names(drift)[:2]) == {top, "rate"}
    assert drift.score > (0.6 if top.startswith("method:") else 0.7)


def test_new_tool_alone_stays_below_quarantine(steady: Learned) -> None:
    # An unseen tool at the usual pace is worth a look (step-down), not a quarantine.
    drift = steady.store.drift(AGENT, steady.now, "mcp", "transfer_funds", "POST")
    assert names(drift)[0] == "tool:transfer_funds"
    assert 0.5 < drift.score < 0.8


def test_deny_ratio_jump() -> None:
    store = BaselineStore()
    now = learn(store, MIDNIGHT + 10 * 3600, 1800, 2.0, deny_every=20)
    # Then five of eight calls refused, at the usual pace and on the usual tools.
    for i in range(8):
        denied = i < 5
        store.observe(AGENT, now, "mcp", TOOLS[i % 3], "GET", 403 if denied else 200, denied)
        now += 2.0
    drift = store.drift(AGENT, now, "mcp", TOOLS[0], "GET")
    top = drift.features[0]
    assert top.name == "deny_ratio"
    assert top.value == pytest.approx(5 / 8)
    assert top.baseline == pytest.approx(0.05, abs=0.005)
    assert drift.score == pytest.approx(top.contribution, abs=0.05)


def test_error_ratio_jump(steady: Learned) -> None:
    t = steady.now
    for i in range(8):
        steady.store.observe(AGENT, t, "mcp", TOOLS[i % 3], "GET", 500, False)
        t += steady.interval
    drift = steady.store.drift(AGENT, t, "mcp", TOOLS[0], "GET")
    assert names(drift)[0] == "error_ratio"
    assert drift.features[0].value == 1.0


@pytest.mark.parametrize(
    ("hour", "unseen"),
    [pytest.param(3, True, id="03-never-active"), pytest.param(10, False, id="10-usual")],
)
def test_hour_of_day(hour: int, unseen: bool) -> None:
    store = BaselineStore()
    # Two working days, 09:00-17:00 UTC, one call a minute; then a call on day three.
    for day in range(2):
        learn(store, MIDNIGHT + day * DAY + 9 * 3600, 8 * 60, 60.0)
    drift = store.drift(AGENT, MIDNIGHT + 2 * DAY + hour * 3600, "mcp", TOOLS[0], "GET")
    assert not drift.learning
    if unseen:
        assert names(drift) == [f"hour:{hour:02d}"]
        assert drift.score == pytest.approx(0.5)
    else:
        assert drift.score == 0.0
        assert drift.features == ()


def test_unseen_hour_counts_little_in_a_young_profile(steady: Learned) -> None:
    # Learned 10:00-11:00; at 11:00 the hour is new, but one hour of life knows no routine.
    drift = steady.store.drift(AGENT, steady.now, "mcp", TOOLS[0], "GET")
    hour = next(f for f in drift.features if f.name.startswith("hour:"))
    assert hour.contribution == pytest.approx(0.5 * 3600 / DAY)


@pytest.mark.parametrize(
    ("calls", "age_s", "learning"),
    [
        pytest.param(49, 3600.0, True, id="too-few-calls"),
        pytest.param(400, 299.0, True, id="too-young"),
        pytest.param(50, 300.0, False, id="just-enough"),
    ],
)
def test_learning_phase_scores_zero(calls: int, age_s: float, learning: bool) -> None:
    store = BaselineStore()
    start = MIDNIGHT + 10 * 3600
    learn(store, start, calls, age_s / calls)
    drift = store.drift(AGENT, start + age_s, "elsewhere", "transfer_funds", "DELETE")
    assert drift.learning is learning
    assert (drift.score == 0.0) is learning
    assert (drift.features == ()) is learning


def test_learning_thresholds_are_configurable() -> None:
    store = BaselineStore(min_calls=5, min_age_s=10)
    start = MIDNIGHT + 10 * 3600
    learn(store, start, 12, 1.0)
    assert not store.drift(AGENT, start + 12, "mcp", TOOLS[0], "GET").learning


def test_unknown_agent_is_learning_and_not_stored() -> None:
    store = BaselineStore()
    assert store.drift(AGENT, MIDNIGHT, "mcp", None, "GET") == Drift(0.0, (), 0.0, True)
    assert AGENT not in store


def test_window_forgets_old_calls() -> None:
    store = BaselineStore()
    start = MIDNIGHT + 10 * 3600
    end = learn(store, start, 1800, 2.0)
    # Ten hours later nothing is left in the window: only the hour of day is judged.
    drift = store.drift(AGENT, end + 10 * 3600, "mcp", "transfer_funds", "GET")
    assert not drift.learning
    assert all(f.name.startswith("hour:") for f in drift.features)


@pytest.mark.parametrize(
    ("kind", "limit"),
    [pytest.param("tools", 64, id="tools"), pytest.param("routes", 64, id="routes")],
)
def test_distinct_keys_are_capped(kind: str, limit: int) -> None:
    profile = Profile(MIDNIGHT, min_calls=1, min_age_s=0)
    for i in range(1000):
        name = f"name-{i}"
        route, tool = (name, "t") if kind == "routes" else ("mcp", name)
        profile.observe(MIDNIGHT + i, route, tool, f"M{i}", 200, False)
    tracked = profile.tracked()
    assert tracked[kind] == limit
    assert tracked["methods"] == 16
    # Past the cap a new name is judged by "other", which has many calls: lenient.
    route, tool = ("name-5000", "t") if kind == "routes" else ("mcp", "name-5000")
    drift = profile.drift(MIDNIGHT + 1000, route, tool, "GET")
    assert not [n for n in names(drift) if n.endswith("name-5000") or n.endswith(OTHER)]


def test_long_names_are_cut() -> None:
    profile = Profile(MIDNIGHT, min_calls=1, min_age_s=0)
    profile.observe(MIDNIGHT, "mcp", "x" * 10_000, "GET", 200, False)
    drift = profile.drift(MIDNIGHT + 1, "mcp", "y" * 10_000, "GET")
    assert all(len(f.name) <= 5 + 128 for f in drift.features)


def test_lru_eviction_forgets_the_least_recent() -> None:
    store = BaselineStore(max_agents=2, min_calls=1, min_age_s=0)
    for agent in ("a", "b"):
        store.observe(agent, MIDNIGHT, "mcp", None, "GET", 200, False)
    store.drift("a", MIDNIGHT + 1, "mcp", None, "GET")  # touches a
    store.observe("c", MIDNIGHT + 2, "mcp", None, "GET", 200, False)
    assert ("a" in store, "b" in store, "c" in store) == (True, False, True)
    assert len(store) == 2
    # Evicted means learning again: score 0, never a lock-out.
    assert store.drift("b", MIDNIGHT + 3, "admin", "drop_db", "DELETE").score == 0.0


def test_as_input_shape(steady: Learned) -> None:
    drift = steady.store.drift(AGENT, steady.now, "mcp", "transfer_funds", "POST")
    got = BaselineStore.as_input(drift)
    assert set(got) == {"drift", "baseline_age"}
    assert got["baseline_age"] == 3600
    assert got["drift"]["score"] == round(drift.score, 4)
    first = got["drift"]["features"][0]
    assert first == {
        "name": "tool:transfer_funds",
        "value": 0.0,
        "baseline": 0.3333,
        "contribution": round(drift.features[0].contribution, 4),
    }


def test_deterministic() -> None:
    def run() -> Drift:
        store = BaselineStore()
        now = learn(store, MIDNIGHT + 10 * 3600, 600, 3.0, deny_every=7, error_every=11)
        return store.drift(AGENT, now, "other-route", "transfer_funds", "DELETE")

    assert run() == run()


calls = st.lists(
    st.tuples(
        # Seconds since the previous call; a negative gap is a clock that stepped back.
        st.floats(min_value=-60.0, max_value=900.0),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from([None, "t1", "t2", "t3"]),
        st.sampled_from(["GET", "POST", "DELETE"]),
        st.sampled_from([200, 404, 500]),
        st.booleans(),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    calls,
    st.floats(min_value=0.0, max_value=3 * DAY),
    st.sampled_from(["a", "z"]),
    st.sampled_from([None, "t1", "new"]),
)
def test_score_bounded_and_features_sorted(
    history: list[tuple[float, str, str | None, str, int, bool]],
    later: float,
    route: str,
    tool: str | None,
) -> None:
    store = BaselineStore(window_s=600, min_calls=1, min_age_s=0)
    t = MIDNIGHT
    for gap, r, tl, method, status, denied in history:
        t += gap
        store.observe(AGENT, t, r, tl, method, status, denied)
    drift = store.drift(AGENT, t + later, route, tool, "GET")
    assert 0.0 <= drift.score <= 1.0
    contributions = [f.contribution for f in drift.features]
    assert contributions == sorted(contributions, reverse=True)
    assert len(contributions) <= 3
    assert all(0.0 < c <= 1.0 for c in contributions)
