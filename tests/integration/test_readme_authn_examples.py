"""The README's authentication examples are valid configuration (DESIGN.md §4 ``authn``).

Every fenced ```yaml block under the README's "Authentication" heading (the heading and its
sub-headings) that configures authentication -- a top-level ``authn`` or a route with
``authn`` -- is loaded and validated with :func:`gateway.settings.parse_settings`, the function
``agentgate check-config`` uses. Until that section exists, every README yaml block with a
``routes:`` key whose routes use ``authn`` is checked instead (and the test that wants the
AND/OR and legacy ``api_key`` examples fails, naming the missing section).

How a block is read, so that documentation can stay short without becoming unchecked:

* a README is read top to bottom: a block is validated on top of the yaml blocks before it in
  the same section (e.g. an ``issuers:`` block followed by an ``authn:`` + ``routes:`` block);
  keys the block itself sets win;
* a block that is a single route (or a list of routes) is wrapped into ``routes:``;
* every file the example names (``keys_file``, ``users_file``, ``agents_file``, ``jwks_file``,
  certificates, ...) is created in a temp folder (absolute paths are moved there), and every
  ``env:NAME`` / ``file:path`` secret reference is provided, because parse_settings checks that
  they exist. Nothing else is filled in: a method a route names but the example never defines,
  an unknown key, or a misspelt operator is a README bug and fails here.

The harness itself is tested on a sample section (:data:`SAMPLE_README`) holding the two
examples the README is meant to show: ``mtls AND (bearer OR jwt_assertion)`` and ``api_key``
alone for a legacy partner.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.errors import ConfigError
from gateway.settings import Route, Settings, parse_settings, tree_node
from tests.support import ROOT

README = ROOT / "README.md"
SECTION = re.compile(r"\bauthentication\b", re.IGNORECASE)

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)")
_ROUTE_KEYS = frozenset(Route.model_fields)
_SETTINGS_KEYS = frozenset(Settings.model_fields)


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    heading: str  # the nearest heading above it
    in_section: bool  # under the Authentication heading
    text: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        return f"L{self.line}-{slug}"


# --------------------------------------------------------------------------- markdown


def yaml_blocks(markdown: str) -> list[Block]:
    """Fenced yaml blocks with their heading and whether they sit in the Authentication section."""
    blocks: list[Block] = []
    heading, section_level = "", 0  # section_level 0: not inside the section
    fence: str | None = None
    lang, start, body = "", 0, []
    for number, line in enumerate(markdown.splitlines(), start=1):
        if fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                if lang in ("yaml", "yml"):
                    blocks.append(Block(start, heading, section_level > 0, "\n".join(body)))
                fence = None
            else:
                body.append(line)
            continue
        opened = _FENCE.match(line)
        if opened:
            fence, lang, start, body = opened.group(2), opened.group(3).lower(), number, []
            continue
        m = _HEADING.match(line)
        if m:
            level, heading = len(m.group(1)), m.group(2).replace("`", "")
            if section_level and level <= section_level:
                section_level = 0
            if not section_level and SECTION.search(heading):
                section_level = level
    return blocks


def has_section(markdown: str) -> bool:
    return any(
        SECTION.search(m.group(2))
        for m in (_HEADING.match(line) for line in _outside_fences(markdown))
        if m
    )


def _outside_fences(markdown: str) -> Iterator[str]:
    fence: str | None = None
    for line in markdown.splitlines():
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        opened = _FENCE.match(line)
        if opened:
            fence = opened.group(2)
            continue
        yield line


def load_block(block: Block) -> Any:
    try:
        return yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        raise AssertionError(f"README line {block.line}: invalid YAML: {exc}") from None


def configures_authn(doc: Any) -> bool:
    if isinstance(doc, list):
        return any(isinstance(r, Mapping) and "authn" in r for r in doc)
    if not isinstance(doc, Mapping):
        return False
    if "authn" in doc:
        return True
    routes = doc.get("routes")
    return isinstance(routes, list) and any(isinstance(r, Mapping) and "authn" in r for r in routes)


def has_routes_with_authn(doc: Any) -> bool:
    routes = doc.get("routes") if isinstance(doc, Mapping) else None
    return isinstance(routes, list) and any(isinstance(r, Mapping) and "authn" in r for r in routes)


def examples(markdown: str) -> list[tuple[Block, list[Block]]]:
    """(block, the section's earlier yaml blocks) for every example to validate."""
    blocks = yaml_blocks(markdown)
    if has_section(markdown):
        section = [b for b in blocks if b.in_section]
        return [
            (b, section[:i])
            for i, b in enumerate(section)
            if "authn:" in b.text and configures_authn(load_block(b))
        ]
    # Fallback while the README has no Authentication section.
    return [(b, []) for b in blocks if "routes:" in b.text and has_routes_with_authn(load_block(b))]


# --------------------------------------------------------------------------- validation


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def as_config(doc: Any, where: str) -> dict[str, Any]:
    """A settings mapping from a block: a config fragment, one route, or a list of routes."""
    if isinstance(doc, list) and all(isinstance(r, Mapping) for r in doc):
        return {"routes": list(doc)}
    assert isinstance(doc, Mapping), f"{where}: an example must be a YAML mapping"
    keys = set(doc)
    if keys <= _SETTINGS_KEYS:
        return dict(doc)
    if "authn" in keys and keys <= _ROUTE_KEYS:
        return {"routes": [dict(doc)]}
    raise AssertionError(f"{where}: unknown top-level keys {sorted(keys - _SETTINGS_KEYS)}")


def _replace(node: Any, old: str, new: str) -> Any:
    if isinstance(node, Mapping):
        return {k: _replace(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, old, new) for v in node]
    if isinstance(node, str) and node in (old, f"file:{old}"):
        return node.replace(old, new)
    return node


_MISSING = (
    (re.compile(r"^file not found: (?P<path>.+)$"), "file"),
    (re.compile(r"^directory not found: (?P<path>.+)$"), "dir"),
    (re.compile(r"^cannot read secret file (?P<path>.+?): "), "secret"),
    (re.compile(r"^environment variable (?P<name>\S+) is not set$"), "env"),
)


def validate(
    config: dict[str, Any], tmp: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> Settings:
    """parse_settings, providing every file and secret the example names (and nothing else)."""
    for _ in range(50):
        try:
            return parse_settings(config, tmp)
        except ConfigError as exc:
            problems = exc.problems
        progress = False
        unresolved: list[str] = []
        for key, message in problems:
            for pattern, kind in _MISSING:
                m = pattern.match(message)
                if m is None:
                    continue
                if kind == "env":
                    monkeypatch.setenv(m.group("name"), secrets.token_urlsafe(48))
                    progress = True
                    break
                path = Path(m.group("path"))
                if not path.is_relative_to(tmp):
                    # An absolute path in the docs (/etc/agentgate/...): move it into tmp.
                    moved = tmp / "abs" / path.relative_to(path.anchor)
                    config = _replace(config, str(path), str(moved))
                    path = moved
                if kind == "dir":
                    path.mkdir(parents=True, exist_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(secrets.token_urlsafe(48) if kind == "secret" else "")
                progress = True
                break
            else:
                unresolved.append(f"{key}: {message}" if key else message)
        if unresolved or not progress:
            raise AssertionError(f"{where}: not a valid configuration:\n" + "\n".join(unresolved))
    raise AssertionError(f"{where}: too many missing files")


def method_types(settings: Settings, tree: Any) -> set[str]:
    if isinstance(tree, str):
        return {settings.authn[tree].type}
    return {t for children in tree.values() for c in children for t in method_types(settings, c)}


def operators(tree: Any, depth: int = 0) -> set[tuple[str, int]]:
    if isinstance(tree, str):
        return set()
    op, children, _ = tree_node(tree)  # a node may also carry `bind`
    return {(op, depth)} | {x for c in children for x in operators(c, depth + 1)}


def validated(
    markdown: str, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Block, Settings]]:
    out: list[tuple[Block, Settings]] = []
    for i, (block, earlier) in enumerate(examples(markdown)):
        out.append((block, validate_example(block, earlier, tmp / f"ex{i}", monkeypatch)))
    return out


def validate_example(
    block: Block, earlier: list[Block], tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    tmp.mkdir(parents=True, exist_ok=True)
    where = f"README.md line {block.line} ({block.heading})"
    context: dict[str, Any] = {}
    for previous in earlier:
        doc = load_block(previous)
        if isinstance(doc, Mapping) and set(doc) <= _SETTINGS_KEYS:
            context = merge(context, doc)
    config = merge(context, as_config(load_block(block), where))
    return validate(config, tmp, monkeypatch, where)


def shows_and_or_and_legacy_api_key(pairs: list[tuple[Block, Settings]]) -> list[str]:
    """What the README's examples fail to show, if anything."""
    and_or = legacy = False
    for _, settings in pairs:
        for r in settings.routes:
            if r.authn is None:
                continue
            ops = operators(r.authn)
            # an AND at the top with an OR inside it: mtls AND (bearer OR jwt_assertion)
            if ("all_of", 0) in ops and any(op == "any_of" for op, d in ops if d > 0):
                and_or = True
            if isinstance(r.authn, str) and method_types(settings, r.authn) == {"api_key"}:
                legacy = True
    missing = []
    if not and_or:
        missing.append("a route with an AND/OR tree, e.g. mtls AND (bearer OR jwt_assertion)")
    if not legacy:
        missing.append("a route authenticated by api_key alone (a legacy partner)")
    return missing


# --------------------------------------------------------------------------- the README

README_TEXT = README.read_text(encoding="utf-8")
README_EXAMPLES = examples(README_TEXT)


@pytest.mark.parametrize(
    ("block", "earlier"),
    [pytest.param(b, e, id=b.id) for b, e in README_EXAMPLES]
    or [pytest.param(None, [], id="no-examples-yet")],
)
def test_readme_authn_example_is_valid_configuration(
    block: Block | None, earlier: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block is None:
        pytest.fail(
            "README.md has no yaml example configuring authn: expected an 'Authentication' "
            "section with AND/OR examples (DESIGN.md §4 authn)"
        )
    validate_example(block, earlier, tmp_path, monkeypatch)


def test_readme_shows_and_or_composition_and_legacy_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert has_section(README_TEXT), "README.md has no 'Authentication' heading yet"
    pairs = validated(README_TEXT, tmp_path, monkeypatch)
    assert not shows_and_or_and_legacy_api_key(pairs), shows_and_or_and_legacy_api_key(pairs)


# --------------------------------------------------------------------------- the harness

SAMPLE_README = """\
# agentgate

## Configuration

```yaml
routes:
  - name: public
    upstream: http://127.0.0.1:9000
```

## Authentication

Issuers come first:

```yaml
issuers:
  - name: corp
    issuer: https://idp.example.org
    jwks_uri: https://idp.example.org/jwks.json
    audience: https://gateway.example.org
```

### AND / OR

```yaml
authn:
  mtls: {}
  bearer: {issuers: [corp], sender_constraint: optional}
  jwt_assertion: {agents_file: /etc/agentgate/agents.yaml}
  partner_key: {type: api_key, header: X-API-Key, keys_file: partner-keys.yaml}
routes:
  - name: flights                  # mtls AND (bearer OR jwt_assertion)
    match: {path_prefix: /flights/}
    authn: {all_of: [mtls, {any_of: [bearer, jwt_assertion]}]}
    upstream: http://127.0.0.1:9001
  - name: legacy-partner           # api_key alone
    match: {path_prefix: /partner/}
    authn: partner_key
    upstream: http://127.0.0.1:9002
    credential: {type: api_key, header: X-Partner-Key, secret: env:PARTNER_BACKEND_KEY}
```

A single route:

```yaml
name: reports
authn: {any_of: [{all_of: [mtls, bearer]}, partner_key]}
upstream: http://127.0.0.1:9003
```

```sh
agentgate check-config
```

## Operations

```yaml
authn: {nonsense: true}
```
"""


def test_harness_reads_the_section_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = examples(SAMPLE_README)
    assert [b.heading for b, _ in found] == ["AND / OR", "AND / OR"]
    # The issuers block before them is context, the Operations block is outside the section.
    assert [len(earlier) for _, earlier in found] == [1, 2]
    pairs = validated(SAMPLE_README, tmp_path, monkeypatch)
    assert len(pairs) == 2
    settings = pairs[0][1]
    assert settings.authn["jwt_assertion"].agents_file.is_relative_to(tmp_path)  # type: ignore[union-attr]
    assert shows_and_or_and_legacy_api_key(pairs) == []


def test_harness_falls_back_to_routes_blocks_without_a_section() -> None:
    text = SAMPLE_README.replace("## Authentication", "## Access control")
    found = examples(text)
    # Only blocks with routes: that use authn (the AND/OR one); not the bare-route block.
    assert [b.heading for b, _ in found] == ["AND / OR"]
    assert not has_section(text)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        pytest.param(
            "authn: {all_of: [mtls, {any_of: [bearer, jwt_assertion]}]}",
            "method 'jwt_assertion' is not defined",
            id="undefined-method",
        ),
        pytest.param(
            "authn: {all: [mtls, bearer]}", "unknown operator 'all'", id="misspelt-operator"
        ),
        pytest.param("authn: mtls\n    retries: 3", "unknown key", id="unknown-key"),
    ],
)
def test_harness_reports_readme_bugs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str, message: str
) -> None:
    text = SAMPLE_README.replace("  jwt_assertion: {agents_file: /etc/agentgate/agents.yaml}\n", "")
    text = text.replace("authn: {all_of: [mtls, {any_of: [bearer, jwt_assertion]}]}", broken)
    with pytest.raises(AssertionError, match=re.escape(message)):
        validated(text, tmp_path, monkeypatch)
