"""gateway.enrich.jsonrpc: the JSON-RPC stage of kind mcp / a2a routes."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from gateway.context import Identity, Inbound, Principal
from gateway.enrich.jsonrpc import (
    JSONRPCStage,
    check_audience,
    listing_fact,
    metadata_url,
    owner,
    resource_for,
)
from gateway.errors import Forbidden, JSONRPCRefused, NotFound, Unauthorized
from gateway.settings.routes import Route
from gateway.state.sessions import MemorySessionBindings
from tests.unit.authz.samples import facts

RESOURCE = "https://gw.example.org/mcp"


class Bytes:
    """A request body already in memory (the Body protocol), as the listener would give it."""

    def __init__(self, data: bytes | None) -> None:
        self._data = data

    @property
    def exists(self) -> bool:
        return self._data is not None

    @property
    def declared_length(self) -> int | None:
        return None if self._data is None else len(self._data)

    @property
    def buffered(self) -> bytes | None:
        return self._data

    async def read(self) -> bytes:
        return self._data or b""


def inbound(body: bytes | None, method: str = "POST", **headers: str) -> Inbound:
    return Inbound(
        method,
        "/mcp",
        CIMultiDictProxy(CIMultiDict(headers)),
        MultiDictProxy(MultiDict()),
        Bytes(body),
    )


def mcp_route(**section: Any) -> Route:
    return Route.model_validate(
        {
            "name": "bank",
            "kind": "mcp",
            "match": {"path_prefix": "/mcp"},
            "upstream": "http://127.0.0.1:9000",
            "mcp": {"arguments": {"transfer_funds": ["amount"]}, **section},
        }
    )


def a2a_route() -> Route:
    return Route.model_validate(
        {"name": "research", "kind": "a2a", "match": {"path_prefix": "/a2a"},
         "upstream": "http://127.0.0.1:9001"}
    )  # fmt: skip


def identity(subject: str, method: str = "bearer", aud: Any = RESOURCE) -> Identity:
    claims = MappingProxyType({"aud": aud} if aud is not None else {})
    principal = Principal(
        method=method, subject=subject, subject_type="user", issuer="idp", claims=claims
    )
    return Identity(principal, {method: principal}, "human_api", "self")


def rpc(method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id_ is not None:
        message["id"] = id_
    return message


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


async def test_tools_call_facts_with_only_allowlisted_arguments() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    args = {"amount": 10, "account": "acc-1", "memo": "secret"}
    call = await stage.read(
        mcp_route(),
        inbound(body(rpc("tools/call", {"name": "transfer_funds", "arguments": args}))),
    )
    assert call.protocol == "mcp"
    assert call.ids == (1,)
    assert not call.batch
    (fact,) = call.facts
    assert fact["method"] == "tools/call"
    assert fact["tool"] == "transfer_funds"
    assert fact["arguments"] == {"amount": 10}  # account and memo never reach the PDP
    assert call.tools == ("transfer_funds",)
    assert call.labels == ("tools/call", "transfer_funds")


async def test_batch_facts_ids_and_listings() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    batch = [
        rpc("tools/list", id_="a"),
        rpc("notifications/initialized", id_=None),
        rpc("tools/call", {"name": "get_balance", "arguments": {}}, id_=7),
        {"jsonrpc": "2.0", "id": 99, "result": {}},  # the client answering a server request
    ]
    call = await stage.read(mcp_route(), inbound(body(batch)))
    assert call.batch
    assert call.ids == ("a", None, 7, None)
    assert [f["method"] for f in call.facts] == [
        "tools/list",
        "notifications/initialized",
        "tools/call",
        None,
    ]
    assert call.listings == {"a": "tools/list"}
    assert call.tools == ("get_balance",)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"{not json", -32700, id="parse-error"),
        pytest.param(b'{"a":1,"a":2}', -32700, id="duplicate-member"),
        pytest.param(b'{"jsonrpc":"1.0","method":"x","id":1}', -32600, id="wrong-version"),
        pytest.param(b"[]", -32600, id="empty-batch"),
        pytest.param(
            b'{"jsonrpc":"2.0","method":"tools/call","id":1,"params":{}}', -32602, id="no-tool"
        ),
    ],
)
async def test_invalid_bodies_are_jsonrpc_errors_not_500(data: bytes, code: int) -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    with pytest.raises(JSONRPCRefused) as info:
        await stage.read(mcp_route(), inbound(data))
    assert info.value.status == 400
    assert info.value.reason == "jsonrpc_invalid"
    answer = json.loads(info.value.body)
    answer = answer[0] if isinstance(answer, list) else answer
    assert answer["jsonrpc"] == "2.0"
    assert answer["error"]["code"] == code
    assert b"not json" not in info.value.body  # the input is never echoed


async def test_a_batch_over_the_route_bound_is_refused() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    batch = [rpc("ping", id_=i) for i in range(3)]
    with pytest.raises(JSONRPCRefused):
        await stage.read(mcp_route(max_batch=2), inbound(body(batch)))


async def test_get_and_delete_have_one_fact_without_method() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    call = await stage.read(mcp_route(), inbound(None, "GET", **{"Mcp-Session-Id": "s1"}))
    assert call.facts[0]["method"] is None
    assert call.facts[0]["session"] == "s1"
    assert call.session == "s1"


async def test_repeated_session_header_is_refused() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    headers = CIMultiDict([("Mcp-Session-Id", "a"), ("Mcp-Session-Id", "b")])
    request = Inbound("POST", "/mcp", CIMultiDictProxy(headers), MultiDictProxy(MultiDict()),
                      Bytes(body(rpc("ping"))))  # fmt: skip
    with pytest.raises(JSONRPCRefused):
        await stage.read(mcp_route(), request)


async def test_a2a_facts() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    fields = {"messageId": "m1", "role": "user", "parts": [], "taskId": "t-9"}
    message = {"message": {**fields, "contextId": "c-1", "metadata": {"skill": "search"}}}
    call = await stage.read(a2a_route(), inbound(body(rpc("message/send", message))))
    assert call.protocol == "a2a"
    assert call.session is None
    assert call.facts[0] == {
        "method": "message/send",
        "skill": "search",
        "task_id": "t-9",
        "context_id": "c-1",
    }


async def test_session_bound_to_its_subject() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    route = mcp_route()
    alice, mallory = identity("alice"), identity("mallory")
    assert await stage.bind(route, "s-1", alice) is True
    call = await stage.read(route, inbound(body(rpc("ping")), **{"Mcp-Session-Id": "s-1"}))
    await stage.check_session(route, call, alice)
    with pytest.raises(NotFound) as info:
        await stage.check_session(route, call, mallory)
    assert info.value.reason == "session_not_found"
    assert info.value.status == 404
    assert await stage.bind(route, "s-1", mallory) is False  # no takeover either


async def test_unknown_session_is_refused_and_binding_off_lets_it_pass() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    request = inbound(body(rpc("ping")), **{"Mcp-Session-Id": "never-issued"})
    call = await stage.read(mcp_route(), request)
    with pytest.raises(NotFound):
        await stage.check_session(mcp_route(), call, identity("alice"))
    await stage.check_session(mcp_route(session_binding=False), call, identity("alice"))


async def test_sessions_are_per_route() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    await stage.bind(mcp_route(), "s", identity("alice"))
    other = mcp_route().model_copy(update={"name": "other"})
    call = await stage.read(other, inbound(body(rpc("ping")), **{"Mcp-Session-Id": "s"}))
    with pytest.raises(NotFound):
        await stage.check_session(other, call, identity("alice"))


def test_owner_distinguishes_issuer_and_method() -> None:
    assert owner(identity("alice")) != owner(identity("alice", method="api_key"))
    assert owner(None) == "anonymous"


async def test_refusal_body_names_each_denied_message() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    batch = [
        rpc("tools/call", {"name": "a"}, id_=1),
        rpc("tools/call", {"name": "b"}, id_=2),
        rpc("notifications/x", id_=None),
    ]
    call = await stage.read(mcp_route(), inbound(body(batch)))
    refusal = call.refusal({1: ("dec-2", "policy_denied")})
    assert isinstance(refusal, JSONRPCRefused)
    assert refusal.status == 200
    assert refusal.decision_id == "dec-2"
    answers = json.loads(refusal.body)
    assert [a["id"] for a in answers] == [1, 2]  # none for the notification
    assert answers[1]["error"] == {
        "code": -32001,
        "message": "forbidden by policy",
        "data": {"decision_id": "dec-2", "reason": "policy_denied"},
    }
    assert answers[0]["error"]["code"] == -32001
    assert "data" not in answers[0]["error"]


async def test_refusal_of_notifications_only_is_http_403() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    call = await stage.read(mcp_route(), inbound(body([rpc("notifications/x", id_=None)])))
    refusal = call.refusal({0: ("dec", "policy_denied")})
    assert isinstance(refusal, Forbidden)
    assert refusal.decision_id == "dec"


@pytest.mark.parametrize(
    ("aud", "ok"),
    [
        pytest.param(RESOURCE, True, id="string"),
        pytest.param(["other", RESOURCE], True, id="list"),
        pytest.param("https://gw.example.org/other", False, id="other-resource"),
        pytest.param(None, False, id="no-aud"),
        pytest.param(["https://gw.example.org/mcp/"], False, id="not-exact"),
    ],
)
def test_audience_binding(aud: Any, ok: bool) -> None:
    route = mcp_route(resource=RESOURCE)
    who = identity("alice", aud=aud)
    if ok:
        check_audience(route, facts("r", "POST", "/mcp"), who, {"bearer"})
        return
    with pytest.raises(Unauthorized) as info:
        check_audience(route, facts("r", "POST", "/mcp"), who, {"bearer"})
    assert info.value.reason == "audience_mismatch"
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]


def test_audience_binding_skips_non_bearer_methods_and_can_be_off() -> None:
    route = mcp_route(resource=RESOURCE)
    check_audience(route, facts("r", "POST", "/mcp"), identity("k", "api_key", None), {"bearer"})
    off = mcp_route(resource=RESOURCE, audience_binding=False)
    check_audience(off, facts("r", "POST", "/mcp"), identity("a", aud="x"), {"bearer"})


def test_default_resource_is_the_gateway_url_of_the_prefix() -> None:
    assert resource_for(mcp_route(), facts("r", "POST", "/mcp")) == (
        "https://gateway.example.org:8443/mcp"
    )
    assert resource_for(mcp_route(resource=RESOURCE), facts("r", "POST", "/mcp")) == RESOURCE


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        ("https://gw.example/mcp", "https://gw.example/.well-known/oauth-protected-resource/mcp"),
        ("https://gw.example/", "https://gw.example/.well-known/oauth-protected-resource"),
        ("https://gw.example", "https://gw.example/.well-known/oauth-protected-resource"),
        ("https://gw.example:8443/a/b", "https://gw.example:8443/.well-known/oauth-protected-resource/a/b"),
    ],
)  # fmt: skip
def test_metadata_url_rfc9728_section_3_1(resource: str, url: str) -> None:
    assert metadata_url(resource) == url


async def test_listing_fact_is_the_call_without_arguments() -> None:
    stage = JSONRPCStage(MemorySessionBindings())
    call = await stage.read(mcp_route(), inbound(body(rpc("tools/list"))))
    fact = listing_fact(call, "transfer_funds")
    assert fact["method"] == "tools/call"
    assert fact["tool"] == "transfer_funds"
    assert fact["arguments"] == {}
    assert fact["listing"] is True
