"""Fuzz gateway.authn.dpop: RFC 9449 proofs and the ``htu`` comparison.

Documented errors: :meth:`DPoPVerifier.verify_proof` raises only
:class:`gateway.errors.Unauthorized` (``invalid_dpop_proof`` / ``use_dpop_nonce``; the
replay store here is the memory one, which cannot fail); :func:`normalize_htu` only
:class:`gateway.jose.JOSEError`. Properties:

* a proof edited after signing never verifies; a verified proof names the request's method
  and URI and is refused the second time (replay);
* ``normalize_htu`` is idempotent and yields ``scheme://host[:port]/path`` only;
* "a client may sign the path it sent or its canonical form" (module docstring): for every
  path the gateway accepts, the htu of the raw path and of ``normalize_path(path)`` agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from gateway.authn.dpop import DPoPVerifier, normalize_htu
from gateway.errors import InvalidPath, Unauthorized
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import jwk_thumbprint
from gateway.settings import DPoPSettings
from gateway.state.memory import MemoryReplayCache
from gateway.upstream.paths import normalize_path
from tests.fuzz.strategies import (
    JWS_FAULTS,
    KEYS,
    OTHER_ES256,
    ath,
    b64url,
    compact_json,
    fuzz,
    json_values,
    jws_tokens,
    mostly,
    mutated_object,
    sign_compact,
    structured_paths,
    uris,
)

NOW = 1_767_225_600
HTU = "https://gw.example.org/flights/42"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.e30.access-token-signature"
DPOP_KEYS = {"ES256": KEYS["ES256"], "EdDSA": KEYS["EdDSA"]}
JKT = {alg: jwk_thumbprint(key.public_jwk()) for alg, key in DPOP_KEYS.items()}
# Spellings of HTU that must compare equal to it (RFC 3986 §6.2.2-6.2.3, query ignored).
EQUIVALENT_HTUS = (
    HTU,
    "HTTPS://GW.EXAMPLE.ORG/flights/42",
    "https://gw.example.org:443/flights/42",
    "https://gw.example.org/flights/./42",
    "https://gw.example.org/a/../flights//42?x=1",
    "https://gw.example.org/%66lights/42#frag",
)


@pytest.fixture(scope="module")
def run() -> Iterator[Any]:
    with asyncio.Runner() as runner:
        yield runner.run


def verifier() -> DPoPVerifier:
    return DPoPVerifier(
        DPoPSettings(), MemoryReplayCache(), clock=lambda: float(NOW), nonce_key=b"n" * 32
    )


@st.composite
def proofs(draw: st.DrawFn) -> tuple[str, bool, str]:
    """A proof for ``GET HTU`` with at most one fault (the JWS ones, or a bad jwk/htu/iat)."""
    alg = draw(st.sampled_from(sorted(DPOP_KEYS)))
    key = DPOP_KEYS[alg]
    fault = draw(st.sampled_from(("none", "none", *JWS_FAULTS, "jwk", "htu", "iat")))
    jwk: Any = key.public_jwk()
    if fault == "jwk":
        jwk = draw(
            st.sampled_from([{**jwk, "d": b64url(bytes(32))}, OTHER_ES256.public_jwk()])
            | mutated_object(jwk, ["kty", "crv", "x", "y", "kid", "alg"])
            | json_values
        )
    claims = {
        "jti": draw(st.uuids()).hex,
        "htm": "GET",
        "htu": draw(uris() if fault == "htu" else st.sampled_from(EQUIVALENT_HTUS)),
        "iat": NOW + draw(st.sampled_from([-61, 61, -59, 59]) if fault == "iat" else st.just(0)),
        "ath": ath(TOKEN),
    }
    proof, edited = draw(
        jws_tokens(
            key,
            {"typ": "dpop+jwt", "alg": alg, "jwk": jwk},
            claims,
            header_names=("typ", "alg", "jwk", "kid", "crit", "jku", "x5c"),
            claim_names=("jti", "htm", "htu", "iat", "ath", "nonce", "exp"),
            fault=fault if fault in JWS_FAULTS else "none",
        )
    )
    return proof, edited, alg


def signed_proof(alg: str, **claims: Any) -> str:
    key = DPOP_KEYS[alg]
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk()}
    body = {"jti": "j", "htm": "GET", "htu": HTU, "iat": NOW, "ath": ath(TOKEN), **claims}
    return sign_compact(
        key, b64url(compact_json(header).encode()), b64url(compact_json(body).encode())
    )


@fuzz(250)
@given(
    proofs(),
    mostly("GET", st.sampled_from(["get", "POST"])),
    mostly(HTU, uris()),
    mostly(TOKEN, st.sampled_from([TOKEN + "x", "\ud800"])),
    mostly("key", st.sampled_from(["other", "surrogate"])),
)
# Regressions: a lone surrogate in ath, in the token's cnf.jkt or in the token itself raised
# UnicodeEncodeError (a 500) instead of invalid_dpop_proof.
@example((signed_proof("ES256", ath="\ud800"), False, "ES256"), "GET", HTU, TOKEN, "key")
@example((signed_proof("EdDSA"), False, "EdDSA"), "GET", HTU, TOKEN, "surrogate")
@example((signed_proof("ES256"), False, "ES256"), "GET", HTU, "\ud800", "key")
def test_proofs(
    run: Any, case: tuple[str, bool, str], htm: str, htu: str, token: str, bound: str
) -> None:
    proof, edited, alg = case
    jkt = {"other": jwk_thumbprint(OTHER_ES256.public_jwk()), "surrogate": "\udc80"}.get(
        bound, JKT[alg]
    )
    dpop = verifier()
    try:
        result = run(dpop.verify_proof(proof, htm=htm, htu=htu, access_token=token, jkt=jkt))
    except Unauthorized as exc:
        event(f"refused: {exc.detail}"[:60])
        refused_with = exc.status
    else:
        refused_with = 0
    if refused_with:
        assert refused_with == 401
        return
    event("verified")
    assert not edited, "an edited proof verified"
    assert htm == "GET"
    assert token == TOKEN
    assert result.jkt == jkt == JKT[alg]
    with pytest.raises(Unauthorized):  # RFC 9449 §11.1: the same proof twice is a replay
        run(dpop.verify_proof(proof, htm=htm, htu=htu, access_token=token, jkt=jkt))


@fuzz(250)
@given(uris() | st.sampled_from(EQUIVALENT_HTUS) | st.text(max_size=30))
@example("https://[fe80::1%25eth0]/")
@example("https://gw.example.org:/a")
def test_normalize_htu_is_idempotent(uri: str) -> None:
    try:
        normal = normalize_htu(uri)
    except JOSEError:
        return
    assert normalize_htu(normal) == normal
    scheme, _, rest = normal.partition("://")
    assert scheme in ("http", "https")
    path = rest[rest.index("/") :]
    assert "?" not in normal
    assert "#" not in normal
    assert "//" not in path


@fuzz(250)
@given(structured_paths, st.sampled_from(["gw.example.org", "gw.example.org:8443", "[::1]"]))
@example('/a"b', "gw.example.org")  # regression: raw '"' kept, normalize_path gives %22
@example("/a/{x}|^", "gw.example.org")
def test_raw_and_normalised_paths_give_one_htu(raw: str, host: str) -> None:
    try:
        canonical = normalize_path(raw)
    except InvalidPath:
        return
    signed_raw = normalize_htu(f"https://{host}{raw}")
    assert signed_raw == normalize_htu(f"https://{host}{canonical}")
