"""Per-agent behaviour baselines and the drift score of a new call (issue 18, pure, no I/O).

Contract. A :class:`Profile` learns what one agent normally does from the calls the gateway
proxied for it (:meth:`Profile.observe`, once the status is known) and scores a NEW call
before it is recorded (:meth:`Profile.drift`). :class:`BaselineStore` keeps one profile per
agent (the behaviour key: SPIFFE ID, credential id or client id) with LRU eviction, and
:meth:`BaselineStore.as_input` shapes a :class:`Drift` for ``input.behavior``:
``drift = {score, features}`` and ``baseline_age`` (seconds). Time is always passed in
(``now``, seconds since the epoch, UTC); nothing here reads a clock, so tests are exact.
Nothing raises for any input; an unknown agent is simply ``learning``.

What is learned. A sliding window (``window_s``, default 1 h, in ``buckets`` slots: a slot
leaves the window as a whole) counts the calls, their routes, MCP tools and methods, and how
many were refused by the gateway (``denied``) or failed (status >= 400, not denied). The last
``RECENT`` (8) calls are kept apart as the *short term*; the *baseline* is the window minus
them, so a burst is compared with what came before it rather than with itself. Active hours
of day (UTC) are counted over the profile's whole life (24 counters), since a 1 h window
cannot know them.

The score. Each feature gives a bounded surprise ``s`` in [0, 1] (below 0.01 it is noise and
counts as 0), weighted by ``w``
(:data:`WEIGHTS`); its contribution is ``c = w * s`` and the score combines them like
independent alarms (noisy-OR)::

    score = 1 - prod(1 - c_i)

so one strong feature can raise the score to its weight at most, two together go higher, and
the score never leaves [0, 1]. The features of the new call against the baseline, each as
``{name, value, baseline, contribution}``:

* ``route:<name>``, ``tool:<name>``, ``method:<M>`` (novelty): with ``N`` baseline calls,
  ``c`` of them with this key and ``K`` distinct keys among them, the key's count against an
  even split, both Laplace-smoothed (+1): ``s = max(0, 1 - (c + 1) / (N / K + 1))``: 0 for a
  key used at least an even share, ``N / (N + K)`` (close to 1) for a key never seen.
  ``value`` is the key's baseline share ``c / N``, ``baseline`` the even share ``1 / K``. A
  call without a tool (plain HTTP, ``tools/list``) has no tool feature.
* ``rate``: calls per second over the short term (``RECENT / (now - oldest recent call)``)
  against the baseline's (its calls over the time it covers); ``s = log2(ratio) / 4``
  clipped to [0, 1] (2x = 0.25, 10x = 0.83, 16x and above = 1); a slower agent is not
  surprising.
* ``deny_ratio``, ``error_ratio``: the short term's against the baseline's;
  ``s = max(0, (recent - base) / (1 - base))``: the share of the remaining headroom used up.
* ``hour:<HH>``: ``s = 1`` when the agent was never active in this UTC hour, scaled by
  ``min(1, age / 1 day)`` (a profile a few hours old cannot know which hours are normal).

``features`` lists the top three by contribution (ties by name), so an operator reads e.g.
``tool:transfer_funds`` (value 0, baseline 0.33, contribution 0.7) and ``rate`` (value 5,
baseline 0.5 calls/s, contribution 0.58): score ``1 - 0.3 * 0.42 = 0.87``. While
``learning`` (fewer than ``min_calls`` calls in the profile's life, or a profile younger than
``min_age_s``) the score is 0 and there are no features. A known agent whose window holds
fewer than ``min_calls`` calls (back after a quiet spell) is judged by the hour of day only,
until the window fills again.

# SECURITY: memory is bounded. Per agent at most ``max_keys`` routes and tools (default 64
each) and ``MAX_METHODS`` methods are tracked; the rest count as ``other`` (an unseen key past
the cap is judged by ``other``'s share: more lenient, never stricter). Names longer than
``MAX_NAME`` characters are cut. The store holds at most ``max_agents`` profiles; evicting one
forgets it, which only makes the gateway more lenient (the agent is ``learning`` again, score
0): a flood of agent identities can never lock anyone out. Baselines live in each worker's
memory (not shared through Redis): a score reflects the calls that worker saw.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from functools import partial
from typing import Any, NamedTuple

RECENT = 8  # calls in the short term (rate, deny and error ratios; excluded from the baseline)
MAX_METHODS = 16
MAX_NAME = 128
OTHER = "other"
# Weight per feature kind: the most one feature can contribute to the score on its own.
WEIGHTS: dict[str, float] = {
    "route": 0.7,
    "tool": 0.7,
    "method": 0.4,
    "rate": 0.7,
    "deny_ratio": 0.7,
    "error_ratio": 0.5,
    "hour": 0.5,
}
_RATE_LOG2_CAP = 4.0  # a 16x rate is the full surprise
_DAY_S = 86400.0
_MIN_SPAN_S = 1e-3  # a burst faster than this is measured as this
_NOISE = 0.01  # a surprise below this is noise: no contribution, not listed
_ZERO: tuple[float, str, float, float] = (0.0, "", 0.0, 0.0)


class Feature(NamedTuple):
    name: str
    value: float
    baseline: float
    contribution: float

    def as_input(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "baseline": round(self.baseline, 4),
            "contribution": round(self.contribution, 4),
        }


class Drift(NamedTuple):
    score: float
    features: tuple[Feature, ...]
    baseline_age_s: float
    learning: bool


class _Slot:
    """The counts of one bucket of the window."""

    __slots__ = ("denied", "errors", "index", "methods", "n", "routes", "tools")

    def __init__(self, index: int) -> None:
        self.index = index
        self.n = 0
        self.denied = 0
        self.errors = 0
        self.routes: dict[str, int] = {}
        self.tools: dict[str, int] = {}
        self.methods: dict[str, int] = {}


class _Recent:
    __slots__ = ("denied", "error", "method", "route", "t", "tool")

    def __init__(
        self, t: float, route: str, tool: str | None, method: str, denied: bool, error: bool
    ) -> None:
        self.t = t
        self.route = route
        self.tool = tool
        self.method = method
        self.denied = denied
        self.error = error


def _key(counts: dict[str, int], name: str, cap: int) -> str:
    """The key ``name`` is counted under: itself, or ``other`` once ``cap`` keys are tracked."""
    name = name[:MAX_NAME]
    if name in counts or len(counts) < cap - 1:
        return name
    return OTHER  # the last of the ``cap`` places


def _subtract(totals: dict[str, int], slot: dict[str, int]) -> None:
    for key, n in slot.items():
        left = totals[key] - n
        if left:
            totals[key] = left
        else:
            del totals[key]


# A feature before it is shaped: (-contribution, name, value, baseline), so that the
# natural order of the tuples is the order of ``features`` (contribution down, then name).
_Candidate = tuple[float, str, float, float]


def _novelty(
    kind: str, name: str, counts: dict[str, int], cap: int, short: dict[str, int], n: int
) -> _Candidate:
    """Novelty of ``name`` among the baseline calls (the window minus the short term)."""
    key = _key(counts, name, cap)
    c = counts.get(key, 0) - short.get(key, 0)
    c = c if c > 0 else 0
    # Keys seen only in the short term are not part of the baseline.
    k = len(counts)
    for x, m in short.items():
        if counts.get(x, 0) <= m:
            k -= 1
    s = 1.0 - k * (c + 1) / (n + k)
    if s < _NOISE:
        return _ZERO
    return (
        -WEIGHTS[kind] * s,
        f"{kind}:{name[:MAX_NAME]}",
        c / n,
        1.0 / k if k else 0.0,
    )


def _ratio(kind: str, recent: float, base: float) -> _Candidate:
    s = (recent - base) / (1.0 - base) if base < 1.0 else 0.0
    return (-WEIGHTS[kind] * min(s, 1.0) if s >= _NOISE else 0.0, kind, recent, base)


def _shape(candidates: list[_Candidate], age: float) -> Drift:
    """The noisy-OR score and the top three features by contribution (ties by name)."""
    keep = 1.0
    moved = []
    for c in candidates:
        if c[0] < 0.0:
            keep *= 1.0 + c[0]
            moved.append(c)
    moved.sort()
    features = tuple(Feature(name, value, base, -c) for c, name, value, base in moved[:3])
    return Drift(min(1.0, max(0.0, 1.0 - keep)), features, age, False)


class _Short:
    """The short term: the last :data:`RECENT` calls, with their counts kept up to date."""

    __slots__ = ("calls", "denied", "errors", "methods", "routes", "tools")

    def __init__(self) -> None:
        self.calls: deque[_Recent] = deque()
        self.denied = 0
        self.errors = 0
        self.routes: dict[str, int] = {}
        self.tools: dict[str, int] = {}
        self.methods: dict[str, int] = {}

    def add(self, call: _Recent) -> None:
        calls = self.calls
        if len(calls) == RECENT:
            self._count(calls.popleft(), -1)
        calls.append(call)
        self._count(call, 1)

    def _count(self, call: _Recent, by: int) -> None:
        if call.denied:
            self.denied += by
        if call.error:
            self.errors += by
        _bump(self.routes, call.route, by)
        _bump(self.methods, call.method, by)
        if call.tool is not None:
            _bump(self.tools, call.tool, by)

    def since(self, t: float) -> _Short:
        """Itself, or a copy without the calls older than ``t`` (they left the window)."""
        if not self.calls or self.calls[0].t >= t:
            return self
        kept = _Short()
        for call in self.calls:
            if call.t >= t:
                kept.add(call)
        return kept


def _bump(counts: dict[str, int], key: str, by: int) -> None:
    left = counts.get(key, 0) + by
    if left:
        counts[key] = left
    else:
        del counts[key]


class Profile:
    """One agent's baseline. See the module docstring for what is learned and the score."""

    __slots__ = (
        "_active_hours",
        "_denied",
        "_errors",
        "_hours",
        "_lifetime",
        "_methods",
        "_n",
        "_routes",
        "_short",
        "_slots",
        "_tools",
        "_width",
        "buckets",
        "first_seen",
        "max_keys",
        "min_age_s",
        "min_calls",
        "window_s",
    )

    def __init__(
        self,
        now: float,
        *,
        window_s: float = 3600.0,
        buckets: int = 12,
        min_calls: int = 50,
        min_age_s: float = 300.0,
        max_keys: int = 64,
    ) -> None:
        self.window_s = window_s
        self.buckets = buckets
        self.min_calls = min_calls
        self.min_age_s = min_age_s
        self.max_keys = max_keys
        self.first_seen = now
        self._width = window_s / buckets
        self._slots: deque[_Slot] = deque()
        self._short = _Short()
        self._n = 0
        self._denied = 0
        self._errors = 0
        self._routes: dict[str, int] = {}
        self._tools: dict[str, int] = {}
        self._methods: dict[str, int] = {}
        self._hours = [0] * 24
        self._lifetime = 0
        self._active_hours = 0

    def _expire(self, index: int) -> None:
        """Drop the slots that left the window ending at slot ``index``."""
        slots = self._slots
        while slots and slots[0].index <= index - self.buckets:
            old = slots.popleft()
            self._n -= old.n
            self._denied -= old.denied
            self._errors -= old.errors
            _subtract(self._routes, old.routes)
            _subtract(self._tools, old.tools)
            _subtract(self._methods, old.methods)

    def observe(
        self, now: float, route: str, tool: str | None, method: str, status: int, denied: bool
    ) -> None:
        """Record a finished call. A clock that steps back counts into the newest slot."""
        index = int(now // self._width)
        self._expire(index)
        slots = self._slots
        if not slots or slots[-1].index < index:
            slots.append(_Slot(index))
        slot = slots[-1]
        error = status >= 400 and not denied
        r = _key(self._routes, route, self.max_keys)
        m = _key(self._methods, method, MAX_METHODS)
        t = _key(self._tools, tool, self.max_keys) if tool is not None else None
        slot.n += 1
        self._n += 1
        if denied:
            slot.denied += 1
            self._denied += 1
        if error:
            slot.errors += 1
            self._errors += 1
        slot.routes[r] = slot.routes.get(r, 0) + 1
        self._routes[r] = self._routes.get(r, 0) + 1
        slot.methods[m] = slot.methods.get(m, 0) + 1
        self._methods[m] = self._methods.get(m, 0) + 1
        if t is not None:
            slot.tools[t] = slot.tools.get(t, 0) + 1
            self._tools[t] = self._tools.get(t, 0) + 1
        hour = int(now // 3600) % 24
        if not self._hours[hour]:
            self._active_hours += 1
        self._hours[hour] += 1
        self._lifetime += 1
        self._short.add(_Recent(now, r, t, m, denied, error))

    def tracked(self) -> dict[str, int]:
        """How many distinct keys the window holds per kind (each at most its cap)."""
        return {
            "routes": len(self._routes),
            "tools": len(self._tools),
            "methods": len(self._methods),
        }

    def age(self, now: float) -> float:
        return max(0.0, now - self.first_seen)

    def drift(self, now: float, route: str, tool: str | None, method: str) -> Drift:
        """Score a new call (not yet observed) against the baseline."""
        age = now - self.first_seen if now > self.first_seen else 0.0
        if age < self.min_age_s or self._lifetime < self.min_calls:
            return Drift(0.0, (), age, True)
        index = int(now // self._width)
        if self._slots and self._slots[0].index <= index - self.buckets:
            self._expire(index)
        # The short term still counted in the window (a slot leaves it as a whole).
        short = self._short.since((index - self.buckets + 1) * self._width)
        recent = len(short.calls)
        n = self._n - recent
        hour = self._hour(now, age)
        if self._n < self.min_calls or n <= 0:
            # A known agent back after a quiet spell: only the hour of day can be judged.
            return _shape([hour], age)
        cap = self.max_keys
        candidates = [
            _novelty("route", route, self._routes, cap, short.routes, n),
            _novelty("method", method, self._methods, MAX_METHODS, short.methods, n),
            self._rate(now, short, n),
            _ratio("deny_ratio", short.denied / recent if recent else 0.0,
                   (self._denied - short.denied) / n),
            _ratio("error_ratio", short.errors / recent if recent else 0.0,
                   (self._errors - short.errors) / n),
            hour,
        ]  # fmt: skip
        if tool is not None:
            candidates.append(_novelty("tool", tool, self._tools, cap, short.tools, n))
        return _shape(candidates, age)

    def _rate(self, now: float, short: _Short, n: int) -> _Candidate:
        if not short.calls:
            return (0.0, "rate", 0.0, 0.0)
        oldest = short.calls[0].t
        base_span = oldest - max(self.first_seen, self._slots[0].index * self._width)
        if base_span <= 0.0:
            return (0.0, "rate", 0.0, 0.0)
        rate = len(short.calls) / max(now - oldest, _MIN_SPAN_S)
        base = n / base_span
        s = math.log2(rate / base) / _RATE_LOG2_CAP
        return (-WEIGHTS["rate"] * min(s, 1.0) if s >= _NOISE else 0.0, "rate", rate, base)

    def _hour(self, now: float, age: float) -> _Candidate:
        hour = int(now // 3600) % 24
        seen = self._hours[hour]
        s = 0.0 if seen or age < _NOISE * _DAY_S else min(1.0, age / _DAY_S)
        share = seen / self._lifetime if self._lifetime else 0.0
        even = 1.0 / self._active_hours if self._active_hours else 0.0
        return (-WEIGHTS["hour"] * s, f"hour:{hour:02d}", share, even)


class BaselineStore:
    """Profiles of up to ``max_agents`` agents, least recently used evicted first."""

    def __init__(
        self,
        *,
        window_s: float = 3600.0,
        buckets: int = 12,
        min_calls: int = 50,
        min_age_s: float = 300.0,
        max_agents: int = 10_000,
        max_keys: int = 64,
    ) -> None:
        self.max_agents = max_agents
        # Every new profile is built with these (Profile's own keywords, passed through).
        self._new_profile = partial(
            Profile,
            window_s=window_s,
            buckets=buckets,
            min_calls=min_calls,
            min_age_s=min_age_s,
            max_keys=max_keys,
        )
        self._profiles: OrderedDict[str, Profile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, agent: object) -> bool:
        return agent in self._profiles

    def observe(
        self,
        agent: str,
        now: float,
        route: str,
        tool: str | None,
        method: str,
        status: int,
        denied: bool,
    ) -> None:
        profiles = self._profiles
        profile = profiles.get(agent)
        if profile is None:
            profile = self._new_profile(now)
            profiles[agent] = profile
            # SECURITY: bounded; evicting forgets a baseline, which only makes it lenient.
            while len(profiles) > self.max_agents:
                profiles.popitem(last=False)
        else:
            profiles.move_to_end(agent)
        profile.observe(now, route, tool, method, status, denied)

    def drift(self, agent: str, now: float, route: str, tool: str | None, method: str) -> Drift:
        """An agent without a profile is ``learning`` (no profile is created here)."""
        profile = self._profiles.get(agent)
        if profile is None:
            return Drift(0.0, (), 0.0, True)
        self._profiles.move_to_end(agent)
        return profile.drift(now, route, tool, method)

    @staticmethod
    def as_input(drift: Drift) -> dict[str, Any]:
        """The additions to ``input.behavior``: ``drift`` and ``baseline_age``."""
        return {
            "drift": {
                "score": round(drift.score, 4),
                "features": [f.as_input() for f in drift.features],
            },
            "baseline_age": int(drift.baseline_age_s),
        }
