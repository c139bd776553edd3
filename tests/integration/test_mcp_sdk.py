"""The official MCP Python SDK behind and in front of the gateway (issue 17).

An SDK ``MCPServer`` (tools of a toy bank, tests/integration/mcp_servers.py) is the upstream of
a route ``kind: mcp``; SDK ``Client`` sessions over Streamable HTTP talk to it through the
gateway with bearer tokens from a development issuer. What the SDK can observe is checked
through the SDK (initialize, the filtered tools/list, allowed and denied tools/call, progress
and log notifications); what it hides (status codes, ``WWW-Authenticate``, RFC 9728 metadata,
a foreign ``Mcp-Session-Id``) with raw aiohttp. The upstream records every request it got
(method, headers, exact body), so "the upstream never saw it" and "byte for byte" are facts,
not inferences.

Policy: the shipped Rego (``agentgate.authz`` folding in ``agentgate.mcp``) with the tools
(``data.mcp.routes[<route>].tools[<tool>]``), read-only subjects and RBAC roles of
:func:`tests.integration.mcp_servers.policy_dir`, the one place that decides it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import MCPError

from gateway.app import Gateway
from gateway.devtools.devissuer import access_token_claims, load_or_create, sign_access_token
from gateway.settings import parse_settings
from gateway.tokens.keys import SigningKey
from tests.integration.conftest import BASE_SERVER, base_url, merge
from tests.integration.mcp_servers import (
    IDP,
    JSONRPC_FORBIDDEN,
    MCP_ROUTE,
    SEGMENT,
    STATELESS_ROUTE,
    TRANSFER_LIMIT,
    Pacer,
    Running,
    bank_server,
    challenge_params,
    mcp_app,
    mcp_client,
    policy_dir,
    serve,
)
from tests.support import wait_until

pytestmark = [
    pytest.mark.integration,
    # slow_count sends log messages, a capability the SDK deprecates for its 2026-07-28
    # revision; the handshake-era sessions used here still carry them.
    pytest.mark.filterwarnings("ignore:The logging capability is deprecated"),
]

RESOURCE = "https://gw.test/mcp"
METADATA_URL = "https://gw.test/.well-known/oauth-protected-resource/mcp"
ROUTE = MCP_ROUTE
OTHER_AUDIENCE = "https://gw.test/other"
STATELESS_RESOURCE = "https://gw.test/stateless"
ROUTE_KIND = "mcp"  # "proxy": the plain route of before issue 17 (step 1 of the brief)
SCOPES_SUPPORTED = ["mcp.tools", "accounts.read", "payments.write", "accounts.admin"]
IDLE_S = 1.0
MAX_BODY_BYTES = 64 * 1024
HANDSHAKE = "2025-11-25"  # the session-based revision the SDK's legacy mode speaks
MODERN = "2026-07-28"  # the stateless revision its auto mode negotiates

# Who holds what. alice may read and pay, not delete; root may do everything; reader holds
# every scope but is a read-only subject, so the policy (not a scope) stops its writes.
ALICE = ("alice", ["mcp.tools", "accounts.read", "payments.write"])
ROOT_USER = ("root", SCOPES_SUPPORTED)
READER = ("reader", SCOPES_SUPPORTED)


@dataclass
class World:
    gateway: Gateway
    base: str
    stateful: Running  # Mcp-Session-Id, SSE answers, at /mcp
    stateless: Running  # no session, JSON answers, at /stateless/mcp
    pacer: Pacer
    key: SigningKey
    http: aiohttp.ClientSession
    audit_log: Path

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    async def metrics(self) -> str:
        assert self.gateway.admin_address is not None
        host, port = self.gateway.admin_address
        async with self.http.get(f"http://{host}:{port}/metrics") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    def token(self, who: tuple[str, list[str]], *, audience: str = RESOURCE) -> str:
        sub, scopes = who
        claims = access_token_claims(
            issuer=IDP, audience=audience, sub=sub, scopes=scopes, client_id="bank-agent"
        )
        return sign_access_token(self.key, claims)

    def bearer(self, who: tuple[str, list[str]], **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(who, **kw)}"}

    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        sent = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
            **(headers or {}),
        }
        async with self.http.post(self.base + path, data=body, headers=sent) as resp:
            return resp.status, resp.headers.copy(), await resp.read()


def gateway_config(tmp_path: Path, stateful: Running, stateless: Running) -> dict[str, Any]:
    policies, data = policy_dir(tmp_path)
    jsonrpc = {
        "max_body_bytes": MAX_BODY_BYTES,
        "arguments": {"transfer_funds": ["amount", "currency"]},
        "filter_lists": True,
        "session_binding": True,
        "resource": RESOURCE,
        "authorization_servers": [IDP],
        "scopes_supported": SCOPES_SUPPORTED,
        "audience_binding": True,
    }

    def route(name: str, prefix: str, upstream: Running, resource: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "kind": ROUTE_KIND,
            "match": {"path_prefix": prefix},
            "upstream": upstream.url,
            "authn": "bearer",
            "segment": SEGMENT,
            "credential": {"type": "api_key", "secret": "env:T17_UPSTREAM_KEY"},
            "timeouts": {"idle_s": IDLE_S},
        }
        if ROUTE_KIND == "mcp":
            out["mcp"] = {**jsonrpc, "resource": resource}
        return out

    return {
        "server": merge(BASE_SERVER, {"timeouts": {"pdp_s": 5}}),
        "issuers": [
            {
                "name": "idp",
                "issuer": IDP,
                "dev_signing_key": str(tmp_path / "idp.pem"),
                "audience": [RESOURCE, STATELESS_RESOURCE, OTHER_AUDIENCE],
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
        "telemetry": {"audit_log": str(tmp_path / "audit.log")},
        "routes": [
            route(ROUTE, "/mcp", stateful, RESOURCE),
            route(STATELESS_ROUTE, "/stateless", stateless, STATELESS_RESOURCE),
        ],
    }


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setenv("T17_UPSTREAM_KEY", "upstream-key-0123456789abcdef")
    pacer = Pacer()
    server = bank_server(pacer)
    async with (
        serve(mcp_app(server)) as stateful,
        serve(mcp_app(bank_server(), stateless=True, path="/stateless/mcp")) as stateless,
    ):
        key, _ = load_or_create(tmp_path / "idp.pem", ["ES256"])
        gw = Gateway(parse_settings(gateway_config(tmp_path, stateful, stateless), tmp_path))
        await gw.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                audit = tmp_path / "audit.log"
                yield World(gw, base_url(gw), stateful, stateless, pacer, key, http, audit)
        finally:
            await gw.stop()


# --------------------------------------------------------------------------- helpers


def rpc(id_: int, method: str, params: Mapping[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def call(id_: int, tool: str, **arguments: Any) -> bytes:
    return rpc(id_, "tools/call", {"name": tool, "arguments": arguments})


INITIALIZE = rpc(
    1,
    "initialize",
    {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-aiohttp", "version": "0"},
    },
)
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def answer(body: bytes) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body or in the first SSE ``data:`` event."""
    text = body.decode()
    if text.lstrip().startswith("{"):
        doc: dict[str, Any] = json.loads(text)
        return doc
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            event: dict[str, Any] = json.loads(line[5:])
            return event
    raise AssertionError(f"no JSON-RPC message in {body[:300]!r}")


