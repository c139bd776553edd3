"""gateway.protocols.mcp: input.mcp per method, argument allowlists, listing filters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.protocols import mcp
from gateway.protocols.jsonrpc import InvalidJSONRPC, Message, parse

ALLOW = {
    "transfer_funds": frozenset({"amount", "currency"}),
    "greet": frozenset({"name"}),
    "*": frozenset({"dry_run"}),
}


def _request(method: str, params: Any = None, id: int = 1) -> Message:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        body["params"] = params
    (message,) = parse(json.dumps(body).encode()).messages
    return message


def _facts(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "method": None,
        "tool": None,
        "arguments": {},
        "resource": None,
        "prompt": None,
        "session": "s-1",
    }
    return {**base, **changes}


FACTS = [
    (
        "tools-call-allowlisted-keys-only",
        _request(
            "tools/call",
            {
                "name": "transfer_funds",
                "arguments": {"amount": 250, "currency": "EUR", "to": "IBAN-SECRET", "dry_run": 1},
            },
        ),
        _facts(
            method="tools/call",
            tool="transfer_funds",
            arguments={"amount": 250, "currency": "EUR", "dry_run": 1},
        ),
    ),
    (
        "tools-call-nested-values-copied",
        _request(
            "tools/call",
            {"name": "greet", "arguments": {"name": {"first": "A", "parts": [1, [2]]}}},
        ),
        _facts(
            method="tools/call", tool="greet", arguments={"name": {"first": "A", "parts": [1, [2]]}}
        ),
    ),
    (
        "tools-call-unknown-tool-gets-wildcard-only",
        _request("tools/call", {"name": "other", "arguments": {"amount": 1, "dry_run": True}}),
        _facts(method="tools/call", tool="other", arguments={"dry_run": True}),
    ),
    (
        "tools-call-no-arguments",
        _request("tools/call", {"name": "greet"}),
        _facts(method="tools/call", tool="greet"),
    ),
    (
        "tools-call-arguments-not-an-object",
        _request("tools/call", {"name": "greet", "arguments": ["name"]}),
        _facts(method="tools/call", tool="greet"),
    ),
    (
        "prompts-get",
        _request("prompts/get", {"name": "greet", "arguments": {"name": "Ada", "tone": "x"}}),
        _facts(method="prompts/get", prompt="greet", arguments={"name": "Ada"}),
    ),
    (
        "resources-read",
        _request("resources/read", {"uri": "file:///etc/hosts"}),
        _facts(method="resources/read", resource="file:///etc/hosts"),
    ),
    (
        "resources-subscribe",
        _request("resources/subscribe", {"uri": "db://t"}),
        _facts(method="resources/subscribe", resource="db://t"),
    ),
    (
        "resources-unsubscribe",
        _request("resources/unsubscribe", {"uri": "db://t"}),
        _facts(method="resources/unsubscribe", resource="db://t"),
    ),
    ("tools-list", _request("tools/list", {"cursor": "c"}), _facts(method="tools/list")),
    ("initialize", _request("initialize", {"protocolVersion": "x"}), _facts(method="initialize")),
    ("ping", _request("ping"), _facts(method="ping")),
    (
        "notification",
        parse(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').messages[0],
        _facts(method="notifications/initialized"),
    ),
    (
        "other-method-ignores-name",
        _request("completion/complete", {"name": "greet", "arguments": {"name": "x"}}),
        _facts(method="completion/complete"),
    ),
]


@pytest.mark.parametrize(("message", "expected"), [f[1:] for f in FACTS], ids=[f[0] for f in FACTS])
def test_facts(message: Message, expected: dict[str, Any]) -> None:
    assert mcp.facts(message, arguments=ALLOW, session="s-1") == expected


def test_no_allowlist_means_no_arguments_and_session_may_be_none() -> None:
    message = _request("tools/call", {"name": "greet", "arguments": {"name": "Ada"}})
    assert mcp.facts(message, arguments={}, session=None) == _facts(
        method="tools/call", tool="greet", session=None
    )


def test_allowlisted_values_are_not_rewritten() -> None:
    """Values are the parsed objects themselves: the PDP input converter bounds them later."""
    message = _request("tools/call", {"name": "greet", "arguments": {"name": [1, 2]}})
    assert isinstance(message.params, dict)
    got = mcp.facts(message, arguments=ALLOW, session=None)["arguments"]["name"]
    assert got is message.params["arguments"]["name"]


BAD_PARAMS = [
    ("tools-call-no-params", _request("tools/call", id=5)),
    ("tools-call-name-missing", _request("tools/call", {"arguments": {}}, id=5)),
    ("tools-call-name-number", _request("tools/call", {"name": 3}, id=5)),
    ("tools-call-params-array", _request("tools/call", ["greet"], id=5)),
    ("prompts-get-no-name", _request("prompts/get", {}, id=5)),
    ("resources-read-no-uri", _request("resources/read", {"name": "x"}, id=5)),
    ("resources-read-uri-null", _request("resources/read", {"uri": None}, id=5)),
]


@pytest.mark.parametrize("message", [b[1] for b in BAD_PARAMS], ids=[b[0] for b in BAD_PARAMS])
def test_missing_name_or_uri_is_invalid_params(message: Message) -> None:
    with pytest.raises(InvalidJSONRPC) as info:
        mcp.facts(message, arguments=ALLOW, session=None)
    assert (info.value.code, info.value.id, info.value.message) == (-32602, 5, "Invalid params")


# --------------------------------------------------------------------------- listings

TOOLS = {
    "tools": [
        {"name": "get_balance", "inputSchema": {"type": "object"}},
        {"name": "transfer_funds", "description": "moves money"},
        {"description": "no name"},
        {"name": 7},
        "not-an-object",
        {"name": "greet"},
    ],
    "nextCursor": "page-2",
}


def test_listed_tools_ignores_malformed_entries() -> None:
    assert mcp.listed_tools(TOOLS) == ["get_balance", "transfer_funds", "greet"]


@pytest.mark.parametrize(
    "result",
    [None, [], {"tools": {"name": "x"}}, {"other": 1}],
    ids=["null", "array", "obj", "none"],
)
def test_listed_tools_of_a_malformed_result_is_empty(result: Any) -> None:
    assert mcp.listed_tools(result) == []


def test_filter_tools_keeps_other_members_and_drops_malformed() -> None:
    assert mcp.filter_tools(TOOLS, {"greet", "get_balance", "7"}) == {
        "tools": [{"name": "get_balance", "inputSchema": {"type": "object"}}, {"name": "greet"}],
        "nextCursor": "page-2",
    }


def test_filter_tools_allows_nothing() -> None:
    assert mcp.filter_tools(TOOLS, ()) == {"tools": [], "nextCursor": "page-2"}


def test_filter_tools_does_not_mutate_its_input() -> None:
    before = json.dumps(TOOLS)
    mcp.filter_tools(TOOLS, {"greet"})
    assert json.dumps(TOOLS) == before


@pytest.mark.parametrize(
    ("method", "result", "allowed", "expected"),
    [
        (
            "prompts/list",
            {"prompts": [{"name": "a"}, {"name": "b"}, {}]},
            {"b"},
            {"prompts": [{"name": "b"}]},
        ),
        (
            "resources/list",
            {"resources": [{"uri": "u:1", "name": "one"}, {"uri": "u:2"}, {"name": "u:1"}]},
            {"u:1"},
            {"resources": [{"uri": "u:1", "name": "one"}]},
        ),
        ("tools/list", "garbage", {"x"}, {"tools": []}),
    ],
    ids=["prompts", "resources-by-uri", "non-object-result-fails-closed"],
)
def test_filter_listing(method: str, result: Any, allowed: set[str], expected: Any) -> None:
    assert mcp.filter_listing(result, allowed, method) == expected


def _response(id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode()  # not compact: shows when bytes are kept


SINGLE = _dumps(_response(1, TOOLS))
BATCH = _dumps(
    [
        _response(1, TOOLS),
        _response(2, {"prompts": [{"name": "p"}, {"name": "q"}]}),
        {"jsonrpc": "2.0", "id": 3, "result": {"content": []}},
        {"jsonrpc": "2.0", "id": 4, "error": {"code": -1, "message": "x"}},
    ]
)


def test_scan_names_each_pending_listing() -> None:
    scanned = mcp.scan(BATCH, {1: "tools/list", 2: "prompts/list", 4: "tools/list"})
    assert scanned.names == {1: ["get_balance", "transfer_funds", "greet"], 2: ["p", "q"]}


def test_rewrite_single_body() -> None:
    out = mcp.rewrite(mcp.scan(SINGLE, {1: "tools/list"}), {1: {"greet"}})
    assert out == (
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"greet"}],"nextCursor":"page-2"}}'
    )


def test_rewrite_batch_touches_only_pending_results() -> None:
    out = mcp.filter_response(
        BATCH, {1: "tools/list", 2: "prompts/list"}, {1: {"get_balance"}, 2: {"p", "q"}}
    )
    assert json.loads(out) == [
        _response(
            1,
            {
                "tools": [{"name": "get_balance", "inputSchema": {"type": "object"}}],
                "nextCursor": "page-2",
            },
        ),
        _response(2, {"prompts": [{"name": "p"}, {"name": "q"}]}),
        {"jsonrpc": "2.0", "id": 3, "result": {"content": []}},
        {"jsonrpc": "2.0", "id": 4, "error": {"code": -1, "message": "x"}},
    ]


def test_an_absent_allow_set_allows_nothing() -> None:
    out = mcp.filter_response(SINGLE, {1: "tools/list"}, {})
    assert json.loads(out)["result"] == {"tools": [], "nextCursor": "page-2"}


UNCHANGED = [
    ("no-pending", SINGLE, {}, {}),
    ("other-id", SINGLE, {2: "tools/list"}, {2: set()}),
    ("string-id-not-int", SINGLE, {"1": "tools/list"}, {"1": set()}),
    (
        "everything-allowed",
        _dumps(_response(1, {"tools": [{"name": "a"}, {"name": "b"}]})),
        {1: "tools/list"},
        {1: {"a", "b"}},
    ),
    (
        "error-answer",
        _dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}}),
        {1: "tools/list"},
        {1: set()},
    ),
    ("bool-id-never-matches-1", _dumps(_response(True, TOOLS)), {1: "tools/list"}, {1: set()}),
]


@pytest.mark.parametrize(
    ("body", "pending", "allowed"), [u[1:] for u in UNCHANGED], ids=[u[0] for u in UNCHANGED]
)
def test_nothing_dropped_returns_the_same_bytes_object(
    body: bytes, pending: dict[Any, str], allowed: dict[Any, set[str]]
) -> None:
    assert mcp.filter_response(body, pending, allowed) is body


def test_a_malformed_entry_alone_forces_a_rewrite() -> None:
    body = _dumps(_response(1, {"tools": [{"name": "a"}, {"nom": "b"}]}))
    out = mcp.filter_response(body, {1: "tools/list"}, {1: {"a"}})
    assert out == b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}'


def test_a_non_object_result_is_replaced_by_an_empty_listing() -> None:
    body = _dumps(_response(1, [{"name": "a"}]))
    out = mcp.filter_response(body, {1: "tools/list"}, {1: {"a"}})
    assert json.loads(out)["result"] == {"tools": []}


def test_sse_event_data_goes_through_the_same_api() -> None:
    data = json.dumps(_response("r-1", TOOLS)).encode()
    scanned = mcp.scan(data, {"r-1": "tools/list"})
    assert scanned.names == {"r-1": ["get_balance", "transfer_funds", "greet"]}
    assert json.loads(mcp.rewrite(scanned, {"r-1": {"greet"}}))["result"]["tools"] == [
        {"name": "greet"}
    ]


def test_non_ascii_and_lone_surrogates_survive_a_rewrite() -> None:
    body = (
        '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"日本"},{"name":"x","d":"\\ud800"}]}}'
    )
    out = mcp.filter_response(body.encode(), {1: "tools/list"}, {1: {"日本"}})
    assert out == '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"日本"}]}}'.encode()
    out = mcp.filter_response(body.encode(), {1: "tools/list"}, {1: {"x"}})
    assert json.loads(out)["result"]["tools"] == [{"name": "x", "d": "\ud800"}]


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"id":2}', b"\xff"],
    ids=["truncated", "duplicate-member", "not-utf8"],
)
def test_an_unreadable_body_with_a_pending_listing_fails_closed(body: bytes) -> None:
    with pytest.raises(mcp.UnfilterableResponse):
        mcp.scan(body, {1: "tools/list"})


def test_an_unreadable_body_without_pending_listing_passes() -> None:
    assert mcp.filter_response(b"{", {}, {}) == b"{"


def test_pending_must_name_listing_methods() -> None:
    with pytest.raises(ValueError, match="listing"):
        mcp.scan(SINGLE, {1: "tools/call"})


# --------------------------------------------------------------------------- the official SDK


def test_a_request_the_mcp_sdk_serialises_gives_its_tool_and_arguments() -> None:
    """Bytes from the official MCP SDK's own models (``mcp.types``), not a hand-written body."""
    import mcp.types as types

    call = types.CallToolRequest(
        params=types.CallToolRequestParams(
            name="transfer_funds", arguments={"amount": 5, "to": "x", "dry_run": False}
        )
    )
    request = types.JSONRPCRequest(
        jsonrpc="2.0", id="c-1", **call.model_dump(by_alias=True, mode="json", exclude_none=True)
    )
    (message,) = parse(request.model_dump_json(by_alias=True, exclude_none=True).encode()).messages
    assert mcp.facts(message, arguments=ALLOW, session=None) == _facts(
        method="tools/call",
        tool="transfer_funds",
        arguments={"amount": 5, "dry_run": False},
        session=None,
    )


