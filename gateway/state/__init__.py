"""Shared state behind small interfaces: replay caches now; revocation and rates later.

Every operation either answers or raises :class:`StateUnavailable`; callers
turn that into 503 (fail closed), never into "not seen before".
"""

from __future__ import annotations

from typing import Protocol

from gateway.errors import ServiceUnavailable


class StateUnavailable(ServiceUnavailable):
    reason = "state_unavailable"


class ReplayCache(Protocol):
    async def first_use(self, key: str, ttl_s: float) -> bool:
        """Record ``key`` for ``ttl_s`` seconds; True only for its first use in that window.

        Atomic: of two concurrent calls with the same key exactly one gets True.
        """
        ...
