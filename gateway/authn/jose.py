"""Shared JOSE checks for every JWT the gateway verifies (RFC 7515, RFC 7517, RFC 7518, RFC 8725).

Contract: pure functions and small value types, no I/O, no knowledge of HTTP. Every check
*raises* :class:`TokenError` (a ``ValueError``) whose ``str()`` is a terse description that is
safe to put in an ``error_description``; callers map it to their own 401 challenge (Bearer
``invalid_token``, DPoP ``invalid_dpop_proof``...). Nothing here returns ``False``.

What :func:`parse_compact` enforces before any signature check (RFC 8725 §2, §3):

* size cap, ASCII only, exactly three base64url segments (RFC 7515 §7.1), non-empty signature;
* the header and the payload are UTF-8 JSON objects with no duplicate member names
  (RFC 8725 §2.6, RFC 7515 §5.2 step 4 lets us reject), no ``NaN``/``Infinity`` and no
  number that overflows to infinity (``1e400``);
* ``alg`` is a string and is never ``none`` in any casing (RFC 8725 §2.1, §3.1);
* ``crit`` is refused outright: we understand no extension header parameter (RFC 7515 §4.1.11);
* ``kid`` is a printable ASCII string of at most 256 characters, used only as a dict key
  (RFC 8725 §2.9, §3.10);
* ``jku``, ``x5u``, ``x5c`` and ``jwk`` are never read here: trust anchors come from
  configuration only (RFC 8725 §3.10). DPoP reads ``jwk`` itself, as a *claimed* key.

:class:`VerificationKey` binds one public key to the algorithms it may be used with (RFC 8725
§3.1: never an HMAC algorithm, RFC 8725 §2.1) and verifies with ``cryptography`` directly over
the JWS signing input. ECDSA signatures must be the fixed-size ``R || S`` of RFC 7518 §3.4 with
``0 < r, s < n``. :func:`jwk_thumbprint` is RFC 7638 §3.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from json.scanner import make_scanner
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAX_KID_CHARS = 256
MIN_RSA_BITS = 2048  # RFC 7518 §3.3
_MAX_NUMERIC_DATE = 1 << 53  # integers beyond this are not exact as floats (and never dates)

PublicKey = (
    ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | rsa.RSAPublicKey
)

EC_ALGS: Mapping[str, str] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
OKP_CURVES = frozenset({"Ed25519", "Ed448"})

# RFC 7517 §9.1 / RFC 7518 §6: members that carry private (or symmetric) key material.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_B64URL_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The characters that may end a segment of length 2 (resp. 3) mod 4: their unused low 4
# (resp. 2) bits are zero (RFC 4648 §3.5).
_LAST_CHAR = {2: frozenset(_B64URL_ALPHABET[::16]), 3: frozenset(_B64URL_ALPHABET[::4])}
_KID = re.compile(rf"[\x20-\x7e]{{1,{MAX_KID_CHARS}}}")


class TokenError(ValueError):
    """A token, proof or key failed a check; ``str()`` is safe to show to the caller."""


# --------------------------------------------------------------------------- encoding


def b64url_decode(segment: str) -> bytes:
    """Strict, canonical base64url without padding (RFC 7515 §2, Appendix C).

    Canonical: the unused bits of the last character must be zero (RFC 4648 §3.5), so every
    byte string has exactly one encoding and :func:`b64url_encode` gives the input back.
    """
    # SECURITY: the lenient stdlib decoders drop characters outside the alphabet. Here the
    # base64 characters '+', '/' and '=' are mapped to '!' so that strict_mode refuses them,
    # as it refuses anything else outside the alphabet.
    try:
        data = segment.encode("ascii").translate(_B64URL_TO_STD)
        decoded = binascii.a2b_base64(data + b"=" * (-len(segment) % 4), strict_mode=True)
    except (ValueError, binascii.Error):
        raise TokenError("malformed base64url") from None
    last = _LAST_CHAR.get(len(segment) % 4)
    if last is not None and segment[-1] not in last:
        # SECURITY: otherwise 'AB' decodes like 'AA': a signed token would have several
        # spellings, each with a different hash (replay caches, token-keyed caches).
        raise TokenError("malformed base64url")
    return decoded


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # SECURITY: RFC 8725 §2.6 -- two parsers must never see two different values.
        raise TokenError("duplicate JSON member name")
    return obj


def _no_constant(name: str) -> Any:
    raise TokenError(f"non-JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # SECURITY: "exp": 1e400 would otherwise parse as infinity -- a token that never expires.
        raise TokenError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_pairs, parse_constant=_no_constant, parse_float=_finite_float
)
# The decoder's (C) scanner, called directly: decode()'s Python wrapper costs a measurable
# share of a token's parse time. It must see "{" first and leave only whitespace after.
# (typeshed's stub for _json.make_scanner names the wrong context type.)
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(_DECODER)  # type: ignore[arg-type]
_JSON_WS = " \t\n\r"


def strict_json_object(data: bytes | str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object without duplicate member names."""
    try:
        text = (data.decode("utf-8") if isinstance(data, bytes) else data).strip(_JSON_WS)
        if not text.startswith("{"):
            raise TokenError("JSON value is not an object")
        value, end = _SCAN(text, 0)
    except TokenError:
        raise
    except (ValueError, RecursionError, StopIteration):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; so is an over-long integer.
        raise TokenError("malformed JSON") from None
    if end != len(text) or not isinstance(value, dict):
        raise TokenError("malformed JSON")
    return value


