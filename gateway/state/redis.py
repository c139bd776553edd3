"""Shared state in Redis (``state.backend: redis``), for several workers and nodes.

Every Redis call runs under ``state.timeout_s`` and maps any failure (refused, reset,
timeout, ``NOAUTH``, ``OOM``, ``LOADING``...) to :class:`StateUnavailable` -- 503, fail
closed. Nothing is retried beyond one immediate reconnect inside that budget (a pooled
connection that died with a Redis restart is replaced on first use), so when Redis comes
back the next call simply works: there is no circuit state to wedge. The Redis URL may
carry a password; it is only ever handed to redis-py and never logged or put in an error.

Keys (all under ``key_prefix``; identifiers are hashed, never stored in key names):

    rp:<sha256(key)>      replay marker    ``SET key 1 NX PX ttl`` -- atomic first use
    rl:<sha256(key)>      token bucket     hash {tk, ts}, expires when full again
    rev:entries           revocations      hash "kind:value" -> "exp_ms|created_ms|reason"
    rev:expiry            revocations      zset of the same fields by expiry (pruning)
    rev:version           revocations      counter, INCR on every change

Token buckets run in one Lua script (EVALSHA, EVAL on ``NOSCRIPT``) on Redis's own
clock (``TIME``), so nodes with skewed clocks share a bucket correctly.

Revocation checks never touch Redis: each process keeps a :class:`RevocationIndex`
replica, polls ``rev:version`` every ``revocation_poll_s`` and reloads the whole set
(one MULTI: version, entries, TIME) when it moved; a revocation is thus effective
everywhere within ``revocation_poll_s`` plus one round trip. If the replica could not
be refreshed for ``max_stale_s`` (Redis down) ``check`` raises :class:`StateUnavailable`.
If Redis comes back empty (restarted without persistence: ``rev:version`` is gone), the
first process that notices writes its replica back, so revocations outlive the restart
as long as one gateway process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from gateway.settings import Secret, StateSettings
from gateway.state import (
    DEFAULT_REVOCATION_TTL_S,
    REVOCATION_KINDS,
    Revocation,
    RevocationKind,
    State,
    StateUnavailable,
    Verdict,
)
from gateway.state.ratelimit import check_params, verdict
from gateway.state.revocation import (
    DEFAULT_MAX_ENTRIES,
    RevocationIndex,
    RevocationListFull,
    validate,
    validate_reason,
    validate_ttl,
)

log = logging.getLogger("agentgate.state")

T = TypeVar("T")

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_STALE_S = 5.0


class Script:
    """A Lua script run by SHA1, loaded on demand."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class RedisLink:
    """One client (connection pool) with the timeout and error mapping of every call."""

    def __init__(
        self, url: Secret, *, timeout_s: float, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self._url = url
        self.timeout_s = timeout_s
        self._max_connections = max_connections
        self._client: Redis | None = None

    def open(self) -> None:
        if self._client is not None:
            return
        pool = BlockingConnectionPool.from_url(
            self._url.reveal_str(),
            max_connections=self._max_connections,
            timeout=self.timeout_s,  # waiting for a free pooled connection
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            # One immediate retry on a fresh connection: a pooled connection that died
            # with a Redis restart fails once and is replaced, inside the same budget.
            retry=Retry(NoBackoff(), 1),
            client_name="agentgate",
            protocol=2,  # the same replies from redis-py 5 to 8 and from Redis >= 5
        )
        self._client = Redis(connection_pool=pool)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
            with contextlib.suppress(RedisError, OSError):
                await client.connection_pool.disconnect()

    async def run(
        self, op: str, call: Callable[[Redis], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        client = self._client
        if client is None:
            raise StateUnavailable(f"redis {op}: not started")
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                return await call(client)
        except (RedisError, OSError, TimeoutError) as exc:
            # SECURITY: only the operation and the exception type: redis-py messages can
            # name the server, and the URL may hold a password.
            raise StateUnavailable(f"redis {op}: {type(exc).__name__}") from None

    @staticmethod
    async def script(
        client: Redis, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted (or flushed) Redis forgot the script: EVAL runs and caches it.
            return await client.eval(script.source, len(keys), *keys, *args)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------- replay


class RedisReplayCache:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self._prefix = prefix + "rp:"

    async def first_use(self, key: str, ttl_s: float) -> bool:
        name = self._prefix + _digest(key)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))

        async def call(r: Redis) -> Any:
            return await r.set(name, b"1", nx=True, px=ttl_ms)

        # SET NX is atomic in Redis: of any number of concurrent callers on any number
        # of processes, exactly one gets OK; the others get nil.
        return bool(await self._link.run("replay", call))


# --------------------------------------------------------------------------- rate limits

BUCKET = Script("""
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
""")


class RedisRateLimiter:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self._prefix = prefix + "rl:"

    async def hit(self, key: str, rate: float, burst: int) -> Verdict:
        check_params(rate, burst)
        name = self._prefix + _digest(key)
        args = (repr(float(rate)), int(burst))

        async def call(r: Redis) -> Any:
            return await RedisLink.script(r, BUCKET, [name], args)

        reply = await self._link.run("ratelimit", call)
        try:
            allowed, tokens = int(reply[0]), float(reply[1])
        except (TypeError, ValueError, IndexError):
            raise StateUnavailable("redis ratelimit: unexpected reply") from None
        return verdict(allowed == 1, tokens, rate, burst)


# --------------------------------------------------------------------------- revocations

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- rev:version is "<epoch ms>:<counter>"; the epoch is set when the key is created, so
-- a Redis that lost its data (and recreated the key) never repeats an old version.
local function bump()
  local v = redis.call('GET', KEYS[3])
  local epoch, n = string.format('%d', now), 0
  if v then
    local sep = string.find(v, ':', 1, true)
    epoch, n = string.sub(v, 1, sep - 1), tonumber(string.sub(v, sep + 1))
  end
  local version = epoch .. ':' .. string.format('%d', n + 1)
  redis.call('SET', KEYS[3], version)
  return version
end
"""

# KEYS: entries, expiry, version. ARGV: field, ttl_ms, reason, max_entries.
REVOKE = Script(
    _PRELUDE
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return {0, '0', '0', ''}
end
local exp = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d|%d|', exp, now) .. ARGV[3])
redis.call('ZADD', KEYS[2], string.format('%d', exp), ARGV[1])
local version = bump()
return {1, string.format('%d', exp), string.format('%d', now), version}
"""
)

# KEYS: entries, expiry, version. ARGV: field.
UNREVOKE = Script(
    _PRELUDE
    + """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local version = redis.call('GET', KEYS[3]) or ''
if n > 0 then
  version = bump()
end
return {n, version}
"""
)

# KEYS: entries, expiry, version, restored-epochs. ARGV: lost epoch, then triples
# (field, remaining_ms, "created_ms|reason"). The first process to restore from a lost
# epoch wins; later ones (same lost epoch) do nothing, so an entry deleted after the
# restore is not brought back by a slower process.
RESTORE = Script(
    _PRELUDE
    + """
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then
  return -1
end
redis.call('PEXPIRE', KEYS[4], 2592000000)
local n = 0
for i = 2, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    local exp = now + tonumber(ARGV[i + 1])
    redis.call('HSET', KEYS[1], ARGV[i], string.format('%d|', exp) .. ARGV[i + 2])
    redis.call('ZADD', KEYS[2], string.format('%d', exp), ARGV[i])
    n = n + 1
  end
end
bump()
return n
"""
)


def _epoch(version: bytes | None) -> bytes | None:
    return None if version is None else version.partition(b":")[0]


def _redis_ms(reply: Any) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def _parse_entries(
    entries: dict[bytes, bytes], redis_now_ms: int
) -> list[tuple[Revocation, float]]:
    """Live ``(record, monotonic deadline)`` pairs from the Redis hash."""
    mono, wall = time.monotonic(), time.time()
    out: list[tuple[Revocation, float]] = []
    for raw_field, raw_record in entries.items():
        try:
            kind, _, value = raw_field.decode().partition(":")
            exp_ms, created_ms, reason = raw_record.decode().split("|", 2)
            remaining = (int(exp_ms) - redis_now_ms) / 1000
            created = wall - (redis_now_ms - int(created_ms)) / 1000
        except (UnicodeDecodeError, ValueError):
            log.warning("ignoring a malformed revocation record in Redis")
            continue
        if remaining <= 0 or kind not in REVOCATION_KINDS:
            continue
        rev = Revocation(
            kind,
            value,
            expires_at=wall + remaining,
            created_at=created,
            reason=reason,
        )
        out.append((rev, mono + remaining))
    return out


class RedisRevocationStore:
    """Revocations in Redis, checked against a local replica (see the module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        *,
        poll_s: float,
        max_stale_s: float = DEFAULT_MAX_STALE_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._link = link
        # One hash tag: the scripts touch several keys, which must share a cluster slot.
        base = prefix + "{rev}:"
        self._keys = [base + "entries", base + "expiry", base + "version"]
        self._restored_key = base + "restored"
        self._poll_s = poll_s
        self._max_stale_s = max_stale_s
        self._max = max_entries
        self._index = RevocationIndex()
        self._loaded = False
        self._version: bytes | None = None  # of the last full load: change detection
        self._epoch: bytes | None = None  # newest rev:version epoch seen in any reply
        self._synced_at = -math.inf
        self._down_since: float | None = None
        self._poller: asyncio.Task[None] | None = None
        # Reloads may take longer than one hot-path call: they move the whole set.
        self._load_timeout_s = max(1.0, 4 * link.timeout_s)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        try:
            await self.sync()
        except StateUnavailable as exc:
            log.warning("state: Redis unavailable at start (%s); not ready until it is", exc)
            self._down_since = time.monotonic()
        self._poller = asyncio.create_task(self._poll(), name="agentgate-revocation-poll")

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    def fresh(self) -> bool:
        return time.monotonic() - self._synced_at <= self._max_stale_s

    @property
    def replica_age_s(self) -> float:
        return time.monotonic() - self._synced_at

    # -------------------------------------------------------------- hot path

    async def check(
        self,
        *,
        subject: str | None,
        agent: str | None,
        cert_sha256: str | None,
        jti: str | None,
        txn: str | None,
    ) -> RevocationKind | None:
        now = time.monotonic()
        if now - self._synced_at > self._max_stale_s:
            # SECURITY: a replica we cannot refresh may miss a revocation: fail closed.
            raise StateUnavailable("revocation replica is stale (Redis unreachable)")
        return self._index.match(now, subject, agent, cert_sha256, jti, txn)

    # -------------------------------------------------------------- admin

    async def revoke(
        self,
        kind: RevocationKind,
        value: str,
        *,
        ttl_s: float = DEFAULT_REVOCATION_TTL_S,
        reason: str = "",
    ) -> Revocation:
        kind, value = validate(kind, value)
        ttl_ms = math.ceil(validate_ttl(ttl_s) * 1000)
        reason = validate_reason(reason)
        args = (f"{kind}:{value}", ttl_ms, reason, self._max)

        async def call(r: Redis) -> Any:
            return await RedisLink.script(r, REVOKE, self._keys, args)

        ok, exp_ms, now_ms, version = await self._link.run("revoke", call)
        if int(ok) != 1:
            raise RevocationListFull(f"{self._max} live revocations")
        self._epoch = _epoch(version)
        remaining = (int(exp_ms) - int(now_ms)) / 1000
        wall = time.time()
        rev = Revocation(kind, value, expires_at=wall + remaining, created_at=wall, reason=reason)
        # Effective at once in this process; the others follow at their next poll.
        self._index.put(rev, time.monotonic() + remaining)
        return rev

    async def delete(self, kind: RevocationKind, value: str) -> bool:
        kind, value = validate(kind, value)

        async def call(r: Redis) -> Any:
            return await RedisLink.script(r, UNREVOKE, self._keys, (f"{kind}:{value}",))

        removed, version = await self._link.run("unrevoke", call)
        self._epoch = _epoch(version or None) or self._epoch
        self._index.remove(kind, value)
        return int(removed) > 0

    async def list(self) -> list[Revocation]:
        async def call(r: Redis) -> Any:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._keys[0])
                pipe.time()
                return await pipe.execute()

        entries, now = await self._link.run("list", call, timeout_s=self._load_timeout_s)
        live = _parse_entries(entries, _redis_ms(now))
        return sorted((rev for rev, _ in live), key=lambda rev: (rev.kind, rev.value))

    # -------------------------------------------------------------- replication

    async def sync(self) -> None:
        """Refresh the replica if ``rev:version`` moved; raise :class:`StateUnavailable`."""
        started = time.monotonic()

        async def get_version(r: Redis) -> Any:
            return await r.get(self._keys[2])

        version = await self._link.run("revocation poll", get_version)
        if self._epoch is not None and _epoch(version) != self._epoch:
            # The version key vanished or was recreated since we saw it: Redis lost its
            # data (restart without persistence, failover to an empty replica, FLUSHALL).
            await self._restore(self._epoch)
        elif self._loaded and version == self._version:
            self._synced_at = started
            return
        await self._load(started)

    async def _load(self, started: float) -> None:
        async def call(r: Redis) -> Any:
            async with r.pipeline(transaction=True) as pipe:
                pipe.get(self._keys[2])
                pipe.hgetall(self._keys[0])
                pipe.time()
                return await pipe.execute()

        version, entries, now = await self._link.run(
            "revocation load", call, timeout_s=self._load_timeout_s
        )
        self._index.replace(_parse_entries(entries, _redis_ms(now)))
        self._version, self._loaded, self._synced_at = version, True, started
        self._epoch = _epoch(version)

    async def _restore(self, lost_epoch: bytes) -> None:
        now = time.monotonic()
        live = self._index.live(now)
        if not live:
            return
        args: list[Any] = [lost_epoch]
        for rev, deadline in live:
            args += [
                f"{rev.kind}:{rev.value}",
                max(1, math.ceil((deadline - now) * 1000)),
                f"{int(rev.created_at * 1000)}|{rev.reason}",
            ]
        keys = [*self._keys, self._restored_key]

        async def call(r: Redis) -> Any:
            return await RedisLink.script(r, RESTORE, keys, args)

        restored = int(
            await self._link.run("revocation restore", call, timeout_s=self._load_timeout_s)
        )
        if restored >= 0:
            log.warning(
                "state: Redis lost the revocation list (restart without persistence?); "
                "restored %d live revocation(s) from this process's replica",
                restored,
            )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.sync()
            except StateUnavailable as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("state: Redis unavailable (%s); failing closed", exc)
                continue
            except Exception:  # the poller must outlive any surprise; it is the freshness
                log.exception("state: revocation poll failed")
                continue
            if self._down_since is not None:
                log.warning(
                    "state: Redis available again after %.1fs",
                    time.monotonic() - self._down_since,
                )
                self._down_since = None


# --------------------------------------------------------------------------- behaviour

# Per-agent windows shared by every worker and node, with the memory store's semantics
# (gateway.observability.behavior): ``buckets`` slots of ``window_s / buckets`` seconds on
# Redis's own clock; counts in a hash per slot, routes in a set per slot, both expiring.
BEHAVIOR_RECORD = Script("""
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
""")

BEHAVIOR_SNAPSHOT = Script("""
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
""")


class RedisBehaviorStore:
    """The shared ``BehaviorStore`` (``input.behavior``) for ``state.backend: redis``."""

    def __init__(self, link: RedisLink, prefix: str, *, window_s: float, buckets: int = 12):
        self._link = link
        self._prefix = prefix + "bh:"
        self.window_s = window_s
        self._buckets = buckets
        self._width = window_s / buckets

    def _keys(self, agent: str) -> list[str]:
        digest = _digest(agent)  # agent ids are SPIFFE IDs or client ids: never raw in keys
        return [f"{self._prefix}{digest}:n", f"{self._prefix}{digest}:r"]

    async def snapshot(self, agent: str) -> dict[str, Any]:
        keys, args = self._keys(agent), [self._width, self._buckets]

        async def call(r: Redis) -> Any:
            return await RedisLink.script(r, BEHAVIOR_SNAPSHOT, keys, args)

        reply = await self._link.run("behaviour", call)
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
        keys = self._keys(agent)
        args = [self._width, self._buckets, route, error, "1" if denied else "0"]

        async def call(r: Redis) -> Any:
            return await RedisLink.script(r, BEHAVIOR_RECORD, keys, args)

        await self._link.run("behaviour", call)


# --------------------------------------------------------------------------- bundle


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
            RedisReplayCache(self.link, prefix), self.store, RedisRateLimiter(self.link, prefix)
        )

    async def start(self) -> None:
        self.link.open()
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()
        await self.link.close()

    def ready(self) -> bool:
        return self.store.fresh()
