"""The example policies (policies/examples/) decide alike in the embedded engine.

``opa test policies/`` covers them in OPA; the gateway's embedded engine (rego-cpp) loads the
same tree, so each example is also evaluated there on the cases that differ most between the
engines: integer arithmetic on the clock, a missing field, data lookups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.authz.embedded import EmbeddedPDP
from tests.support import ROOT

POLICIES = ROOT / "policies"
MONDAY_NS = 1796601600 * 10**9  # 2026-12-07T00:00:00Z, a Monday
HOUR_NS = 3600 * 10**9


def _deny(example: str, input: dict[str, Any], data: Path | None = None) -> Any:
    engine = EmbeddedPDP(POLICIES, data, f"examples/{example}/deny")
    engine.load()
    return engine.evaluate_sync(input)


@pytest.mark.parametrize(
    ("offset_h", "denied"),
    [(9, False), (17, False), (18, True), (7, True), (5 * 24 + 12, True), (4 * 24 + 10, False)],
    ids=["mon-09", "mon-17", "mon-18", "mon-07", "sat-12", "fri-10"],
)
def test_business_hours(offset_h: int, denied: bool) -> None:
    input = {
        "route": {"tags": ["business-hours"]},
        "request": {"time_ns": MONDAY_NS + offset_h * HOUR_NS},
    }
    assert _deny("business_hours", input) == (["example:outside_business_hours"] if denied else [])


@pytest.mark.parametrize(
    ("subject_type", "method", "denied"),
    [("agent", "GET", False), ("agent", "PUT", True), ("user", "PUT", False)],
)
def test_read_only_agents(subject_type: str, method: str, denied: bool) -> None:
    input = {"subject": {"type": subject_type}, "request": {"method": method}}
    assert _deny("read_only_agents", input) == (["example:agent_read_only"] if denied else [])


@pytest.mark.parametrize(
    ("actor", "route", "denied"),
    [
        ("spiffe://example.org/agent/travel", "flights", False),
        ("spiffe://example.org/agent/travel", "billing-legacy", True),
        ("spiffe://example.org/agent/evil", "flights", True),
    ],
)
def test_obo_requires_grant_with_the_shipped_data(actor: str, route: str, denied: bool) -> None:
    input = {
        "mode": "obo_user",
        "subject": {"id": "alice"},
        "actors": [{"sub": actor}],
        "route": {"name": route},
    }
    got = _deny("obo_requires_grant", input, POLICIES / "data.json")
    assert got == (["example:obo_without_grant"] if denied else [])


@pytest.mark.parametrize(("depth", "denied"), [(0, False), (3, False), (4, True)])
def test_depth_limit(depth: int, denied: bool) -> None:
    input = {"actors": [{"sub": f"agent-{i}"} for i in range(depth)]}
    assert _deny("depth_limit", input) == (["example:delegation_too_deep"] if denied else [])
