"""Rate limiting: token buckets per (route, limit, key).

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second;
each request takes one token, and a request finding less than one is refused (429).
Limits come from ``routes[].rate_limits`` and, after the decision, from the PDP
obligation ``obligations.rate_limit = {rate, burst, per}``. ``per`` picks the key:

    client   the client address (after ``forwarded.trusted_hops``)
    route    one bucket for the whole route
    subject  the authenticated principal (issuer + subject); the client address if none
    agent    the peer's SPIFFE ID, else an agent principal, else as ``subject``

``client``/``route`` limits need no identity, so the pipeline can apply them before
authentication (shielding argon2/JWKS work from floods); ``subject``/``agent`` limits
apply after it (:func:`split`). Key values are hashed, so no identifier appears in a
Redis key name.

Headers follow draft-ietf-httpapi-ratelimit-headers-11 §3-4: the policy is announced
as ``RateLimit-Policy: "burst";q=<burst>;w=<seconds to refill a full bucket>`` and
the state as ``RateLimit: "burst";r=<remaining>;t=<seconds>``, where ``t`` is the time
until the bucket is full (allowed) or until the next token (refused, equal to
``Retry-After`` as §6 asks: Retry-After is never earlier than the window's end).

The ``memory`` limiter is a bounded LRU of ``(tokens, timestamp)`` on the monotonic
clock; the ``redis`` limiter runs the same arithmetic in one Lua script on Redis's
own clock (``gateway.state.redis.ratelimit``).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from gateway.context import Identity, RequestFacts
from gateway.errors import GatewayError
from gateway.settings.routes import RateLimit
from gateway.state import RateLimiter, Verdict

DEFAULT_MAX_BUCKETS = 100_000
PRE_AUTHN = frozenset({"client", "route"})
_POLICY_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


class RateLimited(GatewayError):
    status = 429
    reason = "rate_limited"
    public = "too many requests"

    def __init__(self, verdict: Verdict, name: str = "burst") -> None:
        super().__init__("rate limit exceeded", headers=rate_limit_headers(verdict, name))
        self.verdict = verdict


# --------------------------------------------------------------------------- arithmetic


def verdict(allowed: bool, tokens: float, rate: float, burst: int) -> Verdict:
    """The :class:`Verdict` for a bucket holding ``tokens`` after the hit."""
    tokens = min(float(burst), max(0.0, tokens))
    return Verdict(
        allowed=allowed,
        remaining=int(tokens),
        retry_after_s=0.0 if allowed else (1.0 - tokens) / rate,
        limit=burst,
        reset_s=(burst - tokens) / rate,
        rate=rate,
    )


def take(tokens: float, stamp: float, now: float, rate: float, burst: int) -> tuple[float, Verdict]:
    """Refill a bucket last seen at ``stamp`` up to ``now``, then try to take one token."""
    tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
    allowed = tokens >= 1.0
    if allowed:
        tokens -= 1.0
    return tokens, verdict(allowed, tokens, rate, burst)


def check_params(rate: float, burst: int) -> None:
    if not (rate > 0 and math.isfinite(rate)) or burst < 1:
        raise ValueError("rate must be > 0 and burst >= 1")


def rate_limit_headers(verdict: Verdict, name: str = "burst") -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` on a refusal)."""
    if not _POLICY_NAME.fullmatch(name):
        raise ValueError("policy name must be a short lowercase token")
    window = max(1, math.ceil(verdict.limit / verdict.rate)) if verdict.rate > 0 else 1
    if verdict.allowed:
        t = math.ceil(verdict.reset_s - 1e-9)
    else:
        t = max(1, math.ceil(verdict.retry_after_s - 1e-9))
    headers = {
        "RateLimit-Policy": f'"{name}";q={verdict.limit};w={window}',
        "RateLimit": f'"{name}";r={verdict.remaining};t={max(0, t)}',
    }
    if not verdict.allowed:
        headers["Retry-After"] = str(t)
    return headers


# --------------------------------------------------------------------------- memory limiter


class MemoryRateLimiter:
    """Buckets of one process: a bounded LRU of ``key -> (tokens, monotonic stamp)``.

    Evicting the least recently used bucket forgets it, which refills it; with a
    bound far above the number of active keys only idle (already full) buckets go.
    """

    def __init__(
        self, max_buckets: int = DEFAULT_MAX_BUCKETS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, key: str, rate: float, burst: int) -> Verdict:
        check_params(rate, burst)
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (float(burst), now))
        tokens, out = take(tokens, stamp, now, rate, burst)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return out


# --------------------------------------------------------------------------- pipeline helpers


def split(limits: Iterable[RateLimit]) -> tuple[tuple[RateLimit, ...], tuple[RateLimit, ...]]:
    """``(before authentication, after authentication)``: see the module docstring."""
    limits = tuple(limits)
    return (
        tuple(lim for lim in limits if lim.per in PRE_AUTHN),
        tuple(lim for lim in limits if lim.per not in PRE_AUTHN),
    )


def limit_key(route: str, limit: RateLimit, facts: RequestFacts, identity: Identity | None) -> str:
    """A stable bucket key: route, the limit's shape, and a hash of the ``per`` value."""
    value = _per_value(limit.per, facts, identity)
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{route}|{limit.per}|{limit.rate:g}|{limit.burst}|{digest}"


async def enforce(
    limiter: RateLimiter,
    route: str,
    limits: Sequence[RateLimit],
    facts: RequestFacts,
    identity: Identity | None,
) -> Verdict | None:
    """Hit every bucket of ``limits``; raise :class:`RateLimited` on the first refusal.

    Returns the verdict with the fewest remaining tokens (for the response headers),
    or None when ``limits`` is empty. Identical limits are one bucket, hit once.
    """
    tightest: Verdict | None = None
    seen: set[str] = set()
    for limit in limits:
        key = limit_key(route, limit, facts, identity)
        if key in seen:
            continue
        seen.add(key)
        result = await limiter.hit(key, limit.rate, limit.burst)
        if not result.allowed:
            raise RateLimited(result)
        if tightest is None or result.remaining < tightest.remaining:
            tightest = result
    return tightest


def tighter(a: Verdict | None, b: Verdict | None) -> Verdict | None:
    """The verdict with fewer remaining tokens: the one the response headers report."""
    if a is None or b is None:
        return a or b
    return b if b.remaining < a.remaining else a


def _per_value(per: str, facts: RequestFacts, identity: Identity | None) -> str:
    if per == "route":
        return "*"
    if per == "agent":
        if facts.peer is not None and facts.peer.spiffe_id:
            return f"agent\x1f{facts.peer.spiffe_id}"
        if identity is not None and identity.principal.subject_type == "agent":
            return f"agent\x1f{identity.principal.subject}"
    if per in ("agent", "subject") and identity is not None:
        principal = identity.principal
        return f"subject\x1f{principal.issuer or ''}\x1f{principal.subject}"
    return f"client\x1f{facts.client_address}"
