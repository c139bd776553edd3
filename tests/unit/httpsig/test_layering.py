"""gateway.httpsig imports nothing of the gateway: the agent SDK will import it on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway.httpsig

PACKAGE = Path(gateway.httpsig.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
STDLIB = frozenset(
    {"__future__", "base64", "binascii", "collections", "dataclasses", "hashlib", "hmac", "re"}
    | {"typing"}
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_imports_only_itself_and_the_standard_library(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            assert node.level == 0, f"{path.name}: relative import"
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "gateway":
                assert name.startswith("gateway.httpsig"), f"{path.name} imports {name}"
            else:
                assert top in STDLIB, f"{path.name} imports {name}"
