"""Token buckets (:class:`gateway.state.RateLimiter`) in Redis, shared by every node.

Key ``<prefix>rl:<sha256(key)>`` is a hash ``{tk, ts}`` (tokens, last refill) that
expires once the bucket would be full again. One Lua script does the whole hit -- refill,
take, store -- atomically on Redis's own clock (``TIME``), so nodes with skewed clocks
share a bucket correctly; the arithmetic is the memory limiter's
(``gateway.state.ratelimit``), and so is the :class:`gateway.state.Verdict`. A Redis
failure or a reply of the wrong shape raises :class:`gateway.state.StateUnavailable`:
a limiter that cannot count refuses (503), it never allows.
"""

from __future__ import annotations

from gateway.state import StateUnavailable, Verdict
from gateway.state.ratelimit import check_params, verdict
from gateway.state.redis.link import RedisLink, digest

# KEYS: bucket. ARGV: rate (tokens/s), burst. Returns {allowed 0|1, tokens left}.
BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = burst
local b = redis.call('HMGET', KEYS[1], 'tk', 'ts')
if b[1] and b[2] then
  tokens = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate)
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tk', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
local idle_ms = math.ceil((burst - tokens) / rate * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], string.format('%d', idle_ms))
return {allowed, string.format('%.17g', tokens)}
"""


class RedisRateLimiter:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self._prefix = prefix + "rl:"

    async def hit(self, key: str, rate: float, burst: int) -> Verdict:
        check_params(rate, burst)
        name = self._prefix + digest(key)
        reply = await self._link.script(
            "ratelimit", BUCKET, [name], (repr(float(rate)), int(burst))
        )
        try:
            allowed, tokens = int(reply[0]), float(reply[1])
        except (TypeError, ValueError, IndexError):
            raise StateUnavailable("redis ratelimit: unexpected reply") from None
        return verdict(allowed == 1, tokens, rate, burst)
