"""Static and key-based converters, and the per-route selection of converters."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict
from yarl import URL

from gateway.context import Identity, Principal
from gateway.credentials import ConvertContext, Outbound
from gateway.credentials.manager import CredentialManager
from gateway.errors import Forbidden, ServiceUnavailable
from gateway.settings import Secret, parse_settings


def _out() -> Outbound:
    return Outbound("GET", URL("http://backend.internal/api/x?a=1"), CIMultiDict())


def _ctx(txn: str | None = "txn.jwt.value") -> ConvertContext:
    principal = Principal(
        method="mtls", subject="spiffe://example.org/agent/a", subject_type="agent"
    )
    identity = Identity(
        principal=principal, results={"mtls": principal}, caller="agent", mode="self"
    )
    return ConvertContext(facts=None, identity=identity, txn_token=txn)  # type: ignore[arg-type]


def _manager(tmp_path: Path, route: dict[str, Any], *, txn: bool = False) -> CredentialManager:
    data: dict[str, Any] = {
        "authn": {"mtls": {}},
        "routes": [{"name": "r", "upstream": "http://127.0.0.1:9", **route}],
    }
    settings = parse_settings(data, tmp_path)
    return CredentialManager(settings.routes, txn_header="Txn-Token" if txn else None)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_KEY", "k-123")
    monkeypatch.setenv("SVC_PW", "p@ss:word")
    monkeypatch.setenv("STATIC_TOKEN", "static-token")


@pytest.mark.parametrize(
    ("credential", "header", "expected"),
    [
        pytest.param(
            {"type": "api_key", "header": "X-Billing-Key", "secret": "env:BILLING_KEY"},
            "X-Billing-Key",
            "k-123",
            id="api-key-header",
        ),
        pytest.param(
            {"type": "basic", "username": "svc", "password": "env:SVC_PW"},
            "Authorization",
            "Basic " + base64.b64encode(b"svc:p@ss:word").decode(),
            id="basic",
        ),
        pytest.param(
            {"type": "bearer_static", "token": "env:STATIC_TOKEN"},
            "Authorization",
            "Bearer static-token",
            id="bearer-static",
        ),
    ],
)
async def test_static_converters(
    tmp_path: Path, credential: dict[str, Any], header: str, expected: str
) -> None:
    conv = _manager(tmp_path, {"credential": credential}).select("r", None)
    out = _out()
    await conv.apply(out, _ctx())
    assert out.headers.getall(header) == [expected]


async def test_api_key_in_query(tmp_path: Path) -> None:
    cred = {"type": "api_key", "header": None, "query_param": "key", "secret": "env:BILLING_KEY"}
    conv = _manager(tmp_path, {"credential": cred}).select("r", None)
    out = _out()
    await conv.apply(out, _ctx())
    assert out.url.query["key"] == "k-123"
    assert out.url.query["a"] == "1"


def test_secret_repr_never_shows_value(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "routes": [
                {
                    "name": "r",
                    "upstream": "http://127.0.0.1:9",
                    "credential": {"type": "bearer_static", "token": "env:STATIC_TOKEN"},
                }
            ]
        },
        tmp_path,
    )
    text = repr(settings) + str(settings.model_dump())
    assert "static-token" not in text
    assert "env:STATIC_TOKEN" in text


async def test_default_is_txn_token_when_minting(tmp_path: Path) -> None:
    manager = _manager(tmp_path, {"authn": "mtls"}, txn=True)
    out = _out()
    await manager.select("r", None).apply(out, _ctx("minted"))
    assert out.headers.getall("Txn-Token") == ["minted"]
    assert manager.uses_txn_token("r", None)


async def test_txn_token_missing_fails_closed(tmp_path: Path) -> None:
    manager = _manager(tmp_path, {"authn": "mtls"}, txn=True)
    with pytest.raises(ServiceUnavailable):
        await manager.select("r", None).apply(_out(), _ctx(None))


async def test_default_is_none_on_a_public_route(tmp_path: Path) -> None:
    manager = _manager(tmp_path, {"tags": ["public"]}, txn=True)
    out = _out()
    await manager.select("r", None).apply(out, _ctx(None))
    assert dict(out.headers) == {}
    assert not manager.uses_txn_token("r", None)


async def test_default_is_none_without_minting(tmp_path: Path) -> None:
    out = _out()
    await _manager(tmp_path, {}).select("r", None).apply(out, _ctx())
    assert dict(out.headers) == {}


async def test_decision_may_choose_only_listed_alternatives(tmp_path: Path) -> None:
    manager = _manager(
        tmp_path,
        {
            "credential": {"type": "none"},
            "credentials": {"legacy": {"type": "api_key", "secret": "env:BILLING_KEY"}},
        },
    )
    out = _out()
    await manager.select("r", "legacy").apply(out, _ctx())
    assert out.headers["X-API-Key"] == "k-123"
    with pytest.raises(Forbidden) as info:
        manager.select("r", "admin-root")
    assert info.value.reason == "credential_not_allowed"


async def test_signed_jwt_is_short_lived_and_verifiable(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "signer.pem").write_bytes(pem)
    cred = {
        "type": "signed_jwt",
        "key": "signer.pem",
        "issuer": "https://gateway.example.org",
        "audience": "legacy-erp",
        "ttl_s": 30,
    }
    conv = _manager(tmp_path, {"credential": cred}).select("r", None)
    first, second = _out(), _out()
    await conv.apply(first, _ctx())
    await conv.apply(second, _ctx())
    token = first.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"], audience="legacy-erp")
    assert claims["sub"] == "spiffe://example.org/agent/a"
    assert claims["exp"] - claims["iat"] == 30
    assert first.headers["Authorization"] != second.headers["Authorization"]  # fresh jti


def test_secret_object_compares_by_reference_only() -> None:
    assert Secret("env:A", b"x") == Secret("env:A", b"y")
    assert "x" not in str(Secret("env:A", b"x"))
