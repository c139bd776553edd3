"""gateway.authz.engine.PolicyDecisionPoint: fail closed, cache, decision log, factory.

The wrapper is exercised with the real embedded engine, and with a small scriptable engine
only for what a real PDP cannot be made to do on cue (stall, fail, answer garbage).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.authz.cache import DecisionCache
from gateway.authz.decision_log import DecisionLog
from gateway.authz.embedded import EmbeddedPDP
from gateway.authz.engine import PolicyDecisionPoint, build_pdp
from gateway.authz.opa import OPAClient
from gateway.authz.pdp import UNDEFINED, PDPError, decision_ref
from gateway.errors import ServiceUnavailable
from gateway.settings import PDPSettings

from .samples import SAMPLES

REPO = Path(__file__).resolve().parents[3]


class ScriptedPDP:
    """Answers from a script: a value, an exception to raise, or a delay."""

    name = "scripted"

    def __init__(self, answer: object = None, *, delay: float = 0.0, error: str | None = None):
        self.answer = {"allow": True, "reason": "scripted"} if answer is None else answer
        self.delay = delay
        self.error = error
        self.generation = 0
        self.calls = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def ready(self) -> bool:
        return True

    async def evaluate(self, input: dict[str, Any]) -> tuple[object, str]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise PDPError(self.error)
        return self.answer, f"id-{self.calls}"


def sample_input() -> dict[str, Any]:
    return SAMPLES["mtls_agent"].input()


def wrap(engine: Any, *, ttl: float = 60, log: DecisionLog | None = None) -> PolicyDecisionPoint:
    return PolicyDecisionPoint(
        engine, timeout_s=0.2, cache=DecisionCache(ttl, 100), decision_log=log
    )


async def test_allow_is_parsed_and_cached() -> None:
    engine = ScriptedPDP({"allow": True, "reason": "r", "scopes": ["a", "b"]})
    pdp = wrap(engine)
    first = await pdp.decide(sample_input(), ["b"])
    assert first.allow
    assert first.scopes == ("b",)
    assert first.decision_id == "id-1"
    second_input = sample_input()
    second_input["request"]["id"] = "another"
    assert await pdp.decide(second_input, ["b"]) is first
    assert engine.calls == 1


async def test_undefined_denies_with_policy_undefined() -> None:
    decision = await wrap(ScriptedPDP(UNDEFINED)).decide(sample_input(), None)
    assert not decision.allow
    assert decision.reason == "policy_undefined"
    assert decision.decision_id == "id-1"


async def test_garbage_result_denies_as_malformed() -> None:
    decision = await wrap(ScriptedPDP({"allow": "yes"})).decide(sample_input(), None)
    assert (decision.allow, decision.reason) == (False, "policy_malformed")


async def test_timeout_is_503_pdp_unavailable() -> None:
    engine = ScriptedPDP(delay=5)
    with pytest.raises(ServiceUnavailable) as info:
        await asyncio.wait_for(wrap(engine).decide(sample_input(), None), 2)
    assert info.value.status == 503
    assert info.value.reason == "pdp_unavailable"


async def test_engine_error_is_503_and_not_cached() -> None:
    engine = ScriptedPDP(error="OPA answered HTTP 500")
    pdp = wrap(engine)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable) as info:
            await pdp.decide(sample_input(), None)
        assert info.value.reason == "pdp_unavailable"
        assert "500" in info.value.detail
        assert "500" not in info.value.public
    assert engine.calls == 2


async def test_no_cache_obligation_bypasses_the_cache() -> None:
    engine = ScriptedPDP({"allow": True, "obligations": {"no_cache": True}})
    pdp = wrap(engine)
    await pdp.decide(sample_input(), None)
    await pdp.decide(sample_input(), None)
    assert engine.calls == 2


async def test_engine_generation_change_drops_the_cache() -> None:
    engine = ScriptedPDP()
    pdp = wrap(engine)
    await pdp.decide(sample_input(), None)
    engine.generation += 1  # e.g. EmbeddedPDP.reload() called directly
    await pdp.decide(sample_input(), None)
    assert engine.calls == 2


async def test_reload_with_real_embedded_engine(tmp_path: Path) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    data_path = tmp_path / "policies" / "data.json"
    engine = EmbeddedPDP(tmp_path / "policies", data_path, "agentgate/authz/decision")
    pdp = wrap(engine)
    await pdp.start()
    assert pdp.ready()
    before = await pdp.decide(sample_input(), None)
    assert before.allow
    assert before.reason == "rbac:travel-agent"
    assert await pdp.decide(sample_input(), None) is before  # cached
    data = json.loads(data_path.read_text())
    del data["rbac"]["subjects"]["spiffe://example.org/agent/travel"]
    data_path.write_text(json.dumps(data))
    await pdp.reload()
    after = await pdp.decide(sample_input(), None)
    assert (after.allow, after.reason) == (False, "rbac:no_permission")
    await pdp.close()


async def test_decision_log_lines(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    pdp = wrap(ScriptedPDP({"allow": False, "reason": "nope"}), log=DecisionLog(path))
    await pdp.start()
    await pdp.decide(sample_input(), None)
    await pdp.decide(sample_input(), None)
    pdp.engine.error = "boom"  # type: ignore[attr-defined]
    pdp.cache = None
    with pytest.raises(ServiceUnavailable):
        await pdp.decide(sample_input(), None)
    await pdp.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["result"], x["cached"]) for x in lines] == [
        ("deny", False),
        ("deny", True),
        ("error", False),
    ]
    first = lines[0]
    assert first["decision_id"] == "id-1"
    assert first["request_id"] == "req-mtls-agent"
    assert first["route"] == "flights"
    assert first["subject"] == "spiffe://example.org/agent/travel"
    assert first["reason"] == "nope"
    assert first["engine"] == "scripted"
    assert first["input"] == sample_input()
    assert first["latency_ms"] >= 0
    assert lines[2]["decision_id"] is None
    assert lines[2]["reason"].startswith("pdp_unavailable")


async def test_decision_log_off_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    pdp = wrap(ScriptedPDP(), log=DecisionLog("off"))
    await pdp.start()
    await pdp.decide(sample_input(), None)
    await pdp.close()
    assert capsys.readouterr().out == ""


def test_build_pdp_from_settings() -> None:
    embedded = PDPSettings.model_validate(
        {"engine": "embedded", "policies": "policies", "data": "policies/data.json",
         "cache": {"ttl_s": 2, "max_entries": 5}},
        context={"base_dir": REPO},
    )  # fmt: skip
    pdp = build_pdp(embedded, timeout_s=0.25)
    assert isinstance(pdp.engine, EmbeddedPDP)
    assert pdp.engine.entrypoint == "agentgate/authz/decision"
    assert pdp.timeout_s == 0.25
    assert pdp.cache is not None
    assert (pdp.cache.ttl_s, pdp.cache.max_entries) == (2, 5)

    opa = PDPSettings.model_validate(
        {"engine": "opa", "url": "http://127.0.0.1:8181/", "cache": {"ttl_s": 0}},
        context={"base_dir": REPO},
    )
    pdp = build_pdp(opa, timeout_s=0.5, decision_log="stdout")
    assert isinstance(pdp.engine, OPAClient)
    assert pdp.engine.data_url == "http://127.0.0.1:8181/v1/data/agentgate/authz/decision"
    assert pdp.cache is None  # ttl 0: caching off
    assert pdp.decision_log.enabled


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agentgate/authz/decision", ("agentgate", "authz", "decision")),
        ("/agentgate/authz/decision/", ("agentgate", "authz", "decision")),
        ("agentgate.authz.decision", ("agentgate", "authz", "decision")),
    ],
)
def test_decision_ref(text: str, expected: tuple[str, ...]) -> None:
    assert decision_ref(text) == expected


@pytest.mark.parametrize("text", ["", "/", "a/../b", "a/b c", "a/%2e"])
def test_decision_ref_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid decision path"):
        decision_ref(text)
