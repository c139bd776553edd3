"""Continuous authentication across two gateway nodes and a real Redis (issue 18).

A sub-agent holds an agent credential and keeps its own record of its calls
(:class:`gateway.sdk.heartbeat.ActionRecorder`, fed from each response's
``Agentgate-Action``); it sends heartbeats to ``POST /agents/heartbeat``. The policy is the
shipped ``agentgate.behavior`` and ``agentgate.segments`` modules under a small decision
written here, so what is tested is the shipped response to telemetry:

* a healthy agent's heartbeat matches the gateways' shared chain (calls went through both
  nodes);
* a hijack: a second client uses the same credential from elsewhere; the agent's next
  heartbeat is a ``mismatch``, its next call is refused and quarantines it, and node B
  isolates it (``segments:quarantined``) within a second; an operator lifts the quarantine
  through the admin API and, after a healthy heartbeat, the agent works again;
* a stale agent (no heartbeat for interval x grace) is refused until it sends one;
* a drifting agent (new routes at many times its rate) is refused and quarantined.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.sdk.agent import AgentCredential, mint_root
from gateway.sdk.heartbeat import ActionRecorder
from gateway.settings import parse_settings
from tests.integration.conftest import tls_block
from tests.redis_server import RedisServer
from tests.support import ROOT, TestPKI, Upstream, client_context

pytestmark = pytest.mark.integration

TD = "example.org"
ADMIN = "admin-token-for-tests-0123456789"
ROOT_KEY = "q" * 48
INTERVAL_S = 1.0
GRACE = 2.0
AGENT = f"spiffe://{TD}/agent/travel"

# The decision: the shipped behaviour and segment rules decide; everything else is allowed.
POLICY = """
package agentgate.authz

import data.agentgate.behavior
import data.agentgate.segments

deny_reasons contains reason if some reason in behavior.deny

deny_reasons contains reason if some reason in segments.deny

default obligations := {}

obligations := {"quarantine": true} if behavior.quarantine

default decision := {"allow": false, "reason": "test:denied", "status": 403}

decision := {"allow": false, "reason": min(deny_reasons), "status": 403,
             "obligations": obligations} if count(deny_reasons) > 0

decision := {"allow": true, "reason": "test:ok", "scopes": ["flights:read"]} if {
	count(deny_reasons) == 0
	input.provenance.depth >= 0
}
"""


@dataclass
class World:
    nodes: list[Gateway]
    bases: list[str]
    upstream: Upstream
    http: aiohttp.ClientSession
    root: AgentCredential
    decision_log: Path

    def policy_reason(self, decision_id: str) -> str:
        """The policy's own reason for one decision (the decision log)."""
        for line in self.decision_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("decision_id") == decision_id:
                return str(entry["reason"])
        raise AssertionError(f"decision {decision_id} not logged")

    def audit(self, request_id: str) -> dict[str, Any] | None:
        path = self.decision_log.with_name("audit.log")
        lines = path.read_text().splitlines() if path.exists() else []
        records = (json.loads(line) for line in lines)
        return next((r for r in records if r.get("request_id") == request_id), None)

    async def quarantines(self) -> dict[str, str]:
        """Quarantined agents and the reason recorded (the admin API's revocation list)."""
        host, port = self.nodes[1].admin_address or ("", 0)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{host}:{port}/admin/revocations",
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as resp,
        ):
            listed = await resp.json()
        entries = listed["revocations"] if isinstance(listed, dict) else listed
        return {e["value"]: e["reason"] for e in entries if e["kind"] == "quarantine"}

    async def call(
        self,
        credential: AgentCredential,
        path: str = "/flights/42",
        *,
        node: int = 0,
        recorder: ActionRecorder | None = None,
    ) -> tuple[int, dict[str, Any]]:
        url = self.bases[node] + path
        async with self.http.get(url, headers=credential.sign("GET", url)) as resp:
            raw = await resp.read()
            if recorder is not None:
                recorder.observe("GET", resp.status, resp.headers)
            doc = json.loads(raw) if resp.content_type.endswith("json") else {}
            doc.setdefault("request_id", resp.headers.get("X-Request-Id", ""))
            return resp.status, doc

    async def heartbeat(
        self, credential: AgentCredential, recorder: ActionRecorder, *, node: int = 0
    ) -> dict[str, Any]:
        url = self.bases[node] + "/agents/heartbeat"
        body = json.dumps(recorder.heartbeat()).encode()
        headers = {**credential.sign("POST", url, body=body), "Content-Type": "application/json"}
        async with self.http.post(url, data=body, headers=headers) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
            assert resp.status == 200, answer
        recorder.acknowledge(answer)
        return answer

    async def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> int:
        host, port = self.nodes[0].admin_address or ("", 0)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                f"http://{host}:{port}{path}",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as resp,
        ):
            return resp.status


def agent_of(credential: AgentCredential) -> str:
    return credential.agent


