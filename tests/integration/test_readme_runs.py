"""The docs run as written (issue 15.9).

* Every YAML block of ``README.md`` and ``deploy/README.md`` that is a gateway configuration
  (its top-level keys are configuration keys, or it is a route) is valid configuration, with
  the files and secrets it names provided (the harness of ``test_readme_authn_examples``).
* The README's Python verifier example runs: its code is executed as written, with only the
  JWKS URL pointed at a live JWKS endpoint, and the service it builds accepts a real
  Txn-Token and refuses a request without one.
* ``agentgate token verify TOKEN --jwks URL|FILE --audience A`` verifies what
  ``agentgate token mint`` signed, against both a file and a URL, and refuses a wrong audience.
* The command table lists every subcommand the CLI has.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.settings import Settings
from tests.integration.test_readme_authn_examples import Block, as_config, validate, yaml_blocks
from tests.support import ROOT, subprocess_env

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
DOCS = [README, ROOT / "deploy" / "README.md"]
_SETTINGS_KEYS = frozenset(Settings.model_fields)
_ROUTE_HINT = frozenset({"name", "match", "upstream"})


def _config_blocks() -> list[tuple[str, Block]]:
    found = []
    for doc in DOCS:
        for block in yaml_blocks(doc.read_text("utf-8")):
            loaded = yaml.safe_load(block.text)
            is_config = isinstance(loaded, dict) and loaded and set(loaded) <= _SETTINGS_KEYS
            is_route = isinstance(loaded, dict) and set(loaded) >= _ROUTE_HINT
            if is_config or is_route:
                found.append((f"{doc.relative_to(ROOT)}:{block.line}", block))
    return found


CONFIG_BLOCKS = _config_blocks()


def test_the_docs_have_configuration_blocks_to_check() -> None:
    where = {w.split(":")[0] for w, _ in CONFIG_BLOCKS}
    assert where == {"README.md", "deploy/README.md"}
    # (The Authentication section's blocks are checked in context by test_readme_authn_examples.)
    assert len(CONFIG_BLOCKS) >= 3


@pytest.mark.parametrize(("where", "block"), CONFIG_BLOCKS, ids=[w for w, _ in CONFIG_BLOCKS])
def test_every_configuration_block_in_the_docs_is_valid(
    where: str, block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = yaml.safe_load(block.text)
    config = as_config(loaded, where) if set(loaded) <= _SETTINGS_KEYS else {"routes": [loaded]}
    validate(config, tmp_path, monkeypatch, where)


# --------------------------------------------------------------------------- the Python example


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


DOC_JWKS = "https://gateway.internal:8443/.well-known/jwks.json"


def _mint(tmp_path: Path, *args: str) -> tuple[str, Path]:
    key = tmp_path / "txn.pem"
    if not key.exists():
        _cli("keys", "generate", "--out", str(key))
    token = _cli(
        "token", "mint", "--key", str(key), "--sub", "alice", "--scope", "flights.read",
        "--aud", "example.org", "--iss", "https://gateway.example.org", *args,
    ).stdout.strip()  # fmt: skip
    jwks = tmp_path / "jwks.json"
    jwks.write_text(_cli("keys", "jwks", str(key)).stdout)
    return token, jwks


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


async def _jwks_server(jwks: Path) -> tuple[web.AppRunner, str]:
    document = jwks.read_bytes()  # noqa: ASYNC240 -- a small local file, read once

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/.well-known/jwks.json"


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_the_python_verifier_example_runs_as_written(tmp_path: Path) -> None:
    [example] = [b for b in _python_blocks(README.read_text("utf-8")) if "TxnTokenVerifier" in b]
    assert example.count(DOC_JWKS) == 1
    token, jwks = _mint(tmp_path)
    runner, url = await _jwks_server(jwks)
    try:
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(example.replace(DOC_JWKS, url), "README.md", "exec"), namespace)  # noqa: S102
        app: web.Application = namespace["app"]
        app.router.add_get("/flights", namespace["handler"])
        app.router.add_get("/healthz", _ok)
        service = web.AppRunner(app)
        await service.setup()
        site = web.TCPSite(service, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{service.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/flights", headers={"Txn-Token": token}) as resp:
                    assert resp.status == 200, await resp.text()
                    body = await resp.json()
                async with session.get(f"{base}/flights") as missing:
                    assert missing.status == 401
                async with session.get(f"{base}/healthz") as exempt:
                    assert exempt.status == 200
        finally:
            await service.cleanup()
            await namespace["verifier"].close()
    finally:
        await runner.cleanup()
    assert body["sub"] == "alice"
    assert body["txn"]


# --------------------------------------------------------------------------- token verify


async def test_token_verify_against_a_file_and_a_url(tmp_path: Path) -> None:
    token, jwks = _mint(tmp_path)
    by_file = _cli("token", "verify", token, "--jwks", str(jwks), "--audience", "example.org")
    assert by_file.stdout.startswith("VERIFIED")
    assert json.loads(by_file.stdout.split("\n", 1)[1])["sub"] == "alice"
    runner, url = await _jwks_server(jwks)
    try:
        # The JWKS server runs on this event loop: the CLI must run beside it, not block it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "token", "verify", "-", "--jwks", url,
            "--audience", "example.org",
            cwd=ROOT, env=subprocess_env(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(token.encode()), 60)
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("VERIFIED")
    wrong = _cli(
        "token", "verify", token, "--jwks", str(jwks), "--audience", "other.org", check=False
    )
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("agentgate token verify: INVALID")
    assert token not in wrong.stderr


# --------------------------------------------------------------------------- the command table


def test_the_command_table_lists_every_subcommand() -> None:
    from gateway.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    commands = set(subparsers.choices)  # type: ignore[attr-defined]
    table = README.read_text("utf-8").split("## Command line", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `agentgate ([a-z-]+)", table, re.MULTILINE))
    assert commands - listed == set(), f"not in the README command table: {commands - listed}"
