"""``routes``: matching, upstream, authn tree, credentials, limits and timeouts per route."""

from __future__ import annotations

from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.settings.authn import AuthnTree, Bind, check_tree
from gateway.settings.base import FilePath, Strict
from gateway.settings.credentials import CredentialSettings, MTLSCredential


class UpstreamTLS(Strict):
    ca: FilePath | None = None  # default: the system trust store
    cert: FilePath | None = None  # client certificate presented to the upstream
    key: FilePath | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        return self


class RouteMatch(Strict):
    path_prefix: str = "/"
    methods: tuple[str, ...] = ()  # empty: any method
    hosts: tuple[str, ...] = ()  # empty: any host; "*.example.org" wildcards one label+

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in value)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower() for h in value)


class RateLimit(Strict):
    """A token bucket: ``rate`` tokens per second, ``burst`` deep, per key."""

    per: Literal["agent", "subject", "route", "client"] = "subject"
    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class RouteTimeouts(Strict):
    """Per-route overrides of ``server.timeouts.upstream_*``; ``None``: the server's value."""

    connect_s: float | None = Field(None, gt=0)
    headers_s: float | None = Field(None, gt=0)
    idle_s: float | None = Field(None, gt=0)
    total_s: float | None = Field(None, gt=0)  # non-stream routes only
    max_s: float | None = Field(None, gt=0)  # stream/websocket routes: lifetime cap (None: none)


_PROXIED = ("proxy", "mcp", "a2a")


class JSONRPCRoute(Strict):
    """``routes[].mcp`` / ``routes[].a2a``: how the gateway reads a JSON-RPC route's body.

    ``arguments`` names, per tool (``"*"``: every tool), the argument keys the policy sees as
    ``input.mcp.arguments``; nothing else of a call's arguments reaches the PDP or the logs.
    ``resource`` is this route's RFC 8707 resource indicator and RFC 9728 ``resource``
    (default ``<scheme>://<Host><path_prefix>`` of the request); with ``audience_binding`` a
    bearer token must name it in ``aud``.
    """

    max_body_bytes: int = Field(1024 * 1024, ge=64, le=64 * 1024 * 1024)
    max_batch: int = Field(64, ge=1, le=1024)
    arguments: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    filter_lists: bool = True
    session_binding: bool = True
    session_ttl_s: int = Field(24 * 3600, ge=60, le=30 * 24 * 3600)
    resource: str | None = None
    resource_name: str | None = None
    authorization_servers: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    audience_binding: bool = True
    max_list_entries: int = Field(256, ge=1, le=4096)  # tools/list entries the PDP is asked about

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        # RFC 8707 §2: an absolute URI without a fragment; RFC 9728 §3 wants https.
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise ValueError("must be an absolute http(s) URL without a fragment")
        return value

    @field_validator("authorization_servers")
    @classmethod
    def _servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for server in value:
            parts = urlsplit(server)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{server!r}: must be an absolute http(s) URL")
        return value


