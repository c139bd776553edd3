"""Frozen values that flow between pipeline stages.

Stages never import each other; they exchange these values through
``gateway.pipeline``. Nothing here imports anything else from the gateway, and
nothing here holds a raw credential: a principal records *what was verified*,
never the token or secret that proved it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from aiohttp import web

SubjectType = Literal["user", "agent", "service", "device"]
CallerType = Literal["human_browser", "human_api", "agent", "device"]
Mode = Literal["obo_user", "self", "obo_agent"]
SenderConstraint = Literal["dpop", "mtls", "none"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Peer:
    """The verified TLS client certificate of the connection (SPECS.md §11)."""

    spiffe_id: str | None
    trust_domain: str | None
    cert_sha256: str  # lowercase hex SHA-256 of the leaf certificate's DER
    cert_x5t_s256: str  # base64url (no padding) of the same digest, as in cnf.x5t#S256
    subject: str  # RFC 4514 string
    issuer: str  # RFC 4514 string
    not_after: float  # POSIX seconds

    def as_input(self) -> dict[str, Any]:
        return {
            "spiffe_id": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "cert_sha256": self.cert_sha256,
            "subject": self.subject,
            "issuer": self.issuer,
        }


@dataclass(frozen=True, slots=True)
class Actor:
    """One link of a delegation chain (RFC 8693 ``act``), outermost first."""

    sub: str
    iss: str | None = None

    def as_input(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sub": self.sub}
        if self.iss is not None:
            out["iss"] = self.iss
        return out


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a single authentication method proved the caller to be."""

    method: str  # the authn method instance name (config key)
    subject: str
    subject_type: SubjectType
    issuer: str | None = None
    scopes: tuple[str, ...] = ()
    client_id: str | None = None
    roles: tuple[str, ...] = ()
    actors: tuple[Actor, ...] = ()
    amr: tuple[str, ...] = ()  # RFC 8176 values for this method
    sender_constraint: SenderConstraint = "none"
    claims: Mapping[str, Any] = field(
        default_factory=lambda: _EMPTY
    )  # verified claims safe for policy
    expires_at: float | None = None  # POSIX seconds; caches never outlive it
    token_id: str | None = None  # jti, for revocation checks
    # Claims an issuer's ``claims`` mapping names (input.subject.<name>); verified values.
    attributes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    # The verified transaction of a Txn-Token (input.txn); None for every other credential.
    transaction: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything authentication established for one request (DESIGN.md §7 ``authn``).

    ``principal`` is the subject the policy reasons about: the most specific
    successful method (a token's subject beats the peer certificate that carried
    it). ``results`` holds every method that succeeded, keyed by method name, so the
    policy can require several.
    """

    principal: Principal
    results: Mapping[str, Principal]
    caller: CallerType
    mode: Mode

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.results)

    @property
    def sender_constrained(self) -> SenderConstraint:
        for result in self.results.values():
            if result.sender_constraint != "none":
                return result.sender_constraint
        return "none"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """The gateway's own view of the inbound request, after sanitising."""

    request_id: str
    method: str
    scheme: str  # of the listener, never from X-Forwarded-Proto
    host: str  # Host header as received (no port stripping)
    path: str  # normalised (gateway.upstream.paths.normalize_path)
    raw_query: str
    client_address: str  # after trusted_hops processing
    peer_address: str  # TCP peer
    forwarded_for: str  # the X-Forwarded-For value the upstream receives
    forwarded_proto: str
    forwarded_host: str
    peer: Peer | None
    time_ns: int


@dataclass(frozen=True, slots=True)
class Decision:
    """A parsed PDP decision; only ``allow=True`` lets a request through."""

    allow: bool
    decision_id: str
    reason: str = ""
    scopes: tuple[str, ...] | None = None  # None: the policy did not narrow
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    credential: str | None = None
    obligations: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


# A stage that had to read the whole request body (e.g. to check Content-Digest
# for an HTTP message signature) stores it under this request key, bounded by
# ``max_body_bytes``; the forwarder then sends these bytes instead of the stream.
BUFFERED_BODY_KEY = web.RequestKey("agentgate.buffered_body", bytes)
