"""``agentgate policy explain``: which rules fired for one policy input.

The embedded equivalent of ``opa eval --explain``: the policies and data are loaded into a
fresh rego-cpp interpreter (not the gateway's bundle, which only knows the decision
entrypoint), and the whole package tree of the decision (``data.agentgate``) is evaluated
for ``input``. Every rule with a value is reported, split into those that *fired* (true, a
non-empty set/array/object, or any other value) and those that evaluated to ``false`` or an
empty collection. Undefined rules have no value and are not listed, as in OPA.

:func:`explain` raises :class:`gateway.authz.engine.PolicyLoadError` for policies that do
not compile and :class:`gateway.authz.engine.PDPError` when evaluation fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.authz.pdp import PDPError, decision_ref

_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Any  # None when undefined
    fired: list[tuple[str, Any]]  # (dotted rule path, value)
    empty: list[tuple[str, Any]]  # rules that are false or an empty collection

    def render(self, width: int = 110) -> str:
        undefined = self.decision is None
        lines = [
            "decision:",
            "  undefined (deny)" if undefined else f"  {_short(self.decision, width)}",
        ]
        lines.append(f"rules that fired ({len(self.fired)}):")
        lines += [f"  {path} = {_short(value, width - len(path))}" for path, value in self.fired]
        lines.append(f"rules that are false or empty ({len(self.empty)}):")
        lines += [f"  {path} = {_short(value, width - len(path))}" for path, value in self.empty]
        return "\n".join(lines) + "\n"


def explain(
    policies: Path, data: Path | None, input: Any, decision: str = "agentgate/authz/decision"
) -> Explanation:
    import regopy

    from gateway.authz.embedded import EmbeddedPDP

    # Compile once the way the gateway does: the same files, the same error messages.
    EmbeddedPDP(policies, data, decision, project_input=False).compile()
    segments = decision_ref(decision)
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    packages: set[str] = set()
    for file in sorted(p for p in policies.rglob("*.rego") if not p.name.endswith("_test.rego")):
        source = file.read_text("utf-8")
        interpreter.add_module(file.relative_to(policies).as_posix(), source)
        packages.update(_PACKAGE.findall(source))
    if data is not None:
        interpreter.add_data_json(data.read_text("utf-8"))
    interpreter.set_input_term(json.dumps(input))
    root = segments[0]
    output = interpreter.query(f"x = data.{root}")
    if not output.ok():
        raise PDPError("evaluation failed")
    tree = json.loads(output.binding("x").json())
    fired: list[tuple[str, Any]] = []
    empty: list[tuple[str, Any]] = []
    # Every prefix of a package path is a namespace, not a rule.
    namespaces = {".".join(p.split(".")[:i]) for p in packages for i in range(1, p.count(".") + 2)}
    for path, value in _rules(tree, root, namespaces):
        (empty if value is False or value in ([], {}) else fired).append((path, value))
    found: Any = tree
    for segment in segments[1:]:
        found = found.get(segment) if isinstance(found, dict) else None
    return Explanation(found, fired, empty)


def _rules(tree: Any, prefix: str, namespaces: set[str]) -> Iterator[tuple[str, Any]]:
    """(path, value) of each rule below the package namespace ``prefix``."""
    for name in sorted(tree) if isinstance(tree, dict) else ():
        path = f"{prefix}.{name}"
        if path in namespaces:
            yield from _rules(tree[name], path, namespaces)
        else:
            yield path, tree[name]


def _short(value: Any, width: int) -> str:
    text = json.dumps(value, sort_keys=True)
    width = max(width, 40)
    return text if len(text) <= width else text[: width - 3] + "..."