@pytest.fixture
async def world(
    tmp_path: Path, pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    redis = RedisServer(tmp_path / "redis").start()
    upstream = Upstream()
    await upstream.start()
    monkeypatch.setenv("CA_ROOT_KEY", ROOT_KEY)
    monkeypatch.setenv("CA_ADMIN", ADMIN)
    monkeypatch.setenv("CA_REDIS", redis.url)
    policies = tmp_path / "policies"
    for package in ("behavior", "segments"):
        target = policies / "agentgate" / package
        target.mkdir(parents=True)
        rego = ROOT / "policies" / "agentgate" / package / f"{package}.rego"
        (target / f"{package}.rego").write_text(rego.read_text("utf-8"))
    (policies / "decision.rego").write_text(POLICY)
    data = {"segments": {"flows": {"external": ["public"]}}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "tls": tls_block(pki, "optional"),
            "trust_domain": TD,
            "timeouts": {"drain_s": 1, "upstream_total_s": 10, "pdp_s": 5},
        },
        "authn": {"subagents": {"type": "agent_credential"}},
        "agent_credentials": {
            "issuer": f"spiffe://{TD}/gateway",
            "keys": [{"id": "k1", "secret": "env:CA_ROOT_KEY"}],
            "max_depth": 4,
            "max_ttl_s": 3600,
        },
        "continuous_auth": {
            "heartbeat_interval_s": INTERVAL_S,
            "heartbeat_grace": GRACE,
            "drift": {"window_s": 600, "min_calls": 20, "min_age_s": 0},
            "quarantine_ttl_s": 600,
        },
        "pdp": {
            "engine": "embedded",
            "policies": str(policies),
            "data": str(tmp_path / "data.json"),
            "cache": {"ttl_s": 0, "max_entries": 0},
        },
        "state": {
            "backend": "redis",
            "redis_url": "env:CA_REDIS",
            "key_prefix": f"contauth-{uuid.uuid4().hex[:8]}:",
            "revocation_poll_s": 0.2,
        },
        "admin": {"token": "env:CA_ADMIN"},
        "telemetry": {
            "audit_log": str(tmp_path / "audit.log"),
            "decision_log": str(tmp_path / "decisions.log"),
        },
        "routes": [
            {
                "name": "heartbeat",
                "kind": "agent_heartbeat",
                "match": {"path_prefix": "/agents/heartbeat", "methods": ["POST"]},
                "authn": "subagents",
            },
            *(
                {
                    "name": name,
                    "match": {"path_prefix": f"/{name}/"},
                    "authn": "subagents",
                    "upstream": upstream.url,
                    "segment": "public",
                }
                for name in ("flights", "hotels", "cars", "payments", "admin-ops")
            ),
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
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(pki, None)),
        timeout=aiohttp.ClientTimeout(total=30),
    )
    # A root credential minted offline with the gateway's root key (genesis has its own tests).
    root = mint_root(
        ROOT_KEY.encode(),
        kid="k1",
        issuer=f"spiffe://{TD}/gateway",
        agent=AGENT,
        genesis={"type": "user", "sub": "alice"},
        scope=["flights:read"],
        ttl_s=3600,
        depth=4,
    )
    try:
        yield World(nodes, bases, upstream, http, root, tmp_path / "decisions.log")
    finally:
        # Each step bounded and named: a stop that never returns fails here, saying which,
        # instead of holding the whole suite (seen once in CI after the stale test).
        steps = [("client", http.close())]
        steps += [(f"node {i}", node.stop()) for i, node in enumerate(nodes)]
        steps.append(("upstream", upstream.close()))
        stuck = []
        for name, step in steps:
            try:
                async with asyncio.timeout(30):
                    await step
            except TimeoutError:
                stuck.append(name)
        redis.stop()
        assert not stuck, f"teardown did not finish: {stuck}"


async def until(predicate: Any, limit_s: float) -> float:
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < limit_s, f"not within {limit_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_healthy_agent_across_both_nodes(world: World) -> None:
    agent = world.root.derive(f"{AGENT}/healthy", ttl_s=600)
    recorder = ActionRecorder(agent_of(agent))
    for i in range(6):
        status, _ = await world.call(agent, node=i % 2, recorder=recorder)
        assert status == 200
    answer = await world.heartbeat(agent, recorder, node=1)
    assert answer["verdict"] == "healthy"
    assert answer["gateway_count"] == answer["agent_count"] == 6
    assert (await world.call(agent, recorder=recorder))[0] == 200