async def open_session(world: World, who: tuple[str, list[str]]) -> str:
    """A raw initialize handshake on the stateful route; the Mcp-Session-Id it handed out."""
    status, headers, body = await world.post("/mcp", INITIALIZE, world.bearer(who))
    assert status == 200, body[:300]
    assert answer(body)["result"]["protocolVersion"], body[:300]
    session_id = headers.get("Mcp-Session-Id")
    assert session_id, dict(headers)
    sent = {**world.bearer(who), "Mcp-Session-Id": session_id}
    status, _, body = await world.post("/mcp", INITIALIZED, sent)
    assert status == 202, body[:300]
    return session_id


# --------------------------------------------------------------------------- the SDK alone


async def test_sdk_server_and_client_directly(world: World) -> None:
    """The fixture itself, without the gateway: the SDK client sees all four tools."""
    async with mcp_client(world.stateful.url + "/mcp") as client:
        tools = await client.list_tools()
        result = await client.call_tool("get_balance", {"account": "a1"})
    assert sorted(t.name for t in tools.tools) == [
        "delete_account",
        "get_balance",
        "slow_count",
        "transfer_funds",
    ]
    assert result.structured_content == {"account": "a1", "balance": 1234, "currency": "EUR"}


# --------------------------------------------------------------------------- 1. tools/list


