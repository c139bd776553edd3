"""OAuth credential conversion against a real Keycloak (client credentials, RFC 8693).

Failure modes Keycloak cannot be made to produce on cue (an endpoint that
stalls, or answers garbage) use a tiny local aiohttp app; everything else is
the real authorization server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.credentials import ConvertContext, Outbound
from gateway.credentials.oauth_client_credentials import ClientCredentialsConverter
from gateway.credentials.token_exchange import TokenExchangeConverter
from gateway.errors import ServiceUnavailable
from gateway.settings import (
    OAuthClientCredentials,
    Secret,
    TokenExchangeCredential,
    resolve_secret,
)
from tests.keycloak_server import Keycloak, start_keycloak
from tests.support import closed_port

pytestmark = pytest.mark.integration

CC_SECRET = "cc-test-secret"
GW_SECRET = "gw-test-secret"


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keycloak]:
    yield from start_keycloak(tmp_path_factory.mktemp("keycloak") / "keycloak.log")


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _outbound() -> Outbound:
    return Outbound("GET", URL("http://127.0.0.1:1/billing"), CIMultiDict())


def _ctx(inbound: str | None = None, txn: str | None = None) -> ConvertContext:
    return ConvertContext(facts=None, identity=None, txn_token=txn, inbound_token=inbound)  # type: ignore[arg-type]


def _secret(value: str) -> Secret:
    return Secret("env:TEST_SECRET", value.encode())


def _cc(endpoint: str, secret: str = CC_SECRET, **kw: Any) -> OAuthClientCredentials:
    return OAuthClientCredentials(
        type="oauth_client_credentials",
        token_endpoint=endpoint,
        client_id="billing-backend-client",
        client_secret=_secret(secret),
        **kw,
    )


def _tx(endpoint: str, **kw: Any) -> TokenExchangeCredential:
    return TokenExchangeCredential(
        type="token_exchange",
        token_endpoint=endpoint,
        client_id="agentgate",
        client_secret=_secret(GW_SECRET),
        audience="billing-backend",
        **kw,
    )


async def _apply(conv: Any, ctx: ConvertContext | None = None) -> str:
    out = _outbound()
    await conv.apply(out, ctx or _ctx())
    value = out.headers["Authorization"]
    assert value.startswith("Bearer ")
    return str(value.removeprefix("Bearer "))


async def test_client_credentials_token_is_fetched_and_cached(keycloak: Keycloak) -> None:
    conv = ClientCredentialsConverter("billing", _cc(keycloak.token_endpoint))
    await conv.start()
    try:
        first = await _apply(conv)
        second = await _apply(conv)
    finally:
        await conv.close()
    claims = _claims(first)
    assert claims["iss"] == keycloak.issuer
    assert claims["azp"] == "billing-backend-client"
    assert "billing-backend" in (
        claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    )
    assert second == first  # served from the cache, not fetched again


async def test_client_credentials_refresh_before_expiry(keycloak: Keycloak) -> None:
    # Keycloak issues 300 s tokens; refreshing 299.5 s early makes every use a refresh.
    conv = ClientCredentialsConverter(
        "billing", _cc(keycloak.token_endpoint, refresh_before_s=299.5)
    )
    await conv.start()
    try:
        first = await _apply(conv)
        await asyncio.sleep(0.6)
        second = await _apply(conv)
    finally:
        await conv.close()
    assert _claims(first)["jti"] != _claims(second)["jti"]


async def test_client_credentials_single_flight(keycloak: Keycloak) -> None:
    conv = ClientCredentialsConverter("billing", _cc(keycloak.token_endpoint))
    await conv.start()
    try:
        tokens = await asyncio.gather(*(_apply(conv) for _ in range(50)))
    finally:
        await conv.close()
    # Keycloak mints a new jti per fetch: one distinct token means one fetch.
    assert len(set(tokens)) == 1


async def test_client_credentials_wrong_secret_is_503_without_leaking(keycloak: Keycloak) -> None:
    conv = ClientCredentialsConverter("billing", _cc(keycloak.token_endpoint, secret="wrong"))
    await conv.start()
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await _apply(conv)
    finally:
        await conv.close()
    assert info.value.status == 503
    assert "wrong" not in str(info.value)
    assert "wrong" not in info.value.public


async def test_token_exchange_for_backend_audience(keycloak: Keycloak) -> None:
    user_token = await asyncio.to_thread(
        keycloak.password_token, "alice", "alice-test-password", "travel-agent"
    )
    conv = TokenExchangeConverter("billing", _tx(keycloak.token_endpoint))
    await conv.start()
    try:
        exchanged = await _apply(conv, _ctx(inbound=user_token))
        again = await _apply(conv, _ctx(inbound=user_token))
    finally:
        await conv.close()
    claims, original = _claims(exchanged), _claims(user_token)
    assert exchanged != user_token  # the inbound token never reaches the backend
    assert claims["aud"] == "billing-backend"
    assert claims["sub"] == original["sub"]
    assert claims["azp"] == "agentgate"
    assert again == exchanged  # cached per subject token and audience


async def test_token_exchange_refused_subject_is_503(keycloak: Keycloak) -> None:
    conv = TokenExchangeConverter("billing", _tx(keycloak.token_endpoint))
    await conv.start()
    try:
        with pytest.raises(ServiceUnavailable):
            await _apply(conv, _ctx(inbound="not-a-token"))
        with pytest.raises(ServiceUnavailable):  # no subject at all: never passthrough
            await _apply(conv, _ctx(inbound=None))
    finally:
        await conv.close()


# ----------------------------------------------------------------- what Keycloak cannot do


@pytest.fixture
async def misbehaving_as() -> AsyncIterator[str]:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"access_token": "late", "expires_in": 60})

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def no_token(request: web.Request) -> web.Response:
        return web.json_response({"token_type": "Bearer", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/stall", stall)
    app.router.add_post("/garbage", garbage)
    app.router.add_post("/no-token", no_token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/stall", id="slow-endpoint"),
        pytest.param("/garbage", id="not-json"),
        pytest.param("/no-token", id="json-without-access_token"),
    ],
)
async def test_misbehaving_token_endpoint_fails_closed(misbehaving_as: str, path: str) -> None:
    conv = ClientCredentialsConverter("billing", _cc(misbehaving_as + path, timeout_s=0.5))
    await conv.start()
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await _apply(conv)
    finally:
        await conv.close()
    assert info.value.public == "service temporarily unavailable"


async def test_token_endpoint_down_fails_closed() -> None:
    conv = ClientCredentialsConverter("billing", _cc(f"http://127.0.0.1:{closed_port()}/token"))
    await conv.start()
    try:
        with pytest.raises(ServiceUnavailable):
            await _apply(conv)
    finally:
        await conv.close()


def test_file_secret_rotation_and_loss(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first\n")
    secret = resolve_secret(f"file:{path}", tmp_path)
    assert secret.reveal() == b"first"
    path.write_text("second-value")
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock granularity
    secret._next_check = 0.0  # skip the once-a-second stat throttle for the test
    assert secret.reveal() == b"second-value"
    path.unlink()
    secret._next_check = 0.0
    with pytest.raises(ServiceUnavailable):
        secret.reveal()
    assert "second-value" not in repr(secret)
