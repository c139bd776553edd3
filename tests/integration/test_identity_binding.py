"""Identities proven by different methods must agree (issue 13 item 3), through the real listener.

Before the fix a token whose current actor (``act``) was agent B was accepted over agent C's
mTLS certificate, and an ``Agent-Assertion`` of agent A over agent B's certificate: nothing
compared them before the PDP. Now an ``all_of`` that combines ``mtls`` with ``bearer`` binds
the token's claimed workload to the peer (``actor: peer``), with ``jwt_assertion`` the
assertion's agent (``assertion: peer``), by default; ``bind`` on a route or an ``all_of`` node
sets or switches off the binding (README "Binding identities").

Everything is real: :class:`gateway.app.Gateway` with the dev PKI (mTLS required), a static
JWKS for the IdP, an agents file for assertions, and the embedded PDP over the shipped policies
with a decision log -- which shows that a refused binding never reaches the PDP (no decision
line) while an accepted one does (whatever the policy then decides).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from gateway.app import Gateway
from gateway.settings import parse_settings
from tests.integration.conftest import tls_block
from tests.support import ROOT, TestPKI, Upstream, client_context, wait_until

pytestmark = pytest.mark.integration

TD = "example.org"
IDP = "https://idp.example.org"
AUDIENCE = "https://gateway.example.org"
GATEWAY_AUDIENCE = f"https://{TD}/"
TRAVEL = f"spiffe://{TD}/agent/travel"
BILLING = f"spiffe://{TD}/agent/billing"
PLANNER = f"spiffe://{TD}/agent/planner"

ROUTES: list[tuple[str, Any, dict[str, Any]]] = [
    ("strict", {"all_of": ["mtls", "bearer"]}, {}),  # default: actor: peer
    ("agents", {"all_of": ["mtls", {"any_of": ["bearer", "jwt_assertion"]}]}, {}),  # both
    ("nested", {"any_of": [{"all_of": ["mtls", "jwt_assertion"]}, "bearer"]}, {}),
    ("route-off", {"all_of": ["mtls", "bearer"]}, {"bind": False}),  # YAML `bind: off`
    ("node-off", {"all_of": ["mtls", "bearer"], "bind": {}}, {}),
    ("explicit", "bearer", {"bind": {"actor": "peer"}}),  # bind without mtls in the tree
    ("assertion-only", {"all_of": ["mtls", "jwt_assertion"], "bind": {"assertion": "peer"}}, {}),
]


@dataclass
class World:
    gw: Gateway
    base: str
    idp: ECKey
    agents: dict[str, ECKey]
    decision_log: Path
    sessions: dict[str | None, aiohttp.ClientSession] = field(default_factory=dict)

    def token(self, sub: str = "alice", **extra: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": IDP,
            "sub": sub,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            "client_id": "travel-agent",
            "scope": "flights.read",
            **extra,
        }
        return jose_jwt.encode({"alg": "ES256", "kid": "idp-1", "typ": "at+jwt"}, claims, self.idp)

    def assertion(self, agent: str) -> str:
        now = int(time.time())
        claims = {
            "iss": agent,
            "sub": agent,
            "aud": GATEWAY_AUDIENCE,
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        header = {"alg": "ES256", "kid": f"{agent}-1", "typ": "JWT"}
        return jose_jwt.encode(header, claims, self.agents[agent])

    async def call(
        self, who: str | None, path: str, *, token: str | None = None, assertion: str | None = None
    ) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if assertion:
            headers["Agent-Assertion"] = assertion
        async with self.sessions[who].get(self.base + path, headers=headers) as resp:
            body = await resp.read()
            out = json.loads(body) if resp.content_type.endswith("json") else {}
            return resp.status, resp.headers.copy(), out

    def decided(self, request_id: str) -> bool:
        if not self.decision_log.exists():
            return False
        return any(
            json.loads(line)["request_id"] == request_id
            for line in self.decision_log.read_text().splitlines()
        )


@pytest.fixture
async def world(tmp_path: Path, pki: TestPKI) -> AsyncIterator[World]:
    upstream = Upstream()
    await upstream.start()
    idp = ECKey.generate_key("P-256", parameters={"kid": "idp-1", "alg": "ES256"})
    (tmp_path / "idp.json").write_text(json.dumps({"keys": [idp.as_dict(private=False)]}))
    agents = {name: ECKey.generate_key("P-256") for name in ("travel-agent", "billing-agent")}
    subjects = {"travel-agent": TRAVEL, "billing-agent": BILLING}
    records = []
    for name, key in agents.items():
        jwk = {**key.as_dict(private=False), "kid": f"{name}-1", "alg": "ES256"}
        records.append({"id": name, "subject": subjects[name], "jwks": {"keys": [jwk]}})
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump({"agents": records}))
    decision_log = tmp_path / "decisions.log"
    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "tls": tls_block(pki, "optional"),
            "trust_domain": TD,
            "timeouts": {"drain_s": 1, "upstream_total_s": 10, "pdp_s": 5},
        },
        "issuers": [
            {
                "name": "corp",
                "issuer": IDP,
                "jwks_file": "idp.json",
                "audience": AUDIENCE,
                "algorithms": ["ES256"],
            }
        ],
        "authn": {
            "mtls": {},
            "bearer": {"issuers": ["corp"]},
            "jwt_assertion": {"agents_file": "agents.yaml"},
        },
        "pdp": {
            "engine": "embedded",
            "policies": str(ROOT / "policies"),
            "data": str(ROOT / "policies" / "data.json"),
            "cache": {"ttl_s": 0, "max_entries": 0},
        },
        "telemetry": {"decision_log": str(decision_log), "audit_log": "off"},
        "routes": [
            {
                "name": name,
                "match": {"path_prefix": f"/{name}/"},
                "authn": tree,
                "upstream": upstream.url,
                **extra,
            }
            for name, tree, extra in ROUTES
        ],
    }
    gw = Gateway(parse_settings(config, tmp_path))
    await gw.start()
    assert gw.main_address is not None
    host, port = gw.main_address
    world = World(gw, f"https://{host}:{port}", idp, agents, decision_log)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        for who in ("travel", "billing", "planner", None):
            pair = pki.agents[who] if who else None
            connector = aiohttp.TCPConnector(ssl=client_context(pki, pair))
            world.sessions[who] = aiohttp.ClientSession(connector=connector, timeout=timeout)
        yield world
    finally:
        for session in world.sessions.values():
            await session.close()
        await gw.stop()
        await upstream.close()


async def refused(
    world: World, result: tuple[int, Mapping[str, str], dict[str, Any]], text: str
) -> None:
    status, headers, body = result
    assert status == 401, (status, body)
    assert body["reason"] == "authn_binding_mismatch"
    challenge = headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge
    assert text in challenge
    # SECURITY: refused before the PDP -- no decision was ever asked for this request.
    await _settle(world)
    assert not world.decided(headers["X-Request-Id"])


async def accepted(world: World, result: tuple[int, Mapping[str, str], dict[str, Any]]) -> None:
    status, headers, body = result
    assert status in (200, 403), (status, body)  # past authentication; the policy decides
    request_id = headers["X-Request-Id"]
    await wait_until(lambda: world.decided(request_id), timeout=10)


async def _settle(world: World) -> None:
    # The decision log is written by a thread; an accepted request first, so that an absent
    # line means "never asked", not "not yet written".
    _, headers, _ = await world.call("travel", "/strict/x", token=world.token(act={"sub": TRAVEL}))
    await wait_until(lambda: world.decided(headers["X-Request-Id"]), timeout=10)


ACTOR_MISMATCH = "token's current actor is not the client certificate's SPIFFE ID"
ASSERTION_MISMATCH = "agent assertion's agent is not the client certificate's SPIFFE ID"


# --------------------------------------------------------------------------- actor: peer


async def test_actor_matching_the_peer_is_accepted(world: World) -> None:
    await accepted(
        world, await world.call("travel", "/strict/x", token=world.token(act={"sub": TRAVEL}))
    )


async def test_actor_of_another_agent_is_refused(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentgate.pipeline")
    token = world.token(act={"sub": BILLING})  # agent B acts, agent C's certificate
    await refused(world, await world.call("planner", "/strict/x", token=token), ACTOR_MISMATCH)
    # The log line names both identities; the response does not.
    line = next(
        r.getMessage() for r in caplog.records if "authn_binding_mismatch" in r.getMessage()
    )
    assert BILLING in line
    assert PLANNER in line
    assert token not in caplog.text


async def test_nested_actor_chain_binds_the_current_actor(world: World) -> None:
    chain = {"sub": TRAVEL, "act": {"sub": BILLING}}  # travel acts now, billing before
    await accepted(world, await world.call("travel", "/strict/x", token=world.token(act=chain)))
    result = await world.call("billing", "/strict/x", token=world.token(act=chain))
    await refused(world, result, ACTOR_MISMATCH)


async def test_self_acting_spiffe_subject_is_bound(world: World) -> None:
    await accepted(world, await world.call("travel", "/strict/x", token=world.token(sub=TRAVEL)))
    await refused(
        world,
        await world.call("billing", "/strict/x", token=world.token(sub=TRAVEL)),
        ACTOR_MISMATCH,
    )


async def test_non_spiffe_actor_never_matches_a_certificate(world: World) -> None:
    token = world.token(act={"sub": "travel-agent"})
    await refused(world, await world.call("travel", "/strict/x", token=token), ACTOR_MISMATCH)


async def test_user_token_without_actor_claims_no_workload(world: World) -> None:
    # Nothing in the token names a workload: nothing to compare (the policy decides).
    await accepted(world, await world.call("billing", "/strict/x", token=world.token()))


# --------------------------------------------------------------------------- assertion: peer


async def test_assertion_of_the_peer_is_accepted(world: World) -> None:
    result = await world.call("travel", "/agents/x", assertion=world.assertion("travel-agent"))
    await accepted(world, result)


async def test_assertion_of_another_agent_is_refused(world: World) -> None:
    result = await world.call("billing", "/agents/x", assertion=world.assertion("travel-agent"))
    await refused(world, result, ASSERTION_MISMATCH)
    explicit = await world.call(
        "billing", "/assertion-only/x", assertion=world.assertion("travel-agent")
    )
    await refused(world, explicit, ASSERTION_MISMATCH)


async def test_default_binds_bearer_inside_any_of(world: World) -> None:
    # mtls AND (bearer OR jwt_assertion): the token branch is bound as well.
    token = world.token(act={"sub": TRAVEL})
    await accepted(world, await world.call("travel", "/agents/x", token=token))
    await refused(world, await world.call("billing", "/agents/y", token=token), ACTOR_MISMATCH)


# --------------------------------------------------------------------------- nesting, opt-out


async def test_nested_all_of_inside_any_of_binds_only_its_branch(world: World) -> None:
    # any_of [all_of [mtls, jwt_assertion], bearer]: the inner all_of binds the assertion...
    result = await world.call("billing", "/nested/x", assertion=world.assertion("travel-agent"))
    await refused(world, result, ASSERTION_MISMATCH)
    await accepted(
        world, await world.call("travel", "/nested/x", assertion=world.assertion("travel-agent"))
    )
    # ...while the bearer branch outside it carries no binding of its own.
    token = world.token(act={"sub": TRAVEL})
    await accepted(world, await world.call("billing", "/nested/y", token=token))


@pytest.mark.parametrize("route", ["route-off", "node-off"])
async def test_opt_out(world: World, route: str) -> None:
    token = world.token(act={"sub": BILLING})
    await accepted(world, await world.call("planner", f"/{route}/x", token=token))


async def test_explicit_binding_needs_a_certificate(world: World) -> None:
    token = world.token(act={"sub": TRAVEL})
    await accepted(world, await world.call("travel", "/explicit/x", token=token))
    result = await world.call(None, "/explicit/x", token=token)
    await refused(world, result, "needs a client certificate")
    # A token that names no workload passes without a certificate: nothing to bind.
    await accepted(world, await world.call(None, "/explicit/y", token=world.token()))
