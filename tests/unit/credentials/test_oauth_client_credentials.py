"""gateway.credentials.oauth_client_credentials: RFC 6749 §4.4 against a local token endpoint."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.credentials.oauth_client_credentials import ClientCredentialsConverter
from gateway.errors import ServiceUnavailable
from tests.support import closed_port
from tests.unit.credentials.conftest import Build, Start, TokenServer, context, outbound

SECRET = "s3cr:et/+ é"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_SECRET", SECRET)


@pytest.fixture
def started(start_converters: Callable[..., Start]) -> Start:
    base = {
        "type": "oauth_client_credentials",
        "client_id": "gw client",
        "client_secret": "env:CC_SECRET",
    }
    return start_converters(base, ClientCredentialsConverter)


async def test_client_secret_basic(token_server: TokenServer, started: Any) -> None:
    conv = await started(token_server.url, scope="read write", audience="billing")
    out = outbound()
    await conv.apply(out, context())
    assert out.headers.getall("Authorization") == ["Bearer at-1"]
    ((headers, form),) = token_server.requests
    assert form == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "billing",
    }
    # RFC 6749 §2.3.1: id and secret are form-urlencoded, then Basic-encoded.
    pair = "gw%20client:s3cr%3Aet%2F%2B%20%C3%A9"
    assert headers["Authorization"] == "Basic " + base64.b64encode(pair.encode()).decode()
    assert headers["Accept"] == "application/json"


async def test_client_secret_post(token_server: TokenServer, started: Any) -> None:
    conv = await started(token_server.url, auth_method="client_secret_post")
    await conv.apply(outbound(), context())
    ((headers, form),) = token_server.requests
    assert "Authorization" not in headers
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "gw client",
        "client_secret": SECRET,
    }


async def test_token_is_cached_until_refresh_before_expiry(
    token_server: TokenServer, started: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await started(token_server.url, refresh_before_s=30)
    for _ in range(3):
        await conv.apply(outbound(), context())
    assert len(token_server.requests) == 1
    # 300 s lifetime, refreshed 30 s early: at +271 s the next request fetches again.
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 271)
    token_server.json({"access_token": "at-2", "expires_in": 300})
    out = outbound()
    await conv.apply(out, context())
    assert out.headers["Authorization"] == "Bearer at-2"
    assert len(token_server.requests) == 2


async def test_concurrent_requests_share_one_fetch(token_server: TokenServer, started: Any) -> None:
    token_server.delay = 0.2
    conv = await started(token_server.url)
    outs = [outbound() for _ in range(5)]
    await asyncio.gather(*(conv.apply(o, context()) for o in outs))
    assert len(token_server.requests) == 1
    assert {o.headers["Authorization"] for o in outs} == {"Bearer at-1"}


FAILURES = [
    pytest.param((500, b'{"error": "server_error"}', {}), id="500"),
    pytest.param((400, b'{"error": "invalid_client"}', {}), id="invalid-client"),
    pytest.param((307, b"", {"Location": "/elsewhere"}), id="redirect-not-followed"),
    pytest.param((200, b"<html>", {}), id="not-json"),
    pytest.param((200, b"[1]", {}), id="not-an-object"),
    pytest.param((200, b'{"token_type": "Bearer"}', {}), id="no-access-token"),
    pytest.param((200, b'{"access_token": ""}', {}), id="empty-access-token"),
    pytest.param((200, b'{"access_token": 7}', {}), id="access-token-not-a-string"),
    pytest.param((200, b'{"access_token": "t", "expires_in": true}', {}), id="expires-in-bool"),
    pytest.param((200, b'{"access_token": "t", "expires_in": -1}', {}), id="expires-in-negative"),
    pytest.param((200, b'{"access_token": "t", "expires_in": "60"}', {}), id="expires-in-text"),
]


@pytest.mark.parametrize("answer", FAILURES)
async def test_bad_answers_are_503(
    token_server: TokenServer, started: Any, answer: tuple[int, bytes, dict[str, str]]
) -> None:
    token_server.answer = answer
    conv = await started(token_server.url)
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(out, context())
    assert (info.value.status, info.value.reason) == (503, "credential_unavailable")
    assert SECRET not in str(info.value)
    assert "s3cr" not in repr(info.value)
    assert "Authorization" not in out.headers
    # A redirect is never followed: one request, to /token only.
    assert len(token_server.requests) == 1


async def test_connection_refused_is_503(started: Any) -> None:
    conv = await started(f"http://127.0.0.1:{closed_port()}/token")
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(outbound(), context())
    assert info.value.reason == "credential_unavailable"


async def test_slow_endpoint_times_out_as_503(token_server: TokenServer, started: Any) -> None:
    token_server.delay = 1.0
    conv = await started(token_server.url, timeout_s=0.1)
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(outbound(), context())
    assert info.value.reason == "credential_unavailable"
    assert "TimeoutError" in str(info.value)


async def test_unreadable_client_secret_is_503(
    token_server: TokenServer, build: Build, tmp_path: Path, later: Callable[[], None]
) -> None:
    (tmp_path / "cs").write_text("file-secret")
    conv = build(
        {
            "type": "oauth_client_credentials",
            "token_endpoint": token_server.url,
            "client_id": "gw",
            "client_secret": "file:cs",
        }
    )
    await conv.start()
    try:
        (tmp_path / "cs").unlink()
        later()
        with pytest.raises(ServiceUnavailable) as info:
            await conv.apply(outbound(), context())
        assert info.value.reason == "secret_unavailable"
        assert "file-secret" not in str(info.value)
        assert token_server.requests == []  # nothing was sent without the secret
    finally:
        await conv.close()


def test_secret_never_in_repr(build: Build) -> None:
    conv = build(
        {
            "type": "oauth_client_credentials",
            "token_endpoint": "http://127.0.0.1:9/token",
            "client_id": "gw",
            "client_secret": "env:CC_SECRET",
        }
    )
    assert SECRET not in repr(conv) + repr(vars(conv))
