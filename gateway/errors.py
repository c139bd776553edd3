"""One error tree for the whole gateway.

Every stage raises a :class:`GatewayError` subclass instead of returning a
flag. Each error carries an HTTP status, a stable snake_case ``reason`` code
(a :class:`Reason`, shared by responses, audit records and metrics), a terse public text that is
safe to show to any caller, optional response headers (``WWW-Authenticate``,
``Retry-After``...), and an optional private ``detail`` that goes to logs and
the audit record keyed by the request id, never to the caller.

Errors are rendered in exactly one place (``gateway.render``). Nothing in this
module may import anything else from the gateway.

:class:`Reason` is the one list of reason codes the gateway emits: in the error
JSON's ``reason``, the audit record and the access log, the ``reason``/``kind``
labels of the ``agentgate_*`` metrics, the decision log, and the TLS and listener
refusal logs. It is a :class:`enum.StrEnum`, so every member *is* the plain string
that goes on the wire (``Reason.POLICY_DENIED == "policy_denied"``, and
``json.dumps``, ``str()``, ``format()`` and Prometheus labels give the bare value).
Modules that still spell a code as a literal are held to the list by
``tests/unit/test_reasons.py``, which also fails on a member nothing emits.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


@enum.unique
class Reason(enum.StrEnum):
    """Every stable reason code (member name = the code in capitals)."""

    # A request served to its end (audit, access log, requests_total).
    OK = "ok"

    # The default reasons of this module's errors, then the refusals before the pipeline
    # ran (gateway.net.listener, gateway.net.framing) and the upgrade refused before authn.
    INTERNAL_ERROR = "internal_error"
    BAD_REQUEST = "bad_request"
    INVALID_PATH = "invalid_path"
    NO_ROUTE = "no_route"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    BAD_FRAMING = "bad_framing"
    BAD_HEADER = "bad_header"
    BAD_HOST = "bad_host"
    BAD_REQUEST_LINE = "bad_request_line"
    HTTP_VERSION_NOT_SUPPORTED = "http_version_not_supported"
    UNSUPPORTED_TRANSFER_CODING = "unsupported_transfer_coding"
    HTTP2_UNSUPPORTED = "http2_unsupported"
    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"
    MAX_CONNECTIONS = "max_connections"  # 503 answered (connections_refused_total)
    MAX_CONNECTIONS_OVERFLOW = "max_connections_overflow"  # closed on accept
    UPGRADE_NOT_ALLOWED = "upgrade_not_allowed"

    # TLS handshakes refused (gateway.net.tls_acceptor, agentgate_tls_handshake_failures), and
    # a client certificate refused after the handshake (gateway.net.listener).
    NO_CLIENT_CERT = "no_client_cert"
    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    BAD_CERTIFICATE = "bad_certificate"
    PROTOCOL = "protocol"
    NOT_TLS = "not_tls"
    TIMEOUT = "timeout"
    CLOSED = "closed"
    OTHER = "other"
    BAD_SVID = "bad_svid"

    # Authentication (gateway.authn) and what it depends on (keys, replay store, secrets).
    AUTHN_MISSING = "authn_missing"
    AUTHN_INVALID = "authn_invalid"
    AUTHN_BINDING_MISMATCH = "authn_binding_mismatch"
    AUTHN_OVERLOADED = "authn_overloaded"
    INVALID_REQUEST = "invalid_request"
    ACTOR_CHAIN_TOO_DEEP = "actor_chain_too_deep"
    CREDENTIAL_REVOKED = "credential_revoked"
    AGENT_CREDENTIAL_INVALID = "agent_credential_invalid"
    AGENT_CREDENTIAL_RESTRICTED = "agent_credential_restricted"
    JWKS_UNAVAILABLE = "jwks_unavailable"
    INTROSPECTION_UNAVAILABLE = "introspection_unavailable"
    TXN_KEYS_UNAVAILABLE = "txn_keys_unavailable"
    STATE_UNAVAILABLE = "state_unavailable"
    SECRET_UNAVAILABLE = "secret_unavailable"  # noqa: S105 - a reason code, not a secret

    # The decision (gateway.authz), its obligations and the rate limits (pdp_errors_total).
    POLICY_DENIED = "policy_denied"
    POLICY_UNDEFINED = "policy_undefined"
    POLICY_MALFORMED = "policy_malformed"
    PDP_UNAVAILABLE = "pdp_unavailable"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    RATE_LIMITED = "rate_limited"
    OBLIGATION_INVALID = "obligation_invalid"

    # JSON-RPC routes (kind mcp / a2a): the body, the session, the token's audience.
    JSONRPC_INVALID = "jsonrpc_invalid"
    SESSION_NOT_FOUND = "session_not_found"
    AUDIENCE_MISMATCH = "audience_mismatch"
    RESPONSE_UNFILTERABLE = "response_unfilterable"  # a listing stream cut: cannot filter

    # Continuous authentication (gateway.agents.continuous): a heartbeat about another agent.
    HEARTBEAT_AGENT_MISMATCH = "heartbeat_agent_mismatch"

    # Credential conversion for the upstream (gateway.credentials).
    CREDENTIAL_NOT_ALLOWED = "credential_not_allowed"
    CREDENTIAL_UNAVAILABLE = "credential_unavailable"
    TXN_TOKEN_MISSING = "txn_token_missing"  # noqa: S105 - a reason code, not a token

    # The upstream exchange (gateway.upstream.forward): 502/504 before the response head;
    # after it, the cut of a streamed body or a WebSocket session (STREAM_CUT,
    # upstream_errors_total).
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_IDLE_TIMEOUT = "upstream_idle_timeout"
    UPSTREAM_TOTAL_TIMEOUT = "upstream_total_timeout"
    STREAM_MAX_DURATION = "stream_max_duration"
    UPSTREAM_CUT = "upstream_cut"
    CLIENT_GONE = "client_gone"
    CLIENT_SEND_TIMEOUT = "client_send_timeout"
    WEBSOCKET_IDLE_TIMEOUT = "websocket_idle_timeout"
    WEBSOCKET_MESSAGE_TOO_BIG = "websocket_message_too_big"

    # The revocation admin API (gateway.state.revocation).
    INVALID_REVOCATION = "invalid_revocation"
    REVOCATION_LIST_FULL = "revocation_list_full"


class GatewayError(Exception):
    """Base of every error that becomes an HTTP response."""

    status: int = 500
    reason: str = Reason.INTERNAL_ERROR
    public: str = "internal error"

    def __init__(
        self,
        detail: str = "",
        *,
        reason: str | None = None,
        public: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        decision_id: str | None = None,
    ) -> None:
        super().__init__(detail or self.public)
        self.detail = detail
        self.decision_id = decision_id
        if reason is not None:
            self.reason = reason
        if public is not None:
            self.public = public
        if status is not None:
            self.status = status
        self.headers: Mapping[str, str] = headers if headers is not None else _EMPTY

    def __repr__(self) -> str:
        # The detail may name internal hosts; keep it out of reprs that could be
        # echoed somewhere by accident.
        return f"{type(self).__name__}(status={self.status}, reason={str(self.reason)!r})"


class JSONRPCRefused(GatewayError):
    """A refusal answered as a JSON-RPC 2.0 error document (``kind: mcp`` / ``a2a`` routes).

    ``body`` is the whole response body (an error object, or an array of them for a batch),
    built by :mod:`gateway.protocols.jsonrpc`; it holds only public text and decision ids.
    """

    status = 400
    reason: str = Reason.JSONRPC_INVALID
    public = "invalid JSON-RPC request"

    def __init__(
        self,
        body: bytes,
        detail: str = "",
        *,
        reason: str | None = None,
        status: int | None = None,
        decision_id: str | None = None,
    ) -> None:
        super().__init__(detail, reason=reason, status=status, decision_id=decision_id)
        self.body = body


class BadRequest(GatewayError):
    status = 400
    reason: str = Reason.BAD_REQUEST
    public = "bad request"


class InvalidPath(BadRequest):
    reason: str = Reason.INVALID_PATH
    public = "invalid request path"


class NotFound(GatewayError):
    status = 404
    reason: str = Reason.NO_ROUTE
    public = "no route matches this request"


class MethodNotAllowed(GatewayError):
    status = 405
    reason: str = Reason.METHOD_NOT_ALLOWED
    public = "method not allowed on this route"


class PayloadTooLarge(GatewayError):
    status = 413
    reason: str = Reason.BODY_TOO_LARGE
    public = "request body too large"


class URITooLong(GatewayError):
    status = 414
    reason: str = Reason.URI_TOO_LONG
    public = "request target too long"


class HeadersTooLarge(GatewayError):
    status = 431
    reason: str = Reason.HEADERS_TOO_LARGE
    public = "request header fields too large"


class Unauthorized(GatewayError):
    """401: no credential, or a credential that failed verification."""

    status = 401
    reason: str = Reason.AUTHN_INVALID
    public = "authentication failed"


class Forbidden(GatewayError):
    status = 403
    reason: str = Reason.POLICY_DENIED
    public = "access denied by policy"


class ServiceUnavailable(GatewayError):
    """503: a dependency we must consult (PDP, JWKS, secrets) is not usable."""

    status = 503
    reason: str = Reason.DEPENDENCY_UNAVAILABLE
    public = "service temporarily unavailable"


class BadGateway(GatewayError):
    status = 502
    reason: str = Reason.UPSTREAM_UNAVAILABLE
    public = "upstream unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    reason: str = Reason.UPSTREAM_TIMEOUT
    public = "upstream timed out"


# --------------------------------------------------------------------------- RFC 6750 §3

REALM = "agentgate"


def _quote(value: str) -> str:
    # RFC 9110 quoted-string: escape backslash and quote; drop CR/LF outright.
    cleaned = value.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(ch for ch in cleaned if ch >= " " and ch != "\x7f")


def challenge(scheme: str, **params: str) -> str:
    """``Bearer realm="agentgate", error="invalid_token"`` with safe quoting."""
    parts = [f'{key}="{_quote(val)}"' for key, val in params.items()]
    return f"{scheme} {', '.join(parts)}" if parts else scheme


def invalid_token(
    description: str, *, scheme: str = "Bearer", detail: str = "", reason: str = "authn_invalid"
) -> Unauthorized:
    """401 per RFC 6750 §3.1; ``description`` is public, keep it generic."""
    header = challenge(scheme, realm=REALM, error="invalid_token", error_description=description)
    return Unauthorized(detail or description, reason=reason, headers={"WWW-Authenticate": header})


def invalid_request(description: str, *, scheme: str = "Bearer") -> BadRequest:
    """400 per RFC 6750 §3.1: malformed credential, or a credential sent twice."""
    header = challenge(scheme, realm=REALM, error="invalid_request", error_description=description)
    return BadRequest(
        description,
        reason="invalid_request",
        public=description,
        headers={"WWW-Authenticate": header},
    )


class ConfigError(Exception):
    """Invalid configuration: a list of ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    def lines(self) -> list[str]:
        return [f"{path}: {msg}" if path else msg for path, msg in self.problems]
