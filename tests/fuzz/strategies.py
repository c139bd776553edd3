"""Shared strategies for the fuzzers: keys, signed-then-mutated JOSE objects, hostile text.

The strategies are *structured*: most inputs start as a well-formed object (a correctly signed
JWS, a canonical path, a serialised RFC 8941 dictionary) and are then changed at one level --
a JSON member, a header parameter, a character of the encoded form -- so that the code under
test gets past its first checks. Pure random text is mixed in as well, for the first checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import settings
from hypothesis import strategies as st

T = TypeVar("T")

# --------------------------------------------------------------------------- profiles

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "fuzz"):
    PROFILE = "ci"
SCALE = int(os.environ.get("FUZZ_SCALE", "8")) if PROFILE == "fuzz" else 1


def fuzz(examples: int, *, deadline_ms: int | None = None) -> Callable[[T], T]:
    """Settings for one fuzzer: ``examples`` in CI, ``examples * FUZZ_SCALE`` in ``make fuzz``."""
    extra: dict[str, Any] = {"max_examples": examples * SCALE}
    if deadline_ms is not None:
        extra["deadline"] = timedelta(milliseconds=deadline_ms)
    return settings(settings.get_profile(PROFILE), **extra)


def mostly(value: T, others: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``value`` three times in four, else a draw from ``others``."""
    return st.one_of(st.just(value), st.just(value), st.just(value), others)


# --------------------------------------------------------------------------- encoding

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class SigningKey:
    """A private key with the JWS algorithm it signs with (RFC 7518)."""

    alg: str
    private: Any = field(repr=False)
    kid: str = "k1"

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.private.public_key())

    def sign(self, data: bytes, alg: str | None = None) -> bytes:
        alg = alg or self.alg
        key = self.private
        if isinstance(key, ec.EllipticCurvePrivateKey):
            digest = {"ES256": hashes.SHA256, "ES384": hashes.SHA384, "ES512": hashes.SHA512}
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest.get(alg, hashes.SHA256)())))
            size = (key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            return key.sign(data)
        assert isinstance(key, rsa.RSAPrivateKey)
        hash_cls = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
        h = hash_cls.get(alg[2:], hashes.SHA256)()
        if alg.startswith("PS"):
            return key.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)
        return key.sign(data, padding.PKCS1v15(), h)


def public_jwk(pub: Any) -> dict[str, Any]:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        size = (pub.curve.key_size + 7) // 8
        nums = pub.public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64url(nums.x.to_bytes(size, "big")),
            "y": b64url(nums.y.to_bytes(size, "big")),
        }
    if isinstance(pub, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        from cryptography.hazmat.primitives import serialization

        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        crv = "Ed25519" if isinstance(pub, ed25519.Ed25519PublicKey) else "Ed448"
        return {"kty": "OKP", "crv": crv, "x": b64url(raw)}
    nums = pub.public_numbers()
    return {
        "kty": "RSA",
        "n": b64url(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
        "e": b64url(nums.e.to_bytes(3, "big")),
    }


# One key per type, made once per test session (RSA key generation is the slow one).
KEYS: Mapping[str, SigningKey] = {
    "ES256": SigningKey("ES256", ec.generate_private_key(ec.SECP256R1()), "ec256"),
    "ES384": SigningKey("ES384", ec.generate_private_key(ec.SECP384R1()), "ec384"),
    "EdDSA": SigningKey("EdDSA", ed25519.Ed25519PrivateKey.generate(), "ed"),
    "RS256": SigningKey("RS256", rsa.generate_private_key(65537, 2048), "rsa"),
}
OTHER_ES256 = SigningKey("ES256", ec.generate_private_key(ec.SECP256R1()), "other")
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def ath(token: str) -> str:
    """RFC 9449 §4.2 ``ath`` (of the token's UTF-8 bytes: a fuzzed token may not be ASCII)."""
    return b64url(hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())


# --------------------------------------------------------------------------- JSON values

# Strings that have broken parsers before: casings of none, HMAC names, surrogates, NUL,
# whitespace around names, path tricks, very long values.
NASTY_STRINGS = (
    "",
    "none",
    "None",
    "NONE",
    "nOnE",
    "HS256",
    "hs256",
    "ES256",
    " ES256",
    "ES256 ",
    "EdDSA",
    "Ed25519",
    "RS256",
    "PS256",
    "\ud800",
    "a\udfffb",
    "\x00",
    "\x7f",
    "é",
    "../",
    "%00",
    "a" * 257,
    "at+jwt",
    "dpop+jwt",
    "application/dpop+jwt",
    "txntoken+jwt",
    "JWT",
)
NASTY_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    True,
    False,
    2**53,
    2**53 + 1,
    -(2**53),
    10**400,
    -(10**400),
    1e308,
    -1e308,
    0.5,
    -0.0,
    1_700_000_000,
)

text = st.text(max_size=24) | st.sampled_from(NASTY_STRINGS)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from(NASTY_NUMBERS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=8,
)

# Raw JSON texts that json.dumps never writes: duplicate members, non-finite numbers, huge
# exponents and integers, deep nesting, trailing data, other top-level values.
RAW_JSON = (
    '{"alg":"ES256","alg":"none"}',
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":-Infinity}',
    '{"exp":1e400}',
    '{"exp":-1e400}',
    '{"exp":' + "9" * 5000 + "}",
    '{"exp":' + "9" * 400 + "}",
    '{"a":' + "[" * 3000 + "]" * 3000 + "}",
    '{"a":1}{"b":2}',
    '{"a":1} x',
    "[1,2]",
    '"str"',
    "1",
    "null",
    "",
    " ",
    '{"a":"\\ud800"}',
    '{"a":"\\u0000"}',
    '{"a":1,}',
    "{'a':1}",
    "\ufeff{}",
    '{"a":1}\n',
    '\t{"a":1} ',
)


@st.composite
def mutated_object(draw: st.DrawFn, base: Mapping[str, Any], names: Sequence[str]) -> Any:
    """``base`` with up to three members set, deleted or added (values: :data:`json_values`)."""
    obj: dict[str, Any] = dict(base)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([*names, *base]) | text)
        if draw(st.booleans()) and name in obj:
            del obj[name]
        else:
            obj[name] = draw(json_values)
    return obj


