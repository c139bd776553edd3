"""``agentgate policy explain``: which rules fired for one input (issue 15.7)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gateway.authz.explain import explain
from gateway.authz.pdp import PolicyLoadError
from gateway.cli import main
from tests.support import ROOT, require_real

POLICIES = ROOT / "policies"
DATA = POLICIES / "data.json"
GOLDEN = ROOT / "tests" / "golden"


def _golden(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((GOLDEN / name).read_text())
    return loaded


def test_an_allow_lists_the_granting_rules() -> None:
    result = explain(POLICIES, DATA, _golden("input_api_key_partner.json"))
    assert isinstance(result.decision, dict)
    assert result.decision["reason"] == "rbac:partner"
    fired = dict(result.fired)
    assert fired["agentgate.rbac.allow"] is True
    assert fired["agentgate.rbac.roles"] == ["partner"]
    assert ("agentgate.authz.deny_reasons", []) in result.empty
    # The examples are a different namespace: explaining agentgate never lists them.
    assert not any(path.startswith("examples.") for path, _ in result.fired + result.empty)


def test_a_deny_shows_the_reason_rule() -> None:
    document = _golden("input_api_key_partner.json")
    document["route"] = {**document["route"], "segment": "finance"}  # type: ignore[dict-item]
    result = explain(POLICIES, DATA, document)
    assert isinstance(result.decision, dict)
    assert result.decision["allow"] is False
    fired = dict(result.fired)
    assert fired["agentgate.segments.deny"] == ["segments:lateral_movement"]
    assert "segments:lateral_movement" in fired["agentgate.authz.deny_reasons"]


def test_broken_policy_is_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "p")
    (tmp_path / "p" / "agentgate" / "extra.rego").write_text("package agentgate.extra\n\nx := {\n")
    with pytest.raises(PolicyLoadError) as info:
        explain(tmp_path / "p", tmp_path / "p" / "data.json", {})
    assert any("agentgate/extra.rego:" in line for line in info.value.lines())


def test_cli_prints_the_decision_and_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "explain", "-i", str(GOLDEN / "input_mtls_agent.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("decision:\n")
    assert '  agentgate.rbac.reason = "rbac:travel-agent"' in out
    assert "rules that are false or empty" in out


def test_cli_refuses_input_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "input.json"
    bad.write_text("{not json")
    assert main(["policy", "explain", "-i", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_cli_with_opa_runs_opa_eval_explain(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opa = Path(require_real("opa"))
    monkeypatch.setenv("PATH", f"{opa.parent}:{os.environ.get('PATH', '')}")
    code = main(["policy", "explain", "--opa", "-i", str(GOLDEN / "input_api_key_partner.json")])
    out, _ = capfd.readouterr()
    assert code == 0
    assert "Enter data.agentgate.authz.decision" in out  # OPA's full trace
    assert '"reason": "rbac:partner"' in out
