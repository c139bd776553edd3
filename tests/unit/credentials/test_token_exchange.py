"""gateway.credentials.token_exchange: RFC 8693 §2.1 against a local token endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.credentials.token_exchange import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    TXN_TOKEN_TYPE,
    TokenExchangeConverter,
)
from gateway.errors import ServiceUnavailable
from tests.unit.credentials.conftest import Start, TokenServer, context, outbound

SECRET = "exchange-client-secret"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TE_SECRET", SECRET)


@pytest.fixture
def started(start_converters: Callable[..., Start]) -> Start:
    base = {"type": "token_exchange", "client_id": "gw", "client_secret": "env:TE_SECRET"}
    return start_converters(base, TokenExchangeConverter)


@pytest.mark.parametrize(
    ("cfg", "ctx_kw", "subject", "subject_type", "extra"),
    [
        pytest.param(
            {"audience": "billing"},
            {"inbound_token": "in-tok"},
            "in-tok",
            ACCESS_TOKEN_TYPE,
            {"audience": "billing"},
            id="inbound-access-token",
        ),
        pytest.param(
            {"subject": "txn_token", "resource": "https://billing/", "scope": "read"},
            {"txn": "txn-tok"},
            "txn-tok",
            TXN_TOKEN_TYPE,
            {"resource": "https://billing/", "scope": "read"},
            id="txn-token",
        ),
    ],
)
async def test_exchange_form(
    token_server: TokenServer,
    started: Any,
    cfg: dict[str, str],
    ctx_kw: dict[str, str],
    subject: str,
    subject_type: str,
    extra: dict[str, str],
) -> None:
    conv = await started(token_server.url, **cfg)
    out = outbound()
    await conv.apply(out, context(**ctx_kw))
    assert out.headers.getall("Authorization") == ["Bearer at-1"]
    ((headers, form),) = token_server.requests
    assert form == {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": subject_type,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        **extra,
    }
    assert headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("cfg", "ctx_kw"),
    [
        pytest.param({}, {"inbound_token": None}, id="no-inbound-token"),
        pytest.param({"subject": "txn_token"}, {"txn": None, "inbound_token": "x"}, id="no-txn"),
    ],
)
async def test_nothing_to_exchange_is_503(
    token_server: TokenServer, started: Any, cfg: dict[str, str], ctx_kw: dict[str, Any]
) -> None:
    conv = await started(token_server.url, **cfg)
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(out, context(**ctx_kw))
    assert info.value.reason == "credential_unavailable"
    assert token_server.requests == []
    assert "Authorization" not in out.headers


async def test_cached_per_subject_and_bounded(token_server: TokenServer, started: Any) -> None:
    conv = await started(token_server.url, max_cache_entries=2)
    for subject in ["a", "a", "b", "a", "c", "b", "a"]:
        await conv.apply(outbound(), context(inbound_token=subject))
    # a (fetch), a (hit), b (fetch), a (hit), c (fetch; evicts a, the oldest entry), b (hit),
    # a (fetch again)
    assert [form["subject_token"] for _, form in token_server.requests] == ["a", "b", "c", "a"]


async def test_no_cache_when_max_entries_is_zero(token_server: TokenServer, started: Any) -> None:
    conv = await started(token_server.url, max_cache_entries=0)
    for _ in range(2):
        await conv.apply(outbound(), context(inbound_token="a"))
    assert len(token_server.requests) == 2


async def test_refusal_is_503_without_secret_or_subject(
    token_server: TokenServer, started: Any
) -> None:
    token_server.json({"error": "invalid_grant"}, status=400)
    conv = await started(token_server.url)
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(outbound(), context(inbound_token="subject-token-value"))
    text = str(info.value) + repr(info.value)
    assert info.value.reason == "credential_unavailable"
    assert "invalid_grant" in info.value.detail  # the AS's error code, for the audit record
    assert SECRET not in text
    assert "subject-token-value" not in text


def test_the_inbound_token_never_shows_in_a_convert_context_repr() -> None:
    from gateway.credentials import ConvertContext

    ctx = ConvertContext(facts=None, identity=None, txn_token=None, inbound_token="eyJ.secret.at")  # type: ignore[arg-type]
    assert "eyJ.secret.at" not in repr(ctx)
