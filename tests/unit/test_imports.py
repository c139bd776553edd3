"""Every module under ``gateway/`` imports on its own, with no other ``gateway`` module loaded.

This is aiohttp's import-cycle test: importing a module alone (not after its siblings, as the
test-suite does) is what exposes a cycle or a missing import. Modules are found on disk at
collection time, so new ones are covered without editing this file.

A fresh interpreter per module would cost a second or more each (aiohttp, pydantic,
cryptography, OpenTelemetry...), over a minute for the package. So one helper interpreter
first learns which *third-party* modules the package uses, imports those, and then forks a
child per ``gateway`` module: each child starts with no ``gateway`` module loaded, which is all
an import-cycle test needs, and imports its module with warnings as errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache

import pytest

from tests.support import ROOT, subprocess_env


def _modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue  # importing it runs the CLI
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = _modules()

_HELPER = r"""
import importlib, json, os, sys, traceback, warnings

modules = sys.argv[1:]

def start(names, report_modules):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code, out = 0, ""
        try:
            warnings.simplefilter("error")
            for name in names:
                try:
                    importlib.import_module(name)
                except BaseException:
                    if not report_modules:
                        raise
            if report_modules:
                out = json.dumps(sorted(
                    m for m in sys.modules
                    if m.split(".")[0] != "gateway" and m not in before
                ))
        except BaseException:
            code, out = 1, traceback.format_exc()
        os.write(write_fd, out.encode())
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd

def finish(pid, read_fd):
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()

def fork_and_import(names, report_modules):
    return finish(*start(names, report_modules))

before = set(sys.modules)
# 1. Which third-party modules does the package pull in? (in a child: nothing of ours stays)
_, third_party = fork_and_import(modules, report_modules=True)
# 2. Load them here, once.
for name in json.loads(third_party or "[]"):
    try:
        importlib.import_module(name)
    except BaseException:
        pass
assert not [m for m in sys.modules if m.split(".")[0] == "gateway"], "gateway leaked into parent"
# 3. One child per module, each starting without any gateway module.
# Children are independent, so run as many at once as there are CPUs.
workers = max(2, len(os.sched_getaffinity(0)))
results = {}
for i in range(0, len(modules), workers):
    batch = [(name, start([name], report_modules=False)) for name in modules[i : i + workers]]
    for name, child in batch:
        results[name] = finish(*child)
sys.stdout.write(json.dumps(results))
"""


@cache
def _results() -> dict[str, tuple[int, str]]:
    result = subprocess.run(
        [sys.executable, "-c", _HELPER, *MODULES],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {name: (code, out) for name, (code, out) in json.loads(result.stdout).items()}


def test_modules_were_found() -> None:
    assert {"gateway", "gateway.app", "gateway.cli", "gateway.settings"} <= set(MODULES)


def test_import_check_detects_a_broken_module() -> None:
    # The harness itself: a module that cannot import must be reported, not skipped.
    assert "gateway.no_such_module" not in MODULES
    result = subprocess.run(
        [sys.executable, "-c", _HELPER, "gateway.no_such_module", "gateway.errors"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    got = json.loads(result.stdout)
    assert got["gateway.errors"][0] == 0
    assert got["gateway.no_such_module"][0] == 1
    assert "ModuleNotFoundError" in got["gateway.no_such_module"][1]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    code, stderr = _results()[module]
    assert code == 0, f"`import {module}` failed with no other gateway module loaded:\n{stderr}"
