"""Revocation: subjects, agents, client certificates, token ``jti`` s and ``txn`` s.

An operator revokes one identifier of a kind (:data:`gateway.state.REVOCATION_KINDS`)
for ``ttl_s`` seconds (default 1 h, at most 30 days) with an optional reason. The
pipeline asks :meth:`RevocationStore.check` on every request, after authentication
and before the PDP: a revoked caller is refused like a caller whose credential failed
(401 ``invalid_token``, RFC 6750 §3.1 names "revoked" among its causes) and never
reaches the policy or the upstream.

This module holds what every backend shares: input validation
(:func:`validate`), the in-process index that makes ``check`` a handful of dict
lookups (:class:`RevocationIndex`), the ``memory`` store, and
:func:`identifiers`, which picks the values to check out of the verified request
context. The ``redis`` store keeps a local :class:`RevocationIndex` replica in sync
(``gateway.state.redis.revocation``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.context import Identity, RequestFacts
from gateway.errors import BadRequest, GatewayError, Unauthorized
from gateway.state import (
    DEFAULT_REVOCATION_TTL_S,
    MAX_REVOCATION_TTL_S,
    REVOCATION_KINDS,
    Revocation,
    RevocationKind,
)

MAX_VALUE_CHARS = 1024
MAX_REASON_CHARS = 256
DEFAULT_MAX_ENTRIES = 100_000

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CID = re.compile(r"[A-Za-z0-9_-]{16,64}")  # gateway.sdk.agent credential ids
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidRevocation(BadRequest):
    reason = "invalid_revocation"
    public = "invalid revocation"


class RevocationListFull(GatewayError):
    status = 409
    reason = "revocation_list_full"
    public = "revocation list is full"


class Revoked(Unauthorized):
    """A revoked subject, agent, certificate, token or transaction (RFC 6750 §3.1)."""

    reason = "credential_revoked"
    public = "credential revoked"

    def __init__(self, kind: str) -> None:
        # SECURITY: the caller learns "revoked", not which identifier matched; the kind
        # goes to the log and audit record through ``detail``.
        super().__init__(
            f"revoked {kind}",
            headers={
                "WWW-Authenticate": 'Bearer realm="agentgate", error="invalid_token", '
                'error_description="revoked"'
            },
        )
        self.kind = kind


# --------------------------------------------------------------------------- validation


def validate(kind: Any, value: Any) -> tuple[RevocationKind, str]:
    """Check and normalise one identifier; raise :class:`InvalidRevocation`.

    ``cert_sha256`` accepts upper case and ``:`` separators and is stored as the
    lowercase hex the listener computes (``Peer.cert_sha256``); ``agent`` must be a
    SPIFFE ID. Messages never echo the value.
    """
    if kind not in REVOCATION_KINDS:
        raise InvalidRevocation(public=f"kind must be one of: {', '.join(REVOCATION_KINDS)}")
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_CHARS:
        raise InvalidRevocation(public=f"value must be a string of 1..{MAX_VALUE_CHARS} chars")
    if _CONTROL.search(value):
        raise InvalidRevocation(public="value must not contain control characters")
    if kind == "cert_sha256":
        value = value.replace(":", "").lower()
        if not _HEX64.fullmatch(value):
            raise InvalidRevocation(public="cert_sha256 must be 64 hex digits (SHA-256)")
    elif kind == "agent" and not value.startswith("spiffe://"):
        raise InvalidRevocation(public="agent must be a SPIFFE ID (spiffe://...)")
    elif kind == "credential" and not _CID.fullmatch(value):
        raise InvalidRevocation(public="credential must be a credential id (16..64 base64url)")
    return kind, value


def validate_ttl(ttl_s: Any) -> float:
    if ttl_s is None:
        return DEFAULT_REVOCATION_TTL_S
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise InvalidRevocation(public="ttl_s must be a number of seconds")
    if not 1 <= ttl_s <= MAX_REVOCATION_TTL_S:
        raise InvalidRevocation(public=f"ttl_s must be between 1 and {int(MAX_REVOCATION_TTL_S)}")
    return float(ttl_s)


def validate_reason(reason: Any) -> str:
    if reason is None:
        return ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise InvalidRevocation(public=f"reason must be a string of at most {MAX_REASON_CHARS}")
    if _CONTROL.search(reason):
        raise InvalidRevocation(public="reason must not contain control characters")
    return reason


# --------------------------------------------------------------------------- index


class RevocationIndex:
    """Live revocations by kind, for O(1) checks.

    ``_deadlines[kind][value]`` is a ``time.monotonic()`` deadline (immune to wall-clock
    steps); ``_records`` keeps the displayable :class:`Revocation`. Expired entries
    are ignored by :meth:`match` and dropped by :meth:`sweep`.
    """

    def __init__(self) -> None:
        self._deadlines: dict[str, dict[str, float]] = {k: {} for k in REVOCATION_KINDS}
        self._records: dict[tuple[str, str], Revocation] = {}

    def __len__(self) -> int:
        return len(self._records)

    def put(self, rev: Revocation, deadline: float) -> None:
        self._deadlines[rev.kind][rev.value] = deadline
        self._records[(rev.kind, rev.value)] = rev

    def remove(self, kind: str, value: str) -> bool:
        self._deadlines[kind].pop(value, None)
        return self._records.pop((kind, value), None) is not None

    def replace(self, items: Iterable[tuple[Revocation, float]]) -> None:
        fresh = RevocationIndex()
        for rev, deadline in items:
            fresh.put(rev, deadline)
        self._deadlines, self._records = fresh._deadlines, fresh._records

    def match(
        self,
        now: float,
        subject: str | None,
        agent: str | None,
        cert_sha256: str | None,
        jti: str | None,
        txn: str | None,
        chain_agents: Sequence[str] = (),
        credentials: Sequence[str] = (),
    ) -> RevocationKind | None:
        d = self._deadlines
        candidates: tuple[tuple[RevocationKind, str | None], ...] = (
            ("subject", subject),
            ("agent", agent),
            ("cert_sha256", cert_sha256),
            ("jti", jti),
            ("txn", txn),
        )
        for kind, value in candidates:
            if value is not None:
                deadline = d[kind].get(value)
                if deadline is not None and deadline > now:
                    return kind
        for kind, values in (("agent", chain_agents), ("credential", credentials)):
            table = d[kind]
            for value in values:
                deadline = table.get(value)
                if deadline is not None and deadline > now:
                    return kind
        return None

    def holds(self, now: float, kind: str, value: str) -> bool:
        deadline = self._deadlines[kind].get(value)
        return deadline is not None and deadline > now

    def live(self, now: float) -> list[tuple[Revocation, float]]:
        """``(record, deadline)`` pairs not yet expired, sorted by kind then value."""
        out = [
            (rev, self._deadlines[rev.kind][rev.value])
            for rev in self._records.values()
            if self._deadlines[rev.kind][rev.value] > now
        ]
        out.sort(key=lambda item: (item[0].kind, item[0].value))
        return out

    def sweep(self, now: float) -> None:
        for (kind, value), _ in list(self._records.items()):
            if self._deadlines[kind][value] <= now:
                self.remove(kind, value)


# --------------------------------------------------------------------------- memory store


class MemoryRevocationStore:
    """Revocations of one process (``state.backend: memory``)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max = max_entries
        self._index = RevocationIndex()

    async def revoke(
        self,
        kind: RevocationKind,
        value: str,
        *,
        ttl_s: float = DEFAULT_REVOCATION_TTL_S,
        reason: str = "",
    ) -> Revocation:
        kind, value = validate(kind, value)
        ttl_s, reason = validate_ttl(ttl_s), validate_reason(reason)
        mono, wall = time.monotonic(), time.time()
        self._index.sweep(mono)
        if len(self._index) >= self._max and not self._index.remove(kind, value):
            raise RevocationListFull(f"{len(self._index)} live revocations")
        rev = Revocation(kind, value, expires_at=wall + ttl_s, created_at=wall, reason=reason)
        self._index.put(rev, mono + ttl_s)
        return rev

    async def delete(self, kind: RevocationKind, value: str) -> bool:
        kind, value = validate(kind, value)
        return self._index.remove(kind, value)

    async def list(self) -> list[Revocation]:
        return [rev for rev, _ in self._index.live(time.monotonic())]

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
        return self._index.match(
            time.monotonic(), subject, agent, cert_sha256, jti, txn, chain_agents, credentials
        )

    async def quarantined(self, agent: str) -> bool:
        return self._index.holds(time.monotonic(), "quarantine", agent)


