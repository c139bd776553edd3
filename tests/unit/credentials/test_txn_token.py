"""gateway.credentials.txn_token: the minted Txn-Token, in the configured header, or a 503."""

from __future__ import annotations

import pytest

from gateway.credentials.txn_token import TxnTokenConverter
from gateway.errors import ServiceUnavailable
from tests.unit.credentials.conftest import Build, context, outbound


@pytest.mark.parametrize("header", ["Txn-Token", "X-Transaction-Token"])
async def test_sends_the_minted_token(header: str) -> None:
    out = outbound()
    await TxnTokenConverter("default", header).apply(out, context("eyJ.minted.sig"))
    assert out.headers.getall(header) == ["eyJ.minted.sig"]
    assert len(out.headers) == 1


async def test_replaces_a_client_copy() -> None:
    out = outbound()
    out.headers["Txn-Token"] = "forged"
    await TxnTokenConverter("default", "Txn-Token").apply(out, context("minted"))
    assert out.headers.getall("Txn-Token") == ["minted"]


async def test_no_minted_token_fails_closed() -> None:
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await TxnTokenConverter("default", "Txn-Token").apply(out, context(None))
    assert info.value.status == 503
    assert info.value.reason == "txn_token_missing"
    assert "Txn-Token" not in out.headers


async def test_built_from_settings(build: Build) -> None:
    conv = build({"type": "txn_token"}, txn=True)
    out = outbound()
    await conv.apply(out, context("minted"))
    assert out.headers["Txn-Token"] == "minted"
