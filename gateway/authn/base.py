"""The contract every authentication method implements, and shared helpers.

A method inspects the request and answers in one of three ways (the Starlette
authenticator shape, CONVENTIONS.md):

* ``None`` -- *not mine*: the credential this method understands is absent;
* a :class:`gateway.context.Principal` -- verified;
* raises :class:`gateway.errors.Unauthorized` (401, ``invalid_token``-style:
  the credential is present but fails verification),
  :class:`gateway.errors.BadRequest` (400 ``invalid_request``: malformed, or sent
  twice), or :class:`gateway.errors.ServiceUnavailable` (503: a dependency it
  must consult -- JWKS, introspection, replay store -- is unusable; fail closed).

Methods never see or return another method's result; composition (AND/OR) is
:mod:`gateway.authn.compose`'s job. Error texts must never contain the token,
a secret, or anything derived from a secret other than a short SHA-256 prefix.
"""

from __future__ import annotations

from typing import Protocol

from gateway.context import Inbound, Principal, RequestFacts
from gateway.errors import BadRequest, Unauthorized

REALM = "agentgate"


class Method(Protocol):
    name: str  # the instance name from config (``authn.<name>``)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` challenge to offer when no credential was sent."""
        ...

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None: ...


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


def authorization(request: Inbound) -> tuple[str, str] | None:
    """The single ``Authorization`` header as (lowercased scheme, credentials), or None.

    Raises 400 ``invalid_request`` when the header is repeated (a token sent twice)
    or has no credentials part.
    """
    values = request.headers.getall("Authorization", ())
    if not values:
        return None
    if len(values) > 1:
        raise invalid_request("more than one Authorization header")
    scheme, _, credentials = values[0].strip().partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials:
        raise invalid_request("malformed Authorization header")
    return scheme.lower(), credentials
