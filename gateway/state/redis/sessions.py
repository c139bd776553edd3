"""Session bindings (:class:`gateway.state.SessionBindings`) in Redis.

Key ``<prefix>ss:<sha256(key)>`` holds ``sha256(owner)`` (hex) with a TTL. ``claim`` is one
Lua script (SET NX, or refresh the TTL when the caller already owns it), so two subjects
racing for a fresh session id get one winner on every process. Any Redis failure raises
:class:`gateway.state.StateUnavailable`: never "unknown session, go ahead".
"""

from __future__ import annotations

import hmac
import math
from typing import Any

from redis.asyncio import Redis

from gateway.state.redis.link import RedisLink, digest

_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisSessionBindings:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self._prefix = prefix + "ss:"

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        name, who = self._prefix + digest(key), digest(owner)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))

        async def call(r: Redis) -> Any:
            return await r.eval(_CLAIM, 1, name, who, ttl_ms)

        return int(await self._link.run("session claim", call)) == 1

    async def owned_by(self, key: str, owner: str) -> bool | None:
        name = self._prefix + digest(key)

        async def call(r: Redis) -> Any:
            return await r.get(name)

        held = await self._link.run("session lookup", call)
        if held is None:
            return None
        return hmac.compare_digest(bytes(held), digest(owner).encode())

    async def release(self, key: str, owner: str) -> None:
        name = self._prefix + digest(key)

        async def call(r: Redis) -> Any:
            return await r.eval(_RELEASE, 1, name, digest(owner))

        await self._link.run("session release", call)
