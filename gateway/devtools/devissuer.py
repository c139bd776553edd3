"""The development access-token issuer: RFC 9068 tokens that a dev configuration trusts.

An issuer with ``dev_signing_key: path`` (instead of ``jwks_uri``/``jwks_file``) is a
**development issuer**: its key pair lives in that file, the gateway trusts the public half
as the issuer's JWKS, and ``agentgate token mint-access`` signs with the private half. This
is what lets anyone try bearer, DPoP and certificate-bound routes with curl, and it is never
for production: whoever can read the file can mint any token the issuer's routes accept.

Contract:

* :func:`load_or_create` returns the key in ``path``, creating it first if the file is
  missing: an EC P-256 key (ES256) when the issuer allows ES256, else Ed25519 (EdDSA); mode
  ``0600``, a new parent folder ``0700``; of two processes creating it at once, both end up
  with the same key (:func:`gateway.private_files.create_exclusive`). An existing key must be
  of an algorithm the issuer allows. Raises :class:`DevIssuerError` (naming the file, never
  its contents).
* :func:`load_existing` is the same without creating (``check-config``).
* :func:`access_token_claims` (pure) builds the RFC 9068 §2.2 claim set: ``iss``, ``sub``,
  ``aud``, ``exp``, ``iat``, ``jti``, ``client_id``, ``scope``, RFC 8693 ``act``, and ``cnf``
  (``jkt`` for DPoP, RFC 9449 §6.1; ``x5t#S256`` for a certificate, RFC 8705 §3.1).
* :func:`sign_access_token` signs it with JOSE header ``{"alg", "kid", "typ": "at+jwt"}``.
* :func:`dpop_proof` signs an RFC 9449 §4.2 proof (``typ dpop+jwt``, the public ``jwk``;
  ``jti``, ``htm``, ``htu`` without query or fragment, ``iat``, ``ath`` with a token,
  ``nonce`` when given).
* :func:`cert_thumbprint` is ``x5t#S256`` of a PEM certificate: base64url(SHA-256(DER)).

Signing reuses :mod:`gateway.jose` through :mod:`gateway.tokens` (one JOSE signer, one
JWK/thumbprint function).
"""

from __future__ import annotations

import hashlib
import stat
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.jose.jwk import public_jwk
from gateway.jose.jws import b64url_encode, encode_json
from gateway.private_files import create_exclusive
from gateway.sdk.txn import Alg
from gateway.tokens.keys import (
    KeyRingError,
    SigningKey,
    generate_private_key,
    load_private_key,
    private_key_pem,
)
from gateway.tokens.txn_token import sign_claims

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 -- RFC 9068 §2.1, a media type
DPOP_TYP = "dpop+jwt"  # RFC 9449 §4.2
MAX_TTL_S = 3600
DEFAULT_CLIENT_ID = "agentgate-dev-cli"
DPOP_KEY_NAME = "dev-dpop-client.pem"


class DevIssuerError(ValueError):
    """The dev issuer's key file is unusable; the message names the file, never its bytes."""


def _alg_for(algorithms: Collection[str]) -> Alg:
    if "ES256" in algorithms:
        return "ES256"
    if "EdDSA" in algorithms:
        return "EdDSA"
    raise DevIssuerError("a development issuer needs ES256 or EdDSA in its algorithms")


def load_existing(path: Path, algorithms: Collection[str]) -> SigningKey:
    """The key in ``path`` (which must exist), usable with one of ``algorithms``."""
    try:
        key = load_private_key(path)
    except KeyRingError as exc:
        raise DevIssuerError(str(exc)) from None
    if key.alg not in algorithms:
        raise DevIssuerError(f"{path}: an {key.alg} key, but the issuer allows {list(algorithms)}")
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # SECURITY: whoever reads this file can mint tokens the dev issuer's routes accept.
        raise DevIssuerError(f"{path}: readable by group/others; chmod 600 it")
    return key


