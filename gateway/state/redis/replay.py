"""The replay cache (:class:`gateway.state.ReplayCache`) in Redis.

Key ``<prefix>rp:<sha256(key)>`` holds a marker set with ``SET key 1 NX PX ttl``: Redis
runs it atomically, so of any number of concurrent callers on any number of processes
exactly one gets ``OK`` (first use) and the others get nil (a replay, RFC 9449 §11.1 for
DPoP proofs, RFC 7519 §4.1.7 for ``jti``). Any Redis failure raises
:class:`gateway.state.StateUnavailable` (``gateway.state.redis.link``): never "not seen".
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis

from gateway.state.redis.link import RedisLink, digest


class RedisReplayCache:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self._prefix = prefix + "rp:"

    async def first_use(self, key: str, ttl_s: float) -> bool:
        name = self._prefix + digest(key)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))

        async def call(r: Redis) -> Any:
            return await r.set(name, b"1", nx=True, px=ttl_ms)

        # SECURITY: SET NX is atomic in Redis: exactly one caller sees the first use.
        return bool(await self._link.run("replay", call))
