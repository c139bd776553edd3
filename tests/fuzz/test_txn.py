"""Fuzz the Txn-Token verifier (gateway.sdk.txn) that internal services and the gateway run.

Documented errors: :func:`gateway.sdk.txn.verify_compact` and :func:`decode_unverified` raise only
:class:`gateway.sdk.txn.TxnTokenError`; :func:`parse_jwks` and :func:`public_key_from_jwk` only
``ValueError``. Properties: a token edited after signing never verifies, one flipped character
never verifies, and a verified token carries every required claim with a lifetime of at most
``MAX_LIFETIME_S``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from gateway.sdk.txn import (
    MAX_LIFETIME_S,
    TxnTokenError,
    decode_unverified,
    parse_jwks,
    public_key_from_jwk,
    verify_compact,
)
from tests.fuzz.strategies import (
    B64URL,
    KEYS,
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

NOW = 1_767_225_600
AUDIENCE = "example.org"
ISSUER = "https://gateway.example.org"
TXN_KEYS = {"ES256": KEYS["ES256"], "EdDSA": KEYS["EdDSA"]}
JWKS = {"keys": [{**k.public_jwk(), "kid": k.kid, "alg": alg} for alg, k in TXN_KEYS.items()]}
VERIFY_KEYS = parse_jwks(JWKS)
CLAIMS: dict[str, Any] = {
    "aud": AUDIENCE,
    "iss": ISSUER,
    "iat": NOW,
    "exp": NOW + 60,
    "txn": "97053963-771d-49cc-a4e3-20aad399c312",
    "sub": "spiffe://example.org/agent/travel",
    "scope": "flights.read",
    "req_wl": "spiffe://example.org/gateway",
    "tctx": {"action": "GET"},
    "rctx": {"req_ip": "192.0.2.1"},
}
CLAIM_NAMES = (*CLAIMS, "nbf", "act")


def header(alg: str) -> dict[str, Any]:
    return {"alg": alg, "typ": "txntoken+jwt", "kid": TXN_KEYS[alg].kid}


def verify(token: str) -> dict[str, Any]:
    return verify_compact(
        token, VERIFY_KEYS, audience=AUDIENCE, issuer=ISSUER, leeway_s=5.0, now=NOW + 1
    )


def signed(alg: str, claims: dict[str, Any]) -> str:
    key = TXN_KEYS[alg]
    return sign_compact(
        key, b64url(compact_json(header(alg)).encode()), b64url(compact_json(claims).encode())
    )


@st.composite
def tokens(draw: st.DrawFn) -> tuple[str, bool]:
    alg = draw(st.sampled_from(sorted(TXN_KEYS)))
    return draw(jws_tokens(TXN_KEYS[alg], header(alg), CLAIMS, claim_names=CLAIM_NAMES))


@fuzz(200)
@given(tokens())
@example((signed("ES256", {**CLAIMS, "exp": 10**400}), False))  # regression: OverflowError
@example((signed("ES256", {**CLAIMS, "iat": -(10**400)}), False))
def test_signed_then_mutated_txn_tokens(case: tuple[str, bool]) -> None:
    token, edited = case
    try:
        claims = verify(token)
    except TxnTokenError as exc:
        event(f"refused: {exc.code}")
        return
    event("verified")
    assert not edited, "an edited Txn-Token verified"
    for name in ("txn", "sub", "req_wl", "scope"):
        assert isinstance(claims[name], str)
    assert claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] <= MAX_LIFETIME_S


@fuzz(120)
@given(st.sampled_from(sorted(TXN_KEYS)), st.data())
def test_one_flipped_character_never_verifies(alg: str, data: st.DataObject) -> None:
    token = signed(alg, CLAIMS)
    assert verify(token)["txn"] == CLAIMS["txn"]
    bad = data.draw(flipped(token), label="flipped")
    with pytest.raises(TxnTokenError):
        verify(bad)


def test_unused_signature_bits_do_not_verify() -> None:
    """Regression (fuzz): a last signature character differing only in unused bits verified."""
    token = signed("EdDSA", CLAIMS)  # Ed25519: 64 bytes, 86 characters, 4 unused bits
    index = B64URL.index(token[-1])
    bad = token[:-1] + B64URL[index ^ 1]
    with pytest.raises(TxnTokenError):
        verify(bad)


@fuzz(150)
@given(st.text(max_size=40) | tokens().flatmap(lambda case: mutated_text(case[0])))
def test_decode_unverified(token: str) -> None:
    try:
        head, claims = decode_unverified(token)
    except TxnTokenError:
        return
    assert isinstance(head, dict)
    assert isinstance(claims, dict)


@st.composite
def jwks_documents(draw: st.DrawFn) -> Any:
    keys = [
        draw(mutated_object(jwk, ["kid", "kty", "crv", "x", "y", "d", "use", "key_ops", "alg"]))
        for jwk in JWKS["keys"]
    ]
    doc = draw(st.sampled_from([{"keys": keys}, {"keys": keys + keys}, keys, {"keys": {}}]))
    return draw(st.just(doc) | json_values)


@fuzz(120)
@given(jwks_documents())
def test_parse_jwks_and_public_key_from_jwk(document: Any) -> None:
    try:
        keys = parse_jwks(document)
    except ValueError:
        return
    usable: list[str] = []
    for jwk in document["keys"]:
        if isinstance(jwk, dict):
            try:
                usable.append(public_key_from_jwk(jwk).kid)
            except ValueError:
                continue
    # The usable keys, except a kid that appears twice (ambiguous: dropped altogether).
    assert set(keys) == {kid for kid in usable if usable.count(kid) == 1}
    for kid, key in keys.items():
        assert key.kid == kid
        assert key.alg in ("ES256", "EdDSA")