@pytest.mark.parametrize(
    ("who", "visible"),
    [
        (ALICE, ["get_balance", "slow_count", "transfer_funds"]),
        (ROOT_USER, ["delete_account", "get_balance", "slow_count", "transfer_funds"]),
        (READER, ["get_balance", "slow_count"]),
    ],
    ids=["alice-no-admin-scope", "root-everything", "reader-read-only"],
)
async def test_tools_list_is_filtered_per_caller(
    world: World, who: tuple[str, list[str]], visible: list[str]
) -> None:
    async with mcp_client(world.url, world.bearer(who)) as client:
        assert client.server_info is not None
        assert client.server_info.name == "bank"
        tools = await client.list_tools()
    assert sorted(t.name for t in tools.tools) == visible
    assert world.stateful.recorder.bodies(b'"tools/list"'), "the list came from the upstream"


@pytest.mark.parametrize(
    ("path", "audience", "mode"),
    [
        ("/stateless/mcp", STATELESS_RESOURCE, "legacy"),
        ("/stateless/mcp", STATELESS_RESOURCE, "auto"),
        ("/mcp", RESOURCE, "auto"),
    ],
    ids=["stateless-handshake", "stateless-modern-probe", "stateful-modern-probe"],
)
async def test_other_transports_and_revisions(
    world: World, path: str, audience: str, mode: str
) -> None:
    """The stateless JSON server, and the SDK's 2026-07-28 negotiation (server/discover first,
    handshake as the fallback): the same filtering, the same denial."""
    async with mcp_client(
        world.base + path, world.bearer(ALICE, audience=audience), mode=mode
    ) as client:
        assert client.protocol_version == (HANDSHAKE if mode == "legacy" else MODERN)
        tools = await client.list_tools()
        balance = await client.call_tool("get_balance", {"account": "a1"})
        with pytest.raises(MCPError) as denied:
            await client.call_tool(
                "transfer_funds", {"account": "a1", "amount": 10**6, "currency": "EUR"}
            )
    assert sorted(t.name for t in tools.tools) == ["get_balance", "slow_count", "transfer_funds"]
    assert balance.structured_content == {"account": "a1", "balance": 1234, "currency": "EUR"}
    assert denied.value.code == JSONRPC_FORBIDDEN
    assert denied.value.data.get("decision_id"), denied.value.data


# --------------------------------------------------------------------------- 2./3. tools/call


async def test_allowed_call_returns_the_tool_result(world: World) -> None:
    async with mcp_client(world.url, world.bearer(ALICE)) as client:
        result = await client.call_tool("get_balance", {"account": "a1"})
    assert not result.is_error
    assert result.structured_content == {"account": "a1", "balance": 1234, "currency": "EUR"}


async def test_denied_call_is_a_jsonrpc_error_with_decision_id(world: World) -> None:
    async with mcp_client(world.url, world.bearer(READER)) as client:
        with pytest.raises(MCPError) as denied:
            await client.call_tool(
                "transfer_funds", {"account": "a1", "amount": 5, "currency": "EUR"}
            )
        # The session survives a denied call.
        balance = await client.call_tool("get_balance", {"account": "a1"})
    assert denied.value.code == JSONRPC_FORBIDDEN
    assert denied.value.message == "forbidden by policy"
    assert isinstance(denied.value.data, dict)
    assert denied.value.data.get("decision_id"), denied.value.data
    assert denied.value.data.get("reason"), denied.value.data
    assert balance.structured_content is not None
    assert world.stateful.recorder.bodies(b"transfer_funds") == []


