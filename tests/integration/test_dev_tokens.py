"""Dev access tokens end to end (issue 15.5): what ``agentgate token mint-access`` signs, a
real gateway built from the shipped ``config/gateway.yaml`` / ``config/gateway.mtls.yaml``
accepts -- on a bearer route, a DPoP-required route and a certificate-bound route over real
mTLS -- and refuses with the wrong proof or certificate. The README's curl lines run as
written against those gateways.

The shipped configs are copied into a temp folder laid out like the repository (``config/``,
``policies`` and ``.venv`` linked to the real ones), with only the listen addresses and the
upstream changed, so the dev issuer key is created there, never in the source tree.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.cli import main
from gateway.settings import load_settings
from tests.integration.conftest import base_url
from tests.support import ROOT, TestPKI, Upstream, client_context, require_real, subprocess_env

pytestmark = pytest.mark.integration

URL_DEV = "http://127.0.0.1:8080"  # as in config/gateway.yaml and the README
URL_MTLS = "https://localhost:8443"  # as in config/gateway.mtls.yaml and the README


@dataclass
class World:
    root: Path  # stands in for the repository root
    dev: Gateway
    mtls: Gateway
    upstream: Upstream

    @property
    def dev_config(self) -> Path:
        return self.root / "config" / "gateway.yaml"

    @property
    def mtls_config(self) -> Path:
        return self.root / "config" / "gateway.mtls.yaml"

    def url(self, path: str) -> str:
        return base_url(self.dev) + path

    def tls_url(self, path: str) -> str:
        assert self.mtls.main_address is not None
        return f"https://localhost:{self.mtls.main_address[1]}{path}"


def _shipped(name: str, root: Path, upstream: Upstream) -> Path:
    doc = yaml.safe_load((ROOT / "config" / name).read_text("utf-8"))
    doc["server"].update(
        {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "timeouts": {"drain_s": 1}}
    )
    for route in doc["routes"]:
        route["upstream"] = upstream.url
    # To a file instead of stdout (where the CLI prints tokens); checked for leaks.
    doc["telemetry"]["audit_log"] = f"audit-{name}.log"
    path = root / "config" / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
async def world(tmp_path: Path, pki: TestPKI, upstream: Upstream) -> AsyncIterator[World]:
    root = tmp_path / "repo"
    shutil.copytree(
        ROOT / "config", root / "config", ignore=shutil.ignore_patterns("keys", "certs")
    )
    (root / "policies").symlink_to(ROOT / "policies")
    (root / ".venv").symlink_to(ROOT / ".venv")
    (root / "config" / "certs").symlink_to(
        pki.directory
    )  # what `certs init --dir config/certs` makes
    gateways = [
        Gateway(load_settings(_shipped(name, root, upstream)))
        for name in ("gateway.yaml", "gateway.mtls.yaml")
    ]
    started: list[Gateway] = []
    try:
        for gw in gateways:
            await gw.start()
            started.append(gw)
        yield World(root, gateways[0], gateways[1], upstream)
    finally:
        for gw in reversed(started):
            await gw.stop()


def mint(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    code = main(["token", "mint-access", "-c", str(config), *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "PRIVATE" not in out + err
    return out.strip()


def header_lines(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines())


async def get(url: str, headers: dict[str, str], ssl: object = None) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=ssl) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, resp.headers.get("WWW-Authenticate", ""), await resp.text()


# --------------------------------------------------------------------------- plain bearer


async def test_a_minted_bearer_token_is_accepted_on_the_dev_config(
    world: World, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    key = world.root / "config" / "keys" / "dev-issuer.pem"
    # The gateway created the key at start: 0600 in a 0700 folder, announced as a warning.
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    token = mint(capsys, world.dev_config, "--sub", "alice", "--scope", "flights.read")
    status, _, _ = await get(world.url("/flights/42"), {"Authorization": f"Bearer {token}"})
    assert status == 200
    [hit] = world.upstream.hits
    assert hit.path == "/flights/42"
    assert hit.all("Authorization") == []  # the inbound credential is never forwarded
    # Acting for alice: the delegation in policies/data.json covers route flights.
    acting = mint(
        capsys, world.dev_config, "--sub", "alice", "--scope", "flights.read",
        "--act", "spiffe://example.org/agent/travel",
    )  # fmt: skip
    assert (await get(world.url("/flights/42"), {"Authorization": f"Bearer {acting}"}))[0] == 200
    # Without the scope the RBAC grant needs: the policy's insufficient_scope, not an authn error.
    narrow = mint(capsys, world.dev_config, "--sub", "alice", "--scope", "other")
    status, challenge, _ = await get(
        world.url("/flights/42"), {"Authorization": f"Bearer {narrow}"}
    )
    assert status == 403
    assert 'error="insufficient_scope"' in challenge
    audit = (world.root / "config" / "audit-gateway.yaml.log").read_text()
    assert '"status":200' in audit
    for logged in (caplog.text, audit):
        for secret in (token, acting, narrow, "PRIVATE KEY", key.read_text().splitlines()[1]):
            assert secret not in logged


async def test_a_token_from_another_dev_key_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Same issuer name, iss and audience, another key file: the gateway trusts only its own.
    other = tmp_path / "other" / "gateway.yaml"
    other.parent.mkdir()
    doc = yaml.safe_load(world.dev_config.read_text())
    doc["issuers"][0]["dev_signing_key"] = str(tmp_path / "other" / "dev-issuer.pem")
    other.write_text(yaml.safe_dump(doc))
    shutil.copytree(world.root / "config" / "dev", other.parent / "dev")
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    token = mint(capsys, other, "--sub", "alice", "--scope", "flights.read")
    status, challenge, _ = await get(world.url("/flights/42"), {"Authorization": f"Bearer {token}"})
    assert status == 401
    assert 'error="invalid_token"' in challenge
    assert world.upstream.hits == []


# --------------------------------------------------------------------------- DPoP


async def test_dpop_headers_from_the_cli_are_accepted_once(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    url = world.url("/flights/dpop/42")
    lines = mint(
        capsys, world.dev_config, "--sub", "alice", "--scope", "flights.read", "--dpop",
        "--headers", "--htu", url,
    )  # fmt: skip
    headers = header_lines(lines)
    assert set(headers) == {"Authorization", "DPoP"}
    assert (await get(url, headers))[0] == 200
    [hit] = world.upstream.hits
    assert hit.all("DPoP") == []
    assert hit.all("Authorization") == []
    # The same proof again: single use (RFC 9449 §11.1).
    status, challenge, _ = await get(url, headers)
    assert status == 401
    assert 'error="invalid_dpop_proof"' in challenge
    # The DPoP-bound token as a bearer token: a downgrade (RFC 9449 §7.2).
    token = headers["Authorization"].removeprefix("DPoP ")
    assert (await get(url, {"Authorization": f"Bearer {token}"}))[0] == 401
    assert len(world.upstream.hits) == 1


async def test_the_dpop_route_refuses_an_unbound_token(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    token = mint(capsys, world.dev_config, "--sub", "alice", "--scope", "flights.read")
    status, challenge, _ = await get(
        world.url("/flights/dpop/42"), {"Authorization": f"Bearer {token}"}
    )
    assert status == 401
    assert 'error="invalid_token"' in challenge
    assert world.upstream.hits == []


async def test_dpop_proof_serves_one_token_for_several_requests(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = world.url("/flights/dpop/42")
    token = mint(capsys, world.dev_config, "--sub", "alice", "--scope", "flights.read", "--dpop")

    def proof(*extra: str) -> str:
        code = main(["token", "dpop-proof", "-c", str(world.dev_config), *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out.strip()

    for _ in range(2):
        fresh = proof("--htu", url, "--token", token)
        assert (await get(url, {"Authorization": f"DPoP {token}", "DPoP": fresh}))[0] == 200
    refused = {
        "another key": proof("--htu", url, "--token", token, "--dpop-key", str(tmp_path / "x.pem")),
        "another URL": proof("--htu", world.url("/flights/dpop/43"), "--token", token),
        "another method": proof("--htu", url, "--htm", "POST", "--token", token),
        "no ath": proof("--htu", url),
    }
    for why, bad in refused.items():
        status, challenge, _ = await get(url, {"Authorization": f"DPoP {token}", "DPoP": bad})
        assert status == 401, why
        assert 'error="invalid_dpop_proof"' in challenge, why
    assert len(world.upstream.hits) == 2


# --------------------------------------------------------------------------- certificate-bound


async def test_a_cert_bound_token_is_accepted_only_with_its_certificate(
    world: World, pki: TestPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    travel, planner = pki.agents["travel"], pki.agents["planner"]
    url = world.tls_url("/flights/42")
    token = mint(
        capsys, world.mtls_config, "--sub", "alice", "--scope", "flights.read",
        "--act", travel.spiffe_id or "", "--cnf-cert", str(travel.cert),
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {token}"}
    assert (await get(url, auth, client_context(pki, travel)))[0] == 200
    # The same token on a connection with another agent's certificate.
    status, challenge, _ = await get(url, auth, client_context(pki, planner))
    assert status == 401
    assert 'error="invalid_token"' in challenge
    # A token bound to another certificate than the connection's.
    wrong = mint(
        capsys, world.mtls_config, "--sub", "alice", "--scope", "flights.read",
        "--act", travel.spiffe_id or "", "--cnf-cert", str(pki.server.cert),
    )  # fmt: skip
    status, challenge, _ = await get(
        url, {"Authorization": f"Bearer {wrong}"}, client_context(pki, travel)
    )
    assert status == 401
    assert 'error="invalid_token"' in challenge
    # An unbound token: the mTLS config's bearer method wants a sender constraint.
    plain = mint(capsys, world.mtls_config, "--sub", "alice", "--scope", "flights.read")
    status, _, _ = await get(url, {"Authorization": f"Bearer {plain}"}, client_context(pki, travel))
    assert status == 401
    assert len(world.upstream.hits) == 1


# --------------------------------------------------------------------------- the README


def _readme_commands() -> list[tuple[str, str]]:
    """(command, expected status) for every curl line of README "Dev access tokens"."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("### Dev access tokens", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            m = re.fullmatch(r"(.*\bcurl .*?)\s+#\s*(\d{3})", line)
            if m:
                found.append((m.group(1), m.group(2)))
    return found


README_COMMANDS = _readme_commands()


def test_the_readme_shows_every_kind_of_dev_token() -> None:
    joined = "\n".join(c for c, _ in README_COMMANDS)
    assert "--dpop --headers" in joined
    assert "--cnf-cert" in joined
    assert "curl -s -o /dev/null" in joined
    assert {s for _, s in README_COMMANDS} == {"200", "401"}
    assert len(README_COMMANDS) >= 5


async def test_the_readme_curl_lines_run_as_written(world: World) -> None:
    require_real("curl")
    assert world.dev.main_address is not None
    assert world.mtls.main_address is not None
    for command, expected in README_COMMANDS:
        # Only the gateway's addresses differ (free ports); the rest is the README's text,
        # run from a folder laid out like the repository.
        run = command.replace(URL_DEV, base_url(world.dev)).replace(
            URL_MTLS, f"https://localhost:{world.mtls.main_address[1]}"
        )
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash", "-c", run,
            cwd=world.root, env=subprocess_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert out.decode().strip() == expected, f"{command}\n{err.decode()}"
        assert b"PRIVATE" not in out + err
