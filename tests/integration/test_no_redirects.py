"""No outbound client of the gateway follows a redirect (issue 12, item 1).

A dependency that answers ``307 Location: http://attacker/...`` must not make the gateway
re-send what it sent (policy input, client secrets, tokens, the request body) anywhere else.
One test per outbound client; in each a :class:`Redirector` answers every request with a 307
to an :class:`tests.support.Attacker` listener, and the attacker must see ZERO connections:

- the OPA PDP (decision POSTs and the ``/health`` probe): 503 ``pdp_unavailable``;
- an issuer's ``jwks_uri`` (at start and on the request path): 503 ``jwks_unavailable``;
- RFC 7662 introspection: 503 ``introspection_unavailable``;
- the OAuth client-credentials token endpoint: 503 ``credential_unavailable``;
- the RFC 8693 token-exchange endpoint: 503 ``credential_unavailable``;
- the upstream: the 307 is relayed to the client unchanged (status and ``Location``);
- the verification kit's JWKS fetch (:mod:`gateway.sdk.txn`, an internal service's middleware): 503;
- the OTLP/HTTP span exporter (``requests``): the export fails, the spans go nowhere else.

The Redirector is a small fake because no real OPA, IdP or backend can be told to redirect.
Each test also asserts the redirector WAS asked, so "zero connections" cannot pass because the
client never called out at all.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app import Gateway
from gateway.observability.tracing import Tracing
from gateway.sdk.txn import TxnTokenVerifier, txn_token_middleware
from gateway.settings import TelemetrySettings, parse_settings
from tests.integration.conftest import BASE_SERVER, merge
from tests.support import (
    LOCALHOST,
    Attacker,
    RawResponse,
    Upstream,
    http_request,
    raw_request,
    wait_until,
)
from tests.unit.observability.builders import make_facts

pytestmark = pytest.mark.integration

ISSUER = "https://idp.test"
AUDIENCE = "agentgate"
API_KEY = "redirect-test-key-" + "Zq8rW4mL2xT7vN1p"
CLIENT_SECRET = "redirect-test-client-secret-9Hk2"


@dataclass
class Seen:
    method: str
    path: str
    body: bytes


@dataclass
class Redirector:
    """Answers every request with ``307`` to the attacker, same path (the worst case:
    307/308 oblige a following client to re-send the method and the body)."""

    attacker: Attacker = field(default_factory=Attacker)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def location(self, path: str) -> str:
        return f"http://{LOCALHOST}:{self.attacker.port}{path}"

    async def start(self) -> None:
        await self.attacker.start()

        async def redirect(request: web.Request) -> web.Response:
            self.seen.append(Seen(request.method, request.path, await request.read()))
            return web.Response(status=307, headers={"Location": self.location(request.path)})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", redirect)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.attacker.close()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@pytest.fixture
async def redirector() -> AsyncIterator[Redirector]:
    r = Redirector()
    await r.start()
    try:
        yield r
    finally:
        await r.close()


GatewayMaker = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayMaker]:
    started: list[Gateway] = []

    async def make(*, routes: list[dict[str, Any]], **sections: Any) -> Gateway:
        config = {"server": merge(BASE_SERVER, sections.pop("server", {})), "routes": routes}
        gw = Gateway(parse_settings({**config, **sections}, tmp_path))
        started.append(gw)
        await gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in reversed(started):
            await gw.stop()


@dataclass
class IdP:
    key: ec.EllipticCurvePrivateKey
    jwks_file: Path

    def token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "agent-7",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            "client_id": "agent-7",
            "scope": "read",
        }
        headers = {"typ": "at+jwt", "kid": "idp-1"}
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)


@pytest.fixture
def idp(tmp_path: Path) -> IdP:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "idp-1", "alg": "ES256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    return IdP(key, path)


def api_key_authn(tmp_path: Path) -> dict[str, Any]:
    keys = tmp_path / "api-keys.yaml"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    keys.write_text(f"keys:\n  - id: k1\n    sha256: {digest}\n    subject: partner-1\n")
    return {"api_key": {"keys_file": str(keys)}}


def issuer(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["ES256"], **extra}


async def send(
    gw: Gateway, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
) -> RawResponse:
    assert gw.main_address is not None
    return await raw_request(gw.main_address, http_request(method, target, headers, body))


def assert_503(resp: RawResponse, reason: str) -> None:
    assert resp.status == 503, resp
    assert resp.header("Content-Type") == "application/problem+json"
    assert resp.json()["reason"] == reason
    assert str(LOCALHOST) not in resp.body.decode()  # no dependency address in the answer


# A body the gateway would leak to the attacker if it followed a 307 (policy input echoes it
# only in part, the upstream would get it whole).
SECRET_BODY = b'{"card": "4111-1111-1111-1111"}'


# --------------------------------------------------------------------------- the PDP


async def test_pdp_redirect_is_503_and_never_followed(
    make_gateway: GatewayMaker, upstream: Upstream, redirector: Redirector
) -> None:
    """The known defect: OPA's client followed 307 and re-POSTed the policy input."""
    gw = await make_gateway(
        routes=[{"name": "echo", "upstream": upstream.url}],
        pdp={"engine": "opa", "url": redirector.url},
    )
    resp = await send(gw, "POST", "/pay", [("Content-Type", "application/json")], SECRET_BODY)
    assert_503(resp, "pdp_unavailable")
    decisions = [s for s in redirector.seen if s.path.startswith("/v1/data/")]
    assert decisions, redirector.paths()  # the PDP was asked...
    assert b'"input"' in decisions[0].body
    assert "/health" in redirector.paths()  # ...and probed (the probe follows no redirect either)
    # The health probe runs every second: give it time to fail to follow, too.
    count = len(redirector.seen)
    await wait_until(lambda: len(redirector.seen) > count, timeout=5)
    assert redirector.attacker.connections == 0  # ...and nothing went to the attacker
    assert upstream.hits == []