@st.composite
def json_segment(draw: st.DrawFn, obj: Any) -> str:
    """The base64url of ``obj`` as hostile JSON: raw texts, a spliced duplicate, indentation."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return b64url(draw(st.sampled_from(RAW_JSON)).encode("utf-8", "surrogatepass"))
    if choice == 1:
        # Splice a duplicate of one member (last-wins parsers would see a different value).
        body = compact_json(obj)
        if isinstance(obj, dict) and obj and body.endswith("}"):
            key = draw(st.sampled_from(sorted(obj, key=str)))
            body = body[:-1] + "," + compact_json({key: draw(json_values)})[1:]
        return b64url(body.encode("utf-8", "surrogatepass"))
    return b64url(json.dumps(obj, indent=draw(st.integers(0, 2))).encode())


# --------------------------------------------------------------------------- text mutation

TOKEN_ALPHABET = B64URL + ".=+/ \t\x00é%"


@st.composite
def mutated_text(draw: st.DrawFn, value: str, alphabet: str = TOKEN_ALPHABET) -> str:
    """``value`` after one to three edits: replace, insert, delete, duplicate, truncate."""
    for _ in range(draw(st.integers(1, 3))):
        n = len(value)
        op = draw(st.integers(0, 5))
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == 0 and n:
            value = value[:i] + draw(st.sampled_from(alphabet)) + value[i + 1 :]
        elif op == 1:
            value = value[:i] + draw(st.text(alphabet, min_size=1, max_size=4)) + value[i:]
        elif op == 2 and n:
            j = draw(st.integers(i, min(n, i + 8)))
            value = value[:i] + value[j:]
        elif op == 3 and n:
            j = draw(st.integers(i, min(n, i + 16)))
            value = value[:j] + value[i:j] + value[j:]
        elif op == 4:
            value = value[:i]
        else:
            parts = value.split(".")
            draw_order = draw(st.permutations(range(len(parts))))
            value = ".".join(parts[k] for k in draw_order)
    return value


@st.composite
def flipped(draw: st.DrawFn, value: str) -> str:
    """``value`` with exactly one character replaced by a different one (a 'flipped byte')."""
    i = draw(st.integers(0, len(value) - 1))
    other = draw(st.sampled_from(TOKEN_ALPHABET).filter(lambda c: c != value[i]))
    return value[:i] + other + value[i + 1 :]


# --------------------------------------------------------------------------- JWS


HEADER_NAMES = ("alg", "kid", "typ", "crit", "jwk", "jku", "x5u", "x5c", "cty", "b64", "zip")
CLAIM_NAMES = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "cnf", "client_id")


def sign_compact(key: SigningKey, header_b64: str, payload_b64: str, alg: str | None = None) -> str:
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return f"{header_b64}.{payload_b64}.{b64url(key.sign(signing_input, alg))}"


@st.composite
def bad_signatures(draw: st.DrawFn, key: SigningKey, signing_input: bytes, alg: str) -> bytes:
    """Another key's signature, r = s = 0, random bytes, a truncated or extended one."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return OTHER_ES256.sign(signing_input)
    if choice == 1:
        return bytes(64)  # r = s = 0 ("psychic signatures", CVE-2022-21449)
    if choice == 2:
        return draw(st.binary(max_size=140))
    good = key.sign(signing_input, alg)
    return good[:-1] if choice == 3 else good + b"\x00"


