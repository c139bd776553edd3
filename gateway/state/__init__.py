"""Shared state behind small interfaces: replay caches, revocations, rate limits.

A :class:`State` bundles the three stores of one backend (``state.backend``):

* ``replay``      :class:`ReplayCache`       -- "has this jti/nonce been used?" (atomic)
* ``revocations`` :class:`RevocationStore`   -- revoked subjects, agents, certs, jtis, txns
* ``limiter``     :class:`RateLimiter`       -- token buckets
* ``sessions``    :class:`SessionBindings`   -- which subject owns an MCP session id

``gateway.state.factory.build_state`` builds one from :class:`gateway.settings.StateSettings`.
The ``memory`` backend lives in one process; the ``redis`` backend is shared by every
worker and node that points at the same Redis and ``key_prefix``.

Every operation either answers or raises :class:`StateUnavailable`; callers turn that
into 503 (fail closed), never into "not seen before", "not revoked" or "allowed".
This module holds only the protocols and value types; it imports no backend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from gateway.errors import ServiceUnavailable


class StateUnavailable(ServiceUnavailable):
    reason = "state_unavailable"


# --------------------------------------------------------------------------- replay


class ReplayCache(Protocol):
    async def first_use(self, key: str, ttl_s: float) -> bool:
        """Record ``key`` for ``ttl_s`` seconds; True only for its first use in that window.

        Atomic: of two concurrent calls with the same key exactly one gets True.
        """
        ...


# --------------------------------------------------------------------------- sessions


class SessionBindings(Protocol):
    """Who owns a protocol session (an MCP ``Mcp-Session-Id``), shared like the rest.

    ``claim`` binds ``key`` to ``owner`` unless it is bound already, atomically, and returns
    the owner it is bound to now: the first claimant keeps a session for its ``ttl_s``
    (refreshed by each of its claims), so a second subject can never take it over.
    Keys and owners are hashed before they are stored.
    """

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        """True if ``key`` is (now) bound to ``owner``; False if another owner holds it."""
        ...

    async def owned_by(self, key: str, owner: str) -> bool | None:
        """True/False when bound (to ``owner`` or not); None when ``key`` is unknown."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Forget ``key`` if ``owner`` holds it (session ended)."""
        ...


# --------------------------------------------------------------------------- revocation

# ``quarantine`` (issue 18) refuses nothing by itself: a quarantined agent's requests come
# from the ``quarantine`` segment, which the segments policy isolates (microsegmentation).
RevocationKind = Literal[
    "subject", "agent", "cert_sha256", "jti", "txn", "credential", "quarantine"
]
REVOCATION_KINDS: tuple[RevocationKind, ...] = get_args(RevocationKind)
DEFAULT_REVOCATION_TTL_S = 3600.0
MAX_REVOCATION_TTL_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked identifier. Times are POSIX seconds (wall clock), for display."""

    kind: RevocationKind
    value: str
    expires_at: float
    created_at: float
    reason: str = ""

    def remaining_s(self, now: float | None = None) -> float:
        return max(0.0, self.expires_at - (time.time() if now is None else now))

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "reason": self.reason,
            "created_at": round(self.created_at, 3),
            "expires_at": round(self.expires_at, 3),
            "ttl_s": round(self.remaining_s(now), 3),
        }


class RevocationStore(Protocol):
    async def revoke(
        self,
        kind: RevocationKind,
        value: str,
        *,
        ttl_s: float = DEFAULT_REVOCATION_TTL_S,
        reason: str = "",
    ) -> Revocation:
        """Revoke (or re-revoke, replacing expiry and reason) one identifier."""
        ...

    async def delete(self, kind: RevocationKind, value: str) -> bool:
        """Un-revoke; False when nothing was revoked under that kind and value."""
        ...

    async def list(self) -> list[Revocation]:
        """Every live revocation, sorted by kind then value (authoritative copy)."""
        ...

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
        """The kind of the first revoked identifier among those given, or None.

        ``chain_agents`` and ``credentials`` are the agents and credential ids of an agent
        credential's chain (kinds ``agent`` and ``credential``): revoking a parent refuses
        every descendant.

        The hot path: local dictionary lookups only. Raises :class:`StateUnavailable`
        when the local copy cannot be trusted (shared backend unreachable too long).
        """
        ...

    async def quarantined(self, agent: str) -> bool:
        """Is ``agent`` (a behaviour key) quarantined? Local lookup, like :meth:`check`."""
        ...


# --------------------------------------------------------------------------- rate limits


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one token-bucket hit.

    ``remaining`` whole tokens are left after this hit; ``retry_after_s`` is 0 when
    allowed, else the time until one token is back; ``limit`` is the bucket depth
    (burst); ``reset_s`` is the time until the bucket is full again.
    """

    allowed: bool
    remaining: int
    retry_after_s: float
    limit: int
    reset_s: float
    rate: float = 0.0  # tokens per second, for the RateLimit-Policy window


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: float, burst: int) -> Verdict:
        """Take one token from the bucket ``key`` (``rate`` per second, ``burst`` deep)."""
        ...


# --------------------------------------------------------------------------- bundle


class State:
    """The three stores of one backend, with a lifecycle.

    ``start()`` before serving, ``close()`` after draining; ``ready()`` is a cheap,
    synchronous readiness signal for ``/readyz``.
    """

    backend: str = "memory"

    def __init__(
        self,
        replay: ReplayCache,
        revocations: RevocationStore,
        limiter: RateLimiter,
        sessions: SessionBindings,
    ) -> None:
        self.replay = replay
        self.revocations = revocations
        self.limiter = limiter
        self.sessions = sessions

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def ready(self) -> bool:
        return True
