"""Keycloak 26 as the IdP users run, in front of the real gateway (issue 13 item 4).

One real Keycloak per module (``tests/keycloak_server.py``: dev mode, in-memory database, the
``agentgate-test`` realm of ``tests/fixtures/keycloak/realm.json``; about 30-60 s to start;
under ``CI=true`` a missing Keycloak fails). Each test starts an in-process
:class:`gateway.app.Gateway` whose ``bearer`` method trusts the realm (RS256 keys from its
JWKS endpoint, audience ``agentgate``). What each test proves was broken before:

* a client-credentials (service-account) token was classified as a *user*, because Keycloak
  puts ``acr`` and ``preferred_username`` in every token; now it is an ``agent`` (no user
  session, ``preferred_username`` = ``service-account-<client>``), while alice's password
  token stays a user;
* ``require_typ: null`` on the bearer method passed ``check-config`` and was ignored, so
  Keycloak's ``typ: JWT`` tokens were refused; now it is honoured (and the refusal, where
  ``at+jwt`` is still wanted, logs ``typ at+jwt wanted, got JWT``);
* a JWT revoked at Keycloak stayed valid until ``exp``; with ``introspect: always`` the gateway
  asks Keycloak (RFC 7662) and refuses it once its cached answer (at most ``max_cache_s``)
  runs out;
* policies had only Keycloak's user UUIDs; ``issuers[].claims`` maps ``preferred_username``,
  ``groups`` and ``realm_access.roles`` into ``input.subject``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.authn.jwt_bearer import JWTBearerAuthenticator
from gateway.context import Identity
from gateway.settings import parse_settings
from tests.integration.conftest import base_url
from tests.keycloak_server import Keycloak, _post_form, start_keycloak
from tests.support import ROOT, Upstream, wait_until

pytestmark = pytest.mark.integration

AUDIENCE = "agentgate"
INTROSPECTION_SECRET = "gw-test-secret"  # the realm's "agentgate" client
MAX_CACHE_S = 3.0

GatewayMaker = Callable[..., Awaitable["World"]]


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keycloak]:
    yield from start_keycloak(tmp_path_factory.mktemp("keycloak") / "keycloak.log")


def service_account_token(kc: Keycloak) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": "planner-agent",
        "client_secret": "planner-test-secret",
    }
    return str(_post_form(kc.token_endpoint, form)["access_token"])


def alice_token(kc: Keycloak) -> str:
    return kc.password_token("alice", "alice-test-password", "travel-agent")


def revoke(kc: Keycloak, token: str) -> None:
    """RFC 7009 revocation at Keycloak, as the public client that obtained the token."""
    form = {"token": token, "token_type_hint": "access_token", "client_id": "travel-agent"}
    req = urllib.request.Request(  # noqa: S310 - loopback URL of the fixture
        f"{kc.issuer}/protocol/openid-connect/revoke",
        data=urllib.parse.urlencode(form).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        assert resp.status == 200


class World:
    def __init__(self, gw: Gateway, decision_log: Path) -> None:
        self.gw = gw
        self.decision_log = decision_log
        self.identities: list[Identity] = []
        original = gw.pipeline.authenticate

        async def recording(route: Any, request: Any, facts: Any) -> Identity | None:
            identity = await original(route, request, facts)
            if identity is not None:
                self.identities.append(identity)
            return identity

        gw.pipeline.authenticate = recording  # type: ignore[method-assign]

    @property
    def bearer(self) -> JWTBearerAuthenticator:
        authenticator = self.gw.pipeline.authenticator
        method = authenticator.methods["bearer"]  # type: ignore[union-attr]
        assert isinstance(method, JWTBearerAuthenticator)
        return method

    async def get(self, token: str, path: str = "/flights/42") -> tuple[int, str, str]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(base_url(self.gw) + path, headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            return r.status, r.headers.get("WWW-Authenticate", ""), r.headers["X-Request-Id"]

    async def decision(self, request_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            if self.decision_log.exists():
                for line in self.decision_log.read_text().splitlines():
                    entry = json.loads(line)
                    if entry["request_id"] == request_id:
                        found.append(entry)
            return bool(found)

        await wait_until(ready, timeout=10)
        return found[0]


@pytest.fixture
async def make_gateway(
    keycloak: Keycloak, tmp_path: Path, upstream: Upstream
) -> AsyncIterator[GatewayMaker]:
    started: list[Gateway] = []
    secret = tmp_path / "introspection.secret"
    secret.write_text(INTROSPECTION_SECRET)

    async def make(
        *, bearer: dict[str, Any] | None = None, issuer: dict[str, Any] | None = None
    ) -> World:
        decision_log = tmp_path / f"decisions-{len(started)}.log"
        config = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "issuers": [
                {
                    "name": "keycloak",
                    "issuer": keycloak.issuer,
                    "jwks_uri": f"{keycloak.issuer}/protocol/openid-connect/certs",
                    "audience": AUDIENCE,
                    "algorithms": ["RS256"],
                    "introspection": {
                        "endpoint": f"{keycloak.issuer}/protocol/openid-connect/token/introspect",
                        "client_id": "agentgate",
                        "client_secret": f"file:{secret}",
                        "max_cache_s": MAX_CACHE_S,
                    },
                    **(issuer or {}),
                }
            ],
            "authn": {"bearer": {"issuers": ["keycloak"], **(bearer or {})}},
            "pdp": {
                "engine": "embedded",
                "policies": str(ROOT / "policies"),
                "data": str(ROOT / "policies" / "data.json"),
                "cache": {"ttl_s": 0, "max_entries": 0},
            },
            "telemetry": {"audit_log": "off", "decision_log": str(decision_log)},
            "routes": [
                {
                    "name": "flights",
                    "match": {"path_prefix": "/flights/"},
                    "authn": "bearer",
                    "upstream": upstream.url,
                    "segment": "booking",
                }
            ],
        }
        gw = Gateway(parse_settings(config, tmp_path))
        started.append(gw)
        await gw.start()
        await wait_until(gw.pipeline.authenticator.ready, timeout=20)  # type: ignore[union-attr]
        return World(gw, decision_log)

    try:
        yield make
    finally:
        for gw in started:
            await gw.stop()


# --------------------------------------------------------------------------- classification


async def test_service_account_is_an_agent_and_a_user_stays_a_user(
    keycloak: Keycloak, make_gateway: GatewayMaker
) -> None:
    world = await make_gateway(bearer={"require_typ": None})
    robot = await asyncio.to_thread(service_account_token, keycloak)
    status, _, request_id = await world.get(robot)
    assert status in (200, 403)  # authenticated; the shipped policy then decides
    agent = world.identities[-1]
    assert agent.principal.subject_type == "agent"
    assert agent.caller == "agent"
    assert agent.mode == "self"
    assert agent.principal.client_id == "planner-agent"
    assert (await world.decision(request_id))["input"]["subject"]["type"] == "agent"

    alice = await asyncio.to_thread(alice_token, keycloak)
    status, _, request_id = await world.get(alice)
    assert status in (200, 403)
    user = world.identities[-1]
    assert user.principal.subject_type == "user"  # a user session (sid): a human
    assert user.caller == "human_api"
    assert (await world.decision(request_id))["input"]["subject"]["type"] == "user"


async def test_service_account_rule_can_be_switched_off(
    keycloak: Keycloak, make_gateway: GatewayMaker
) -> None:
    world = await make_gateway(
        bearer={"require_typ": None}, issuer={"service_account_prefix": None}
    )
    robot = await asyncio.to_thread(service_account_token, keycloak)
    await world.get(robot)
    assert world.identities[-1].principal.subject_type == "user"  # the old classification


# --------------------------------------------------------------------------- require_typ


async def test_require_typ_null_on_the_method_is_honoured(
    keycloak: Keycloak, make_gateway: GatewayMaker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentgate.pipeline")
    token = await asyncio.to_thread(alice_token, keycloak)  # header typ: JWT
    relaxed = await make_gateway(bearer={"require_typ": None})
    status, _, _ = await relaxed.get(token)
    assert status != 401
    assert relaxed.identities[-1].principal.issuer == keycloak.issuer

    strict = await make_gateway()  # the issuer's default, at+jwt
    status, challenge, request_id = await strict.get(token)
    assert status == 401
    assert 'error_description="wrong token type"' in challenge
    [line] = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert "typ at+jwt wanted, got JWT" in line
    assert token not in caplog.text


# --------------------------------------------------------------------------- introspect: always


@pytest.mark.parametrize("where", ["issuer", "method"])
async def test_introspect_always_refuses_a_revoked_jwt(
    keycloak: Keycloak, make_gateway: GatewayMaker, where: str
) -> None:
    always = {"introspect": "always"}
    world = await make_gateway(
        bearer={"require_typ": None, **(always if where == "method" else {})},
        issuer=always if where == "issuer" else None,
    )
    unchecked = await make_gateway(bearer={"require_typ": None})  # the default: opaque only
    token = await asyncio.to_thread(alice_token, keycloak)
    assert (await world.get(token))[0] != 401
    assert (await world.get(token))[0] != 401
    # Cached by exp, bounded by max_cache_s: two presentations, one question to Keycloak.
    assert world.bearer.introspection_requests == 1

    await asyncio.to_thread(revoke, keycloak, token)
    refused_at = time.monotonic()

    async def refused() -> bool:
        status, challenge, _ = await world.get(token)
        return status == 401 and 'error_description="token is not active"' in challenge

    deadline = refused_at + MAX_CACHE_S + 10
    while not await refused():
        assert time.monotonic() < deadline, "the revoked token was never refused"
        await asyncio.sleep(0.5)
    assert world.bearer.introspection_requests >= 2
    # Without introspect: always the signature alone decides: the revoked JWT still passes.
    assert (await unchecked.get(token))[0] != 401
    assert unchecked.bearer.introspection_requests == 0


# --------------------------------------------------------------------------- claims mapping


async def test_claims_mapping_reaches_the_policy(
    keycloak: Keycloak, make_gateway: GatewayMaker
) -> None:
    mapping = {"username": "preferred_username", "groups": "groups", "roles": "realm_access.roles"}
    mapped = await make_gateway(bearer={"require_typ": None}, issuer={"claims": mapping})
    token = await asyncio.to_thread(alice_token, keycloak)
    _, _, request_id = await mapped.get(token)
    entry = await mapped.decision(request_id)
    subject = entry["input"]["subject"]
    assert subject["username"] == "alice"
    assert subject["groups"] == ["travellers"]
    assert "traveller" in subject["roles"]
    assert subject["id"] != "alice"  # still Keycloak's user id: the mapping never replaces it
    # The shipped RBAC now sees alice's realm role: her token lacks flights.read, so it is
    # "insufficient scope" -- without the mapping it is "no permission" (a UUID has no role).
    assert entry["reason"] == "rbac:insufficient_scope"

    plain = await make_gateway(bearer={"require_typ": None})
    _, _, request_id = await plain.get(token)
    entry = await plain.decision(request_id)
    assert "username" not in entry["input"]["subject"]
    assert entry["reason"] == "rbac:no_permission"

    robot = await asyncio.to_thread(service_account_token, keycloak)
    _, _, request_id = await mapped.get(robot)
    subject = (await mapped.decision(request_id))["input"]["subject"]
    assert subject["username"] == "service-account-planner-agent"
    assert subject["groups"] is None  # mapped but absent: present as null
