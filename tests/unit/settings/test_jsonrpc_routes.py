"""routes[].kind mcp / a2a and their mcp: / a2a: sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings import parse_settings

MCP = {"name": "tools", "kind": "mcp", "match": {"path_prefix": "/mcp"},
       "upstream": "http://127.0.0.1:9000"}  # fmt: skip
A2A = {"name": "agents", "kind": "a2a", "match": {"path_prefix": "/a2a"},
       "upstream": "http://127.0.0.1:9001"}  # fmt: skip


def problems(data: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, tmp_path)
    return info.value.lines()


def test_mcp_route_defaults(tmp_path: Path) -> None:
    route = parse_settings({"routes": [MCP]}, tmp_path).routes[0]
    assert route.kind == "mcp"
    assert route.stream is True  # Streamable HTTP: no total cap, idle_s bounds it
    assert route.mcp is not None
    assert route.jsonrpc is route.mcp
    assert route.mcp.filter_lists
    assert route.mcp.session_binding
    assert route.mcp.audience_binding
    assert route.mcp.max_body_bytes == 1024 * 1024
    assert route.a2a is None


def test_a2a_route_defaults_with_a_card(tmp_path: Path) -> None:
    settings = parse_settings(
        {"routes": [{**A2A, "a2a": {"agent_card": {"sign": False}}}]}, tmp_path
    )
    route = settings.routes[0]
    assert route.a2a is not None
    assert route.a2a.agent_card is not None
    assert route.a2a.agent_card.path == "/.well-known/agent-card.json"


def test_explicit_stream_false_is_kept(tmp_path: Path) -> None:
    route = parse_settings({"routes": [{**MCP, "stream": False}]}, tmp_path).routes[0]
    assert route.stream is False


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        pytest.param(
            {**MCP, "mcp": {"resource": "ftp://x/mcp"}},
            "routes.0.mcp.resource: must be an absolute http(s) URL without a fragment",
            id="resource-scheme",
        ),
        pytest.param(
            {**MCP, "mcp": {"resource": "https://gw/mcp#frag"}},
            "routes.0.mcp.resource: must be an absolute http(s) URL without a fragment",
            id="resource-fragment",
        ),
        pytest.param(
            {**MCP, "mcp": {"authorization_servers": ["idp.example"]}},
            "routes.0.mcp.authorization_servers: 'idp.example': must be an absolute http(s) URL",
            id="as-not-url",
        ),
        pytest.param(
            {**MCP, "mcp": {"max_body_bytes": 10}},
            "routes.0.mcp.max_body_bytes: Input should be greater than or equal to 64",
            id="body-bound",
        ),
        pytest.param(
            {**MCP, "mcp": {"filter_list": True}},
            "routes.0.mcp.filter_list: unknown key",
            id="typo",
        ),
        pytest.param(
            {**MCP, "a2a": {}},
            "routes.0: a2a: only on a route of kind a2a",
            id="a2a-on-mcp",
        ),
        pytest.param(
            {"name": "r", "upstream": "http://127.0.0.1:1", "mcp": {}},
            "routes.0: mcp: only on a route of kind mcp",
            id="mcp-on-proxy",
        ),
        pytest.param(
            {**MCP, "websocket": True},
            "routes.0: a route of kind mcp does not take websocket upgrades",
            id="websocket",
        ),
        pytest.param(
            {**A2A, "a2a": {"agent_card": {"path": "agent.json"}}},
            "routes.0.a2a.agent_card.path: must start with '/'",
            id="card-path",
        ),
        pytest.param(
            A2A,
            "routes.0.a2a.agent_card.sign: needs txn_tokens (the card is signed with the"
            " gateway's token key)",
            id="signed-card-needs-keys",
        ),
    ],
)
def test_errors(route: dict[str, Any], expected: str, tmp_path: Path) -> None:
    assert expected in problems({"routes": [route]}, tmp_path)