def numeric_date(value: Any, name: str) -> float:
    """A JWT NumericDate (RFC 7519 §2): a finite JSON number, not a boolean."""
    # ``type() is`` rather than isinstance: bool is an int subclass and must be refused.
    if type(value) is int and -_MAX_NUMERIC_DATE < value < _MAX_NUMERIC_DATE:
        return float(value)
    if type(value) is float and math.isfinite(value):
        return value
    raise TokenError(f"malformed {name}")


# --------------------------------------------------------------------------- compact JWS


class CompactJWS(NamedTuple):
    """A parsed, not yet verified, JWS Compact Serialization (a tuple: cheap to build)."""

    header: Mapping[str, Any]
    alg: str
    kid: str | None
    typ: str | None
    signing_input: bytes
    payload: bytes
    signature: bytes

    def claims(self) -> dict[str, Any]:
        """The payload as a JWT claims set (RFC 7519 §7.2 step 10); still untrusted."""
        return strict_json_object(self.payload)


HeaderCache = dict[str, tuple[Mapping[str, Any], str, str | None, str | None]]
HEADER_CACHE_ENTRIES = 256


def parse_compact(
    token: str, *, max_bytes: int, header_cache: HeaderCache | None = None
) -> CompactJWS:
    """Split and check ``token`` (see module docstring); the signature is NOT verified.

    ``header_cache`` (optional, owned by the caller) remembers checked protected headers by
    their encoded form: one issuer sends the same header on every token, so the header is
    decoded and checked once. Only headers that passed :func:`check_header` are stored, and
    the cache is emptied when it reaches ``HEADER_CACHE_ENTRIES``.
    """
    if len(token) > max_bytes:
        raise TokenError("token too large")
    if not token.isascii():
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a compact JWS")
    cached = header_cache.get(parts[0]) if header_cache is not None else None
    if cached is None:
        header = strict_json_object(b64url_decode(parts[0]))
        cached = (header, *check_header(header))
        if header_cache is not None:
            if len(header_cache) >= HEADER_CACHE_ENTRIES:
                header_cache.clear()
            header_cache[parts[0]] = cached
    signature = b64url_decode(parts[2])
    if not signature:
        raise TokenError("missing signature")
    return CompactJWS(
        cached[0],
        cached[1],
        cached[2],
        cached[3],
        token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii"),
        b64url_decode(parts[1]),
        signature,
    )


def check_header(header: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """Return ``(alg, kid, typ)`` of a protected header, or raise."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenError("missing alg")
    if alg.lower() == "none":
        # SECURITY: RFC 8725 §2.1 -- unsecured JWS is never accepted, whatever the casing.
        raise TokenError("alg none refused")
    if "crit" in header:
        # SECURITY: RFC 7515 §4.1.11 -- we understand no extension, so any crit must fail.
        raise TokenError("unsupported crit header parameter")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not _KID.fullmatch(kid)):
        # SECURITY: RFC 8725 §2.9 -- kid is opaque and bounded; it only ever indexes a dict.
        raise TokenError("malformed kid")
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise TokenError("malformed typ")
    return alg, kid, typ


def check_alg(alg: str, allowed: Collection[str]) -> None:
    """``alg`` must be in the caller's allowlist (exact, case-sensitive; RFC 8725 §3.1)."""
    # SECURITY: HMAC algorithms are refused even if a caller's allowlist were to name one:
    # a public key must never become an HMAC secret (RFC 8725 §2.1 key confusion).
    if alg not in allowed or alg.startswith("HS") or alg.lower() == "none":
        raise TokenError("algorithm not allowed")


def normalize_typ(typ: str) -> str:
    """RFC 7515 §4.1.9: compare case-insensitively, ``application/`` prefix optional."""
    value = typ.strip().lower()
    if value.startswith("application/") and "/" not in value[12:]:
        value = value[12:]
    return value


def check_typ(typ: str | None, expected: str) -> None:
    if typ is None or normalize_typ(typ) != normalize_typ(expected):
        raise TokenError("wrong token type")


# --------------------------------------------------------------------------- keys

_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}

