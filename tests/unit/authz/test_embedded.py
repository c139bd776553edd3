"""gateway.authz.embedded: the real regopy engine over the real policies/."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import regopy

from gateway.authz.embedded import EmbeddedPDP, PolicyLoadError, input_paths, project
from gateway.authz.pdp import UNDEFINED, PDPError

REPO = Path(__file__).resolve().parents[3]
POLICIES = REPO / "policies"
DATA = POLICIES / "data.json"
GOLDEN = REPO / "tests" / "golden"
DECISION = "agentgate/authz/decision"

EXPECTED = {
    "mtls_agent": {"allow": True, "reason": "rbac:travel-agent", "scopes": ["flights.read"]},
    "user_obo_chain": {"allow": True, "reason": "rbac:traveller", "scopes": ["flights.read"]},
    "api_key_partner": {"allow": True, "reason": "rbac:partner", "scopes": ["flights.read"]},
}


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"input_{name}.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pdp() -> EmbeddedPDP:
    engine = EmbeddedPDP(POLICIES, DATA, DECISION)
    engine.load()
    return engine


def write_policy(folder: Path, source: str, data: object = None) -> EmbeddedPDP:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.rego").write_text(source)
    data_path = None
    if data is not None:
        data_path = folder / "data.json"
        data_path.write_text(json.dumps(data))
    return EmbeddedPDP(folder, data_path, "p/decision")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_inputs(pdp: EmbeddedPDP, name: str) -> None:
    result = pdp.evaluate_sync(golden(name))
    assert isinstance(result, dict)
    assert {k: result[k] for k in ("allow", "reason", "scopes")} == EXPECTED[name]


def test_loads_every_policy_module_but_no_tests(pdp: EmbeddedPDP) -> None:
    on_disk = {
        p.relative_to(POLICIES).as_posix()
        for p in POLICIES.rglob("*.rego")
        if not p.name.endswith("_test.rego")
    }
    assert set(pdp.modules) == on_disk
    assert "agentgate/authz/authz.rego" in on_disk


async def test_evaluate_returns_fresh_uuid4_decision_ids(pdp: EmbeddedPDP) -> None:
    (_, first), (_, second) = [await pdp.evaluate(golden("mtls_agent")) for _ in range(2)]
    assert first != second
    assert uuid.UUID(first).version == 4


def test_undefined_document() -> None:
    engine = EmbeddedPDP(POLICIES, DATA, "agentgate/authz/no_such_rule")
    engine.load()
    assert engine.evaluate_sync(golden("mtls_agent")) is UNDEFINED


def test_rule_undefined_for_this_input(tmp_path: Path) -> None:
    engine = write_policy(tmp_path, 'package p\n\ndecision := {"allow": true} if input.ok\n')
    engine.load()
    assert engine.evaluate_sync({"ok": False}) is UNDEFINED
    assert engine.evaluate_sync({"ok": True}) == {"allow": True}


def test_syntax_error_is_a_load_error(tmp_path: Path) -> None:
    engine = write_policy(tmp_path, "package p\n\ndecision := {\n")
    with pytest.raises(PolicyLoadError, match=r"p\.rego"):
        engine.load()


def test_compile_error_is_refused_not_queried(tmp_path: Path) -> None:
    # Valid for OPA, rejected by rego-cpp ("Invalid bracket argument"); querying the failed
    # bundle would crash the process, so compile() must refuse it.
    engine = write_policy(tmp_path, 'package p\n\ndecision if glob.match(input.p[_], ["/"], "x")\n')
    with pytest.raises(PolicyLoadError, match="compilation failed"):
        engine.load()


@pytest.mark.parametrize("data", [[1, 2], "text"], ids=["list", "string"])
def test_data_must_be_an_object(tmp_path: Path, data: object) -> None:
    engine = write_policy(tmp_path, "package p\n\ndecision := true\n", data=data)
    with pytest.raises(PolicyLoadError, match="JSON object"):
        engine.load()


def test_no_policies_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match=r"no \.rego files"):
        EmbeddedPDP(tmp_path, None, DECISION).load()


def test_evaluation_error_raises_pdp_error(tmp_path: Path) -> None:
    # Two values for one complete rule: OPA answers 500, regopy an error output.
    engine = write_policy(
        tmp_path, "package p\n\ndecision := 1 if input.a\n\ndecision := 2 if input.b\n"
    )
    engine.load()
    with pytest.raises(PDPError):
        engine.evaluate_sync({"a": True, "b": True})


async def test_not_started_raises_pdp_error() -> None:
    with pytest.raises(PDPError):
        await EmbeddedPDP(POLICIES, DATA, DECISION).evaluate({})


async def test_reload_swaps_policy_and_bumps_generation(tmp_path: Path) -> None:
    engine = write_policy(tmp_path, 'package p\n\ndecision := {"allow": false}\n')
    await engine.start()
    assert engine.ready()
    assert engine.evaluate_sync({}) == {"allow": False}
    (tmp_path / "p.rego").write_text('package p\n\ndecision := {"allow": true}\n')
    await engine.reload()
    assert engine.generation == 1
    assert engine.evaluate_sync({}) == {"allow": True}
    await engine.close()


async def test_failed_reload_keeps_the_old_policy(tmp_path: Path) -> None:
    engine = write_policy(tmp_path, 'package p\n\ndecision := {"allow": false}\n')
    await engine.start()
    (tmp_path / "p.rego").write_text("package p\n\ndecision := {\n")
    with pytest.raises(PolicyLoadError):
        await engine.reload()
    assert engine.generation == 0
    assert engine.evaluate_sync({}) == {"allow": False}
    await engine.close()


async def test_offload_runs_on_the_dedicated_thread(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "policies")
    engine = EmbeddedPDP(
        tmp_path / "policies", tmp_path / "policies" / "data.json", DECISION, offload=True
    )
    await engine.start()
    seen: list[str] = []
    original = engine.query

    def spy(compiled: Any, input: dict[str, Any]) -> object:
        seen.append(threading.current_thread().name)
        return original(compiled, input)

    engine.query = spy  # type: ignore[method-assign]
    results = await asyncio.gather(*(engine.evaluate(golden("mtls_agent")) for _ in range(8)))
    assert all(r[0] == results[0][0] for r in results)
    assert seen
    assert all(name.startswith("regopy") for name in seen)
    await engine.close()


def _called_names(source: str) -> set[str]:
    source = re.sub(r"#.*", "", source)
    source = re.sub(r'"(?:[^"\\]|\\.)*"', '""', source)
    return set(re.findall(r"(?<![\w.])([a-z_][\w]*(?:\.[a-z_][\w]*)*)\(", source))


def test_every_builtin_the_policies_call_exists_in_regopy() -> None:
    sources = [p.read_text() for p in POLICIES.rglob("*.rego") if not p.name.endswith("_test.rego")]
    defined = {m for s in sources for m in re.findall(r"^([a-z_][\w]*)\(", s, re.MULTILINE)}
    # A function of another package, called through its import (behavior.kept_scopes(...)).
    aliases = {m for s in sources for m in re.findall(r"^import data\.[\w.]*?(\w+)$", s, re.M)}
    called = {
        name
        for s in sources
        for name in _called_names(s)
        if not (name.partition(".")[0] in aliases and name.partition(".")[2] in defined)
    } - defined
    assert {"glob.match", "time.clock", "object.get", "sprintf"} <= called
    interpreter = regopy.Interpreter()
    missing = sorted(name for name in called if not interpreter.is_builtin(name))
    assert missing == []


# rego-cpp 1.5.2 builtins that crash or misbehave once a C++ extension such as frozenlist (which
# aiohttp imports) is loaded before regopy, as it always is in the gateway; see
# policies/README.md. The policies must not use them.
CRASHING = {
    "time.weekday(": "aborts the process (double free)",
    "time.clock([": "with a timezone argument: aborts the process (free(): invalid pointer)",
    "time.date([": "with a timezone argument: same code path as time.clock",
    "time.parse_rfc3339_ns(": "returns undefined for valid timestamps",
}


@pytest.mark.parametrize("call", sorted(CRASHING))
def test_policies_avoid_builtins_broken_in_regopy(call: str) -> None:
    for path in POLICIES.rglob("*.rego"):
        assert call not in re.sub(r"#.*", "", path.read_text()), f"{path}: {CRASHING[call]}"


def test_policies_run_in_a_process_that_loaded_aiohttp_first(tmp_path: Path) -> None:
    # In a subprocess, so that a regression aborts that process rather than the test run.
    script = f"""
