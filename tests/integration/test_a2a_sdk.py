"""The official A2A SDK (``a2a-sdk`` 1.3.0, protocol v1.0) behind and in front of the gateway.

An SDK server (tests/integration/mcp_servers.py: a travel agent with three skills) is the
upstream of a route ``kind: a2a``; SDK clients reach it through the gateway with bearer tokens
of a development issuer. The SDK's card resolver fetches the card the gateway serves and checks
its signature with the SDK's own verifier (``a2a.utils.signing``), so a signature the gateway
computes over another canonical form than the SDK's fails here. Skills are filtered per caller;
``SendMessage`` and ``SendStreamingMessage`` run through the gateway; a message for a skill
the policy denies never reaches the agent.

The policy and its data come from :func:`tests.integration.mcp_servers.policy_dir`, shared with
test_mcp_sdk.py.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types import AgentCard, Message, Part, Role, SendMessageRequest, TaskState
from a2a.utils.errors import A2AError
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from google.protobuf.json_format import MessageToDict, ParseDict  # type: ignore[import-untyped]
from jwt import PyJWK

from gateway.app import Gateway
from gateway.devtools.devissuer import access_token_claims, load_or_create, sign_access_token
from gateway.settings import parse_settings
from gateway.tokens.keys import SigningKey, write_private_key
from tests.integration.conftest import BASE_SERVER, merge
from tests.integration.mcp_servers import (
    A2A_ROUTE,
    IDP,
    SEGMENT,
    SKILLS,
    Pacer,
    Running,
    challenge_params,
    free_port,
    policy_dir,
    serve,
    travel_agent_app,
)

A2A_FORBIDDEN = -32050  # the gateway's code for an A2A policy deny (A2A owns -32001..-32009)

pytestmark = pytest.mark.integration

ROUTE = A2A_ROUTE  # its skills: mcp_servers.SKILL_DATA
UNKNOWN_SKILL = "refund_everything"  # on no card, in no policy data: a2a:unknown_skill
CARD_PATH = "/.well-known/agent-card.json"
UPSTREAM_KEY = "agent-upstream-key-0123456789"

ALICE = ("alice", ["a2a.travel", "payments.write"])
VIEWER = ("viewer", ["a2a.travel"])
ROOT_USER = ("root", ["a2a.travel", "payments.write", "bookings.admin"])


@dataclass
class World:
    gateway: Gateway
    base: str  # the gateway, http://127.0.0.1:<port>
    agent: Running
    pacer: Pacer
    idp: SigningKey
    card_key: SigningKey  # the gateway's token key, which signs the cards it serves
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.base + "/a2a"

    def token(self, who: tuple[str, list[str]]) -> str:
        sub, scopes = who
        claims = access_token_claims(
            issuer=IDP, audience=self.url, sub=sub, scopes=scopes, client_id="travel-app"
        )
        return sign_access_token(self.idp, claims)

    def bearer(self, who: tuple[str, list[str]] | None) -> dict[str, str]:
        return {} if who is None else {"Authorization": f"Bearer {self.token(who)}"}

    def verifier(self) -> Any:
        """The SDK's card signature verifier, trusting only the gateway's key."""
        jwk = PyJWK(dict(self.card_key.public_jwk))

        def key_for(kid: str | None, jku: str | None) -> PyJWK:
            assert kid == self.card_key.kid, kid
            return jwk

        return create_signature_verifier(key_for, ["ES256"])


def gateway_config(tmp_path: Path, port: int, agent: Running, card_key: Path) -> dict[str, Any]:
    policies, data = policy_dir(tmp_path)
    resource = f"http://127.0.0.1:{port}/a2a"
    return {
        "server": merge(BASE_SERVER, {"listen": f"127.0.0.1:{port}", "timeouts": {"pdp_s": 5}}),
        "issuers": [
            {
                "name": "idp",
                "issuer": IDP,
                "dev_signing_key": str(tmp_path / "idp.pem"),
                "audience": [resource],
                "algorithms": ["ES256"],
            }
        ],
        "authn": {"bearer": {"issuers": ["idp"]}},
        "pdp": {
            "engine": "embedded",
            "policies": str(policies),
            "data": str(data),
            "cache": {"ttl_s": 0, "max_entries": 0},
        },
        "txn_tokens": {"issuer": "https://gw.test", "signing_key": str(card_key)},
        "telemetry": {"audit_log": "off"},
        "routes": [
            {
                "name": ROUTE,
                "kind": "a2a",
                "match": {"path_prefix": "/a2a"},
                "upstream": agent.url,
                "authn": "bearer",
                "segment": SEGMENT,
                "credential": {"type": "api_key", "secret": "env:T17_AGENT_KEY"},
                "a2a": {
                    "resource": resource,
                    "authorization_servers": [IDP],
                    "scopes_supported": ["a2a.travel", "payments.write", "bookings.admin"],
                    "agent_card": {"path": CARD_PATH, "sign": True},
                },
            }
        ],
    }


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setenv("T17_AGENT_KEY", UPSTREAM_KEY)
    port = free_port()
    pacer = Pacer()
    idp, _ = load_or_create(tmp_path / "idp.pem", ["ES256"])
    card_key = write_private_key(tmp_path / "tokens.pem", "ES256")
    # The agent's own card names its own address; the gateway must re-point it at itself.
    agent_port = free_port()
    app = travel_agent_app(f"http://127.0.0.1:{agent_port}/a2a", pacer)
    async with serve(app, agent_port) as agent:
        config = gateway_config(tmp_path, port, agent, tmp_path / "tokens.pem")
        gw = Gateway(parse_settings(config, tmp_path))
        await gw.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                yield World(gw, f"http://127.0.0.1:{port}", agent, pacer, idp, card_key, http)
        finally:
            await gw.stop()


def message(skill: str, *, steps: int = 0) -> SendMessageRequest:
    """A user message for ``skill`` (metadata ``skill``: A2A has no standard field for it)."""
    return SendMessageRequest(
        message=Message(
            message_id=str(uuid.uuid4()),
            role=Role.ROLE_USER,
            parts=[Part(text=f"please {skill}")],
            metadata={"skill": skill, "steps": steps},
        )
    )


@contextlib.asynccontextmanager
async def sdk_client(
    world: World, who: tuple[str, list[str]] | None, *, streaming: bool, sent: list[bytes]
) -> AsyncIterator[Any]:
    """An SDK client built from the gateway's card (resolved and verified by the SDK itself);
    ``sent`` collects the exact bytes of every request it makes."""

    async def record(request: httpx.Request) -> None:
        sent.append(request.content)

    async with httpx.AsyncClient(
        headers=world.bearer(who), timeout=20, event_hooks={"request": [record]}
    ) as http:
        client = await create_client(
            world.url,
            ClientConfig(httpx_client=http, streaming=streaming),
            signature_verifier=world.verifier(),
        )
        try:
            yield client
        finally:
            await client.close()


async def fetch_card(world: World, who: tuple[str, list[str]] | None) -> AgentCard:
    async with httpx.AsyncClient(headers=world.bearer(who), timeout=20) as http:
        resolver = A2ACardResolver(http, world.url)
        card: AgentCard = await resolver.get_agent_card(signature_verifier=world.verifier())
        return card


def final_text(events: list[Any]) -> str:
    """The text of the last status message among SDK stream events."""
    for event in reversed(events):
        status = event.status_update.status if event.HasField("status_update") else None
        if status is None and event.HasField("task"):
            status = event.task.status
        if status is not None and status.message.parts:
            text: str = status.message.parts[0].text
            return text
    raise AssertionError(f"no status message in {events!r}")


# --------------------------------------------------------------------------- the SDK alone


async def test_sdk_server_and_client_directly(world: World) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        client = await create_client(
            world.agent.url + "/a2a", ClientConfig(httpx_client=http, streaming=False)
        )
        events = [e async for e in client.send_message(message("book_flight"))]
        await client.close()
    assert events[-1].task.status.state == TaskState.TASK_STATE_COMPLETED
    assert final_text(events) == "done: book_flight"


# --------------------------------------------------------------------------- the card


@pytest.mark.parametrize(
    ("who", "skills"),
    [
        (ALICE, ["book_flight", "search_flights"]),
        (VIEWER, ["search_flights"]),
        (ROOT_USER, sorted(SKILLS)),
    ],
    ids=["alice-no-admin-scope", "viewer-search-only", "root-everything"],
)
async def test_card_is_filtered_signed_and_points_at_the_gateway(
    world: World, who: tuple[str, list[str]], skills: list[str]
) -> None:
    card = await fetch_card(world, who)  # raises unless the SDK verifier accepts it
    assert sorted(s.id for s in card.skills) == skills
    assert [i.url for i in card.supported_interfaces] == [world.url]
    assert len(card.signatures) == 1


async def test_public_card_for_an_anonymous_caller(world: World) -> None:
    """``agent_card.public`` (the default): served without a token, with the skills an
    anonymous caller may use (none here: every skill needs a scope), still signed."""
    card = await fetch_card(world, None)
    assert [s.id for s in card.skills] == []
    assert [i.url for i in card.supported_interfaces] == [world.url]
    assert len(card.signatures) == 1


async def test_tampered_card_fails_the_sdk_verifier(world: World) -> None:
    async with world.http.get(world.url + CARD_PATH, headers=world.bearer(ALICE)) as resp:
        assert resp.status == 200, await resp.text()
        document = await resp.json()
    card = ParseDict(document, AgentCard(), ignore_unknown_fields=True)
    world.verifier()(card)  # as served: valid
    card.skills.add(id="cancel_booking", name="cancel_booking", description="x")
    with pytest.raises(InvalidSignaturesError):
        world.verifier()(card)
    assert "authorization" not in {k for s in world.agent.recorder.seen for k, _ in s.headers}


# --------------------------------------------------------------------------- messages


async def test_send_message_through_the_gateway(world: World) -> None:
    sent: list[bytes] = []
    async with sdk_client(world, ALICE, streaming=False, sent=sent) as client:
        events = [e async for e in client.send_message(message("search_flights"))]
    assert events[-1].task.status.state == TaskState.TASK_STATE_COMPLETED
    assert final_text(events) == "done: search_flights"
    client_bodies = [b for b in sent if b'"SendMessage"' in b]
    assert len(client_bodies) == 1
    assert world.agent.recorder.bodies(b'"SendMessage"') == client_bodies  # byte for byte
    for request in world.agent.recorder.seen:
        assert request.header("authorization") is None, request
        assert request.header("x-api-key") == UPSTREAM_KEY, request


async def test_streamed_events_arrive_one_by_one(world: World) -> None:
    states: list[str] = []
    sent: list[bytes] = []
    async with sdk_client(world, ALICE, streaming=True, sent=sent) as client:
        async for event in client.send_message(message("book_flight", steps=3)):
            kind = event.WhichOneof("payload")
            if kind == "status_update":
                status = event.status_update.status
                states.append(TaskState.Name(status.state))
                if status.state == TaskState.TASK_STATE_WORKING:
                    # The agent waits for this before its next update (Pacer).
                    working = states.count("TASK_STATE_WORKING")
                    assert world.pacer.emitted == working
                    world.pacer.ack(working)
            else:
                states.append(str(kind))
    assert states == [
        "task",
        "TASK_STATE_WORKING",
        "TASK_STATE_WORKING",
        "TASK_STATE_WORKING",
        "TASK_STATE_COMPLETED",
    ]


@pytest.mark.parametrize("streaming", [False, True], ids=["SendMessage", "SendStreamingMessage"])
async def test_denied_skill_never_reaches_the_agent(world: World, streaming: bool) -> None:
    sent: list[bytes] = []
    async with sdk_client(world, ALICE, streaming=streaming, sent=sent) as client:
        with pytest.raises(A2AError) as denied:
            _ = [e async for e in client.send_message(message(UNKNOWN_SKILL))]
    assert "forbidden by policy" in str(denied.value)
    # Not one of the SDK's own errors (-32001..-32009: TaskNotFoundError and the like).
    assert type(denied.value).__name__ not in {"TaskNotFoundError", "InternalError"}
    assert world.agent.recorder.bodies(UNKNOWN_SKILL.encode()) == []


def a2a_decision_id(error: dict[str, Any]) -> str:
    """The decision id of an A2A denial: google.rpc.ErrorInfo metadata (A2A v1.0 details)."""
    assert error["code"] == A2A_FORBIDDEN, error
    [info] = error["data"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "FORBIDDEN_BY_POLICY"
    assert info["domain"] == "agentgate"
    assert info["metadata"]["reason"] == "policy_denied"
    return str(info["metadata"]["decision_id"])


async def post_message(world: World, who: tuple[str, list[str]], skill: str) -> Any:
    body = MessageToDict(message(skill))
    request = {"jsonrpc": "2.0", "id": 9, "method": "SendMessage", "params": body}
    headers = {**world.bearer(who), "A2A-Version": "1.0"}
    return world.http.post(world.url, json=request, headers=headers)


async def test_denied_skill_wire_format(world: World) -> None:
    async with await post_message(world, ALICE, UNKNOWN_SKILL) as resp:
        assert resp.status == 200, await resp.text()
        doc = json.loads(await resp.read())
    assert doc["id"] == 9
    assert doc["error"]["message"] == "forbidden by policy"
    assert a2a_decision_id(doc["error"])
    assert world.agent.recorder.bodies(UNKNOWN_SKILL.encode()) == []


async def test_skill_without_scope_is_403_naming_every_scope(world: World) -> None:
    async with await post_message(world, VIEWER, "book_flight") as resp:
        assert resp.status == 403, await resp.text()
        params = challenge_params(resp.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert sorted(params["scope"].split()) == ["a2a.travel", "payments.write"]
    assert world.agent.recorder.bodies(b"book_flight") == []


def v03_send(skill: str) -> dict[str, Any]:
    """An A2A v0.3 ``message/send`` (the method names before v1.0; the SDK server speaks both)."""
    message_v03 = {
        "kind": "message",
        "messageId": str(uuid.uuid4()),
        "role": "user",
        "parts": [{"kind": "text", "text": f"please {skill}"}],
        "metadata": {"skill": skill},
    }
    return {
        "jsonrpc": "2.0",
        "id": "v03",
        "method": "message/send",
        "params": {"message": message_v03},
    }


@pytest.mark.parametrize(
    ("skill", "allowed"),
    [("search_flights", True), (UNKNOWN_SKILL, False)],
    ids=["allowed", "denied"],
)
async def test_v03_method_names_are_decided_too(world: World, skill: str, allowed: bool) -> None:
    async with world.http.post(
        world.url, json=v03_send(skill), headers=world.bearer(ALICE)
    ) as resp:
        assert resp.status == 200, await resp.text()
        doc = json.loads(await resp.read())
    assert doc["id"] == "v03"
    if allowed:
        assert doc["result"]["status"]["state"] == "completed", doc
        assert len(world.agent.recorder.bodies(skill.encode())) == 1
    else:
        assert a2a_decision_id(doc["error"]), doc
        assert world.agent.recorder.bodies(skill.encode()) == []
