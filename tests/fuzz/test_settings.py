"""Fuzz configuration loading (gateway.settings): YAML bytes and structures.

Documented error: ``load_settings`` and ``parse_settings`` raise only
:class:`gateway.errors.ConfigError`, whose problems are ``(dotted.path, message)`` pairs
printed as ``path.to.key: message``. Properties: nothing else escapes (no
``UnicodeDecodeError``, ``ValueError`` or ``RecursionError`` from YAML, no ``TypeError``
from a validator); every problem has a non-empty message, no internal ``<at:...>`` marker,
and a path that starts at a top-level key of the input or a field of ``Settings``; a
configuration with one mutation still either loads or names the problem.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, example, given
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings, parse_settings
from tests.fuzz.strategies import fuzz, json_values, mutated_text

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
BASES = [
    yaml.safe_load((CONFIG / name).read_text(encoding="utf-8"))
    for name in ("gateway.yaml", "gateway.example.yaml")
]

# YAML that has broken loaders: invalid dates (ValueError in PyYAML's constructor), deep
# nesting (RecursionError), bytes that are not UTF-8, NUL, tags, merge keys, aliases.
HOSTILE_YAML = (
    b"server: {listen: 2001-02-30}\n",
    b"a: 2001-02-30\n",
    b"routes: [{name: 2020-13-01}]\n",
    b"[" * 2000 + b"]" * 2000,
    b"a: " + b"{a: " * 2000 + b"1" + b"}" * 2000,
    b"\xff\xfe\x00s\x00e\x00r\x00v\x00e\x00r\x00:",
    b"server:\n  listen: \xc3\x28\n",
    b"a: \x00",
    b"!!python/object/apply:os.system [true]",
    b"<<: {server: {listen: 1}}\n",
    b"server: &s {listen: '127.0.0.1:0'}\nadmin: *s\n",
    b"a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    b"c: [*b, *b, *b, *b]\n",
    b"server: {listen: 0x7fffffff}\n",
    b"server:\n\tlisten: x\n",
    b"? [a, b]\n: 1\n",
    b"%YAML 9.9\n---\na: 1\n",
    b"--- 1\n--- 2\n",
    b"",
    b"~",
    b"- a\n",
    b"'\\ud800'",
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """A config folder where the shipped files' relative paths resolve (dev/, ../policies)."""
    with tempfile.TemporaryDirectory() as name:
        conf = Path(name) / "config"
        conf.mkdir()
        (conf / "dev").symlink_to(CONFIG / "dev")
        (Path(name) / "policies").symlink_to(ROOT / "policies")
        yield conf


_COMPONENT = re.compile(r'"(?:[^"\\]|\\.)*"|[^.]+')


def first_key(path: str) -> str:
    """The first key of a dotted path; odd keys are JSON-quoted ('"a.b".x')."""
    match = _COMPONENT.match(path)
    assert match is not None, path
    text = match.group()
    return str(json.loads(text)) if text.startswith('"') else text


def check_problems(exc: ConfigError, data: Any) -> None:
    assert exc.problems
    text = str(exc)
    for path, message in exc.problems:
        assert isinstance(path, str)
        assert isinstance(message, str)
        assert message
        assert "<at:" not in path
        assert "<at:" not in message
        assert (f"{path}: {message}" if path else message) in exc.lines()
        assert message in text
        assert "\n" not in path
        assert "\n" not in message
        if path and isinstance(data, dict):
            head = first_key(path)
            assert head in data or head in Settings.model_fields, path
    event(f"problems: {len(exc.problems)}" if len(exc.problems) < 3 else "problems: 3+")


@fuzz(80)
@given(
    st.sampled_from(HOSTILE_YAML)
    | st.binary(max_size=64)
    | st.sampled_from(BASES)
    .map(lambda d: yaml.safe_dump(d).encode())
    .flatmap(lambda b: mutated_text(b.decode(), " :-[]{}\n#&*!|>'\"%@`,?\t0aé"))
    .map(lambda s: s.encode("utf-8", "surrogatepass"))
)
@example(b"\xff")  # regression: UnicodeDecodeError
@example(b"a: 2001-02-30\n")  # regression: ValueError from PyYAML's timestamp constructor
@example(b"[" * 2000 + b"]" * 2000)  # regression: RecursionError
def test_load_settings_from_bytes(folder: Path, data: bytes) -> None:
    path = folder / "gateway.yaml"
    path.write_bytes(data)
    try:
        load_settings(path)
    except ConfigError as exc:
        check_problems(exc, None)
        return
    event("loaded")


@st.composite
def mutated_config(draw: st.DrawFn) -> Any:
    """A shipped configuration with one to three values replaced, deleted or added."""
    data = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(BASES))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        node: Any = data
        # Walk down a random number of levels.
        for _ in range(draw(st.integers(0, 4))):
            if isinstance(node, dict) and node:
                child = node[draw(st.sampled_from(sorted(node)))]
            elif isinstance(node, list) and node:
                child = node[draw(st.integers(0, len(node) - 1))]
            else:
                break
            if not isinstance(child, dict | list):
                break
            node = child
        op = draw(st.sampled_from(["set", "set", "delete", "add", "nest"]))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if op == "delete":
                del node[key]
            elif op == "add":
                node[draw(st.text(max_size=8))] = draw(json_values)
            elif op == "nest":
                node[key] = [node[key]] if draw(st.booleans()) else {"x": node[key]}
            else:
                node[key] = draw(json_values | st.sampled_from(["env:NOPE", "file:/nonexistent"]))
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if op == "delete":
                del node[i]
            else:
                node[i] = draw(json_values)
    return data


def deep_tree(depth: int) -> dict[str, Any]:
    tree: Any = "api_key"
    for _ in range(depth):
        tree = {"any_of": [tree]}
    return tree


@fuzz(80)
@given(mutated_config() | json_values)
@example(
    {"routes": [{"name": "r", "upstream": "http://x", "authn": deep_tree(200)}]}
)  # regression: RecursionError past ~1000
@example({"routes": [{"name": "r", "upstream": "http://x", "authn": {"any_of": "x"}}]})
@example({"authn": {1: {}}})
@example({".": None})  # regression: the path "." named no key
@example({"a\nb": 1})  # regression: a newline in a key split the problem line
@example({"routes": [{"name": "r", "upstream": "http://[::1"}]})
def test_parse_settings_from_structures(data: Any) -> None:
    try:
        parse_settings(data, CONFIG)
    except ConfigError as exc:
        check_problems(exc, data)
        return
    event("loaded")
