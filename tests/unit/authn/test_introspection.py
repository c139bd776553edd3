"""gateway.authn.introspection: RFC 7662 against a real local endpoint, alone and via bearer."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from gateway.authn.introspection import InactiveToken, IntrospectionClient, IntrospectionUnavailable
from gateway.authn.jwt_bearer import JWTBearerAuthenticator
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import jwk_thumbprint
from gateway.settings import BearerMethod, Issuer, Secret
from gateway.state.memory import MemoryReplayCache

from . import (
    Clock,
    CountingServer,
    closed_port,
    dpop_proof,
    facts,
    keys,
    make_issuer,
    request,
    vector,
    write_jwks,
)

V = vector("rfc7662_introspection.json")
RFC_ISS = V["active_response"]["iss"]
RFC_AUD = V["active_response"]["aud"]
RFC_NOW = V["active_response"]["iat"] + 60
TOKEN = V["token"]  # "mF_9.B5f-4.1JqM": opaque, even though it has two dots
SECRET = Secret("env:INTROSPECTION_SECRET", b"s3cr:t+/=")


@dataclass
class Endpoint:
    """A scriptable introspection endpoint."""

    answers: dict[str, Any] = field(default_factory=lambda: {TOKEN: V["active_response"]})
    status: int = 200
    raw: bytes | None = None
    delay: float = 0.0

    async def handle(self, req: web.Request) -> web.StreamResponse:
        if req.path == "/redirect":
            raise web.HTTPTemporaryRedirect("/introspect")
        if self.delay:
            await asyncio.sleep(self.delay)
        form = parse_qs((await req.read()).decode())
        answer = self.answers.get(form.get("token", [""])[0], {"active": False})
        body = self.raw if self.raw is not None else json.dumps(answer).encode()
        return web.Response(status=self.status, body=body, content_type="application/json")


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, CountingServer]]:
    script = Endpoint()
    server = await CountingServer(script.handle).start()
    yield script, server
    await server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(RFC_NOW)


def rfc_issuer(url: str, name: str = "as", **introspection: Any) -> Issuer:
    return make_issuer(
        name=name,
        issuer=RFC_ISS,
        audience=RFC_AUD,
        introspection={
            "endpoint": url,
            "client_id": "rs:08",
            "client_secret": SECRET,
            **introspection,
        },
    )


@pytest.fixture
async def client(
    endpoint: tuple[Endpoint, CountingServer], clock: Clock
) -> AsyncIterator[IntrospectionClient]:
    c = IntrospectionClient(rfc_issuer(endpoint[1].url("/introspect")), timeout_s=0.5, clock=clock)
    await c.start()
    yield c
    await c.close()


# --------------------------------------------------------------------------- the client


async def test_active_token(client: IntrospectionClient, endpoint: Any) -> None:
    answer = await client.introspect(TOKEN)
    assert answer["sub"] == "Z5O3upPC88QrAjx00dis"
    server: CountingServer = endpoint[1]
    (req,) = server.requests
    assert req.method == "POST"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.headers["Accept"] == "application/json"
    assert parse_qs(server.bodies[0].decode()) == {
        "token": [TOKEN],
        "token_type_hint": ["access_token"],
    }
    # RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
    basic = base64.b64decode(req.headers["Authorization"].removeprefix("Basic ")).decode()
    assert basic == "rs%3A08:s3cr%3At%2B%2F%3D"


async def test_client_secret_post(endpoint: Any, clock: Clock) -> None:
    issuer = rfc_issuer(endpoint[1].url("/introspect"), auth_method="client_secret_post")
    c = IntrospectionClient(issuer, clock=clock)
    await c.start()
    try:
        await c.introspect(TOKEN)
    finally:
        await c.close()
    (req,) = endpoint[1].requests
    assert "Authorization" not in req.headers
    form = parse_qs(endpoint[1].bodies[0].decode())
    assert form["client_id"] == ["rs:08"]
    assert form["client_secret"] == ["s3cr:t+/="]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(V["inactive_response"], id="rfc7662-inactive"),
        pytest.param({"active": "true", "sub": "x"}, id="active-string"),
        pytest.param({"active": 1, "sub": "x"}, id="active-number"),
        pytest.param({"sub": "x"}, id="active-missing"),
    ],
)
async def test_inactive(client: IntrospectionClient, endpoint: Any, answer: Any) -> None:
    endpoint[0].answers[TOKEN] = answer
    with pytest.raises(InactiveToken):
        await client.introspect(TOKEN)


@pytest.mark.parametrize(
    ("change", "description"),
    [
        pytest.param({"iss": "https://other.example.com/"}, "token issuer mismatch", id="iss"),
        pytest.param({"aud": "https://other.example.net/"}, "token audience mismatch", id="aud"),
        pytest.param({"aud": 5}, "malformed aud", id="aud-number"),
        pytest.param({"exp": RFC_NOW - 31}, "token expired", id="expired"),
        pytest.param({"exp": "tomorrow"}, "malformed exp", id="exp-string"),
        pytest.param({"nbf": RFC_NOW + 31}, "token not yet valid", id="nbf"),
    ],
)
async def test_member_checks(
    client: IntrospectionClient, endpoint: Any, change: dict[str, Any], description: str
) -> None:
    endpoint[0].answers[TOKEN] = {**V["active_response"], **change}
    with pytest.raises(JOSEError, match=description):
        await client.introspect(TOKEN)


async def test_members_are_optional(client: IntrospectionClient, endpoint: Any) -> None:
    endpoint[0].answers[TOKEN] = {"active": True, "sub": "s"}
    assert await client.introspect(TOKEN) == {"active": True, "sub": "s"}


@pytest.mark.parametrize(
    ("setup", "path"),
    [
        pytest.param({"status": 500}, "/introspect", id="http-500"),
        pytest.param({"status": 401}, "/introspect", id="http-401-we-are-not-authorised"),
        pytest.param({"raw": b"<html>oops</html>"}, "/introspect", id="not-json"),
        pytest.param({"raw": b"[true]"}, "/introspect", id="json-array"),
        pytest.param(
            {"raw": b'{"active": true, "active": false}'}, "/introspect", id="duplicate-members"
        ),
        pytest.param(
            {"raw": b'{"active": true, "x": "' + b"a" * 70000 + b'"}'},
            "/introspect",
            id="oversized",
        ),
        pytest.param({"delay": 1.0}, "/introspect", id="timeout"),
        pytest.param({}, "/redirect", id="redirect-not-followed"),
    ],
)
async def test_unusable_endpoint_is_503(
    endpoint: Any, clock: Clock, setup: dict[str, Any], path: str
) -> None:
    for name, value in setup.items():
        setattr(endpoint[0], name, value)
    c = IntrospectionClient(rfc_issuer(endpoint[1].url(path)), timeout_s=0.3, clock=clock)
    await c.start()
    try:
        with pytest.raises(IntrospectionUnavailable) as info:
            await c.introspect(TOKEN)
    finally:
        await c.close()
    assert info.value.status == 503
    assert info.value.reason == "introspection_unavailable"
    assert TOKEN not in info.value.detail


async def test_unreachable_endpoint_is_503(clock: Clock) -> None:
    c = IntrospectionClient(rfc_issuer(f"http://127.0.0.1:{closed_port()}/i"), clock=clock)
    await c.start()
    try:
        with pytest.raises(IntrospectionUnavailable):
            await c.introspect(TOKEN)
    finally:
        await c.close()


async def test_positive_answers_are_cached(client: IntrospectionClient, endpoint: Any) -> None:
    first = await client.introspect(TOKEN)
    assert await client.introspect(TOKEN) is first
    assert len(endpoint[1].requests) == 1


async def test_cache_bounded_by_max_cache_s(
    client: IntrospectionClient, endpoint: Any, clock: Clock
) -> None:
    endpoint[0].answers[TOKEN] = {**V["active_response"], "exp": RFC_NOW + 3600}
    await client.introspect(TOKEN)
    clock.advance(59)
    await client.introspect(TOKEN)
    clock.advance(2)
    await client.introspect(TOKEN)
    assert len(endpoint[1].requests) == 2


async def test_cache_never_outlives_exp(
    client: IntrospectionClient, endpoint: Any, clock: Clock
) -> None:
    endpoint[0].answers[TOKEN] = {**V["active_response"], "exp": RFC_NOW + 10}
    await client.introspect(TOKEN)
    clock.advance(11)
    await client.introspect(TOKEN)  # still inside the leeway, but asked again
    assert len(endpoint[1].requests) == 2


async def test_negative_answers_and_errors_are_not_cached(
    client: IntrospectionClient, endpoint: Any
) -> None:
    endpoint[0].answers[TOKEN] = {"active": False}
    for _ in range(2):
        with pytest.raises(InactiveToken):
            await client.introspect(TOKEN)
    endpoint[0].status = 500
    with pytest.raises(IntrospectionUnavailable):
        await client.introspect(TOKEN)
    endpoint[0].status = 200
    endpoint[0].answers[TOKEN] = V["active_response"]
    assert (await client.introspect(TOKEN))["active"] is True
    assert len(endpoint[1].requests) == 4


async def test_cache_disabled(endpoint: Any, clock: Clock) -> None:
    c = IntrospectionClient(rfc_issuer(endpoint[1].url("/introspect"), max_cache_s=0), clock=clock)
    await c.start()
    try:
        await c.introspect(TOKEN)
        await c.introspect(TOKEN)
    finally:
        await c.close()
    assert len(endpoint[1].requests) == 2


async def test_not_started_is_503(clock: Clock) -> None:
    with pytest.raises(IntrospectionUnavailable):
        await IntrospectionClient(rfc_issuer("http://127.0.0.1:1/"), clock=clock).introspect("t")


# --------------------------------------------------------------------------- via the bearer method


@pytest.fixture
async def bearer(endpoint: Any, clock: Clock) -> AsyncIterator[JWTBearerAuthenticator]:
    auth = JWTBearerAuthenticator(
        "bearer",
        BearerMethod(issuers=("as",)),
        [rfc_issuer(endpoint[1].url("/introspect"))],
        MemoryReplayCache(),
        trust_domain="example.org",
        clock=clock,
    )
    await auth.start()
    yield auth
    await auth.close()


async def present(
    auth: JWTBearerAuthenticator, token: str, *, scheme: str = "Bearer", **kw: Any
) -> Any:
    req = request([("Authorization", f"{scheme} {token}"), *kw.pop("headers", [])], **kw)
    return await auth.authenticate(req, facts(req))


async def test_opaque_token_via_bearer(bearer: JWTBearerAuthenticator) -> None:
    principal = await present(bearer, TOKEN)
    assert principal.subject == "Z5O3upPC88QrAjx00dis"
    assert principal.issuer == RFC_ISS
    assert principal.client_id == "l238j323ds-23ij4"
    assert principal.scopes == ("read", "write", "dolphin")
    assert principal.expires_at == V["active_response"]["exp"]
    assert principal.claims["extension_field"] == "twenty-seven"
    assert "active" not in principal.claims
    assert "username" not in principal.claims


async def test_inactive_via_bearer(bearer: JWTBearerAuthenticator) -> None:
    with pytest.raises(Unauthorized) as info:
        await present(bearer, "2YotnFZFEjr1zCsicMWpAA")
    assert 'error_description="token is not active"' in info.value.headers["WWW-Authenticate"]


async def test_unavailable_via_bearer(bearer: JWTBearerAuthenticator, endpoint: Any) -> None:
    endpoint[0].status = 502
    with pytest.raises(ServiceUnavailable) as info:
        await present(bearer, TOKEN)
    assert info.value.status == 503


async def test_dpop_bound_introspected_token(bearer: JWTBearerAuthenticator, endpoint: Any) -> None:
    client_key = keys()["client"]
    jkt = jwk_thumbprint(client_key.jwk(with_alg=False))
    endpoint[0].answers[TOKEN] = {**V["active_response"], "token_type": "DPoP", "cnf": {"jkt": jkt}}
    with pytest.raises(Unauthorized):
        await present(bearer, TOKEN)  # Bearer downgrade
    proof = dpop_proof(client_key, token=TOKEN, iat=RFC_NOW)
    principal = await present(bearer, TOKEN, scheme="DPoP", headers=[("DPoP", proof)])
    assert principal.sender_constraint == "dpop"


async def test_dpop_token_type_without_binding(
    bearer: JWTBearerAuthenticator, endpoint: Any
) -> None:
    endpoint[0].answers[TOKEN] = {**V["active_response"], "token_type": "DPoP"}
    with pytest.raises(Unauthorized):
        await present(bearer, TOKEN)


async def test_subject_falls_back_to_client_id(
    bearer: JWTBearerAuthenticator, endpoint: Any
) -> None:
    endpoint[0].answers[TOKEN] = {"active": True, "client_id": "svc-7", "scope": "a"}
    principal = await present(bearer, TOKEN)
    assert principal.subject == "svc-7"
    assert principal.subject_type == "agent"


async def test_no_subject_at_all(bearer: JWTBearerAuthenticator, endpoint: Any) -> None:
    endpoint[0].answers[TOKEN] = {"active": True, "scope": "a"}
    with pytest.raises(Unauthorized):
        await present(bearer, TOKEN)


async def test_opaque_token_without_introspection(tmp_path: Any) -> None:
    issuer = make_issuer(jwks_file=str(write_jwks(tmp_path / "k.json", keys()["es"])))
    auth = JWTBearerAuthenticator(
        "bearer", BearerMethod(issuers=("corp",)), [issuer], MemoryReplayCache(),
        trust_domain="example.org",
    )  # fmt: skip
    await auth.start()
    try:
        with pytest.raises(Unauthorized) as info:
            await present(auth, TOKEN)
    finally:
        await auth.close()
    assert 'error_description="malformed token"' in info.value.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        pytest.param("inactive", "active", "ok", id="first-inactive-second-active"),
        pytest.param("down", "active", "ok", id="first-down-second-active"),
        pytest.param("down", "inactive", 503, id="first-down-second-inactive"),
        pytest.param("inactive", "inactive", 401, id="both-inactive"),
    ],
)
async def test_issuers_tried_in_order(clock: Clock, first: str, second: str, outcome: Any) -> None:
    scripts = [Endpoint(), Endpoint()]
    # The second AS answers without iss (RFC 7662: every member but active is optional).
    scripts[1].answers = {TOKEN: {k: v for k, v in V["active_response"].items() if k != "iss"}}
    for script, state in zip(scripts, (first, second), strict=True):
        if state == "inactive":
            script.answers = {}
        elif state == "down":
            script.status = 503
    servers = [await CountingServer(s.handle).start() for s in scripts]
    one = rfc_issuer(servers[0].url("/introspect"), name="one")
    two = make_issuer(
        name="two",
        issuer="https://as2.example.com",
        audience=RFC_AUD,
        introspection={
            "endpoint": servers[1].url("/introspect"),
            "client_id": "c",
            "client_secret": SECRET,
        },
    )
    auth = JWTBearerAuthenticator(
        "bearer", BearerMethod(issuers=("one", "two")), [one, two], MemoryReplayCache(),
        trust_domain="example.org", clock=clock,
    )  # fmt: skip
    await auth.start()
    try:
        if outcome == "ok":
            assert (await present(auth, TOKEN)).subject == "Z5O3upPC88QrAjx00dis"
        else:
            with pytest.raises((Unauthorized, ServiceUnavailable)) as info:
                await present(auth, TOKEN)
            assert info.value.status == outcome
    finally:
        await auth.close()
        for server in servers:
            await server.close()