import aiohttp  # noqa: F401  (loads frozenlist's C++ runtime first, as the gateway does)
import json, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from gateway.authz.embedded import EmbeddedPDP
pdp = EmbeddedPDP(Path({str(POLICIES)!r}), Path({str(DATA)!r}), {DECISION!r})
pdp.load()
for name in {sorted(EXPECTED)!r}:
    doc = json.loads(Path({str(GOLDEN)!r}, "input_" + name + ".json").read_text())
    print(pdp.evaluate_sync(doc)["reason"])
    doc["route"] = {{"name": "internal", "segment": "internal", "upstream": "x", "tags": []}}
    print(pdp.evaluate_sync(doc)["reason"])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[::2] == [EXPECTED[n]["reason"] for n in sorted(EXPECTED)]


# --------------------------------------------------------------------------- input conversion


@pytest.fixture(scope="module")
def echo() -> EmbeddedPDP:
    """A policy that hands the input back, to see exactly what rego-cpp received."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="echo-policy-"))
    (folder / "echo.rego").write_text(
        'package echo\n\ndecision := {"input": input, "len": count(input.s)}\n'
    )
    engine = EmbeddedPDP(folder, None, "echo/decision", project_input=False)
    engine.load()
    return engine


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"s": "plain"}, id="ascii"),
        pytest.param({"s": "zürich-東京-🚀"}, id="unicode"),
        pytest.param({"s": "", "n": None, "t": True, "f": False}, id="empty-null-bools"),
        pytest.param({"s": "x", "i": -(2**63), "j": 2**63 - 1, "x": 0.5}, id="numbers"),
        pytest.param({"s": "x", "l": [1, [2, {"k": []}], {}]}, id="nesting"),
    ],
)
def test_input_reaches_rego_unchanged(echo: EmbeddedPDP, value: dict[str, Any]) -> None:
    result = echo.evaluate_sync(value)
    assert isinstance(result, dict)
    assert result["input"] == value
    assert result["len"] == len(value["s"])


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"s": "alice\x00admin"}, id="nul-in-value"),
        pytest.param({"s": "x", "k\x00": 1}, id="nul-in-key"),
        pytest.param({"s": "x", "big": 2**64}, id="int-overflow"),
        pytest.param({"s": "x", 1: "int-key"}, id="non-string-key"),
        pytest.param({"s": "x", "o": object()}, id="object"),
    ],
)
def test_inputs_rego_cannot_hold_fail_closed(echo: EmbeddedPDP, value: dict[Any, Any]) -> None:
    # SECURITY: regopy.Input would cut "alice\x00admin" to "alice" and decide for alice.
    with pytest.raises(PDPError):
        echo.evaluate_sync(value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("x if input.a.b == 1", {"a": {"b"}}, id="two-levels"),
        pytest.param("x if input.a.b.c", {"a": {"b"}}, id="deeper-keeps-second-level"),
        pytest.param("x if input.a == null", {"a": None}, id="stops-at-first-level"),
        pytest.param("x if count(input.a) > input.b.c", {"a": None, "b": {"c"}}, id="mixed"),
        pytest.param("x if input.a[k]", {"a": None}, id="dynamic-index"),
        pytest.param(
            'x if input.a.b # input[y]\ny := "input.z"', {"a": {"b"}}, id="comments-strings"
        ),
        pytest.param("x if data.input.q; y := my_input.r", {}, id="not-input"),
    ],
)
def test_input_paths(source: str, expected: dict[str, set[str] | None]) -> None:
    assert input_paths([source]) == expected


@pytest.mark.parametrize(
    "source",
    ["x if input[k]", "x if walk(input, p)", "x := input", "x if { y := input; y.a }"],
)
def test_input_paths_gives_up_on_whole_input_use(source: str) -> None:
    assert input_paths([source]) is None


def test_project_keeps_only_readable_parts() -> None:
    doc = {"a": {"b": 1, "c": 2}, "d": {"e": 3}, "f": 4, "g": 5}
    assert project(doc, {"a": frozenset({"b", "z"}), "d": None, "f": frozenset({"x"})}) == {
        "a": {"b": 1},
        "d": {"e": 3},
        "f": 4,
    }
    assert project(doc, None) is doc


def test_projection_does_not_change_decisions(pdp: EmbeddedPDP) -> None:
    full = EmbeddedPDP(POLICIES, DATA, DECISION, project_input=False)
    full.load()
    for name in sorted(EXPECTED):
        doc = golden(name)
        for variant in (doc, {**doc, "subject": None}, {**doc, "mode": "obo_user"}):
            assert pdp.evaluate_sync(variant) == full.evaluate_sync(variant)
