"""Policy runtime errors say what broke (issue 15.4).

An evaluation error is 503 (fail closed) as before, but the log line and the decision log
now carry rego-cpp's error code and message, as OPA reports them, instead of ``<error>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.authz.decision_log import DecisionLog
from gateway.authz.embedded import EmbeddedPDP
from gateway.authz.engine import PolicyDecisionPoint
from gateway.authz.pdp import PDPError
from gateway.errors import ServiceUnavailable

CONFLICT = """package agentgate.authz

level := 1 if input.a

level := 2 if input.b

decision := {"allow": level == 1}
"""


@pytest.fixture
def engine(tmp_path: Path) -> EmbeddedPDP:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "authz.rego").write_text(CONFLICT)
    pdp = EmbeddedPDP(tmp_path / "p", None, "agentgate/authz/decision")
    pdp.load()
    return pdp


def test_a_rule_conflict_names_opa_error_code_and_message(engine: EmbeddedPDP) -> None:
    assert engine.evaluate_sync({"a": True}) == {"allow": True}
    with pytest.raises(PDPError) as info:
        engine.evaluate_sync({"a": True, "b": True})
    assert str(info.value) == (
        "embedded evaluation failed: eval_conflict_error: "
        "complete rules must not produce multiple outputs"
    )


async def test_the_decision_log_and_the_503_carry_the_message(
    engine: EmbeddedPDP, tmp_path: Path
) -> None:
    log_path = tmp_path / "decisions.jsonl"
    pdp = PolicyDecisionPoint(engine, timeout_s=2, decision_log=DecisionLog(log_path))
    await pdp.start()
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await pdp.decide({"a": True, "b": True}, None)
    finally:
        await pdp.close()
    assert "eval_conflict_error" in str(info.value)
    [line] = log_path.read_text().splitlines()
    record = json.loads(line)
    assert record["result"] == "error"
    assert "eval_conflict_error: complete rules must not produce multiple outputs" in json.dumps(
        record
    )
