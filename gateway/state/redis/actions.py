"""The action log (:class:`gateway.state.actions.ActionLog`) in Redis, shared by every node.

Keys per agent, under ``<prefix>ac:<sha256(agent)>`` (no identifier in clear):

* ``:n`` -- the sequence counter (``INCR``: atomic on every process);
* ``:p`` -- pending seqs, a sorted set scored by seq (reserved, not recorded);
* ``:r`` -- recorded actions, a sorted set scored by seq whose members are the canonical
  actions (unique: each one contains its seq);
* ``:b`` -- the last heartbeat, a hash ``a`` (time), ``v`` (verdict), ``l`` (window ``to``).

Every write is one Lua script that also trims ``:p`` and ``:r`` to ``max_actions`` (lowest
seqs first) and pushes the TTL of all four keys to ``ttl_s``, so an agent's entries live or
expire together. ``window`` reads records and pending counts in one script, so they are
consistent. Any Redis failure or reply of the wrong shape raises
:class:`gateway.state.StateUnavailable` (fail closed).
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis

from gateway.state import StateUnavailable
from gateway.state.actions import DEFAULT_MAX_ACTIONS, DEFAULT_TTL_S
from gateway.state.redis.link import RedisLink, digest

# Shared tail of every write: trim both sets, refresh every key's TTL. ARGV[1] max, ARGV[2] ms.
_KEEP = """
local function keep()
  local max = tonumber(ARGV[1])
  if redis.call('ZCARD', KEYS[2]) > max then
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(max + 1))
  end
  if redis.call('ZCARD', KEYS[3]) > max then
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(max + 1))
  end
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
"""

# KEYS: n, p, r, b. ARGV: max, ttl ms.
RESERVE = (
    _KEEP
    + """
local n = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], n, n)
keep()
return n
"""
)

# KEYS: n, p, r, b. ARGV: max, ttl ms, seq, action.
# SECURITY: only a pending seq is recorded, once: a record never rewrites history.
RECORD = (
    _KEEP
    + """
local done = 0
if redis.call('ZREM', KEYS[2], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  done = 1
end
keep()
return done
"""
)

# KEYS: n, p, r, b. ARGV: first, last. Returns {missing, member, score, member, score...}.
WINDOW = """
local lo, hi = '(' .. ARGV[1], ARGV[2]
local out = {redis.call('ZCOUNT', KEYS[2], lo, hi)}
local found = redis.call('ZRANGEBYSCORE', KEYS[3], lo, hi, 'WITHSCORES')
for i = 1, #found do out[#out + 1] = found[i] end
return out
"""

# KEYS: n, p, r, b. ARGV: max, ttl ms, at, verdict, last.
BEAT = (
    _KEEP
    + """
redis.call('HSET', KEYS[4], 'a', ARGV[3], 'v', ARGV[4], 'l', ARGV[5])
keep()
return 1
"""
)


class RedisActionLog:
    """The shared :class:`gateway.state.actions.ActionLog` for ``state.backend: redis``."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        *,
        max_actions: int = DEFAULT_MAX_ACTIONS,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._link = link
        self._prefix = prefix + "ac:"
        self._max_actions = max_actions
        self._ttl_ms = max(1, math.ceil(ttl_s * 1000))

    def _keys(self, agent: str) -> list[str]:
        base = self._prefix + digest(agent)
        return [base + ":n", base + ":p", base + ":r", base + ":b"]

    async def reserve(self, agent: str) -> int:
        args = [self._max_actions, self._ttl_ms]
        reply = await self._link.script("actions reserve", RESERVE, self._keys(agent), args)
        return _int(reply)

    async def record(self, agent: str, seq: int, action: bytes) -> None:
        args = [self._max_actions, self._ttl_ms, int(seq), action]
        await self._link.script("actions record", RECORD, self._keys(agent), args)

    async def window(
        self, agent: str, first: int, last: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        if last <= first:
            return [], 0
        args = [int(first), int(last)]
        reply = await self._link.script("actions window", WINDOW, self._keys(agent), args)
        try:
            missing, flat = int(reply[0]), reply[1:]
            found = [(int(flat[i + 1]), bytes(flat[i])) for i in range(0, len(flat), 2)]
        except (TypeError, ValueError, IndexError):
            raise StateUnavailable("redis actions window: unexpected reply") from None
        return found, missing

    async def head(self, agent: str) -> int:
        name = self._keys(agent)[0]

        async def call(r: Redis) -> Any:
            return await r.get(name)

        reply = await self._link.run("actions head", call)
        return 0 if reply is None else _int(reply)

    async def beat(self, agent: str, at: float, verdict: str, last: int) -> None:
        args = [self._max_actions, self._ttl_ms, repr(float(at)), verdict, int(last)]
        await self._link.script("actions beat", BEAT, self._keys(agent), args)

    async def last_beat(self, agent: str) -> tuple[float, str, int] | None:
        name = self._keys(agent)[3]

        async def call(r: Redis) -> Any:
            return await r.hmget(name, "a", "v", "l")

        reply = await self._link.run("actions last beat", call)
        try:
            at, verdict, last = reply
            if at is None or verdict is None:
                return None
            return float(at), bytes(verdict).decode("ascii"), int(last or 0)
        except (TypeError, ValueError):
            raise StateUnavailable("redis actions last beat: unexpected reply") from None


def _int(reply: Any) -> int:
    try:
        return int(reply)
    except (TypeError, ValueError):
        raise StateUnavailable("redis actions: unexpected reply") from None
