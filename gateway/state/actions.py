"""The action log of continuous authentication (issue 18): per-agent seqs, actions, heartbeats.

For every identified agent (the behaviour key, :func:`gateway.observability.behavior.agent_key`)
the log holds:

* a sequence counter: :meth:`ActionLog.reserve` hands out 1, 2, 3... atomically across every
  worker and node sharing the backend, *before* the request is forwarded (the response
  carries the seq as ``Agentgate-Action: seq=<n>``);
* the recorded actions: :meth:`ActionLog.record` stores the canonical action
  (:func:`gateway.agents.heartbeat.canonical_action`) under a reserved seq, once; a seq
  that is not pending (never reserved, recorded already, or dropped by the bound) is
  ignored, so a record can never rewrite the history a heartbeat is compared with;
* the pending seqs (reserved, not recorded yet: requests in flight), which
  :meth:`ActionLog.window` counts as ``missing``;
* the last heartbeat: when, its verdict, and its window's ``to`` (where the agent's next
  window must start: the agent moves on after ``healthy`` and after ``mismatch``).

Bounds: at most ``max_actions`` recorded actions (and as many pending seqs) per agent, the
oldest dropped first; every agent's entries expire ``ttl_s`` after its last write
(reserve, record, beat). The memory log also holds at most ``max_agents`` agents: a new
agent beyond that (after dropping expired ones) raises :class:`gateway.state.StateUnavailable`
(fail closed: the gateway refuses a request it could not account for, rather than evict
another agent's history).

:class:`MemoryActionLog` lives in one process; :class:`gateway.state.redis.actions.RedisActionLog`
is shared. Every operation answers or raises :class:`gateway.state.StateUnavailable`.
The Redis log hashes agents (SHA-256) into its key names; the memory log keys its dict by
the agent string itself (it never leaves the process, and hashing would cost a SHA-256 per
request on the hot path).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.state import StateUnavailable

DEFAULT_MAX_ACTIONS = 4096
DEFAULT_MAX_AGENTS = 100_000
DEFAULT_TTL_S = 86_400.0


class ActionLog(Protocol):
    async def reserve(self, agent: str) -> int:
        """The agent's next sequence number (1-based), atomic across processes."""
        ...

    async def record(self, agent: str, seq: int, action: bytes) -> None:
        """Store ``action`` under the pending ``seq``; ignored when ``seq`` is not pending."""
        ...

    async def window(
        self, agent: str, first: int, last: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """``(seq, action)`` with ``first < seq <= last`` in seq order, and how many seqs of
        that range are reserved but not recorded (in flight)."""
        ...

    async def head(self, agent: str) -> int:
        """The highest seq reserved for ``agent`` so far (0 when none)."""
        ...

    async def beat(self, agent: str, at: float, verdict: str, last: int) -> None:
        """Store a heartbeat's time, verdict and ``last`` (its window's ``to``)."""
        ...

    async def last_beat(self, agent: str) -> tuple[float, str, int] | None:
        """``(at, verdict, window to)`` of the last heartbeat, or None: never beat."""
        ...


class _Agent:
    __slots__ = ("beat", "expires", "pending", "records", "seq")

    def __init__(self) -> None:
        self.seq = 0
        # OrderedDicts: dropping the oldest is O(1) (``next(iter(dict))`` on a plain dict
        # slows down with every deletion at its front, up to the next resize).
        self.records: OrderedDict[int, bytes] = OrderedDict()  # oldest first
        self.pending: OrderedDict[int, None] = OrderedDict()  # in seq order
        self.beat: tuple[float, str, int] | None = None
        self.expires = 0.0


class MemoryActionLog:
    """The :class:`ActionLog` of one process (``state.backend: memory``)."""

    def __init__(
        self,
        *,
        max_actions: int = DEFAULT_MAX_ACTIONS,
        max_agents: int = DEFAULT_MAX_AGENTS,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_actions = max_actions
        self._max_agents = max_agents
        self._ttl_s = ttl_s
        self._clock = clock
        self._agents: dict[str, _Agent] = {}

    def _live(self, agent: str) -> _Agent | None:
        entry = self._agents.get(agent)
        if entry is not None and entry.expires <= self._clock():
            del self._agents[agent]
            return None
        return entry

    def _touch(self, agent: str) -> _Agent:
        """The agent's live entry, created if needed, with its expiry pushed back."""
        now = self._clock()
        entry = self._agents.get(agent)
        if entry is None or entry.expires <= now:
            if entry is None and len(self._agents) >= self._max_agents:
                self._agents = {k: v for k, v in self._agents.items() if v.expires > now}
                if len(self._agents) >= self._max_agents:
                    # SECURITY: fail closed rather than evict another agent's history.
                    raise StateUnavailable("action log full")
            entry = self._agents[agent] = _Agent()
        entry.expires = now + self._ttl_s
        return entry

    async def reserve(self, agent: str) -> int:
        entry = self._touch(agent)
        entry.seq += 1
        pending = entry.pending
        pending[entry.seq] = None
        if len(pending) > self._max_actions:
            pending.popitem(last=False)
        return entry.seq

    async def record(self, agent: str, seq: int, action: bytes) -> None:
        entry = self._touch(agent)
        if seq not in entry.pending:
            return  # SECURITY: once per reserved seq; history is never rewritten
        del entry.pending[seq]
        records = entry.records
        records[seq] = action
        if len(records) > self._max_actions:
            records.popitem(last=False)

    async def window(
        self, agent: str, first: int, last: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        entry = self._live(agent)
        if entry is None or last <= first:
            return [], 0
        records = entry.records
        if last - first <= len(records):
            found = [
                (s, a) for s in range(first + 1, last + 1) if (a := records.get(s)) is not None
            ]
        else:
            found = sorted((s, a) for s, a in records.items() if first < s <= last)
        missing = sum(1 for s in entry.pending if first < s <= last)
        return found, missing

    async def head(self, agent: str) -> int:
        entry = self._live(agent)
        return 0 if entry is None else entry.seq

    async def beat(self, agent: str, at: float, verdict: str, last: int) -> None:
        self._touch(agent).beat = (at, verdict, last)

    async def last_beat(self, agent: str) -> tuple[float, str, int] | None:
        entry = self._live(agent)
        return None if entry is None else entry.beat
