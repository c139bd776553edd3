"""gateway.jose.jwk: JWK import/export (RFC 7517, RFC 7518 §6, RFC 8037 §2) and RFC 7638
thumbprints, checked against the RFCs' own vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.jose.errors import JOSEError
from gateway.jose.jwk import (
    check_signing_use,
    jwk_thumbprint,
    public_jwk,
    public_key_from_jwk,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
_REQUIRED = {"EC": {"crv", "kty", "x", "y"}, "OKP": {"crv", "kty", "x"}, "RSA": {"e", "kty", "n"}}

# --------------------------------------------------------------------------- RFC 7638

THUMBPRINT_VECTORS = [
    pytest.param(
        # RFC 8037 Appendix A.3 (Ed25519 public key and its RFC 7638 thumbprint).
        {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
        id="rfc8037-a3-ed25519",
    ),
    pytest.param(
        # RFC 9449 §4.1 proof key; §6.1 gives its thumbprint (SPECS.md TV-DPOP-3).
        {
            "crv": "P-256",
            "kty": "EC",
            "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        },
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        id="rfc9449-p256",
    ),
]


@pytest.mark.parametrize(("members", "expected"), THUMBPRINT_VECTORS)
def test_thumbprint_vectors(members: dict[str, str], expected: str) -> None:
    assert jwk_thumbprint(members) == expected
    # Members outside the RFC 7638 §3.2 required set do not change the thumbprint.
    assert jwk_thumbprint({**members, "kid": "x", "alg": "whatever", "use": "sig"}) == expected


def test_thumbprint_rfc7638_section_3_1_rsa_vector() -> None:
    vector = json.loads((VECTORS / "rfc7638_thumbprint.json").read_text())
    assert jwk_thumbprint(vector["jwk"]) == vector["thumbprint"]  # "NzbLsXh8uDCc..."


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "oct", "k": "AAAA"}, id="oct-has-no-thumbprint-here"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "AA"}, id="missing-y"),
        pytest.param({"kty": "OKP", "crv": "Ed25519", "x": 5}, id="x-not-a-string"),
        pytest.param({"crv": "P-256", "x": "AA", "y": "AA"}, id="no-kty"),
        pytest.param({"kty": "OKP", "crv": "Ed25519", "x": "\ud800"}, id="lone-surrogate"),
    ],
)
def test_thumbprint_refuses(jwk: dict[str, Any]) -> None:
    with pytest.raises(JOSEError):
        jwk_thumbprint(jwk)


# --------------------------------------------------------------------------- import / export

# RFC 8037 Appendix A.1/A.2: the Ed25519 key pair.
RFC8037_PUBLIC = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}


def _keys() -> list[Any]:
    return [
        pytest.param(ec.generate_private_key(ec.SECP256R1()), {"ES256"}, id="p256"),
        pytest.param(ec.generate_private_key(ec.SECP384R1()), {"ES384"}, id="p384"),
        pytest.param(ec.generate_private_key(ec.SECP521R1()), {"ES512"}, id="p521"),
        pytest.param(ed25519.Ed25519PrivateKey.generate(), {"EdDSA"}, id="ed25519"),
        pytest.param(ed448.Ed448PrivateKey.generate(), {"EdDSA"}, id="ed448"),
        pytest.param(
            rsa.generate_private_key(65537, 2048),
            {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
            id="rsa-2048",
        ),
    ]


@pytest.mark.parametrize(("private", "algs"), _keys())
def test_export_then_import_gives_the_same_key(private: Any, algs: set[str]) -> None:
    jwk = public_jwk(private.public_key())
    key, possible = public_key_from_jwk(jwk)
    assert possible == algs
    assert public_jwk(key) == jwk
    # Exactly the RFC 7638 §3.2 required members: public parameters only.
    assert set(jwk) == _REQUIRED[jwk["kty"]]


def test_rfc8037_a2_public_key_imports() -> None:
    key, algs = public_key_from_jwk(RFC8037_PUBLIC)
    assert isinstance(key, ed25519.Ed25519PublicKey)
    assert algs == {"EdDSA"}
    assert public_jwk(key) == {k: RFC8037_PUBLIC[k] for k in ("crv", "kty", "x")}


def _ec(**change: Any) -> dict[str, Any]:
    return {**public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()), **change}


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "oct", "k": "c2VjcmV0"}, id="symmetric"),
        pytest.param({**RFC8037_PUBLIC, "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"},
                     id="rfc8037-a1-private-d"),
        pytest.param(_ec(p="AA"), id="any-private-member"),
        pytest.param(_ec(crv="P-192"), id="unknown-curve"),
        pytest.param(_ec(x="AAAA"), id="short-coordinate"),
        pytest.param(_ec(y="A" * 43), id="off-curve"),
        pytest.param({"kty": "RSA", "n": "AQAB" * 10, "e": "AQAB"}, id="rsa-too-small"),
        pytest.param({"kty": "OKP", "crv": "X25519", "x": RFC8037_PUBLIC["x"]}, id="x25519"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "A+A", "y": "AA"}, id="bad-base64url"),
        pytest.param({"kty": "foo"}, id="unknown-kty"),
    ],
)  # fmt: skip
def test_import_refuses(jwk: dict[str, Any]) -> None:
    with pytest.raises(JOSEError) as info:
        public_key_from_jwk(jwk)
    assert info.value.code in ("bad_key", "malformed")


@pytest.mark.parametrize(
    ("jwk", "ok"),
    [
        pytest.param({}, True, id="no-use"),
        pytest.param({"use": "sig"}, True, id="use-sig"),
        pytest.param({"key_ops": ["sign", "verify"]}, True, id="key-ops-verify"),
        pytest.param({"use": "enc"}, False, id="use-enc"),
        pytest.param({"key_ops": ["sign"]}, False, id="key-ops-without-verify"),
        pytest.param({"key_ops": "verify"}, False, id="key-ops-not-a-list"),
    ],
)
def test_signing_use(jwk: dict[str, Any], ok: bool) -> None:
    if ok:
        check_signing_use(jwk)
    else:
        with pytest.raises(JOSEError):
            check_signing_use(jwk)