async def test_heartbeat_about_another_agent_is_refused(world: World) -> None:
    agent = world.root.derive(f"{AGENT}/honest", ttl_s=600)
    other = world.root.derive(f"{AGENT}/other", ttl_s=600)
    recorder = ActionRecorder(other.agent)  # a body naming another agent ...
    url = world.bases[0] + "/agents/heartbeat"
    body = json.dumps(recorder.heartbeat()).encode()
    headers = {**agent.sign("POST", url, body=body), "Content-Type": "application/json"}
    async with world.http.post(url, data=body, headers=headers) as resp:  # ... signed by this one
        assert resp.status == 403
        assert (await resp.json())["reason"] == "heartbeat_agent_mismatch"
    garbage = b'{"agent": 1}'
    headers = {**agent.sign("POST", url, body=garbage), "Content-Type": "application/json"}
    async with world.http.post(url, data=garbage, headers=headers) as resp:
        assert resp.status == 400
    async with world.http.post(url, data=body) as resp:  # unsigned
        assert resp.status == 401


async def test_hijack_caught_quarantined_isolated_then_lifted(world: World) -> None:
    agent = world.root.derive(f"{AGENT}/victim", ttl_s=600)
    recorder = ActionRecorder(agent_of(agent))
    for _ in range(3):
        assert (await world.call(agent, recorder=recorder))[0] == 200
    assert (await world.heartbeat(agent, recorder))["verdict"] == "healthy"
    # A thief with a copy of the credential calls from elsewhere (node B, its own client).
    assert (await world.call(agent, node=1))[0] == 200
    assert (await world.call(agent, recorder=recorder))[0] == 200
    answer = await world.heartbeat(agent, recorder)
    assert answer["verdict"] == "mismatch"
    assert answer["gateway_count"] == answer["agent_count"] + 1
    # The next call is refused and quarantines the agent on every node.
    status, doc = await world.call(agent, recorder=recorder)
    assert status == 403, doc
    assert world.policy_reason(doc["decision_id"]) == "behavior:heartbeat_mismatch"
    assert (await world.quarantines()).get(agent.agent) == "behavior:heartbeat_mismatch"

    async def audited() -> bool:
        return world.audit(doc["request_id"]) is not None

    await until(audited, 3.0)
    record = world.audit(doc["request_id"])
    assert record is not None
    assert record["quarantine"] == {"agent": agent.agent, "reason": "behavior:heartbeat_mismatch"}
    quarantined_at = time.monotonic()

    async def isolated_on_b() -> bool:
        _status, body = await world.call(agent, "/hotels/1", node=1, recorder=recorder)
        if _status != 403:
            return False
        return world.policy_reason(body["decision_id"]) in (
            "segments:quarantined",
            "behavior:heartbeat_mismatch",
        )

    await until(isolated_on_b, 1.0)
    assert time.monotonic() - quarantined_at < 1.5
    # The agent's next heartbeat (its window now starts after the judged one) is healthy,
    # which ends the sticky mismatch; the operator then lifts the quarantine.
    answer = await world.heartbeat(agent, recorder)
    assert answer["verdict"] == "healthy", answer
    status = await world.admin("DELETE", f"/admin/revocations/quarantine/{agent.agent}")
    assert status in (200, 204)

    async def works() -> bool:
        return (await world.call(agent, node=1, recorder=recorder))[0] == 200

    await until(works, 2.0)
    assert agent.agent not in await world.quarantines()
    assert (await world.heartbeat(agent, recorder))["verdict"] == "healthy"


async def test_stale_agent_refused_until_it_beats(world: World) -> None:
    agent = world.root.derive(f"{AGENT}/sleepy", ttl_s=600)
    recorder = ActionRecorder(agent_of(agent))
    assert (await world.call(agent, recorder=recorder))[0] == 200
    assert (await world.heartbeat(agent, recorder))["verdict"] == "healthy"
    await asyncio.sleep(INTERVAL_S * GRACE + 0.3)
    status, doc = await world.call(agent, recorder=recorder)
    assert status == 403
    assert world.policy_reason(doc["decision_id"]) == "behavior:heartbeat_stale"
    assert (await world.heartbeat(agent, recorder))["verdict"] == "healthy"
    assert (await world.call(agent, recorder=recorder))[0] == 200


async def test_drifting_agent_quarantined_and_isolated(world: World) -> None:
    agent = world.root.derive(f"{AGENT}/drifter", ttl_s=600)
    # A baseline on node A (baselines are per process): steady calls to one route, ~10/s.
    for _ in range(22):
        assert (await world.call(agent, "/flights/1"))[0] == 200
        await asyncio.sleep(0.09)
    # Then four new routes as fast as it can (10x and more), until the policy stops it.
    refused: dict[str, Any] = {}
    for i in range(60):
        route = ("hotels", "cars", "payments", "admin-ops")[i % 4]
        status, doc = await world.call(agent, f"/{route}/{i}")
        if status == 403:
            refused = doc
            break
    assert refused.get("decision_id"), "the drifting agent was never refused"
    assert world.policy_reason(refused["decision_id"]) == "behavior:drift"
    assert (await world.quarantines()).get(agent.agent) == "behavior:drift"

    async def isolated() -> bool:
        status, doc = await world.call(agent, "/flights/1", node=1)
        return status == 403 and world.policy_reason(doc["decision_id"]) == "segments:quarantined"

    await until(isolated, 1.0)
