"""Behaviour feedback: per-agent sliding windows that the policy sees as ``input.behavior``.

Contract
--------
A :class:`BehaviorStore` keeps, per agent key, what happened in the last
``window_s`` seconds:

* ``snapshot(agent)`` returns ``input.behavior``::

      {"window_s": 60.0, "requests": 42, "errors": 3, "denies": 12,
       "distinct_routes": 2, "deny_rate": 0.2857, "error_rate": 0.0714}

  ``requests`` counts every recorded request; ``denies`` those refused by policy
  (``denied=True``); ``errors`` the other responses with status >= 400 (upstream
  4xx/5xx, the gateway's 429/413/5xx); rates are ``count / requests`` rounded to 4
  places (0.0 with no requests). An unknown agent has all counts 0.
* ``record(agent, route=..., status=..., denied=...)`` adds one finished request.

The pipeline asks for the snapshot *before* deciding (the current request is not
in it) and records the request once its status is known. The agent key comes from
:func:`agent_key`: only verified identities, never a caller-supplied value.

:class:`MemoryBehaviorStore` is the single-process backend. Windows are ring
buffers of ``buckets`` slots of ``window_s / buckets`` seconds each, so memory per
agent is fixed whatever the request rate (about 1 KB with its key), and an event leaves the
window between ``window_s - window_s / buckets`` and ``window_s`` seconds after it
happened: an agent that stays quiet for ``window_s`` starts from zero. At
most ``max_agents`` agents are tracked; the least recently seen is evicted (its
history is forgotten, so eviction can only make the policy more lenient for that
agent, never lock anyone out). A Redis backend must keep the same semantics.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from gateway.context import Identity, Peer
from gateway.settings.telemetry import BehaviorSettings

__all__ = ["BehaviorStore", "MemoryBehaviorStore", "agent_key", "empty_snapshot"]


class BehaviorStore(Protocol):
    async def snapshot(self, agent: str) -> dict[str, Any]:
        """``input.behavior`` for ``agent`` (module docstring)."""
        ...

    async def record(self, agent: str, *, route: str, status: int, denied: bool) -> None:
        """Count one finished request of ``agent`` on ``route``."""
        ...


def agent_key(identity: Identity | None, peer: Peer | None) -> str | None:
    """The verified identity whose behaviour is tracked, or None (nothing to key on).

    In order: a principal that *is* an agent; the current actor of a delegation
    chain (the agent acting for a user); the OAuth client of an agent caller; the
    SPIFFE ID of the mTLS peer.
    """
    if identity is not None:
        principal = identity.principal
        if principal.subject_type == "agent":
            return principal.subject
        if principal.actors:
            return principal.actors[0].sub
        if identity.caller == "agent" and principal.client_id:
            return principal.client_id
    if peer is not None and peer.spiffe_id:
        return peer.spiffe_id
    return None


def empty_snapshot(window_s: float) -> dict[str, Any]:
    return _figures(window_s, 0, 0, 0, 0)


def _figures(
    window_s: float, requests: int, errors: int, denies: int, routes: int
) -> dict[str, Any]:
    return {
        "window_s": window_s,
        "requests": requests,
        "errors": errors,
        "denies": denies,
        "distinct_routes": routes,
        "deny_rate": round(denies / requests, 4) if requests else 0.0,
        "error_rate": round(errors / requests, 4) if requests else 0.0,
    }


_EPOCH, _REQUESTS, _ERRORS, _DENIES = range(4)


class _Window:
    """One agent's ring: slot i is ``slots[4i : 4i+4]`` = (epoch, requests, errors, denies).

    A slot holds epoch e's counts while its epoch field equals e. Routes are kept as
    route -> last epoch seen, which bounds them by the route table.
    """

    __slots__ = ("routes", "slots")

    def __init__(self, buckets: int) -> None:
        self.slots = array("q", (-1, 0, 0, 0) * buckets)
        self.routes: dict[str, int] = {}


class MemoryBehaviorStore:
    """In-process :class:`BehaviorStore` (see the module docstring)."""

    def __init__(
        self,
        *,
        window_s: float,
        max_agents: int,
        buckets: int = 12,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or max_agents < 1 or buckets < 1:
            raise ValueError("window_s > 0, max_agents >= 1 and buckets >= 1 are required")
        self.window_s = float(window_s)
        self._buckets = buckets
        self._width = self.window_s / buckets
        self._max = max_agents
        self._clock = clock
        self._agents: OrderedDict[str, _Window] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: BehaviorSettings) -> MemoryBehaviorStore:
        return cls(window_s=settings.window_s, max_agents=settings.max_agents)

    def __len__(self) -> int:
        return len(self._agents)

    def _epoch(self) -> int:
        return int(self._clock() // self._width)

    async def snapshot(self, agent: str) -> dict[str, Any]:
        window = self._agents.get(agent)
        if window is None:
            return empty_snapshot(self.window_s)
        self._agents.move_to_end(agent)
        # Slots from the last `buckets` epochs, the current one included, are live.
        oldest = self._epoch() - self._buckets + 1
        requests = errors = denies = 0
        slots = window.slots
        for base in range(0, len(slots), 4):
            if slots[base + _EPOCH] >= oldest:
                requests += slots[base + _REQUESTS]
                errors += slots[base + _ERRORS]
                denies += slots[base + _DENIES]
        routes = sum(1 for seen in window.routes.values() if seen >= oldest)
        return _figures(self.window_s, requests, errors, denies, routes)

    async def record(self, agent: str, *, route: str, status: int, denied: bool) -> None:
        window = self._agents.get(agent)
        if window is None:
            window = self._agents[agent] = _Window(self._buckets)
            if len(self._agents) > self._max:
                self._agents.popitem(last=False)
        else:
            self._agents.move_to_end(agent)
        epoch = self._epoch()
        base = 4 * (epoch % self._buckets)
        slots = window.slots
        if slots[base + _EPOCH] != epoch:  # the slot holds an expired epoch: reuse it
            slots[base : base + 4] = array("q", (epoch, 0, 0, 0))
        slots[base + _REQUESTS] += 1
        if denied:
            slots[base + _DENIES] += 1
        elif status >= 400:
            slots[base + _ERRORS] += 1
        window.routes[route] = epoch