class AgentCard(Strict):
    """``routes[].a2a.agent_card``: the A2A agent card the gateway serves for the route.

    Fetched from the upstream at ``upstream_path``, its skills filtered by policy for each
    caller, then signed (A2A v1.0 ``signatures``: a JWS over the RFC 8785 form) with the
    gateway's token key.
    """

    path: str = "/.well-known/agent-card.json"
    upstream_path: str = "/.well-known/agent-card.json"
    sign: bool = True
    public: bool = True  # served without authentication (skills the anonymous caller may use)

    @field_validator("path", "upstream_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class A2ARoute(JSONRPCRoute):
    agent_card: AgentCard | None = AgentCard()


class Route(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # ``proxy``: forwarded to ``upstream``. ``agent_credentials``: served by the gateway
    # (genesis of agent credentials, gateway.agents); no upstream.
    # ``mcp`` / ``a2a``: proxied like ``proxy``, with the JSON-RPC body read and checked
    # (``input.mcp`` / ``input.a2a``), lists filtered and RFC 9728 metadata served.
    # ``agent_heartbeat``: served by the gateway (agents' heartbeats, issue 18); no upstream.
    kind: Literal["proxy", "agent_credentials", "mcp", "a2a", "agent_heartbeat"] = "proxy"
    match: RouteMatch = RouteMatch()
    authn: AuthnTree | None = None
    # None: the defaults (every all_of combining mtls with bearer/jwt_assertion binds them);
    # a value binds the whole tree; `off` / {} also switches the defaults off.
    bind: Bind | None = None
    upstream: str  # "" (filled in) for a route the gateway serves itself
    upstream_tls: UpstreamTLS | None = None
    strip_prefix: bool = False
    segment: str = "default"
    tags: tuple[str, ...] = ()
    policy_headers: tuple[str, ...] = ()  # request headers the policy may see
    # The default backend credential; ``None`` means txn_token when txn_tokens is
    # configured, otherwise none. ``credentials`` are named alternatives a decision may
    # pick (decision ``credential: <name>``).
    credential: CredentialSettings | None = None
    credentials: dict[str, CredentialSettings] = Field(default_factory=dict)
    send_txn_token: bool = True  # the minted Txn-Token goes upstream with any credential
    rate_limits: tuple[RateLimit, ...] = ()
    # A long-lived response (SSE, MCP event stream): no total cap, only idle_s and max_s.
    stream: bool = False
    # WebSocket upgrades are proxied (after authn and the decision); elsewhere refused (403).
    websocket: bool = False
    websocket_max_message_bytes: int = Field(1024 * 1024, ge=125, le=64 * 1024 * 1024)
    timeouts: RouteTimeouts = RouteTimeouts()
    mcp: JSONRPCRoute | None = None  # kind mcp (default: JSONRPCRoute())
    a2a: A2ARoute | None = None  # kind a2a (default: A2ARoute())

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        if not value:
            return value  # checked against kind below
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _served(cls, value: Any) -> Any:
        # A served route has no upstream; a proxy route without one keeps pydantic's
        # "required key is missing" error.
        if isinstance(value, dict) and value.get("kind", "proxy") not in _PROXIED:
            return {"upstream": "", **value}
        if isinstance(value, dict) and value.get("kind") in ("mcp", "a2a"):
            # JSON-RPC routes stream (Streamable HTTP, SSE): no total cap, idle_s bounds them.
            value = {"stream": True, value["kind"]: {}, **value}
        return value

    @model_validator(mode="after")
    def _kind(self) -> Self:
        if self.kind in _PROXIED and not self.upstream:
            raise ValueError("upstream is required")
        if self.kind not in _PROXIED and (self.upstream or self.credential or self.credentials):
            raise ValueError(f"a route of kind {self.kind} has no upstream or credentials")
        if self.mcp is not None and self.kind != "mcp":
            raise ValueError("mcp: only on a route of kind mcp")
        if self.a2a is not None and self.kind != "a2a":
            raise ValueError("a2a: only on a route of kind a2a")
        if self.kind in ("mcp", "a2a") and self.websocket:
            raise ValueError(f"a route of kind {self.kind} does not take websocket upgrades")
        return self

    @property
    def jsonrpc(self) -> JSONRPCRoute | None:
        """The JSON-RPC section of an ``mcp`` or ``a2a`` route, else None."""
        return self.mcp if self.mcp is not None else self.a2a

    @model_validator(mode="after")
    def _mtls_needs_https(self) -> Self:
        # SECURITY: a client certificate only exists on a TLS connection; on http:// the
        # credential would silently vanish and the request go out with none.
        creds = [self.credential, *self.credentials.values()]
        if not self.upstream.startswith("https:") and any(
            isinstance(c, MTLSCredential) for c in creds
        ):
            raise ValueError("an mtls credential needs an https:// upstream")
        return self

    @field_validator("authn", mode="before")
    @classmethod
    def _authn(cls, value: Any) -> Any:
        if value is not None:
            check_tree(value)
        return value

    @field_validator("policy_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)