# --------------------------------------------------------------------------- authentication


async def test_jwks_uri_redirect_is_503_and_never_followed(
    make_gateway: GatewayMaker, upstream: Upstream, redirector: Redirector, idp: IdP
) -> None:
    gw = await make_gateway(
        routes=[{"name": "echo", "authn": "bearer", "upstream": upstream.url}],
        issuers=[
            issuer("corp", jwks_uri=redirector.url + "/jwks", jwks_cache={"min_refresh_s": 0})
        ],
        authn={"bearer": {"issuers": ["corp"]}},
    )
    at_start = len(redirector.seen)
    assert at_start >= 1  # fetched (and refused) once at start
    resp = await send(gw, "GET", "/x", [("Authorization", "Bearer " + idp.token())])
    assert_503(resp, "jwks_unavailable")
    assert len(redirector.seen) > at_start  # the request path asked again
    assert set(redirector.paths()) == {"/jwks"}
    assert redirector.attacker.connections == 0
    assert upstream.hits == []


async def test_introspection_redirect_is_503_and_never_followed(
    make_gateway: GatewayMaker,
    upstream: Upstream,
    redirector: Redirector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIRECT_INTROSPECT_SECRET", CLIENT_SECRET)
    introspection = {
        "endpoint": redirector.url + "/introspect",
        "client_id": "agentgate",
        "client_secret": "env:REDIRECT_INTROSPECT_SECRET",
    }
    gw = await make_gateway(
        routes=[{"name": "echo", "authn": "bearer", "upstream": upstream.url}],
        issuers=[issuer("opaque", introspection=introspection)],
        authn={"bearer": {"issuers": ["opaque"]}},
    )
    opaque = "opaque-" + uuid.uuid4().hex
    resp = await send(gw, "GET", "/x", [("Authorization", "Bearer " + opaque)])
    assert_503(resp, "introspection_unavailable")
    assert [s.path for s in redirector.seen] == ["/introspect"]
    assert opaque.encode() in redirector.seen[0].body  # asked with the token...
    assert redirector.attacker.connections == 0  # ...which did not travel on
    assert upstream.hits == []


# --------------------------------------------------------------------------- credentials


async def test_client_credentials_token_endpoint_redirect_is_503_and_never_followed(
    make_gateway: GatewayMaker,
    upstream: Upstream,
    redirector: Redirector,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIRECT_CC_SECRET", CLIENT_SECRET)
    credential = {
        "type": "oauth_client_credentials",
        "token_endpoint": redirector.url + "/token",
        "client_id": "billing",
        "client_secret": "env:REDIRECT_CC_SECRET",
        "auth_method": "client_secret_post",  # the secret is in the body a 307 re-sends
        "timeout_s": 2,
    }
    gw = await make_gateway(
        routes=[
            {"name": "cc", "authn": "api_key", "upstream": upstream.url, "credential": credential}
        ],
        authn=api_key_authn(tmp_path),
    )
    resp = await send(gw, "GET", "/x", [("X-API-Key", API_KEY)])
    assert_503(resp, "credential_unavailable")
    assert [s.path for s in redirector.seen] == ["/token"]
    assert CLIENT_SECRET.encode() in redirector.seen[0].body
    assert redirector.attacker.connections == 0
    assert upstream.hits == []


async def test_token_exchange_endpoint_redirect_is_503_and_never_followed(
    make_gateway: GatewayMaker,
    upstream: Upstream,
    redirector: Redirector,
    idp: IdP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIRECT_TX_SECRET", CLIENT_SECRET)
    credential = {
        "type": "token_exchange",
        "token_endpoint": redirector.url + "/token",
        "client_id": "agentgate",
        "client_secret": "env:REDIRECT_TX_SECRET",
        "audience": "billing",
        "timeout_s": 2,
    }
    gw = await make_gateway(
        routes=[
            {"name": "tx", "authn": "bearer", "upstream": upstream.url, "credential": credential}
        ],
        issuers=[issuer("local", jwks_file=str(idp.jwks_file))],
        authn={"bearer": {"issuers": ["local"]}},
    )
    token = idp.token()
    resp = await send(gw, "GET", "/x", [("Authorization", "Bearer " + token)])
    assert_503(resp, "credential_unavailable")
    assert [s.path for s in redirector.seen] == ["/token"]
    assert token.encode() in redirector.seen[0].body  # the subject token a 307 would re-send
    assert redirector.attacker.connections == 0
    assert upstream.hits == []


# --------------------------------------------------------------------------- the upstream


async def test_upstream_redirect_is_relayed_unchanged_and_never_followed(
    make_gateway: GatewayMaker, redirector: Redirector
) -> None:
    gw = await make_gateway(routes=[{"name": "echo", "upstream": redirector.url}])
    resp = await send(gw, "POST", "/pay", [("Content-Type", "application/json")], SECRET_BODY)
    assert resp.status == 307, resp
    assert resp.header("Location") == redirector.location("/pay")  # the client decides
    assert [(s.method, s.path, s.body) for s in redirector.seen] == [("POST", "/pay", SECRET_BODY)]
    assert redirector.attacker.connections == 0


# --------------------------------------------------------------------------- verification kit


async def test_verification_kit_jwks_redirect_is_503_and_never_followed(
    redirector: Redirector,
) -> None:
    """An internal service's ``txn_token_middleware`` with a redirecting JWKS URL."""
    verifier = TxnTokenVerifier(
        redirector.url + "/.well-known/jwks.json", audience="example.org", issuer=ISSUER
    )
    app = web.Application(middlewares=[txn_token_middleware(verifier, audience="example.org")])

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="reached")

    app.router.add_get("/work", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, LOCALHOST, 0)
    await site.start()
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        now = int(time.time())
        token = jwt.encode(
            {"iss": ISSUER, "aud": "example.org", "iat": now, "exp": now + 60, "txn": "t"},
            key,
            algorithm="ES256",
            headers={"typ": "txntoken+jwt", "kid": "k"},
        )
        address = (LOCALHOST, int(runner.addresses[0][1]))
        resp = await raw_request(address, http_request("GET", "/work", [("Txn-Token", token)]))
        assert resp.status == 503, resp
        assert resp.json()["error"] == "temporarily_unavailable"
        assert redirector.paths() == ["/.well-known/jwks.json"]
        assert redirector.attacker.connections == 0
    finally:
        await runner.cleanup()
        await verifier.close()


# --------------------------------------------------------------------------- telemetry


async def test_otlp_exporter_redirect_is_a_failed_export_never_followed(
    redirector: Redirector,
) -> None:
    """``requests`` (under the OTLP exporter) follows redirects by default; ours does not."""
    tracing = Tracing.from_settings(
        TelemetrySettings(service_name="agentgate-test", otlp_endpoint=redirector.url)
    )
    with tracing.server_span(make_facts(), carrier={}, trusted=False) as span:
        span.set_route("flights", "/flights/")
    await tracing.aclose()  # flushes from a worker thread; the loop keeps serving
    assert [(s.method, s.path) for s in redirector.seen] == [("POST", "/v1/traces")]
    assert redirector.seen[0].body  # the spans were offered to the configured collector...
    assert redirector.attacker.connections == 0  # ...and to no one else
