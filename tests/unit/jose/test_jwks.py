"""gateway.jose.jwks: JWK Set parsing (RFC 7517 §5, RFC 8725 §3.1: each key bound to the
algorithm its JWK and the caller allow) and Cache-Control freshness (RFC 9111 §5.2.2).

The fetcher's caching rules are tested through its two users, against real local servers:
tests/unit/authn/test_jwks.py (the gateway's issuers) and tests/unit/tokens/test_verify.py
(the Txn-Token kit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.jose.errors import JOSEError
from gateway.jose.jwks import JWKSet, UnknownKeyError, parse_cache_control
from gateway.jose.jws import b64url_decode
from tests.unit.authn import b64, keys, private_jwk

K = keys()
VECTORS = Path(__file__).resolve().parents[2] / "vectors"
ALL_ALGS = ["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"]

# --------------------------------------------------------------------------- JWKSet


def _off_curve() -> dict[str, Any]:
    jwk = K["es"].jwk()
    x = bytearray(b64url_decode(jwk["x"]))
    x[-1] ^= 1
    return {**jwk, "x": b64(bytes(x))}


@pytest.mark.parametrize(
    ("jwk", "allowed", "usable"),
    [
        pytest.param(lambda: K["es"].jwk(), ALL_ALGS, {"ES256"}, id="ec-with-alg"),
        pytest.param(
            lambda: K["es"].jwk(with_alg=False), ALL_ALGS, {"ES256"}, id="p256-derives-es256"
        ),
        pytest.param(
            lambda: K["es384"].jwk(with_alg=False), ALL_ALGS, {"ES384"}, id="p384-derives-es384"
        ),
        pytest.param(
            lambda: K["ed"].jwk(with_alg=False), ALL_ALGS, {"EdDSA"}, id="ed25519-derives-eddsa"
        ),
        pytest.param(lambda: K["rs"].jwk(), ALL_ALGS, {"RS256"}, id="rsa-with-alg"),
        pytest.param(
            lambda: K["rs"].jwk(with_alg=False),
            ALL_ALGS,
            {"RS256", "PS256"},
            id="rsa-no-alg-issuer-rsa-algs",
        ),
        pytest.param(
            lambda: K["rs"].jwk(with_alg=False),
            ["ES256", "PS256"],
            {"PS256"},
            id="rsa-no-alg-only-ps256",
        ),
        pytest.param(lambda: K["es"].jwk(use="sig"), ALL_ALGS, {"ES256"}, id="use-sig"),
        pytest.param(
            lambda: K["es"].jwk(key_ops=["verify"]), ALL_ALGS, {"ES256"}, id="key-ops-verify"
        ),
        # skipped keys
        pytest.param(lambda: K["es"].jwk(use="enc"), ALL_ALGS, None, id="use-enc"),
        pytest.param(
            lambda: K["es"].jwk(key_ops=["encrypt"]), ALL_ALGS, None, id="key-ops-encrypt"
        ),
        pytest.param(
            lambda: {"kty": "oct", "kid": "h", "k": b64(b"s" * 32), "alg": "HS256"},
            ALL_ALGS,
            None,
            id="oct-hs256",
        ),
        pytest.param(lambda: {**private_jwk(K["es"]), "kid": "p"}, ALL_ALGS, None, id="private-d"),
        pytest.param(lambda: K["es"].jwk(alg="ES384"), ALL_ALGS, None, id="alg-does-not-fit-curve"),
        pytest.param(lambda: K["es"].jwk(alg="HS256"), ALL_ALGS, None, id="ec-key-claims-hs256"),
        pytest.param(lambda: K["rs"].jwk(alg="ES256"), ALL_ALGS, None, id="rsa-key-claims-es256"),
        pytest.param(lambda: K["es"].jwk(), ["EdDSA"], None, id="alg-not-allowed-for-issuer"),
        pytest.param(
            lambda: K["rs"].jwk(with_alg=False), ["ES256"], None, id="rsa-issuer-without-rsa"
        ),
        pytest.param(lambda: {**K["es"].jwk(), "x": "AAAA"}, ALL_ALGS, None, id="short-coordinate"),
        pytest.param(_off_curve, ALL_ALGS, None, id="point-not-on-curve"),
        pytest.param(
            lambda: {**K["es"].jwk(), "crv": "secp256k1"}, ALL_ALGS, None, id="unknown-curve"
        ),
        pytest.param(lambda: {**K["es"].jwk(), "kid": 5}, ALL_ALGS, None, id="kid-number"),
        pytest.param(
            lambda: {**K["rs"].jwk(), "n": b64(b"\xff" * 128)}, ALL_ALGS, None, id="rsa-1024"
        ),
        pytest.param(lambda: {"kty": "EC"}, ALL_ALGS, None, id="empty-ec"),
        pytest.param(lambda: "not-a-key", ALL_ALGS, None, id="string"),
        pytest.param(
            lambda: {"kty": "OKP", "crv": "X25519", "x": b64(bytes(32))},
            ALL_ALGS,
            None,
            id="x25519",
        ),
    ],
)
def test_key_set_entries(jwk: Any, allowed: list[str], usable: set[str] | None) -> None:
    key_set = JWKSet({"keys": [jwk()]}, allowed_algs=allowed)
    if usable is None:
        assert len(key_set) == 0
    else:
        (kid,) = key_set.kids()
        found = [key_set.find(kid, alg) for alg in sorted(usable)]
        assert all(k is not None and k.algs == frozenset(usable) for k in found)


def test_one_bad_key_does_not_spoil_the_set(caplog: pytest.LogCaptureFixture) -> None:
    doc = {"keys": [{"kty": "oct", "k": "AA"}, K["es"].jwk(), "junk", K["ed"].jwk()]}
    key_set = JWKSet(doc, allowed_algs=ALL_ALGS)
    assert key_set.kids() == {"es-1", "ed-1"}
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 2


def test_known_kid_wrong_alg_raises_without_refetch() -> None:
    key_set = JWKSet({"keys": [K["es"].jwk()]}, allowed_algs=ALL_ALGS)
    assert key_set.find("nope", "ES256") is None
    with pytest.raises(UnknownKeyError):
        key_set.find("es-1", "EdDSA")


def test_same_kid_two_key_types() -> None:
    ed = {**K["ed"].jwk(), "kid": "shared"}
    es = {**K["es"].jwk(), "kid": "shared"}
    key_set = JWKSet({"keys": [ed, es]}, allowed_algs=ALL_ALGS)
    es_key, ed_key = key_set.find("shared", "ES256"), key_set.find("shared", "EdDSA")
    assert es_key is not None
    assert ed_key is not None
    assert es_key is not ed_key


@pytest.mark.parametrize(
    "doc", [{}, {"keys": {}}, {"keys": "x"}], ids=["no-keys", "object", "string"]
)
def test_document_without_keys_array(doc: dict[str, Any]) -> None:
    with pytest.raises(JOSEError):
        JWKSet(doc, allowed_algs=ALL_ALGS)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, 300, id="absent-default"),
        pytest.param("", 300, id="empty-default"),
        pytest.param("max-age=600", 600, id="max-age"),
        pytest.param("public, max-age=600, must-revalidate", 600, id="among-others"),
        pytest.param('MAX-AGE="600"', 600, id="quoted-upper-case"),
        pytest.param("max-age=5", 30, id="clamped-to-min-refresh"),
        pytest.param("max-age=99999999", 86400, id="clamped-to-max-ttl"),
        pytest.param("max-age=-1", 300, id="negative-ignored"),
        pytest.param("max-age=abc", 300, id="garbage-ignored"),
        pytest.param("no-store", 30, id="no-store"),
        pytest.param("no-cache, max-age=600", 30, id="no-cache-wins"),
        pytest.param("private", 300, id="unrelated-directive"),
    ],
)
def test_parse_cache_control(header: str | None, expected: float) -> None:
    assert parse_cache_control(header, min_s=30, default_s=300, max_s=86400) == expected


def test_rfc7520_symmetric_key_never_enters_a_key_set() -> None:
    v = json.loads((VECTORS / "rfc7520_jws_hs256.json").read_text(encoding="utf-8"))
    assert len(JWKSet({"keys": [v["key"]]}, allowed_algs=["ES256", "RS256", "HS256"])) == 0
