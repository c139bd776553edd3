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
from typing import Any, Literal, Protocol

from multidict import CIMultiDictProxy, MultiMapping

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
class Provenance:
    """Where an agent credential came from (``input.provenance``, gateway.agents).

    ``chain`` is root first: one mapping per block (agent, credential_id, scope, iat, exp,
    depth and any restrictions); ``restrictions`` are the effective (innermost) ones that a
    later stage checks against the route (routes, segments, tools).
    """

    genesis: Mapping[str, str]
    issuer: str
    chain: tuple[Mapping[str, Any], ...]
    restrictions: Mapping[str, frozenset[str]] = field(default_factory=lambda: _EMPTY)

    @property
    def credential_id(self) -> str:
        return str(self.chain[-1]["credential_id"])

    @property
    def credential_ids(self) -> tuple[str, ...]:
        return tuple(str(block["credential_id"]) for block in self.chain)

    @property
    def agents(self) -> tuple[str, ...]:
        """Root first."""
        return tuple(str(block["agent"]) for block in self.chain)

    def as_input(self) -> dict[str, Any]:
        return {
            "genesis": dict(self.genesis),
            "issuer": self.issuer,
            "chain": [dict(block) for block in self.chain],
            "depth": len(self.chain) - 1,
            "credential_id": self.credential_id,
        }


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
    # The verified chain of an agent credential (input.provenance); None otherwise.
    provenance: Provenance | None = None


class VerifiedToken:
    """A verified credential that a later stage must present again (token exchange).

    The value is reachable only through :meth:`reveal`; ``repr``/``str`` never show it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "VerifiedToken(<redacted>)"

    __str__ = __repr__


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
    # Whether the primary credential carries OAuth scopes (a token's ``scope``): a policy
    # may then only narrow them. Credentials without the notion (a key, a certificate) do not.
    scoped: bool = False
    # The verified inbound access token, kept only for an RFC 8693 exchange converter; its
    # repr never shows it.
    exchange_token: VerifiedToken | None = field(default=None, compare=False)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.results)

    @property
    def continued_txn(self) -> str | None:
        """The ``txn`` an east-west hop continues (a Txn-Token is the primary credential)."""
        transaction = self.principal.transaction
        return None if transaction is None else str(transaction["id"])

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


class Body(Protocol):
    """The inbound request body, read at most once and bounded (:mod:`gateway.protocols.body`).

    A stage that needs the bytes (an HTTP message signature's Content-Digest, a form that may
    carry a token, later a JSON-RPC envelope) calls :meth:`read`; the forwarder then sends
    :attr:`buffered` instead of the stream. Nobody else touches the raw stream.
    """

    @property
    def exists(self) -> bool: ...

    @property
    def declared_length(self) -> int | None: ...

    @property
    def buffered(self) -> bytes | None: ...

    async def read(self) -> bytes:
        """All of the body; raises 413 past ``max_body_bytes`` (declared or streamed)."""
        ...


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the authentication methods see of the request: never the aiohttp request."""

    method: str
    raw_path: str  # the request target exactly as received (RFC 9421 @request-target)
    headers: CIMultiDictProxy[str]
    query: MultiMapping[str]
    body: Body


@dataclass(frozen=True, slots=True)
class Enrichment:
    """What the ``enrich`` stage adds to the policy input, beside the request and identity.

    ``agent`` is the key behaviour is recorded under (None: not an agent); ``behavior`` its
    sliding-window snapshot (``input.behavior``). Registry records, MCP and workflow facts
    join here.
    """

    agent: str | None = None
    behavior: Mapping[str, Any] | None = None
    # ``quarantine`` when the agent is quarantined (issue 18): its requests come from that
    # segment, which the segments policy isolates; None: derived from the peer as usual.
    segment: str | None = None


NO_ENRICHMENT = Enrichment()
