"""gateway.credentials.manager: each route's converters, built once, and the one a request uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.credentials.api_key import APIKeyConverter
from gateway.credentials.manager import DEFAULT, CredentialManager, build_converter
from gateway.credentials.none import NoneConverter
from gateway.credentials.txn_token import TxnTokenConverter
from gateway.errors import Forbidden, ServiceUnavailable
from gateway.settings import NoCredential, TxnTokenCredential, parse_settings
from tests.unit.credentials.conftest import context, manager, outbound


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_KEY", "k-123")


@pytest.mark.parametrize(
    ("route", "txn", "expected", "uses_txn"),
    [
        pytest.param({"authn": "mtls"}, True, TxnTokenConverter, True, id="authn-and-minting"),
        pytest.param({"tags": ["public"]}, True, NoneConverter, False, id="public-route-minting"),
        pytest.param({}, False, NoneConverter, False, id="no-minting"),
        pytest.param(
            {"authn": "mtls", "credential": {"type": "none"}},
            True,
            NoneConverter,
            False,
            id="explicit-none-wins-over-minting",
        ),
    ],
)
def test_default_credential(
    tmp_path: Path, route: dict[str, object], txn: bool, expected: type, uses_txn: bool
) -> None:
    m = manager(tmp_path, route, txn=txn)
    assert type(m.select("r", None)) is expected
    assert type(m.select("r", DEFAULT)) is expected
    assert m.uses_txn_token("r", None) is uses_txn


async def test_default_is_txn_token_when_minting(tmp_path: Path) -> None:
    m = manager(tmp_path, {"authn": "mtls"}, txn=True)
    out = outbound()
    await m.select("r", None).apply(out, context("minted"))
    assert out.headers.getall("Txn-Token") == ["minted"]


async def test_default_is_none_on_a_public_route(tmp_path: Path) -> None:
    out = outbound()
    await (
        manager(tmp_path, {"tags": ["public"]}, txn=True)
        .select("r", None)
        .apply(out, context(None))
    )
    assert dict(out.headers) == {}


async def test_decision_may_choose_only_listed_alternatives(tmp_path: Path) -> None:
    m = manager(
        tmp_path,
        {
            "credential": {"type": "none"},
            "credentials": {"legacy": {"type": "api_key", "secret": "env:BILLING_KEY"}},
        },
    )
    assert isinstance(m.select("r", "legacy"), APIKeyConverter)
    out = outbound()
    await m.select("r", "legacy").apply(out, context())
    assert out.headers["X-API-Key"] == "k-123"
    with pytest.raises(Forbidden) as info:
        m.select("r", "admin-root")
    assert info.value.reason == "credential_not_allowed"
    assert info.value.status == 403


def test_unknown_route_is_503(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable):
        manager(tmp_path, {}).select("other", None)


async def test_all_start_close(tmp_path: Path) -> None:
    m = manager(
        tmp_path,
        {
            "credentials": {
                "a": {"type": "none"},
                "b": {"type": "api_key", "secret": "env:BILLING_KEY"},
            }
        },
    )
    assert sorted(c.name for c in m.all()) == ["a", "b", "default"]
    await m.start()
    await m.close()


def test_txn_token_credential_needs_the_txn_tokens_section() -> None:
    with pytest.raises(ValueError, match="credential type txn_token needs the txn_tokens section"):
        build_converter("default", TxnTokenCredential(type="txn_token"), None)


def test_txn_token_credential_from_settings(tmp_path: Path) -> None:
    data = {
        "authn": {"mtls": {}},
        "routes": [
            {
                "name": "r",
                "upstream": "http://127.0.0.1:9",
                "credential": {"type": "txn_token"},
            }
        ],
    }
    routes = parse_settings(data, tmp_path).routes
    with pytest.raises(ValueError, match="txn_tokens"):
        CredentialManager(routes, txn_header=None)
    m = CredentialManager(routes, txn_header="Txn-Token")
    assert m.uses_txn_token("r", None)


def test_build_converter_names_the_converter() -> None:
    conv = build_converter("legacy", NoCredential(type="none"), None)
    assert isinstance(conv, NoneConverter)
    assert conv.name == "legacy"