async def test_denied_call_wire_format(world: World) -> None:
    """HTTP 200 and exactly the JSON-RPC error object of the contract, for the call's id."""
    headers = world.bearer(READER, audience=STATELESS_RESOURCE)
    body = call(41, "delete_account", account="a1")
    status, _, raw = await world.post("/stateless/mcp", body, headers)
    assert status == 200, raw[:300]
    doc = answer(raw)
    assert doc["jsonrpc"] == "2.0"
    assert doc["id"] == 41
    assert "result" not in doc
    assert doc["error"]["code"] == JSONRPC_FORBIDDEN
    assert doc["error"]["message"] == "forbidden by policy"
    assert set(doc["error"]["data"]) >= {"decision_id", "reason"}
    assert world.stateless.recorder.bodies(b"delete_account") == []


@pytest.mark.parametrize(
    ("amount", "allowed"),
    [(1, True), (TRANSFER_LIMIT, True), (TRANSFER_LIMIT + 1, False), (10**9, False)],
    ids=["small", "at-limit", "just-over", "huge"],
)
async def test_transfer_amount_limit(world: World, amount: int, allowed: bool) -> None:
    async with mcp_client(world.url, world.bearer(ALICE)) as client:
        arguments = {"account": "a1", "amount": amount, "currency": "EUR"}
        if allowed:
            result = await client.call_tool("transfer_funds", arguments)
            assert result.structured_content == {
                "account": "a1",
                "moved": amount,
                "currency": "EUR",
            }
        else:
            with pytest.raises(MCPError) as denied:
                await client.call_tool("transfer_funds", arguments)
            assert denied.value.code == JSONRPC_FORBIDDEN
            assert denied.value.data.get("decision_id"), denied.value.data
    forwarded = world.stateful.recorder.bodies(b"transfer_funds")
    assert len(forwarded) == (1 if allowed else 0)


@pytest.mark.parametrize(
    "body",
    [
        # Odd spacing, key order, an escaped character and a unicode one: any re-encoding
        # by the gateway would show.
        b'{ "params" : {"arguments":{"currency":"EUR","amount":  999,"account":"a\\u0031"},'
        b'"name":"transfer_funds"},"method":"tools/call","id":7 ,"jsonrpc":"2.0"}',
        '{"jsonrpc":"2.0","id":"x-8","method":"tools/call","params":{"name":"transfer_funds",'
        '"arguments":{"account":"k\u00f6ln","amount":1.0e2,"currency":"EUR"}}}\n'.encode(),
    ],
    ids=["reordered-spaced-escaped", "string-id-utf8-exponent"],
)
async def test_forwarded_body_is_byte_for_byte(world: World, body: bytes) -> None:
    headers = world.bearer(ALICE, audience=STATELESS_RESOURCE)
    status, _, raw = await world.post("/stateless/mcp", body, headers)
    assert status == 200, raw[:300]
    assert "result" in answer(raw), raw[:300]
    assert world.stateless.recorder.bodies(b"transfer_funds") == [body]


async def test_sdk_request_bytes_reach_the_upstream_unchanged(world: World) -> None:
    sent: list[bytes] = []

    async def record(request: Any) -> None:
        sent.append(bytes(request.content))

    async with mcp_client(
        world.url, world.bearer(ALICE), event_hooks={"request": [record]}
    ) as client:
        await client.call_tool("transfer_funds", {"account": "a1", "amount": 7, "currency": "EUR"})
    client_bodies = [b for b in sent if b"transfer_funds" in b]
    assert len(client_bodies) == 1
    assert world.stateful.recorder.bodies(b"transfer_funds") == client_bodies


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","id":2}', -32700),  # duplicate member
        (b"[]", -32600),
        (b'"tools/list"', -32600),
        (b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}', -32600),
        (b'{"jsonrpc":"2.0","id":1}', -32600),
        (b'{"jsonrpc":"2.0","id":true,"method":"tools/list"}', -32600),
        (b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2}]', -32600),
    ],
    ids=[
        "not-json",
        "duplicate-member",
        "empty-batch",
        "not-an-object",
        "wrong-version",
        "no-method",
        "boolean-id",
        "batch-with-one-bad",
    ],
)
async def test_invalid_jsonrpc_is_a_jsonrpc_error_never_forwarded(
    world: World, body: bytes, code: int
) -> None:
    headers = world.bearer(ALICE, audience=STATELESS_RESOURCE)
    status, resp_headers, raw = await world.post("/stateless/mcp", body, headers)
    assert status == 400, raw[:300]
    assert resp_headers["Content-Type"].startswith("application/json"), dict(resp_headers)
    doc = json.loads(raw)
    errors = doc if isinstance(doc, list) else [doc]
    assert errors, raw
    assert all(e["jsonrpc"] == "2.0" and e["error"]["code"] == code for e in errors), doc
    assert world.stateless.recorder.seen == []


