"""Revocations (:class:`gateway.state.RevocationStore`) in Redis, checked on a local replica.

Keys (one ``{rev}`` hash tag, so the scripts' keys share a cluster slot):

    <prefix>{rev}:entries   hash "kind:value" -> "exp_ms|created_ms|reason"
    <prefix>{rev}:expiry    zset of the same fields by expiry (pruning)
    <prefix>{rev}:version   "<epoch ms>:<counter>", bumped on every change
    <prefix>{rev}:restored  set of lost epochs already restored (30 days)

Revocation checks never touch Redis: each process keeps a
:class:`gateway.state.revocation.RevocationIndex` replica, polls ``rev:version`` every
``revocation_poll_s`` and reloads the whole set (one MULTI: version, entries, TIME)
when it moved; a revocation is thus effective everywhere within ``revocation_poll_s``
plus one round trip. If the replica could not be refreshed for ``max_stale_s`` (Redis
down) ``check`` raises :class:`gateway.state.StateUnavailable` (fail closed: a replica
we cannot refresh may miss a revocation). If Redis comes back empty (restarted without
persistence: ``rev:version`` is gone or has a new epoch), the first process that
notices writes its replica back, so revocations outlive the restart as long as one
gateway process does. Writes (revoke, un-revoke, restore) are one Lua script each, on
Redis's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from gateway.state import (
    DEFAULT_REVOCATION_TTL_S,
    REVOCATION_KINDS,
    Revocation,
    RevocationKind,
    StateUnavailable,
)
from gateway.state.redis.link import RedisLink
from gateway.state.revocation import (
    DEFAULT_MAX_ENTRIES,
    RevocationIndex,
    RevocationListFull,
    validate,
    validate_reason,
    validate_ttl,
)

log = logging.getLogger("agentgate.state")

DEFAULT_MAX_STALE_S = 5.0

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
REVOKE = (
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
UNREVOKE = (
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
RESTORE = (
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
        self._closing = False
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
        self._closing = True
        if poller is None:
            return
        poller.cancel()
        # A cancel that lands inside a Redis call can come back as that call's error (the
        # client library and asyncio.timeout both map it), which the loop survives by
        # design; the flag ends it at its next turn, and the wait is bounded either way.
        try:
            async with asyncio.timeout(max(1.0, 2 * self._poll_s)):
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
        except TimeoutError:
            log.warning("state: the revocation poller did not stop; left behind")

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
        chain_agents: Sequence[str] = (),
        credentials: Sequence[str] = (),
    ) -> RevocationKind | None:
        now = time.monotonic()
        if now - self._synced_at > self._max_stale_s:
            # SECURITY: a replica we cannot refresh may miss a revocation: fail closed.
            raise StateUnavailable("revocation replica is stale (Redis unreachable)")
        return self._index.match(
            now, subject, agent, cert_sha256, jti, txn, chain_agents, credentials
        )

    async def quarantined(self, agent: str) -> bool:
        now = time.monotonic()
        if now - self._synced_at > self._max_stale_s:
            raise StateUnavailable("revocation replica is stale (Redis unreachable)")
        return self._index.holds(now, "quarantine", agent)

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

        ok, exp_ms, now_ms, version = await self._link.script("revoke", REVOKE, self._keys, args)
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

        removed, version = await self._link.script(
            "unrevoke", UNREVOKE, self._keys, (f"{kind}:{value}",)
        )
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

        restored = int(
            await self._link.script(
                "revocation restore", RESTORE, keys, args, timeout_s=self._load_timeout_s
            )
        )
        if restored >= 0:
            log.warning(
                "state: Redis lost the revocation list (restart without persistence?); "
                "restored %d live revocation(s) from this process's replica",
                restored,
            )

    def _stopping(self) -> bool:
        return self._closing

    async def _poll(self) -> None:
        while not self._stopping():
            await asyncio.sleep(self._poll_s)
            if self._stopping():
                return
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