def test_a_filtered_sdk_listing_is_still_a_valid_sdk_listing() -> None:
    import mcp.types as types

    listing = types.ListToolsResult(
        tools=[
            types.Tool(name=name, inputSchema={"type": "object"})
            for name in ("get_balance", "transfer_funds", "greet")
        ],
        nextCursor="page-2",
    )
    response = types.JSONRPCResponse(
        jsonrpc="2.0",
        id=4,
        result=listing.model_dump(by_alias=True, mode="json", exclude_none=True),
    )
    body = response.model_dump_json(by_alias=True, exclude_none=True).encode()
    out = mcp.filter_response(body, {4: "tools/list"}, {4: {"greet", "get_balance"}})
    parsed = types.JSONRPCResponse.model_validate_json(out)
    again = types.ListToolsResult.model_validate(parsed.result)
    assert [tool.name for tool in again.tools] == ["get_balance", "greet"]
    assert again.next_cursor == "page-2"


def test_a_scan_can_be_rewritten_with_several_allow_sets() -> None:
    scanned = mcp.scan(SINGLE, {1: "tools/list"})
    first = mcp.rewrite(scanned, {1: {"greet"}})
    second = mcp.rewrite(scanned, {1: {"get_balance", "greet"}})
    assert [t["name"] for t in json.loads(first)["result"]["tools"]] == ["greet"]
    assert [t["name"] for t in json.loads(second)["result"]["tools"]] == ["get_balance", "greet"]
    assert scanned.names == {1: ["get_balance", "transfer_funds", "greet"]}


def test_a_response_message_gives_empty_facts() -> None:
    (message,) = parse(b'{"jsonrpc":"2.0","id":9,"result":{"action":"accept"}}').messages
    assert mcp.facts(message, arguments=ALLOW, session="s-1") == _facts()
