"""Shared state in Redis (``state.backend: redis``), for several workers and nodes.

One module per capability, mirroring ``gateway.state`` (whose protocols they implement),
over one shared client:

    link.py        RedisLink: pool, ``state.timeout_s`` budget, error -> StateUnavailable,
                   Lua scripts via redis-py ``register_script()`` (EVALSHA, reload on NOSCRIPT)
    replay.py      RedisReplayCache      ``<prefix>rp:<sha256(key)>``, SET NX PX
    ratelimit.py   RedisRateLimiter      ``<prefix>rl:<sha256(key)>``, token bucket in Lua
    revocation.py  RedisRevocationStore  ``<prefix>{rev}:*``, polled local replica
    behavior.py    RedisBehaviorStore    ``<prefix>bh:<sha256(agent)>:*``, sliding windows

Every operation answers or raises :class:`gateway.state.StateUnavailable` (503, fail
closed); identifiers are hashed, never stored in key names; the Redis URL (which may
carry a password) is only ever handed to redis-py. :class:`RedisState` bundles the
three stores of :class:`gateway.state.State`; ``gateway.app`` builds the behaviour
store on the same link.
"""

from __future__ import annotations

from gateway.settings.state import StateSettings
from gateway.state import State
from gateway.state.redis.behavior import RedisBehaviorStore
from gateway.state.redis.link import DEFAULT_MAX_CONNECTIONS, RedisLink
from gateway.state.redis.ratelimit import RedisRateLimiter
from gateway.state.redis.replay import RedisReplayCache
from gateway.state.redis.revocation import DEFAULT_MAX_STALE_S, RedisRevocationStore
from gateway.state.redis.sessions import RedisSessionBindings
from gateway.state.revocation import DEFAULT_MAX_ENTRIES

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_STALE_S",
    "RedisBehaviorStore",
    "RedisLink",
    "RedisRateLimiter",
    "RedisReplayCache",
    "RedisRevocationStore",
    "RedisState",
]


class RedisState(State):
    backend = "redis"

    def __init__(
        self,
        settings: StateSettings,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_stale_s: float = DEFAULT_MAX_STALE_S,
        revocation_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if settings.redis_url is None:
            raise ValueError("the redis backend needs state.redis_url")
        self.link = RedisLink(
            settings.redis_url, timeout_s=settings.timeout_s, max_connections=max_connections
        )
        prefix = settings.key_prefix
        self.store = RedisRevocationStore(
            self.link,
            prefix,
            poll_s=settings.revocation_poll_s,
            max_stale_s=max_stale_s,
            max_entries=revocation_entries,
        )
        super().__init__(
            RedisReplayCache(self.link, prefix),
            self.store,
            RedisRateLimiter(self.link, prefix),
            RedisSessionBindings(self.link, prefix),
        )

    async def start(self) -> None:
        self.link.open()
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()
        await self.link.close()

    def ready(self) -> bool:
        return self.store.fresh()