# --------------------------------------------------------------------------- pipeline helper


def identifiers(facts: RequestFacts, identity: Identity | None) -> dict[str, Any]:
    """The keyword arguments of ``check`` for one request, from verified facts only.

    ``agent`` is the peer's SPIFFE ID, else the principal's subject when it is an
    agent; ``jti`` is the principal's token id; ``txn`` is the ``txn`` claim of a
    verified Txn-Token (east-west calls). Works for public routes (``identity`` None):
    the client certificate is still checked. An agent credential adds every agent and
    credential id of its chain (``chain_agents``, ``credentials``).
    """
    peer = facts.peer
    agent = peer.spiffe_id if peer is not None else None
    subject = jti = txn = None
    if identity is not None:
        principal = identity.principal
        subject = principal.subject
        jti = principal.token_id
        if agent is None and principal.subject_type == "agent":
            agent = principal.subject
        for result in identity.results.values():
            claim = result.claims.get("txn")
            if isinstance(claim, str):
                txn = claim
                break
    provenance = identity.principal.provenance if identity is not None else None
    return {
        "subject": subject,
        "agent": agent,
        "cert_sha256": peer.cert_sha256 if peer is not None else None,
        "jti": jti,
        "txn": txn,
        "chain_agents": provenance.agents if provenance is not None else (),
        "credentials": provenance.credential_ids if provenance is not None else (),
    }
