"""Loading: YAML (depth-bounded) to :class:`Settings`, and pydantic errors rendered as
``path.to.key: message`` lines (:class:`gateway.errors.ConfigError`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from gateway.errors import ConfigError
from gateway.settings.authn import AUTHN_TYPES
from gateway.settings.root import Settings


def _loc(loc: tuple[int | str, ...]) -> str:
    # pydantic puts union members and discriminator tags in loc; keep only real keys.
    parts: list[str] = []
    for p in loc:
        if isinstance(p, str) and ("[" in p or p in _TAGS):
            continue
        if isinstance(p, str) and p in _DISCRIMINATED and _tagged_position(parts):
            continue
        parts.append(_key_text(str(p)))
    return ".".join(parts)


_PLAIN_KEY = re.compile(r'[^\s."\\]+')


def _key_text(key: str) -> str:
    """A key as a path component: quoted (JSON, ASCII) when it is empty, holds a '.', a
    quote, a backslash, whitespace or anything unprintable, so that a path stays one
    unambiguous line (a key "a.b" is not the path a -> b; a newline cannot split a line)."""
    return key if _PLAIN_KEY.fullmatch(key) and key.isprintable() else json.dumps(key)


def _tagged_position(parts: list[str]) -> bool:
    """After ``credential``, ``authn.<name>`` or ``credentials.<name>`` comes a union tag."""
    if parts and parts[-1] == "credential":
        return True
    return len(parts) >= 2 and parts[-2] in ("authn", "credentials")


_TAGS = frozenset({"str", "dict[str,any]"})


_DISCRIMINATED = frozenset(
    {
        *AUTHN_TYPES,
        "none",
        "txn_token",
        "api_key",
        "basic",
        "bearer_static",
        "oauth_client_credentials",
        "token_exchange",
        "mtls",
        "hmac_sign",
        "signed_jwt",
    }
)


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return "'type' is required"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"unknown type {ctx.get('tag')!r} (one of {ctx.get('expected_tags')})"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False):
        path, msg = _loc(err["loc"]), _message(err)
        if msg.startswith("<at:"):
            inner, _, msg = msg[4:].partition("> ")
            path = f"{path}.{inner}" if path else inner
            out.append((path, msg))
        elif not path:
            # Cross-field checks report "path: message" lines of their own.
            for line in msg.splitlines():
                key, sep, text = line.partition(": ")
                out.append((key, text) if sep else ("", line))
        else:
            out.append((path, msg))
    return out


def parse_settings(data: Any, base_dir: Path) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", "the configuration must be a mapping at the top level")])
    try:
        return Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


MAX_YAML_DEPTH = 64  # nested mappings/sequences in a configuration file


def _check_yaml_depth(text: str, path: Path) -> None:
    """Refuse deeper nesting than MAX_YAML_DEPTH before PyYAML's recursive composer runs.

    PyYAML's composer recurses once per level (a RecursionError near 1000 levels), and its
    pure-Python scanner is quadratic in the depth of flow collections ('[[[[...': half a
    second for 4 KB). The events come from libyaml when it is installed (linear, and it
    stops at 1000 levels by itself); only the depth is decided here.
    """
    too_deep = ConfigError([("", f"{path}: nested deeper than {MAX_YAML_DEPTH} levels")])
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            _yaml_depth(yaml.parse(text, Loader=loader), too_deep)
            return
        except yaml.YAMLError as exc:
            if "maximum nesting depth" in str(exc):
                raise too_deep from None
            # Any other libyaml complaint: let PyYAML itself judge the file, as always.
    _yaml_depth(yaml.parse(text, Loader=yaml.SafeLoader), too_deep)


def _yaml_depth(events: Iterator[yaml.Event], too_deep: ConfigError) -> None:
    depth = 0
    for event in events:
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise too_deep
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_settings(path: Path) -> Settings:
    """Read and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"{path}: not UTF-8 text (byte {exc.start})")]) from None
    try:
        _check_yaml_depth(text, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([("", f"{path}: invalid YAML{where}")]) from None
    except ValueError as exc:
        # PyYAML's constructors raise plain ValueErrors, e.g. for the date 2001-02-30.
        raise ConfigError([("", f"{path}: invalid YAML value: {str(exc)[:100]}")]) from None
    if data is None:
        raise ConfigError([("", f"{path}: the configuration file is empty")])
    return parse_settings(data, path.resolve().parent)


def json_schema() -> str:
    return json.dumps(Settings.model_json_schema(), indent=2, sort_keys=True) + "\n"
