"""gateway.credentials.signed_jwt: a short-lived JWT (RFC 7519) minted per request."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.credentials.signed_jwt import SignedJWTConverter
from tests.unit.credentials.conftest import Build, context, outbound

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _write_key(folder: Path, key: PrivateKey) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "signer.pem").write_bytes(pem)
    return "signer.pem"


def _cfg(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "signed_jwt",
        "key": key,
        "issuer": "https://gateway.example.org",
        "audience": "legacy-erp",
        "ttl_s": 30,
        **extra,
    }


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        pytest.param("ES256", ec.generate_private_key(ec.SECP256R1()), id="ES256"),
        pytest.param("EdDSA", ed25519.Ed25519PrivateKey.generate(), id="EdDSA"),
    ],
)
async def test_short_lived_and_verifiable(
    build: Build, tmp_path: Path, algorithm: str, key: PrivateKey
) -> None:
    conv = build(_cfg(_write_key(tmp_path, key), algorithm=algorithm))
    assert isinstance(conv, SignedJWTConverter)
    first, second = outbound(), outbound()
    before = int(time.time())
    await conv.apply(first, context())
    await conv.apply(second, context())
    token = first.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "typ": "JWT"}
    claims = jwt.decode(token, key.public_key(), algorithms=[algorithm], audience="legacy-erp")
    assert claims["iss"] == "https://gateway.example.org"
    assert claims["sub"] == "spiffe://example.org/agent/a"
    assert claims["exp"] - claims["iat"] == 30
    assert before <= claims["iat"] <= int(time.time())
    uuid.UUID(claims["jti"])
    assert first.headers["Authorization"] != second.headers["Authorization"]  # fresh jti


async def test_raw_in_another_header_and_anonymous(build: Build, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    conv = build(_cfg(_write_key(tmp_path, key), header="X-Gateway-Assertion"))
    out = outbound()
    await conv.apply(out, context(subject=None))
    assert "Authorization" not in out.headers
    token = out.headers["X-Gateway-Assertion"]
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"], audience="legacy-erp")
    assert claims["sub"] == "anonymous"


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        pytest.param("EdDSA", ec.generate_private_key(ec.SECP256R1()), id="ec-key-for-EdDSA"),
        pytest.param("ES256", ed25519.Ed25519PrivateKey.generate(), id="ed25519-key-for-ES256"),
    ],
)
def test_key_must_match_the_algorithm(
    build: Build, tmp_path: Path, algorithm: str, key: PrivateKey
) -> None:
    path = _write_key(tmp_path, key)
    with pytest.raises(ValueError, match="not a key for"):
        build(_cfg(path, algorithm=algorithm))


def test_private_key_never_in_repr(build: Build, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    conv = build(_cfg(_write_key(tmp_path, key)))
    d = hex(key.private_numbers().private_value)[2:]
    assert d not in repr(conv) + repr(vars(conv))
