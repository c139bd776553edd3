"""Agent credentials with provenance through the real TLS listener (issue 16).

Two :class:`gateway.app.Gateway` nodes share a real Redis (revocations, replay store) and the
same root key; the PDP is the embedded engine over a small policy written here (the shipped
provenance rules have their own tests) and a decision log shows what the policy saw.

* genesis: agent ``travel`` (client certificate) AND user alice (bearer token) ask node A for a
  root credential; the PDP decides ``credential.issue``;
* 1,000 sub-agents are derived offline (``gateway.sdk.agent``), each calls an upstream through
  node A with its own signed request; the upstream sees each one's Txn-Token ``act`` chain and
  the decision log each one's ``input.provenance``;
* revoking the root credential on node A refuses every sub-agent on node B within 1 s;
* every attack of the issue is a 401 with its own ``error_description``, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from gateway.app import Gateway
from gateway.sdk.agent import (
    AgentCredential,
    encode_block,
    header_value,
    mac,
    new_credential_id,
    parse_block,
)
from gateway.settings import parse_settings
from gateway.tokens.keys import write_private_key
from tests.integration.conftest import tls_block
from tests.redis_server import RedisServer
from tests.support import TestPKI, Upstream, client_context, wait_until

pytestmark = pytest.mark.integration

TD = "example.org"
IDP = "https://idp.example.org"
AUDIENCE = "https://gateway.example.org"
TRAVEL = f"spiffe://{TD}/agent/travel"
ADMIN = "admin-token-for-tests-0123456789"
ROOT_KEY = "r" * 48

POLICY = """
package agentgate.authz

default decision := {"allow": false, "reason": "test:denied", "status": 403}

decision := {"allow": true, "reason": "test:issue", "scopes": input.credential.scope} if {
	input.action == "credential.issue"
	input.subject.id == "alice"
	input.credential.agent == input.source.peer.spiffe_id
}

