"""Compact JWS (RFC 7515 §7.1) verification and signing, with the RFC 8725 rules.

Contract: pure functions and small value types, no I/O, no knowledge of HTTP. Every check
*raises* :class:`gateway.jose.errors.JOSEError` (a ``ValueError``; ``str()`` is safe to show,
``code`` is a stable reason); callers map it to their own answer (Bearer ``invalid_token``,
DPoP ``invalid_dpop_proof``, a Txn-Token ``TxnTokenError``...). Nothing here returns ``False``.

What :func:`parse_compact` enforces before any signature check (RFC 8725 §2, §3):

* a caller-chosen size cap, ASCII only, exactly three base64url segments (RFC 7515 §7.1), a
  non-empty signature; base64url is strict and canonical (RFC 7515 §2, RFC 4648 §3.5);
* the header and the payload are UTF-8 JSON objects with no duplicate member names
  (RFC 8725 §2.6, RFC 7515 §5.2 step 4 lets us reject), no ``NaN``/``Infinity`` and no
  number that overflows to infinity (``1e400``);
* ``alg`` is a string and is never ``none`` in any casing (RFC 8725 §2.1, §3.1);
* ``crit`` is refused outright: we understand no extension header parameter (RFC 7515
  §4.1.11); so is ``b64`` with any value but ``true`` (RFC 7797 unencoded payloads);
* ``kid`` is a printable ASCII string of at most 256 characters, used only as a dict key
  (RFC 8725 §2.9, §3.10);
* ``jku``, ``x5u``, ``x5c`` and ``jwk`` are never read here: trust anchors come from
  configuration only (RFC 8725 §3.10). DPoP reads ``jwk`` itself, as a *claimed* key.

:func:`check_alg` is the caller's explicit per-call allowlist (never an HMAC algorithm: a
public key must never become an HMAC secret, RFC 8725 §2.1). :class:`VerificationKey` binds
one public key to the algorithms it may be used with (RFC 8725 §3.1) and verifies over the
JWS signing input; ECDSA signatures must be the fixed-size ``R || S`` of RFC 7518 §3.4 with
``0 < r, s < n``. :func:`sign` / :func:`encode_compact` produce the same forms (RFC 7515 §5.1).
"""

from __future__ import annotations

import base64
import binascii
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
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway.jose.errors import JOSEError

MAX_KID_CHARS = 256
_MAX_NUMERIC_DATE = 1 << 53  # integers beyond this are not exact as floats (and never dates)

PublicKey = (
    ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | rsa.RSAPublicKey
)
PrivateKey = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)

# RFC 7518 §3.1 / RFC 8037 §3.1: the asymmetric JWS algorithms this layer implements.
EC_ALGS: Mapping[str, str] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})

_B64URL_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The characters that may end a segment of length 2 (resp. 3) mod 4: their unused low 4
# (resp. 2) bits are zero (RFC 4648 §3.5).
_LAST_CHAR = {2: frozenset(_B64URL_ALPHABET[::16]), 3: frozenset(_B64URL_ALPHABET[::4])}
_KID = re.compile(rf"[\x20-\x7e]{{1,{MAX_KID_CHARS}}}")


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
        raise JOSEError("malformed base64url") from None
    last = _LAST_CHAR.get(len(segment) % 4)
    if last is not None and segment[-1] not in last:
        # SECURITY: otherwise 'AB' decodes like 'AA': a signed token would have several
        # spellings, each with a different hash (replay caches, token-keyed caches).
        raise JOSEError("malformed base64url")
    return decoded


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # SECURITY: RFC 8725 §2.6 -- two parsers must never see two different values.
        raise JOSEError("duplicate JSON member name")
    return obj


def _no_constant(name: str) -> Any:
    raise JOSEError(f"non-JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # SECURITY: "exp": 1e400 would otherwise parse as infinity -- a token that never expires.
        raise JOSEError("number out of range")
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
            raise JOSEError("JSON value is not an object")
        value, end = _SCAN(text, 0)
    except JOSEError:
        raise
    except (ValueError, RecursionError, StopIteration):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; so is an over-long integer.
        raise JOSEError("malformed JSON") from None
    if end != len(text) or not isinstance(value, dict):
        raise JOSEError("malformed JSON")
    return value


def strict_json_value(data: bytes | str) -> Any:
    """Parse UTF-8 JSON of any type with the rules of :func:`strict_json_object`."""
    try:
        text = (data.decode("utf-8") if isinstance(data, bytes) else data).strip(_JSON_WS)
        value, end = _SCAN(text, 0)
    except JOSEError:
        raise
    except (ValueError, RecursionError, StopIteration):
        raise JOSEError("malformed JSON") from None
    if end != len(text):
        raise JOSEError("malformed JSON")
    return value


def numeric_date(value: Any, name: str) -> float:
    """A JWT NumericDate (RFC 7519 §2): a finite JSON number, not a boolean."""
    # ``type() is`` rather than isinstance: bool is an int subclass and must be refused.
    if type(value) is int and -_MAX_NUMERIC_DATE < value < _MAX_NUMERIC_DATE:
        return float(value)
    if type(value) is float and math.isfinite(value):
        return value
    raise JOSEError(f"malformed {name}")


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
        raise JOSEError("token too large")
    if not token.isascii():
        raise JOSEError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise JOSEError("not a compact JWS")
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
        raise JOSEError("missing signature")
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
        raise JOSEError("missing alg")
    if alg.lower() == "none":
        # SECURITY: RFC 8725 §2.1 -- unsecured JWS is never accepted, whatever the casing.
        raise JOSEError("alg none refused", "alg_refused")
    if "crit" in header:
        # SECURITY: RFC 7515 §4.1.11 -- we understand no extension, so any crit must fail.
        raise JOSEError("unsupported crit header parameter", "crit")
    if header.get("b64", True) is not True:
        # SECURITY: RFC 7797 -- an unencoded payload changes what the signature covers; we
        # never implement it (and it needs crit, refused above, to be valid at all).
        raise JOSEError("unsupported b64 header parameter", "crit")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not _KID.fullmatch(kid)):
        # SECURITY: RFC 8725 §2.9 -- kid is opaque and bounded; it only ever indexes a dict.
        raise JOSEError("malformed kid", "bad_kid")
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise JOSEError("malformed typ", "wrong_typ")
    return alg, kid, typ


