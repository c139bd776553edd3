"""The shared behaviour store (``input.behavior``) in Redis, for ``state.backend: redis``.

Per-agent windows shared by every worker and node, with the memory store's semantics
(``gateway.observability.behavior``: its docstring is the contract): ``buckets`` slots of
``window_s / buckets`` seconds on Redis's own clock (``TIME``); counts in a hash per slot
(``<prefix>bh:<sha256(agent)>:n:<slot>``), routes in a set per slot (``...:r:<slot>``),
both expiring one slot after they leave the window. Recording and reading are one Lua
script each, so a snapshot is consistent. Any Redis failure, or a reply of the wrong
shape, raises :class:`gateway.state.StateUnavailable` (fail closed).
"""

from __future__ import annotations

from typing import Any

from gateway.state import StateUnavailable
from gateway.state.redis.link import RedisLink, digest

# KEYS: counts base, routes base. ARGV: slot width s, buckets, route, error 0|1, denied 0|1.
BEHAVIOR_RECORD = """
local t = redis.call('TIME')
local width = tonumber(ARGV[1])
local slot = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) / width)
local h = KEYS[1] .. ':' .. slot
local s = KEYS[2] .. ':' .. slot
redis.call('HINCRBY', h, 'r', 1)
if ARGV[4] == '1' then redis.call('HINCRBY', h, 'e', 1) end
if ARGV[5] == '1' then redis.call('HINCRBY', h, 'd', 1) end
redis.call('SADD', s, ARGV[3])
local ttl = math.ceil(width * (tonumber(ARGV[2]) + 1))
redis.call('EXPIRE', h, ttl)
redis.call('EXPIRE', s, ttl)
return 1
"""

# KEYS: counts base, routes base. ARGV: slot width s, buckets.
# Returns {requests, errors, denies, distinct routes}.
BEHAVIOR_SNAPSHOT = """
local t = redis.call('TIME')
local width = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local slot = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) / width)
local r, e, d = 0, 0, 0
local sets = {}
for i = slot - n + 1, slot do
  local v = redis.call('HMGET', KEYS[1] .. ':' .. i, 'r', 'e', 'd')
  r = r + (tonumber(v[1]) or 0)
  e = e + (tonumber(v[2]) or 0)
  d = d + (tonumber(v[3]) or 0)
  sets[#sets + 1] = KEYS[2] .. ':' .. i
end
return {r, e, d, #redis.call('SUNION', unpack(sets))}
"""


class RedisBehaviorStore:
    """The shared ``BehaviorStore`` (``input.behavior``) for ``state.backend: redis``."""

    def __init__(self, link: RedisLink, prefix: str, *, window_s: float, buckets: int = 12):
        self._link = link
        self._prefix = prefix + "bh:"
        self.window_s = window_s
        self._buckets = buckets
        self._width = window_s / buckets

    def _keys(self, agent: str) -> list[str]:
        hashed = digest(agent)  # agent ids are SPIFFE IDs or client ids: never raw in keys
        return [f"{self._prefix}{hashed}:n", f"{self._prefix}{hashed}:r"]

    async def snapshot(self, agent: str) -> dict[str, Any]:
        reply = await self._link.script(
            "behaviour", BEHAVIOR_SNAPSHOT, self._keys(agent), [self._width, self._buckets]
        )
        try:
            requests, errors, denies, routes = (int(x) for x in reply)
        except (TypeError, ValueError):
            raise StateUnavailable("redis behaviour: unexpected reply") from None
        return {
            "window_s": self.window_s,
            "requests": requests,
            "errors": errors,
            "denies": denies,
            "distinct_routes": routes,
            "deny_rate": round(denies / requests, 4) if requests else 0.0,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
        }

    async def record(self, agent: str, *, route: str, status: int, denied: bool) -> None:
        error = "1" if status >= 400 and not denied else "0"
        args = [self._width, self._buckets, route, error, "1" if denied else "0"]
        await self._link.script("behaviour", BEHAVIOR_RECORD, self._keys(agent), args)
