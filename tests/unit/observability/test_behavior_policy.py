"""policies/agentgate/behavior: the same cases through the embedded engine and real OPA.

``opa test policies/`` runs the Rego unit tests; this table checks that ``regopy`` (the
embedded PDP) and the OPA binary (the production PDP) agree on every case, and that the
snapshot produced by ``MemoryBehaviorStore`` is what the rules expect.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import regopy

from gateway.observability.behavior import MemoryBehaviorStore
from tests.jaeger_server import ROOT, require_real

POLICY_DIR = ROOT / "policies" / "agentgate" / "behavior"
POLICY = POLICY_DIR / "behavior.rego"
QUERY = "data.agentgate.behavior"


def window(**figures: float) -> dict[str, Any]:
    base: dict[str, Any] = {
        "window_s": 60.0,
        "requests": 0,
        "errors": 0,
        "denies": 0,
        "distinct_routes": 0,
        "deny_rate": 0.0,
        "error_rate": 0.0,
    }
    return {**base, **figures}


CASES = [
    pytest.param({"behavior": window(requests=12)}, None, set(), id="quiet"),
    pytest.param({}, None, set(), id="no-behavior-input"),
    pytest.param({"behavior": {}}, None, set(), id="empty-behavior"),
    pytest.param(
        {"behavior": window(requests=20, denies=10, deny_rate=0.5)},
        None,
        {"behavior:deny_burst"},
        id="deny-burst",
    ),
    pytest.param(
        {"behavior": window(requests=30, denies=12, deny_rate=0.4)}, None, set(), id="deny-low-rate"
    ),
    pytest.param({"behavior": window(requests=600)}, None, set(), id="600-requests"),
    pytest.param(
        {"behavior": window(requests=601)}, None, {"behavior:request_flood"}, id="601-requests"
    ),
    pytest.param(
        {"behavior": window(requests=30, errors=20, error_rate=0.6667)},
        None,
        {"behavior:error_burst"},
        id="error-burst",
    ),
    pytest.param(
        {"behavior": window(requests=21, distinct_routes=21)},
        None,
        {"behavior:route_scan"},
        id="route-scan",
    ),
    pytest.param(
        {"behavior": window(requests=6)},
        {"behavior": {"thresholds": {"max_requests": 5}}},
        {"behavior:request_flood"},
        id="threshold-from-data",
    ),
    pytest.param(
        {"behavior": window(requests=700, denies=400, deny_rate=0.5714)},
        None,
        {"behavior:deny_burst", "behavior:request_flood"},
        id="two-reasons",
    ),
]


def evaluate_regopy(input_doc: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    rego = regopy.Interpreter()
    rego.add_module("behavior", POLICY.read_text())
    if data is not None:
        rego.add_data(data)
    rego.set_input(input_doc)
    output = json.loads(str(rego.query(QUERY)))
    (value,) = output["expressions"]
    return dict(value)


def evaluate_opa(
    opa: Path, input_doc: dict[str, Any], data: dict[str, Any] | None, tmp_path: Path
) -> dict[str, Any]:
    args = [str(opa), "eval", "--format", "json", "-d", str(POLICY)]
    if data is not None:
        data_file = tmp_path / "data.json"
        data_file.write_text(json.dumps(data))
        args += ["-d", str(data_file)]
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps(input_doc))
    args += ["-i", str(input_file), QUERY]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    ((expression,),) = [r["expressions"] for r in json.loads(done.stdout)["result"]]
    return dict(expression["value"])


@pytest.mark.parametrize(("input_doc", "data", "expected"), CASES)
def test_embedded_and_opa_agree(
    input_doc: dict[str, Any], data: dict[str, Any] | None, expected: set[str], tmp_path: Path
) -> None:
    opa = require_real("opa")
    embedded = evaluate_regopy(input_doc, data)
    server = evaluate_opa(opa, input_doc, data, tmp_path)
    for result in (embedded, server):
        assert set(result.get("deny", [])) == expected
        assert result["anomalous"] is bool(expected)
        assert result.get("reason") == (min(expected) if expected else None)
    assert embedded == server


async def test_store_snapshot_is_the_input_the_rules_read() -> None:
    store = MemoryBehaviorStore(window_s=60, max_agents=10)
    for _ in range(10):
        await store.record("agent", route="r", status=403, denied=True)
    for _ in range(5):
        await store.record("agent", route="r", status=200, denied=False)
    result = evaluate_regopy({"behavior": await store.snapshot("agent")}, None)
    assert result["deny"] == ["behavior:deny_burst"]
