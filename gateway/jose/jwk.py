"""JSON Web Keys: import and export of public keys (RFC 7517, RFC 7518 §6, RFC 8037 §2) and
RFC 7638 thumbprints.

Contract: pure functions, no I/O. :func:`public_key_from_jwk` builds a ``cryptography`` public
key from a JWK and returns it with the JWS algorithms its type permits; it refuses private or
symmetric keys (``oct`` and any private member, RFC 7517 §9.1), unknown key types, EC points
off the curve or not full-length (RFC 7518 §6.2.1.2), RSA under 2048 bits (RFC 7518 §3.3).
:func:`check_signing_use` is the RFC 7517 §4.2-4.3 ``use``/``key_ops`` rule for a
verification key. :func:`public_jwk` exports the public members of a key (the inverse), and
:func:`jwk_thumbprint` is RFC 7638 §3 (SHA-256, the ``kid`` of our keys and DPoP's
``cnf.jkt``, RFC 9449 §6). Everything raises :class:`gateway.jose.errors.JOSEError`
(``code`` ``bad_key``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.jose.errors import JOSEError
from gateway.jose.jws import EC_ALGS, RSA_ALGS, PublicKey, b64url_decode, b64url_encode

MIN_RSA_BITS = 2048  # RFC 7518 §3.3
OKP_CURVES = frozenset({"Ed25519", "Ed448"})

# RFC 7517 §9.1 / RFC 7518 §6: members that carry private (or symmetric) key material.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_EC_SIZE: Mapping[str, int] = {"P-256": 32, "P-384": 48, "P-521": 66}
_EC_CURVE: Mapping[str, Callable[[], ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_CRV_NAME: Mapping[str, str] = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def check_signing_use(jwk: Mapping[str, Any]) -> None:
    """RFC 7517 §4.2/§4.3: a verification key is ``use: sig`` (or no ``use``) and its
    ``key_ops``, if any, include ``verify``."""
    if jwk.get("use", "sig") != "sig":
        raise JOSEError("not a signature key (use)", "bad_key")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JOSEError("key_ops does not allow verify", "bad_key")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    """Build a public key from a JWK; return it with the algorithms its type permits.

    Refuses private or symmetric keys (``oct`` and any private member), unknown key types,
    EC points off the curve or not full-length (RFC 7518 §6.2.1.2), RSA under 2048 bits.
    """
    if PRIVATE_MEMBERS.intersection(jwk):
        # SECURITY: a JWK with private members is never a verification key.
        raise JOSEError("JWK contains private key material", "bad_key")
    kty = jwk.get("kty")
    if kty == "EC":
        return _ec_key(jwk)
    if kty == "OKP":
        return _okp_key(jwk)
    if kty == "RSA":
        return _rsa_key(jwk)
    raise JOSEError("unsupported JWK key type", "bad_key")


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JOSEError(f"JWK member {name} missing", "bad_key")
    return b64url_decode(value)


def _ec_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in EC_ALGS:
        raise JOSEError("unsupported EC curve", "bad_key")
    x, y = _member(jwk, "x"), _member(jwk, "y")
    if len(x) != _EC_SIZE[crv] or len(y) != _EC_SIZE[crv]:
        raise JOSEError("EC coordinate has the wrong length", "bad_key")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), _EC_CURVE[crv]()
    )
    try:
        # SECURITY: RFC 8725 §3.4 -- cryptography refuses points that are not on the curve.
        key = numbers.public_key()
    except ValueError:
        raise JOSEError("EC point is not on the curve", "bad_key") from None
    return key, frozenset({EC_ALGS[crv]})


def _okp_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    crv, x = jwk.get("crv"), _member(jwk, "x")
    try:
        if crv == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(x), frozenset({"EdDSA"})
        if crv == "Ed448":
            return ed448.Ed448PublicKey.from_public_bytes(x), frozenset({"EdDSA"})
    except (ValueError, UnsupportedAlgorithm):
        raise JOSEError("malformed OKP key", "bad_key") from None
    raise JOSEError("unsupported OKP curve", "bad_key")


def _rsa_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    n = int.from_bytes(_member(jwk, "n"), "big")
    e = int.from_bytes(_member(jwk, "e"), "big")
    if n.bit_length() < MIN_RSA_BITS:
        raise JOSEError("RSA key too small", "bad_key")
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise JOSEError("malformed RSA key", "bad_key") from None
    return key, RSA_ALGS


_THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 §3 SHA-256 thumbprint, base64url without padding (``cnf.jkt``, RFC 9449 §6)."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise JOSEError("unsupported JWK key type", "bad_key")
    required: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise JOSEError(f"JWK member {name} missing", "bad_key")
        required[name] = value
    # RFC 7638 §3.3: lexicographic member order, no whitespace, UTF-8.
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    try:
        encoded = canonical.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") from JSON has no UTF-8 form
        raise JOSEError("malformed JWK member", "bad_key") from None
    return b64url_encode(hashlib.sha256(encoded).digest())


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7638 required members of a public key (``kty`` and its public parameters)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CRV_NAME.get(key.curve.name)
        if crv is None:
            raise JOSEError(f"unsupported EC curve {key.curve.name}", "bad_key")
        size, numbers = _EC_SIZE[crv], key.public_numbers()
        return {
            "crv": crv,
            "kty": "EC",
            "x": b64url_encode(numbers.x.to_bytes(size, "big")),
            "y": b64url_encode(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        return {"crv": crv, "kty": "OKP", "x": b64url_encode(raw)}
    rsa_numbers = key.public_numbers()
    return {
        "e": b64url_encode(rsa_numbers.e.to_bytes((rsa_numbers.e.bit_length() + 7) // 8, "big")),
        "kty": "RSA",
        "n": b64url_encode(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
    }
