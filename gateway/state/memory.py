"""In-process state for a single worker (the default ``state.backend: memory``).

The replay cache is a dict of key -> expiry with a bounded size. Being
single-threaded on the event loop, check-and-set needs no lock: there is no
``await`` between the lookup and the insert, so it is atomic for every
coroutine of this process. When full even after dropping expired entries it
raises :class:`StateUnavailable` (fail closed) rather than forget a live entry.

Nothing here is shared between processes: ``agentgate run --workers N`` (N > 1)
refuses this backend (``gateway.net.workers``).
"""

from __future__ import annotations

import time

from gateway.state import State, StateUnavailable
from gateway.state.ratelimit import DEFAULT_MAX_BUCKETS, MemoryRateLimiter
from gateway.state.revocation import DEFAULT_MAX_ENTRIES, MemoryRevocationStore
from gateway.state.sessions import MemorySessionBindings


class MemoryReplayCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._expiry: dict[str, float] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._expiry)

    async def first_use(self, key: str, ttl_s: float) -> bool:
        now = time.monotonic()
        seen = self._expiry.get(key)
        if seen is not None and seen > now:
            return False
        if len(self._expiry) >= self._max or now >= self._next_sweep:
            self._sweep(now)
        if len(self._expiry) >= self._max:
            # SECURITY: forgetting a live jti would re-open it for replay; refuse instead.
            raise StateUnavailable("replay cache full")
        self._expiry[key] = now + ttl_s
        return True

    def _sweep(self, now: float) -> None:
        self._expiry = {k: exp for k, exp in self._expiry.items() if exp > now}
        self._next_sweep = now + 1.0


class MemoryState(State):
    backend = "memory"

    def __init__(
        self,
        *,
        replay_entries: int = 100_000,
        revocation_entries: int = DEFAULT_MAX_ENTRIES,
        buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        super().__init__(
            MemoryReplayCache(replay_entries),
            MemoryRevocationStore(revocation_entries),
            MemoryRateLimiter(buckets),
            MemorySessionBindings(replay_entries),
        )