# Curve order n of each NIST curve, for the RFC 7518 §3.4 range check of r and s.
_EC_ORDER: Mapping[str, int] = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "FFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
_EC_SIZE: Mapping[str, int] = {"P-256": 32, "P-384": 48, "P-521": 66}
_EC_CURVE: Mapping[str, Callable[[], ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key usable only for ``algs`` (RFC 8725 §3.1: one key, its own algorithms)."""

    kid: str | None
    algs: frozenset[str]
    key: PublicKey
    # The verification routine for this key type, chosen once (isinstance on cryptography's
    # abstract key classes is slow enough to show on the hot path).
    _check: Callable[[str, bytes, bytes], None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_check", _verifier(self.key))

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> None:
        """Verify a JWS signature made with ``alg``; raise :class:`TokenError` otherwise."""
        if alg not in self.algs:
            # SECURITY: RFC 8725 §3.1 -- the key decides which algorithm it may be used with.
            raise TokenError("algorithm does not match the key")
        try:
            self._check(alg, signing_input, signature)
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            raise TokenError("signature verification failed") from None


# Signature parameter objects are stateless; build them once, not per verification.
_ECDSA: Mapping[str, ec.ECDSA] = {f"ES{n}": ec.ECDSA(h()) for n, h in _HASHES.items()}
_PSS: Mapping[str, padding.PSS] = {
    f"PS{n}": padding.PSS(mgf=padding.MGF1(h()), salt_length=h().digest_size)
    for n, h in _HASHES.items()
}
_DIGESTS: Mapping[str, hashes.HashAlgorithm] = {n: h() for n, h in _HASHES.items()}


def _verifier(key: PublicKey) -> Callable[[str, bytes, bytes], None]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        ec_key, size, order = key, (key.curve.key_size + 7) // 8, _EC_ORDER[key.curve.name]

        def check_ec(alg: str, data: bytes, signature: bytes) -> None:
            ec_key.verify(_ecdsa_der(signature, size, order), data, _ECDSA[alg])

        return check_ec
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        ed_key = key

        def check_ed(alg: str, data: bytes, signature: bytes) -> None:
            ed_key.verify(signature, data)

        return check_ed
    rsa_key = key

    def check_rsa(alg: str, data: bytes, signature: bytes) -> None:
        digest = _DIGESTS[alg[2:]]
        pad = _PSS[alg] if alg.startswith("PS") else padding.PKCS1v15()
        rsa_key.verify(signature, data, pad, digest)

    return check_rsa


def _ecdsa_der(signature: bytes, size: int, order: int) -> bytes:
    """RFC 7518 §3.4 ``R || S`` -> DER, refusing wrong sizes and r, s outside ``[1, n-1]``."""
    if len(signature) != 2 * size:
        raise InvalidSignature
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    # SECURITY: r = 0 or s = 0 ("psychic signatures", CVE-2022-21449) must never verify.
    if not (0 < r < order and 0 < s < order):
        raise InvalidSignature
    return encode_dss_signature(r, s)


def public_key_from_jwk(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    """Build a public key from a JWK; return it with the algorithms its type permits.

    Refuses private or symmetric keys (``oct`` and any private member), unknown key types,
    EC points off the curve or not full-length (RFC 7518 §6.2.1.2), RSA under 2048 bits.
    """
    if PRIVATE_MEMBERS.intersection(jwk):
        # SECURITY: a JWK with private members is never a verification key.
        raise TokenError("JWK contains private key material")
    kty = jwk.get("kty")
    if kty == "EC":
        return _ec_key(jwk)
    if kty == "OKP":
        return _okp_key(jwk)
    if kty == "RSA":
        return _rsa_key(jwk)
    raise TokenError("unsupported JWK key type")


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise TokenError(f"JWK member {name} missing")
    return b64url_decode(value)


def _ec_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in EC_ALGS:
        raise TokenError("unsupported EC curve")
    x, y = _member(jwk, "x"), _member(jwk, "y")
    if len(x) != _EC_SIZE[crv] or len(y) != _EC_SIZE[crv]:
        raise TokenError("EC coordinate has the wrong length")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), _EC_CURVE[crv]()
    )
    try:
        # SECURITY: RFC 8725 §3.4 -- cryptography refuses points that are not on the curve.
        key = numbers.public_key()
    except ValueError:
        raise TokenError("EC point is not on the curve") from None
    return key, frozenset({EC_ALGS[crv]})


def _okp_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    crv, x = jwk.get("crv"), _member(jwk, "x")
    try:
        if crv == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(x), frozenset({"EdDSA"})
        if crv == "Ed448":
            return ed448.Ed448PublicKey.from_public_bytes(x), frozenset({"EdDSA"})
    except (ValueError, UnsupportedAlgorithm):
        raise TokenError("malformed OKP key") from None
    raise TokenError("unsupported OKP curve")


def _rsa_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    n = int.from_bytes(_member(jwk, "n"), "big")
    e = int.from_bytes(_member(jwk, "e"), "big")
    if n.bit_length() < MIN_RSA_BITS:
        raise TokenError("RSA key too small")
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise TokenError("malformed RSA key") from None
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
        raise TokenError("unsupported JWK key type")
    required: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise TokenError(f"JWK member {name} missing")
        required[name] = value
    # RFC 7638 §3.3: lexicographic member order, no whitespace, UTF-8.
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    try:
        encoded = canonical.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") from JSON has no UTF-8 form
        raise TokenError("malformed JWK member") from None
    return b64url_encode(hashlib.sha256(encoded).digest())