# One fault per generated object keeps most inputs one step from valid (deep checks are
# reached); "none" (a valid object) is drawn one time in four.
JWS_FAULTS = ("none", "header", "claims", "encoding", "signature", "text")
faults = st.sampled_from(("none", "none", *JWS_FAULTS))


@st.composite
def jws_tokens(
    draw: st.DrawFn,
    key: SigningKey,
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    *,
    header_names: Sequence[str] = HEADER_NAMES,
    claim_names: Sequence[str] = CLAIM_NAMES,
    fault: str | None = None,
) -> tuple[str, bool]:
    """A compact JWS and whether its text was edited after signing (then it must never verify).

    ``fault`` (drawn from :data:`faults` when not given) says what is wrong with it: nothing,
    a mutated header or claims set (signed as is, so the checks behind the signature run), a
    hostile JSON encoding, a wrong signature, or an edit of the token text after signing.
    """
    fault = fault if fault is not None else draw(faults)
    h: Any = dict(header)
    c: Any = dict(claims)
    if fault == "header":
        h = draw(mutated_object(header, header_names))
    elif fault == "claims":
        c = draw(mutated_object(claims, claim_names))
    if fault == "encoding":
        head, body = draw(
            st.sampled_from(
                [
                    (json_segment(h), st.just(b64url(compact_json(c).encode()))),
                    (st.just(b64url(compact_json(h).encode())), json_segment(c)),
                ]
            ).flatmap(lambda pair: st.tuples(*pair))
        )
    else:
        head, body = b64url(compact_json(h).encode()), b64url(compact_json(c).encode())
    alg = h.get("alg") if isinstance(h, dict) else None
    alg = alg if alg in (*RSA_ALGS, "ES256", "ES384", "ES512") else key.alg
    signing_input = f"{head}.{body}".encode("ascii")
    if fault == "signature":
        signature = draw(bad_signatures(key, signing_input, alg))
    else:
        signature = key.sign(signing_input, alg)
    token = f"{head}.{body}.{b64url(signature)}"
    if fault == "text":
        edited = draw(mutated_text(token))
        return edited, edited != token
    return token, False


# --------------------------------------------------------------------------- paths and URIs

# Pieces of request paths that have fooled normalisers: dot segments plain and escaped,
# escapes to decode or to keep, characters to encode. Every one of them is accepted.
PATH_PIECES = (
    "a",
    "B",
    "flights",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2e.",
    "",
    "%41",
    "%7e",
    "%7E",
    "%2d",
    "%25",
    "%252e",
    "%3a",
    "%c3%a9",
    "~",
    "-",
    "_",
    "!",
    "$",
    "&",
    "'",
    "(",
    "*",
    "+",
    ",",
    "=",
    ":",
    "@",
    '"',
    "<",
    ">",
    "`",
    "{",
    "}",
    "|",
    "^",
    "[",
    "]",
)
# ... and pieces that must be refused: escaped separators and controls, path parameters,
# backslashes, raw controls, raw non-ASCII, bad escapes, query and fragment delimiters.
BAD_PATH_PIECES = (
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "%00",
    "%0a",
    "%7f",
    "%zz",
    "%4",
    "%",
    ";",
    "%3b",
    "..;",
    "\\",
    "?",
    "#",
    " ",
    "\t",
    "\x00",
    "\x7f",
    "é",
)

# About one piece in fifteen is a bad one: most paths get through to the deep rules.
_piece = st.sampled_from(PATH_PIECES * 6 + BAD_PATH_PIECES)
segments = st.lists(_piece, min_size=1, max_size=3).map("".join)
structured_paths = st.lists(segments, max_size=8).map(lambda parts: "/" + "/".join(parts))
paths = st.one_of(
    structured_paths,
    structured_paths,
    structured_paths,
    st.text(max_size=16),
    st.sampled_from(["*", "", "/", "//", "http://x/a"]),
)

HOSTS = (
    "gw.example.org",
    "GW.Example.ORG",
    "gw.example.org:443",
    "gw.example.org:80",
    "gw.example.org:8443",
    "gw.example.org:",
    "gw.example.org:0",
    "gw.example.org:99999",
    "gw.example.org:abc",
    "127.0.0.1",
    "[::1]",
    "[::1]:443",
    "[::1",
    "[fe80::1%25eth0]",
    "user@gw.example.org",
    "",
    "gw.example.org/x",
    "gw.example.org?x",
    "gw.example.org#x",
    "a b",
    "é.example",
)


@st.composite
def uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "HTTPS", "http", "Http", "ftp", ""]))
    host = draw(st.sampled_from(HOSTS) | st.text(max_size=8))
    path = draw(structured_paths)
    tail = draw(st.sampled_from(["", "?", "?a=1", "#f", "?a=1#f"]))
    return f"{scheme}://{host}{path}{tail}"
