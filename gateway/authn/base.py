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

# The RFC 6750 §3 error factories live in gateway.errors; methods import them from here too.
from gateway.errors import REALM, challenge, invalid_request, invalid_token


class Method(Protocol):
    name: str  # the instance name from config (``authn.<name>``)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` challenge to offer when no credential was sent."""
        ...

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None: ...


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


__all__ = [
    "REALM",
    "Method",
    "authorization",
    "challenge",
    "invalid_request",
    "invalid_token",
]