async def test_body_over_the_route_limit_is_413_never_forwarded(world: World) -> None:
    padding = "x" * (MAX_BODY_BYTES + 1)
    body = call(5, "get_balance", account=padding)
    headers = world.bearer(ALICE, audience=STATELESS_RESOURCE)
    status, _, raw = await world.post("/stateless/mcp", body, headers)
    assert status == 413, raw[:300]
    assert world.stateless.recorder.seen == []


# --------------------------------------------------------------------------- 4.-6. OAuth


async def test_missing_tool_scope_is_403_naming_every_scope(world: World) -> None:
    headers = world.bearer(ALICE, audience=STATELESS_RESOURCE)
    status, resp_headers, raw = await world.post(
        "/stateless/mcp", call(3, "delete_account", account="a1"), headers
    )
    assert status == 403, raw[:300]
    params = challenge_params(resp_headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert sorted(params["scope"].split()) == ["accounts.admin", "mcp.tools"]
    assert world.stateless.recorder.bodies(b"delete_account") == []


async def test_no_token_is_401_pointing_at_the_metadata(world: World) -> None:
    status, headers, raw = await world.post("/mcp", INITIALIZE)
    assert status == 401, raw[:300]
    params = challenge_params(headers["WWW-Authenticate"])
    assert params["resource_metadata"] == METADATA_URL
    assert world.stateful.recorder.seen == []


async def test_protected_resource_metadata(world: World) -> None:
    path = METADATA_URL.removeprefix("https://gw.test")
    async with world.http.get(world.base + path) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        doc = await resp.json()
    assert doc["resource"] == RESOURCE
    assert doc["authorization_servers"] == [IDP]
    assert doc["scopes_supported"] == SCOPES_SUPPORTED
    assert "header" in doc["bearer_methods_supported"]
    assert world.stateful.recorder.seen == []


async def test_token_for_another_audience_is_invalid(world: World) -> None:
    headers = world.bearer(ALICE, audience=OTHER_AUDIENCE)
    status, resp_headers, raw = await world.post("/mcp", INITIALIZE, headers)
    assert status == 401, raw[:300]
    params = challenge_params(resp_headers["WWW-Authenticate"])
    assert params["error"] == "invalid_token"
    assert params["resource_metadata"] == METADATA_URL
    assert world.stateful.recorder.seen == []


# --------------------------------------------------------------------------- 7. credentials


async def test_client_token_never_reaches_the_mcp_server(world: World) -> None:
    token = world.token(ROOT_USER)
    async with mcp_client(world.url, {"Authorization": f"Bearer {token}"}) as client:
        await client.list_tools()
        await client.call_tool("get_balance", {"account": "a1"})
    seen = world.stateful.recorder.seen
    assert {s.method for s in seen} >= {"POST", "GET"}
    for request in seen:
        assert request.header("authorization") is None, request
        assert request.header("x-api-key") == "upstream-key-0123456789abcdef", request
        assert all(token not in value for _, value in request.headers), request


# --------------------------------------------------------------------------- audit, metrics


def _calls(events: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    wanted = {"protocol": "mcp", "method": "tools/call", "target": tool}
    return [e for e in events if e.get("rpc") == wanted]


def _counted(exposition: str, tool: str) -> dict[str, float]:
    """outcome -> count of ``agentgate_jsonrpc_requests_total`` for tools/call of ``tool``."""
    out: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line.startswith("agentgate_jsonrpc_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        wanted = (f'route="{ROUTE}"', 'method="tools/call"', f'target="{tool}"')
        if all(label in labels for label in wanted):
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(value)
    return out


async def test_audit_and_metrics_name_method_and_tool(world: World) -> None:
    async with mcp_client(world.url, world.bearer(ALICE)) as client:
        await client.call_tool("get_balance", {"account": "a1"})
    async with mcp_client(world.url, world.bearer(READER)) as client:
        with pytest.raises(MCPError):
            await client.call_tool("delete_account", {"account": "a1"})
    await wait_until(lambda: bool(_calls(world.audit(), "delete_account")))
    events = world.audit()
    assert len(_calls(events, "get_balance")) == 1
    assert len(_calls(events, "delete_account")) == 1
    exposition = await world.metrics()
    assert _counted(exposition, "get_balance") == {"allow": 1.0}
    denied = _counted(exposition, "delete_account")
    assert list(denied.values()) == [1.0]
    assert "allow" not in denied


# --------------------------------------------------------------------------- 8. streaming


async def test_progress_and_logs_arrive_one_by_one(world: World) -> None:
    steps: list[float] = []
    logs: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)
        # The server waits for this before it emits the next step (Pacer): the call can only
        # finish if each notification crossed the gateway on its own.
        assert world.pacer.emitted == int(progress)
        world.pacer.ack(int(progress))

    async def on_log(params: Any) -> None:
        logs.append(params.data)

    async with mcp_client(world.url, world.bearer(ALICE), logging_callback=on_log) as client:
        result = await client.call_tool("slow_count", {"n": 4}, progress_callback=on_progress)
    assert result.structured_content == {"result": 4}
    assert steps == [1, 2, 3, 4]
    assert logs == ["step 1", "step 2", "step 3", "step 4"]


async def _stream_ended(url: str, headers: Mapping[str, str], wait_s: float) -> bool:
    """Whether a GET event stream at ``url`` ends (EOF or cut) within ``wait_s``."""
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"

        async def drain() -> None:
            try:
                async for _ in resp.content.iter_any():
                    pass
            except aiohttp.ClientPayloadError:
                pass  # cut mid-stream: ended too

        try:
            await asyncio.wait_for(drain(), wait_s)
        except TimeoutError:
            return False
        return True


async def test_idle_event_stream_is_cut(world: World) -> None:
    session_id = await open_session(world, ALICE)
    get_headers = {
        "Accept": "text/event-stream",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }
    # Straight to the SDK server the standalone stream stays open while idle ...
    assert not await _stream_ended(world.stateful.url + "/mcp", get_headers, 3 * IDLE_S)
    # ... through the gateway, the route's idle timeout ends it.
    through = {**get_headers, **world.bearer(ALICE)}
    assert await _stream_ended(world.url, through, 6 * IDLE_S)


# --------------------------------------------------------------------------- 9. sessions


async def test_session_id_of_another_subject_is_refused(world: World) -> None:
    session_id = await open_session(world, ALICE)
    with_session = {"Mcp-Session-Id": session_id}

    def upstream_uses() -> int:
        return sum(s.header("mcp-session-id") == session_id for s in world.stateful.recorder.seen)

    before = upstream_uses()
    status, _, raw = await world.post(
        "/mcp", rpc(2, "tools/list"), {**world.bearer(ROOT_USER), **with_session}
    )
    # 404, what an MCP server answers for an unknown session: the thief learns nothing.
    assert status == 404, raw[:300]
    assert upstream_uses() == before, "the upstream saw the hijacked session"
    # The owner still uses it.
    status, _, raw = await world.post(
        "/mcp", rpc(3, "tools/list"), {**world.bearer(ALICE), **with_session}
    )
    assert status == 200, raw[:300]
    assert "tools" in answer(raw)["result"]
    assert upstream_uses() == before + 1


async def test_guessed_session_id_is_refused(world: World) -> None:
    guessed = "0" * 32  # the shape the SDK server hands out, issued to nobody
    headers = {**world.bearer(ALICE), "Mcp-Session-Id": guessed}
    status, _, raw = await world.post("/mcp", rpc(2, "tools/list"), headers)
    assert status == 404, raw[:300]
    assert all(s.header("mcp-session-id") != guessed for s in world.stateful.recorder.seen)