def load_or_create(path: Path, algorithms: Collection[str]) -> tuple[SigningKey, bool]:
    """(the key in ``path``, whether this call created the file)."""
    created = False
    if not path.exists():
        alg = _alg_for(algorithms)
        try:
            created = create_exclusive(path, private_key_pem(generate_private_key(alg)))
        except OSError as exc:
            raise DevIssuerError(f"{path}: cannot create: {exc.strerror or exc}") from None
    return load_existing(path, algorithms), created


def jwks(key: SigningKey) -> dict[str, Any]:
    """The public JWK Set of ``key`` (its RFC 7638 ``kid``, ``alg``, ``use: sig``)."""
    return {"keys": [dict(key.public_jwk)]}


def public_jwks(path: Path, algorithms: Collection[str]) -> tuple[dict[str, Any], bool]:
    """(the public JWK Set of the dev issuer key in ``path``, whether this call created it).

    The composition root hands this to the bearer method's JWKS client
    (:class:`gateway.authn.jwks.DevKeys`), so that authentication never imports the dev tools
    (or, through them, the token minting code). Raises :class:`DevIssuerError`.
    """
    key, created = load_or_create(path, algorithms)
    return jwks(key), created


def _act(actors: Sequence[str]) -> dict[str, Any] | None:
    """RFC 8693 §4.1: the current actor outermost, each earlier one nested in ``act``."""
    act: dict[str, Any] | None = None
    for sub in reversed(actors):
        act = {"sub": sub} if act is None else {"sub": sub, "act": act}
    return act


def access_token_claims(
    *,
    issuer: str,
    audience: str,
    sub: str,
    scopes: Sequence[str] = (),
    actors: Sequence[str] = (),
    client_id: str | None = None,
    ttl_s: int = 300,
    jkt: str | None = None,
    x5t_s256: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The RFC 9068 §2.2 claims; ``client_id`` defaults to the current actor, else the CLI."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be 1..{MAX_TTL_S} seconds")
    if not sub:
        raise ValueError("sub must not be empty")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": str(uuid.uuid4()),
        "client_id": client_id or (actors[0] if actors else DEFAULT_CLIENT_ID),
    }
    scope = " ".join(dict.fromkeys(s for part in scopes for s in part.split()))
    if scope:
        claims["scope"] = scope
    act = _act(actors)
    if act is not None:
        claims["act"] = act
    cnf = {k: v for k, v in (("jkt", jkt), ("x5t#S256", x5t_s256)) if v is not None}
    if cnf:
        claims["cnf"] = cnf
    return claims


def sign_access_token(key: SigningKey, claims: Mapping[str, Any]) -> str:
    header = encode_json({"alg": key.alg, "kid": key.kid, "typ": ACCESS_TOKEN_TYP})
    return sign_claims(key, claims, header)


def _required_members(key: SigningKey) -> dict[str, str]:
    # RFC 7638 required members only: the proof's jwk carries no kid, alg or use.
    return public_jwk(key.private_key.public_key())


def dpop_proof(
    key: SigningKey,
    *,
    htm: str,
    htu: str,
    access_token: str | None = None,
    nonce: str | None = None,
    now: float | None = None,
) -> str:
    """An RFC 9449 proof for one request ``htm htu`` (query and fragment are dropped)."""
    parts = urlsplit(htu)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("--htu must be an absolute http(s) URL")
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "htm": htm.upper(),
        "htu": urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", "")),
        "iat": int(time.time() if now is None else now),
    }
    if access_token is not None:
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        claims["ath"] = b64url_encode(digest)
    if nonce is not None:
        claims["nonce"] = nonce
    header = encode_json({"typ": DPOP_TYP, "alg": key.alg, "jwk": _required_members(key)})
    return sign_claims(key, claims, header)


def cert_thumbprint(cert_file: Path) -> str:
    """RFC 8705 §3.1 ``x5t#S256`` of the first certificate in a PEM file."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as exc:
        raise DevIssuerError(f"{cert_file}: cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise DevIssuerError(f"{cert_file}: not a PEM certificate") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return b64url_encode(hashlib.sha256(der).digest())
