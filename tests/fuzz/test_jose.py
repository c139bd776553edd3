"""Fuzz gateway.jose: the JWS/JWT parser and verifier every token check goes through.

Documented error: :class:`gateway.jose.JOSEError` (a ``ValueError``), nothing else.
Properties beyond "no other exception":

* base64url decoding is canonical: what decodes re-encodes to the same text (so a token has
  exactly one spelling and cannot be altered without breaking its signature);
* ``strict_json_object`` accepts a subset of what ``json.loads`` accepts, with equal values;
* ``parse_compact`` gives the same answer with and without its header cache;
* a signed token whose text was edited after signing never verifies; one flipped character
  anywhere in a valid token never verifies;
* a verified token has an allowed, non-``none`` ``alg`` matching the key and no ``crit``.
"""

from __future__ import annotations

import json
import math
from typing import Any, get_args

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import event, example, given
from hypothesis import strategies as st

from gateway.jose.errors import JOSEError
from gateway.jose.jwk import PRIVATE_MEMBERS, jwk_thumbprint, public_key_from_jwk
from gateway.jose.jws import (
    HeaderCache,
    VerificationKey,
    b64url_decode,
    b64url_encode,
    check_alg,
    check_header,
    numeric_date,
    parse_compact,
    strict_json_object,
)
from gateway.settings import Algorithm
from tests.fuzz.strategies import (
    B64URL,
    KEYS,
    RAW_JSON,
    RSA_ALGS,
    SigningKey,
    b64url,
    compact_json,
    flipped,
    fuzz,
    json_values,
    jws_tokens,
    mutated_object,
    mutated_text,
    sign_compact,
)

MAX_BYTES = 8192
# Every algorithm the settings allow (gateway.settings.Algorithm).
ALGORITHMS = frozenset(get_args(Algorithm))
NOW = 1_767_225_600

# Deterministic Ed25519 signatures: a fixed token, so regressions can name exact edits.
FIXED = SigningKey("EdDSA", ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "ed")
FIXED_TOKEN = sign_compact(
    FIXED,
    b64url(compact_json({"alg": "EdDSA", "kid": "ed", "typ": "at+jwt"}).encode()),
    b64url(compact_json({"iss": "https://idp", "sub": "a", "exp": NOW + 60}).encode()),
)
# The signature's last character carries 4 unused bits: changing only those must not verify.
_LAST = B64URL.index(FIXED_TOKEN[-1])
UNUSED_BITS_EDIT = B64URL[_LAST ^ 1]


def verification_key(key: SigningKey) -> VerificationKey:
    public, algs = public_key_from_jwk(key.public_jwk())
    return VerificationKey(key.kid, algs, public)


VKEYS = {name: verification_key(key) for name, key in KEYS.items()}
VKEYS["fixed"] = verification_key(FIXED)


def verify(token: str, key: VerificationKey, cache: HeaderCache | None = None) -> dict[str, Any]:
    """What a JWT verifier does with the helpers: parse, allowlist, signature, claims, dates."""
    jws = parse_compact(token, max_bytes=MAX_BYTES, header_cache=cache)
    check_alg(jws.alg, ALGORITHMS)
    key.verify(jws.alg, jws.signing_input, jws.signature)
    claims = jws.claims()
    for name in ("exp", "iat", "nbf"):
        if name in claims:
            numeric_date(claims[name], name)
    assert jws.alg in key.algs
    assert jws.alg.lower() != "none"
    assert "crit" not in jws.header
    return claims


# --------------------------------------------------------------------------- encoding


@fuzz(300)
@given(st.text(B64URL + "=+/ .\x00é", max_size=40) | st.text(max_size=20))
@example("AB")  # regression: unused bits set ("AB" decoded like "AA")
@example("AAB")
@example("A")
def test_b64url_decode_is_strict_and_canonical(segment: str) -> None:
    try:
        data = b64url_decode(segment)
    except JOSEError:
        return
    assert b64url_encode(data) == segment