def check_alg(alg: str, allowed: Collection[str]) -> None:
    """``alg`` must be in the caller's allowlist (exact, case-sensitive; RFC 8725 §3.1)."""
    # SECURITY: HMAC algorithms are refused even if a caller's allowlist were to name one:
    # a public key must never become an HMAC secret (RFC 8725 §2.1 key confusion).
    if alg not in allowed or alg.startswith("HS") or alg.lower() == "none":
        raise JOSEError("algorithm not allowed", "alg_refused")


def normalize_typ(typ: str) -> str:
    """RFC 7515 §4.1.9: compare case-insensitively, ``application/`` prefix optional."""
    value = typ.strip().lower()
    if value.startswith("application/") and "/" not in value[12:]:
        value = value[12:]
    return value


def check_typ(typ: str | None, expected: str) -> None:
    if typ is None or normalize_typ(typ) != normalize_typ(expected):
        raise JOSEError("wrong token type", "wrong_typ")


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
        """Verify a JWS signature made with ``alg``; raise :class:`JOSEError` otherwise."""
        if alg not in self.algs:
            # SECURITY: RFC 8725 §3.1 -- the key decides which algorithm it may be used with.
            raise JOSEError("algorithm does not match the key", "alg_refused")
        try:
            self._check(alg, signing_input, signature)
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            raise JOSEError("signature verification failed", "bad_signature") from None


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


# --------------------------------------------------------------------------- signing


def private_key_algs(key: PrivateKey) -> frozenset[str]:
    """The JWS algorithms a private key may sign with (RFC 8725 §3.1: never HMAC)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return frozenset({"EdDSA"})
    return RSA_ALGS


def sign(key: PrivateKey, alg: str, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input`` (RFC 7515 §5.1 step 5) in its RFC 7518 form.

    ECDSA gives the fixed-size ``R || S`` of RFC 7518 §3.4 (not DER). Raises
    :class:`JOSEError` if ``alg`` is not one the key may sign with.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = _ECDSA.get(alg)
        size = (key.curve.key_size + 7) // 8
        if ecdsa is None or f"ES{_EC_HASH.get(size)}" != alg:
            raise JOSEError("algorithm does not match the key", "alg_refused")
        r, s = decode_dss_signature(key.sign(signing_input, ecdsa))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        if alg != "EdDSA":
            raise JOSEError("algorithm does not match the key", "alg_refused")
        return key.sign(signing_input)
    if alg not in RSA_ALGS:
        raise JOSEError("algorithm does not match the key", "alg_refused")
    pad = _PSS[alg] if alg.startswith("PS") else padding.PKCS1v15()
    return key.sign(signing_input, pad, _DIGESTS[alg[2:]])


# ECDSA key size in bytes -> the hash its JWS algorithm uses (P-256/SHA-256...).
_EC_HASH: Mapping[int, str] = {32: "256", 48: "384", 66: "512"}


def encode_json(value: Mapping[str, Any]) -> str:
    """base64url of compact JSON (no whitespace), for a header or a claims segment."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(text.encode("utf-8"))


def encode_compact(header: Mapping[str, Any], payload: bytes, key: PrivateKey) -> str:
    """A JWS Compact Serialization of ``payload`` (RFC 7515 §3.1, §5.1).

    ``header`` must name ``alg`` (one the key may sign with); it is sent as given, so the
    caller sets ``typ``/``kid`` (RFC 8725 §3.11 explicit typing is the caller's choice).
    """
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JOSEError("missing alg")
    check_header(header)
    head = encode_json(header)
    body = b64url_encode(payload)
    signing_input = f"{head}.{body}".encode("ascii")
    return f"{head}.{body}.{b64url_encode(sign(key, alg, signing_input))}"
