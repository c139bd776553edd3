"""gateway.agents.caveats: an agent credential's route, segment and tool restrictions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.agents.caveats import check, tool_allowed
from gateway.context import Identity, Principal, Provenance
from gateway.errors import Unauthorized


def holder(**restrictions: Sequence[str]) -> Identity:
    provenance = Provenance(
        genesis={"type": "user", "sub": "alice"},
        issuer="gw",
        chain=({"agent": "spiffe://example.org/a", "credential_id": "c1"},),
        restrictions={k: frozenset(v) for k, v in restrictions.items()},
    )
    principal = Principal(
        method="agent", subject="alice", subject_type="agent", provenance=provenance
    )
    return Identity(principal, {"agent": principal}, "agent", "obo_agent")


@pytest.mark.parametrize(
    ("restrictions", "tools", "ok"),
    [
        pytest.param({}, None, True, id="unrestricted-http"),
        pytest.param({}, ("anything",), True, id="unrestricted-mcp"),
        pytest.param({"tools": ["get_balance"]}, ("get_balance",), True, id="allowed-tool"),
        pytest.param({"tools": ["get_balance"]}, ("transfer_funds",), False, id="other-tool"),
        pytest.param(
            {"tools": ["get_balance"]}, ("get_balance", "transfer_funds"), False, id="batch"
        ),
        # On an MCP route a message that calls no tool (initialize, tools/list) passes ...
        pytest.param({"tools": ["get_balance"]}, (), True, id="mcp-no-tool-call"),
        # ... off MCP routes a tool-restricted credential allows nothing.
        pytest.param({"tools": ["get_balance"]}, None, False, id="http-route"),
        pytest.param({"routes": ["other"]}, ("get_balance",), False, id="route"),
        pytest.param({"segments": ["default"]}, None, True, id="segment"),
    ],
)
def test_check(restrictions: dict[str, list[str]], tools: tuple[str, ...] | None, ok: bool) -> None:
    identity = holder(**restrictions)
    if ok:
        check(identity, "bank", "default", tools)
        return
    with pytest.raises(Unauthorized) as info:
        check(identity, "bank", "default", tools)
    assert info.value.reason == "agent_credential_restricted"


def test_tool_allowed_for_listings() -> None:
    assert tool_allowed(None, "x")
    assert tool_allowed(holder(), "x")
    restricted = holder(tools=["get_balance"])
    assert tool_allowed(restricted, "get_balance")
    assert not tool_allowed(restricted, "transfer_funds")
