"""One error tree for the whole gateway.

Every stage raises a :class:`GatewayError` subclass instead of returning a
flag. Each error carries an HTTP status, a stable snake_case ``reason`` code
(shared by responses, audit records and metrics), a terse public text that is
safe to show to any caller, optional response headers (``WWW-Authenticate``,
``Retry-After``...), and an optional private ``detail`` that goes to logs and
the audit record keyed by the request id, never to the caller.

Errors are rendered in exactly one place (``gateway.render``). Nothing in this
module may import anything else from the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


class GatewayError(Exception):
    """Base of every error that becomes an HTTP response."""

    status: int = 500
    reason: str = "internal_error"
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
        return f"{type(self).__name__}(status={self.status}, reason={self.reason!r})"


class BadRequest(GatewayError):
    status = 400
    reason = "bad_request"
    public = "bad request"


class InvalidPath(BadRequest):
    reason = "invalid_path"
    public = "invalid request path"


class NotFound(GatewayError):
    status = 404
    reason = "no_route"
    public = "no route matches this request"


class MethodNotAllowed(GatewayError):
    status = 405
    reason = "method_not_allowed"
    public = "method not allowed on this route"


class PayloadTooLarge(GatewayError):
    status = 413
    reason = "body_too_large"
    public = "request body too large"


class URITooLong(GatewayError):
    status = 414
    reason = "uri_too_long"
    public = "request target too long"


class HeadersTooLarge(GatewayError):
    status = 431
    reason = "headers_too_large"
    public = "request header fields too large"


class Unauthorized(GatewayError):
    """401: no credential, or a credential that failed verification."""

    status = 401
    reason = "authn_invalid"
    public = "authentication failed"


class Forbidden(GatewayError):
    status = 403
    reason = "policy_denied"
    public = "access denied by policy"


class ServiceUnavailable(GatewayError):
    """503: a dependency we must consult (PDP, JWKS, secrets) is not usable."""

    status = 503
    reason = "dependency_unavailable"
    public = "service temporarily unavailable"


class BadGateway(GatewayError):
    status = 502
    reason = "upstream_unavailable"
    public = "upstream unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    reason = "upstream_timeout"
    public = "upstream timed out"


class ConfigError(Exception):
    """Invalid configuration: a list of ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    def lines(self) -> list[str]:
        return [f"{path}: {msg}" if path else msg for path, msg in self.problems]