@fuzz(250)
@given(
    st.sampled_from(RAW_JSON)
    | json_values.map(compact_json)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
@example(b"\xff{}")
@example('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")
def test_strict_json_object_is_a_strict_subset_of_json(data: str | bytes) -> None:
    try:
        value = strict_json_object(data)
    except JOSEError:
        return
    assert isinstance(value, dict)
    assert value == json.loads(data)


@fuzz(200)
@given(st.one_of(json_values, mutated_object({"alg": "ES256", "kid": "k1", "typ": "JWT"}, [])))
def test_check_header_and_numeric_date(value: Any) -> None:
    if isinstance(value, dict):
        try:
            alg, kid, typ = check_header(value)
        except JOSEError:
            pass
        else:
            assert isinstance(alg, str)
            assert alg
            assert alg.lower() != "none"
            assert "crit" not in value
            assert kid is None or (isinstance(kid, str) and len(kid) <= 256 and kid.isprintable())
            assert typ is None or isinstance(typ, str)
    try:
        date = numeric_date(value, "exp")
    except JOSEError:
        return
    assert type(date) is float
    assert math.isfinite(date)
    assert not isinstance(value, bool)


# --------------------------------------------------------------------------- parse_compact

_CACHE: HeaderCache = {}


@fuzz(200)
@given(st.text(max_size=60) | st.text(B64URL + ".", max_size=200) | mutated_text(FIXED_TOKEN))
@example("a.b.c")
@example("..")
@example("e30.e30.")
def test_parse_compact_with_and_without_cache(token: str) -> None:
    try:
        fresh = parse_compact(token, max_bytes=MAX_BYTES)
    except JOSEError:
        with pytest.raises(JOSEError):
            parse_compact(token, max_bytes=MAX_BYTES, header_cache=_CACHE)
        return
    cached = parse_compact(token, max_bytes=MAX_BYTES, header_cache=_CACHE)
    assert cached == fresh
    assert fresh.signature
    assert fresh.signing_input == token.rsplit(".", 1)[0].encode("ascii")


# --------------------------------------------------------------------------- verification

HEADER = {"typ": "at+jwt"}
CLAIMS = {
    "iss": "https://idp.example.org",
    "sub": "user-1",
    "aud": "https://gateway.example.org",
    "exp": NOW + 300,
    "iat": NOW,
    "jti": "j1",
}


@st.composite
def signed(draw: st.DrawFn) -> tuple[str, bool, str]:
    name = draw(st.sampled_from(sorted(KEYS)))
    key = KEYS[name]
    alg = key.alg
    if name == "RS256":
        alg = draw(st.sampled_from(RSA_ALGS))
    header = {**HEADER, "alg": alg, "kid": key.kid}
    token, edited = draw(jws_tokens(key, header, CLAIMS))
    return token, edited, name


@fuzz(250)
@given(signed())
def test_signed_then_mutated_tokens(case: tuple[str, bool, str]) -> None:
    token, edited, name = case
    try:
        verify(token, VKEYS[name], _CACHE)
    except JOSEError as exc:
        event(f"refused: {exc}")
        return
    event("verified")
    # SECURITY: text changed after signing must never verify.
    assert not edited, "an edited token verified"


@fuzz(150)
@given(st.integers(0, len(FIXED_TOKEN) - 1), st.sampled_from(B64URL + ".=+/"))
@example(len(FIXED_TOKEN) - 1, UNUSED_BITS_EDIT)  # regression: signature malleability
def test_one_flipped_character_never_verifies(index: int, char: str) -> None:
    assert verify(FIXED_TOKEN, VKEYS["fixed"])["sub"] == "a"
    token = FIXED_TOKEN[:index] + char + FIXED_TOKEN[index + 1 :]
    if token == FIXED_TOKEN:
        return
    with pytest.raises(JOSEError):
        verify(token, VKEYS["fixed"])


@fuzz(120)
@given(st.sampled_from(sorted(KEYS)), st.sampled_from(RSA_ALGS), st.data())
def test_flipped_tokens_of_every_key_type(name: str, rsa_alg: str, data: st.DataObject) -> None:
    key = KEYS[name]
    alg = rsa_alg if name == "RS256" else key.alg
    header = b64url(compact_json({**HEADER, "alg": alg, "kid": key.kid}).encode())
    token = sign_compact(key, header, b64url(compact_json(CLAIMS).encode()), alg)
    assert verify(token, VKEYS[name]) == CLAIMS
    bad = data.draw(flipped(token), label="flipped")
    with pytest.raises(JOSEError):
        verify(bad, VKEYS[name])


# --------------------------------------------------------------------------- JWKs


@st.composite
def jwks(draw: st.DrawFn) -> dict[str, Any]:
    base = KEYS[draw(st.sampled_from(sorted(KEYS)))].public_jwk()
    jwk = draw(mutated_object(base, ["kty", "crv", "x", "y", "n", "e", "d", "k", "alg", "kid"]))
    if isinstance(jwk, dict) and draw(st.booleans()):
        # Coordinates of the right shape but arbitrary value: off-curve points, tiny moduli.
        member = draw(st.sampled_from(["x", "y", "n", "e"]))
        size = draw(st.sampled_from([0, 1, 3, 32, 33, 48, 57, 66, 255, 256]))
        jwk[member] = b64url(draw(st.binary(min_size=size, max_size=size)))
    return jwk


@fuzz(150)
@given(jwks())
@example({"kty": "RSA", "n": b64url(b"\xff" * 256), "e": "AA"})
@example({"kty": "EC", "crv": "P-256", "x": "\ud800", "y": "AA"})
def test_public_key_from_jwk_and_thumbprint(jwk: dict[str, Any]) -> None:
    try:
        _, algs = public_key_from_jwk(jwk)
    except JOSEError:
        pass
    else:
        assert algs
        assert algs <= set(ALGORITHMS)
        assert not PRIVATE_MEMBERS.intersection(jwk)
    try:
        thumbprint = jwk_thumbprint(jwk)
    except JOSEError:
        return
    assert thumbprint == jwk_thumbprint(dict(reversed(list(jwk.items()))))
    assert len(b64url_decode(thumbprint)) == 32
