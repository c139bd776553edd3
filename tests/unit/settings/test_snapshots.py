"""YAML to settings, snapshotted: the shipped configurations parse to exactly the recorded models.

Each shipped file (``config/*.yaml``) is copied into a scratch folder where every file, folder,
environment variable and secret file it names is created as a placeholder, then loaded with
:func:`gateway.settings.load_settings`; the JSON dump of the result (absolute paths shown
relative to the scratch folder, ``None`` values left out) must equal
``tests/golden/settings/<name>.json``. The goldens were recorded from the single-module
``settings.py`` before it became a package (issue 14), so a default, a coercion or a key that
changes in a refactor shows up here. Re-record on purpose with ``AGENTGATE_RECORD_GOLDEN=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "settings"
CONFIGS = sorted(p.name for p in (ROOT / "config").glob("*.yaml"))

_MISSING = (
    (re.compile(r"file not found: (.+)$"), "file"),
    (re.compile(r"cannot read secret file (.+?): "), "file"),
    (re.compile(r"directory not found: (.+)$"), "dir"),
    (re.compile(r"environment variable (\w+) is not set"), "env"),
)


def _provide(problem: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    for pattern, kind in _MISSING:
        match = pattern.search(problem)
        if match is None:
            continue
        target = match.group(1)
        if kind == "env":
            monkeypatch.setenv(target, f"placeholder-{target.lower()}")
        elif kind == "dir":
            Path(target).mkdir(parents=True, exist_ok=True)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text("placeholder\n")
        return True
    return False


def _load(name: str, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    folder = scratch / "config"
    folder.mkdir()
    shutil.copy(ROOT / "config" / name, folder / name)
    for _ in range(64):  # each round provides at least one missing placeholder
        try:
            settings = load_settings(folder / name)
        except ConfigError as exc:
            if not all(_provide(line, monkeypatch) for line in exc.lines()):
                raise
            continue
        dumped = settings.model_dump(mode="json", exclude_none=True)
        text = json.dumps(dumped, indent=2, sort_keys=True)
        return dict(json.loads(text.replace(str(scratch), "<scratch>")))
    raise AssertionError(f"{name}: still missing placeholders after 64 rounds")


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_parses_to_the_recorded_settings(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    got = _load(name, tmp_path, monkeypatch)
    golden = GOLDEN / f"{Path(name).stem}.json"
    if os.environ.get("AGENTGATE_RECORD_GOLDEN") == "1":
        golden.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text())


def test_every_shipped_config_has_a_golden() -> None:
    assert CONFIGS, "no config/*.yaml found"
    recorded = sorted(p.stem for p in GOLDEN.glob("*.json"))
    assert recorded == sorted(Path(n).stem for n in CONFIGS)