decision := {"allow": true, "reason": "test:chain", "scopes": ["flights:read"]} if {
	not input.action
	input.provenance.genesis == {"type": "user", "sub": "alice", "iss": "https://idp.example.org"}
	input.provenance.depth <= 3
	input.actors[count(input.actors) - 1].sub == input.provenance.chain[0].agent
}
"""


@dataclass
class World:
    nodes: list[Gateway]
    bases: list[str]
    upstream: Upstream
    idp: ECKey
    decision_log: Path
    agent: aiohttp.ClientSession  # with travel's client certificate
    anonymous: aiohttp.ClientSession  # TLS, no client certificate (a sub-agent)

    def token(self, sub: str = "alice", ttl: int = 300) -> str:
        now = int(time.time())
        claims = {
            "iss": IDP,
            "sub": sub,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
            "scope": "flights:read pay",
            "client_id": "travel-app",
        }
        return jose_jwt.encode({"alg": "ES256", "kid": "idp-1", "typ": "at+jwt"}, claims, self.idp)

    async def genesis(self, body: dict[str, Any], *, sub: str = "alice") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token(sub)}"}
        url = self.bases[0] + "/agents/credentials"
        async with self.agent.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def root(self, **body: Any) -> AgentCredential:
        status, answer = await self.genesis({"scope": "flights:read pay", "depth": 3, **body})
        assert status == 201, answer
        return AgentCredential.parse(answer["credential"])

    async def call(
        self,
        credential: AgentCredential | None,
        path: str = "/flights/42",
        *,
        node: int = 0,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        url = self.bases[node] + path
        sent = dict(headers or {})
        if credential is not None:
            sent = {**credential.sign(method, url, body=body), **sent}
        async with self.anonymous.request(method, url, data=body, headers=sent) as resp:
            raw = await resp.read()
            document = json.loads(raw) if resp.content_type.endswith("json") else {}
            return resp.status, resp.headers.copy(), document

    async def revoke(self, kind: str, value: str) -> None:
        host, port = self.nodes[0].admin_address or ("", 0)
        async with (
            aiohttp.ClientSession() as admin,
            admin.post(
                f"http://{host}:{port}/admin/revocations",
                json={"kind": kind, "value": value, "ttl_s": 600},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()

    def decisions(self) -> dict[str, dict[str, Any]]:
        if not self.decision_log.exists():
            return {}
        entries = (json.loads(line) for line in self.decision_log.read_text().splitlines())
        return {entry["request_id"]: entry for entry in entries}


@pytest.fixture
async def world(
    tmp_path: Path, pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    redis = RedisServer(tmp_path / "redis").start()
    upstream = Upstream()
    await upstream.start()
    monkeypatch.setenv("AG_ROOT_KEY", ROOT_KEY)
    monkeypatch.setenv("AG_ADMIN", ADMIN)
    monkeypatch.setenv("AG_REDIS", redis.url)
    idp = ECKey.generate_key("P-256", parameters={"kid": "idp-1", "alg": "ES256"})
    (tmp_path / "idp.json").write_text(json.dumps({"keys": [idp.as_dict(private=False)]}))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "authz.rego").write_text(POLICY)
    (tmp_path / "data.json").write_text("{}")
    key = write_private_key(tmp_path / "txn.pem", "ES256")
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
            "subagents": {"type": "agent_credential"},
        },
        "agent_credentials": {
            "issuer": f"spiffe://{TD}/gateway",
            "keys": [{"id": "k1", "secret": "env:AG_ROOT_KEY"}],
            "max_depth": 4,
        },
        "pdp": {
            "engine": "embedded",
            "policies": str(policies),
            "data": str(tmp_path / "data.json"),
            "cache": {"ttl_s": 0, "max_entries": 0},
        },
        "txn_tokens": {"issuer": AUDIENCE, "signing_key": str(key.path)},
        "state": {
            "backend": "redis",
            "redis_url": "env:AG_REDIS",
            "key_prefix": f"agentcred-{uuid.uuid4().hex[:8]}:",
        },
        "admin": {"token": "env:AG_ADMIN"},
        "telemetry": {"decision_log": str(decision_log), "audit_log": "off"},
        "routes": [
            {
                "name": "agent-credentials",
                "kind": "agent_credentials",
                "match": {"path_prefix": "/agents/credentials", "methods": ["POST"]},
                "authn": {"all_of": ["mtls", "bearer"]},
            },
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/"},
                "authn": "subagents",
                "upstream": upstream.url,
                "segment": "travel",
            },
            {
                "name": "hotels",
                "match": {"path_prefix": "/hotels/"},
                "authn": "subagents",
                "upstream": upstream.url,
            },
        ],
    }
    settings = parse_settings(config, tmp_path)
    nodes = [Gateway(settings), Gateway(settings)]
    for node in nodes:
        await node.start()
    bases = []
    for node in nodes:
        assert node.main_address is not None
        host, port = node.main_address
        bases.append(f"https://{host}:{port}")
    timeout = aiohttp.ClientTimeout(total=60)
    agent = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(pki, pki.agents["travel"])),
        timeout=timeout,
    )
    anonymous = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(pki, None), limit=50), timeout=timeout
    )
    try:
        yield World(nodes, bases, upstream, idp, decision_log, agent, anonymous)
    finally:
        await agent.close()
        await anonymous.close()
        for node in nodes:
            await node.stop()
        await upstream.close()
        redis.stop()


def _txn_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _act_chain(claims: dict[str, Any]) -> list[str]:
    out, act = [], claims.get("act")
    while act:
        out.append(act["sub"])
        act = act.get("act")
    return out


async def test_genesis_answer(world: World) -> None:
    status, answer = await world.genesis({"scope": "flights:read", "ttl_s": 120, "depth": 2})
    assert status == 201, answer
    assert answer["agent"] == TRAVEL
    assert answer["genesis"] == {"type": "user", "sub": "alice", "iss": IDP}
    assert answer["scope"] == "flights:read"
    assert answer["depth"] == 2
    assert 110 <= answer["expires_in"] <= 120
    credential = AgentCredential.parse(answer["credential"])
    assert credential.credential_id == answer["credential_id"]
    assert credential.inspect()["chain"][0]["agent"] == TRAVEL


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        pytest.param({"scope": "admin"}, 400, "invalid_scope", id="scope-beyond-token"),
        pytest.param({"ttl_s": 99999}, 400, "ttl_s", id="ttl-too-long"),
        pytest.param({"depth": 9}, 400, "depth", id="too-deep"),
        pytest.param({"task": "T-1"}, 400, "task", id="task-with-user"),
        pytest.param({"wat": 1}, 400, "unknown member", id="unknown-member"),
        pytest.param([], 400, "JSON object", id="not-an-object"),
    ],
)
async def test_genesis_refusals(world: World, body: Any, status: int, text: str) -> None:
    got, answer = await world.genesis(body)
    assert got == status, answer
    assert text in answer["detail"]


async def test_genesis_denied_by_policy(world: World) -> None:
    status, answer = await world.genesis({}, sub="mallory")
    assert status == 403, answer
    assert answer["reason"] == "policy_denied"


async def test_genesis_needs_both_identities(world: World) -> None:
    url = world.bases[0] + "/agents/credentials"
    async with world.anonymous.post(
        url, json={}, headers={"Authorization": f"Bearer {world.token()}"}
    ) as resp:
        assert resp.status == 401  # no client certificate: mtls fails the all_of
    async with world.agent.post(url, json={}) as resp:
        assert resp.status == 401  # no user token


async def test_thousand_subagents_then_root_revoked_on_the_other_node(world: World) -> None:
    root = await world.root()
    planner = root.derive(f"{TRAVEL}/planner", scope=["flights:read"], ttl_s=120)
    subagents = [planner.derive(f"{TRAVEL}/planner/w{i}", ttl_s=60) for i in range(1000)]
    seen_before = len(world.upstream.hits)

    async def one(index: int, credential: AgentCredential) -> tuple[int, str]:
        status, headers, _ = await world.call(credential, f"/flights/{index}")
        return status, headers["X-Request-Id"]

    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(subagents)))
    assert [status for status, _ in results] == [200] * 1000
    hits = world.upstream.hits[seen_before:]
    assert len(hits) == 1000
    chains = set()
    for hit in hits:
        claims = _txn_claims(hit.all("Txn-Token")[0])
        chain = _act_chain(claims)
        assert chain[1:] == [f"{TRAVEL}/planner", TRAVEL]
        assert claims["sub"] == "alice"
        assert claims["tctx"]["provenance"]["genesis"]["sub"] == "alice"
        chains.add(chain[0])
    assert chains == {f"{TRAVEL}/planner/w{i}" for i in range(1000)}

    # The policy saw each chain: one decision per request, with its own provenance.
    def logged() -> bool:
        decided = world.decisions()
        return all(rid in decided for _, rid in results)

    await wait_until(logged, timeout=10)
    decisions = world.decisions()
    for index, (_, request_id) in enumerate(results):
        provenance = decisions[request_id]["input"]["provenance"]
        assert provenance["depth"] == 2
        assert [b["agent"] for b in provenance["chain"]] == [
            TRAVEL,
            f"{TRAVEL}/planner",
            f"{TRAVEL}/planner/w{index}",
        ]
        assert provenance["credential_id"] == subagents[index].credential_id

    # Node B accepts them too (same root key), then the root is revoked on node A.
    assert (await world.call(subagents[0], node=1))[0] == 200
    await world.revoke("credential", root.credential_id)
    revoked_at = time.monotonic()

    # One probe at a time, so the figure is the propagation time and not the time a round
    # of many calls takes on a loaded machine (revocation_poll_s is 0.5 s by default).
    while (await world.call(subagents[0], node=1))[0] != 401:
        assert time.monotonic() - revoked_at < 1.0, "node B still accepts a revoked chain"
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - revoked_at
    assert elapsed < 1.0
    statuses = await asyncio.gather(*(world.call(c, node=1) for c in subagents))
    assert {status for status, _, _ in statuses} == {401}
    _status, _headers, body = await world.call(subagents[-1], node=1)
    assert body["reason"] == "credential_revoked"
    assert (await world.call(planner, node=1))[0] == 401
    assert (await world.call(root, node=1))[0] == 401


def _forge(blocks: list[bytes]) -> dict[str, str]:
    """An ``Agent-Credential`` of other blocks, over a request the holder signed."""
    return {"Agent-Credential": header_value(blocks)}


async def _refused(
    world: World, result: tuple[int, Mapping[str, str], dict[str, Any]], text: str
) -> None:
    status, headers, body = result
    assert status == 401, (status, body)
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("AgentCredential ")
    assert 'error="invalid_token"' in challenge
    assert text in challenge, challenge


async def test_attacks_are_refused_precisely(world: World) -> None:
    root = await world.root()
    child = root.derive(f"{TRAVEL}/a", scope=["flights:read"], ttl_s=60, depth=1)
    grandchild = child.derive(f"{TRAVEL}/a/b", depth=0)
    raws = [b.raw for b in grandchild.blocks]
    now = int(time.time())

    # truncated: drop the last block but sign with the grandchild's key
    await _refused(world, await world.call(grandchild, headers=_forge(raws[:2])), "signature")
    # reordered
    await _refused(
        world, await world.call(grandchild, headers=_forge([raws[1], raws[0], raws[2]])), "block 0"
    )
    # forged block (changed scope in place)
    forged = raws[1].replace(b'"flights:read"', b'"pay"')
    await _refused(
        world,
        await world.call(grandchild, headers=_forge([raws[0], forged, raws[2]])),
        "agent credential",
    )
    # widened: a holder appends a block wider than its parent (valid MAC with its own tag)
    widened = encode_block(
        {
            "cid": new_credential_id(),
            "agent": f"{TRAVEL}/a/x",
            "scope": ["flights:read", "pay"],
            "iat": now,
            "exp": now + 30,
            "depth": 0,
        }
    )
    cheat = AgentCredential([*child.blocks, parse_block(widened, 2)], mac(child._tag, widened))
    await _refused(world, await world.call(cheat), "widens scope")
    # over-deep: depth exhausted at the grandchild
    over = encode_block(
        {
            "cid": new_credential_id(),
            "agent": f"{TRAVEL}/a/b/c",
            "scope": [],
            "iat": now,
            "exp": now + 30,
            "depth": 0,
        }
    )
    deep = AgentCredential([*grandchild.blocks, parse_block(over, 3)], mac(grandchild._tag, over))
    await _refused(world, await world.call(deep), "depth exhausted")
    # malformed
    await _refused(
        world, await world.call(None, headers={"Agent-Credential": "ac1.%%%"}), "base64url"
    )
    await _refused(world, await world.call(None, headers={"Agent-Credential": "v0.abc"}), "ac1")
    # unsigned: the header alone (a stolen header is useless)
    await _refused(
        world,
        await world.call(None, headers={"Agent-Credential": grandchild.header()}),
        "without a request signature",
    )
    # replayed: the exact same signed request twice
    url = world.bases[0] + "/flights/1"
    signed = grandchild.sign("GET", url)
    async with world.anonymous.get(url, headers=signed) as resp:
        assert resp.status == 200
    await _refused(world, await world.call(None, "/flights/1", headers=signed), "replayed")
    # expired
    expired = root.derive(f"{TRAVEL}/old", ttl_s=1, now=now - 10)
    await _refused(world, await world.call(expired), "expired")
    # revoked (a middle credential kills its descendants, not its siblings)
    sibling = root.derive(f"{TRAVEL}/sibling")
    await world.revoke("credential", child.credential_id)
    status, _, body = await world.call(grandchild)
    assert status == 401
    assert body["reason"] == "credential_revoked"
    assert (await world.call(sibling))[0] == 200
    # a body that does not match its digest
    url = world.bases[0] + "/flights/2"
    signed = sibling.sign("POST", url, body=b'{"a":1}')
    async with world.anonymous.post(url, data=b'{"a":2}', headers=signed) as resp:
        assert resp.status == 401
        assert "Content-Digest does not match" in resp.headers["WWW-Authenticate"]


async def test_route_and_method_restrictions(world: World) -> None:
    root = await world.root()
    only_flights = root.derive(f"{TRAVEL}/f", routes=["flights"], methods=["GET"])
    assert (await world.call(only_flights, "/flights/1"))[0] == 200
    await _refused(world, await world.call(only_flights, "/hotels/1"), "does not allow this route")
    await _refused(
        world,
        await world.call(only_flights, "/flights/1", method="POST", body=b"{}"),
        "does not allow this method",
    )
    segment = root.derive(f"{TRAVEL}/s", segments=["travel"])
    assert (await world.call(segment, "/flights/1"))[0] == 200
    await _refused(world, await world.call(segment, "/hotels/1"), "does not allow this segment")
    tools = root.derive(f"{TRAVEL}/t", tools=["search"])
    await _refused(world, await world.call(tools, "/flights/1"), "does not allow this tool")


async def test_secret_never_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    status, answer = await world.genesis({})
    assert status == 201
    holder = answer["credential"]
    credential = AgentCredential.parse(holder)
    await world.call(credential.derive(f"{TRAVEL}/x"))
    await world.call(None, headers={"Agent-Credential": credential.header()})
    tag_b64 = holder[-43:]  # the holder form ends with the 32-byte tag
    logs = caplog.text + world.decision_log.read_text()
    assert holder not in logs
    assert tag_b64 not in logs
    assert ROOT_KEY not in logs
