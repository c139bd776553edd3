"""Files holding claims or secrets are ``0600`` whatever the umask (issue 12, item 3).

Every test runs under ``umask 0o000`` (the ``open_umask`` fixture), where a plain ``open()``
creates files ``0666``: a file is private only if the code asked for it. Covered: the helper
(:mod:`gateway.private_files`), the audit log, the decision log, Txn-Token signing key
generation, the dev PKI (CA, server and agent keys; certificates stay ``0644``), and the
demo's files (keys, secrets, config, audit log). A log file that already exists with wider
bits is narrowed when opened.

Private keys never land where git would pick them up: the default folders of
``agentgate certs init`` and ``agentgate demo``, the README's ``config/certs`` and the example
config's ``config/keys`` are ignored (``git check-ignore``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.authz.decision_log import DecisionLog
from gateway.cli import _parser
from gateway.devtools import demo
from gateway.devtools.devpki import init_dev_pki
from gateway.observability.audit import AuditSink
from gateway.private_files import open_private_append, write_atomic
from gateway.tokens.keys import write_private_key
from tests.support import ROOT


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_really_is_open(tmp_path: Path) -> None:
    """The control: under this umask an ordinary file is world-writable."""
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert mode(plain) == 0o666


# --------------------------------------------------------------------------- the helper


def test_open_private_append_creates_0600(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    with open_private_append(path) as fh:
        fh.write("line\n")
    assert mode(path) == 0o600


def test_open_private_append_narrows_an_existing_wider_file_and_keeps_its_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.log"
    path.write_text("earlier\n")
    path.chmod(0o666)
    with open_private_append(path) as fh:
        fh.write("later\n")
    assert mode(path) == 0o600
    assert path.read_text() == "earlier\nlater\n"  # appended, not truncated


def test_open_private_append_leaves_a_non_regular_file_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o622)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open does not block
    try:
        with open_private_append(fifo) as fh:
            fh.write("x\n")
    finally:
        os.close(reader)
    assert mode(fifo) == 0o622


def test_write_atomic_is_0600_and_replaces_a_wider_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret"
    write_atomic(path, b"one")
    assert (mode(path), mode(path.parent), path.read_bytes()) == (0o600, 0o700, b"one")
    path.chmod(0o644)
    write_atomic(path, b"two")
    assert (mode(path), path.read_bytes()) == (0o600, b"two")
    write_atomic(tmp_path / "public.pem", b"cert", mode=0o644)
    assert mode(tmp_path / "public.pem") == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --------------------------------------------------------------------------- the writers


async def test_audit_log_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = AuditSink(path)
    await sink.start()
    sink.emit({"request_id": "r1", "principal": {"id": "alice"}})
    await sink.close()
    assert mode(path) == 0o600
    assert "alice" in path.read_text()


async def test_audit_log_that_existed_wider_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o644)
    sink = AuditSink(path)
    await sink.start()
    await sink.close()
    assert mode(path) == 0o600


@pytest.mark.parametrize("existing", [None, 0o666], ids=["new", "existed-0666"])
async def test_decision_log_file_is_0600(tmp_path: Path, existing: int | None) -> None:
    path = tmp_path / "decisions.log"
    if existing is not None:
        path.write_text("")
        path.chmod(existing)
    log = DecisionLog(path)
    log.start()
    log.record(
        decision_id="d1",
        input={"request": {"id": "r1"}, "subject": {"id": "alice"}},
        engine="embedded",
        result="allow",
        reason="rbac:reader",
        cached=False,
        latency_ms=0.1,
    )
    await asyncio.to_thread(log.close)
    assert mode(path) == 0o600
    assert '"alice"' in path.read_text()


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_generated_txn_token_signing_key_is_0600(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "keys" / "txn-signing.pem"
    write_private_key(path, alg)  # type: ignore[arg-type]
    assert mode(path) == 0o600
    path.chmod(0o644)
    write_private_key(path, alg, overwrite=True)  # type: ignore[arg-type]
    assert mode(path) == 0o600


def test_dev_pki_keys_are_0600_and_certificates_0644(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", trust_domain="example.org", agents=["travel"])
    keys = [pki.ca.key, pki.server.key, pki.agents["travel"].key]
    certs = [pki.ca.cert, pki.server.cert, pki.agents["travel"].cert]
    assert [mode(k) for k in keys] == [0o600] * 3
    assert [mode(c) for c in certs] == [0o644] * 3


def test_demo_files_holding_secrets_are_0600(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    (workdir / "secrets").mkdir(parents=True)
    stale = workdir / "secrets" / "billing.key"  # left by an older run, too wide
    stale.write_text("old\n")
    stale.chmod(0o644)
    world = demo.prepare(workdir)
    demo.write_config(world)
    secret_files = [
        world.billing_key_file,
        workdir / "keys" / "txn-signing.pem",
        world.pki.ca.key,
        world.pki.server.key,
        *(files.key for files in world.pki.agents.values()),
        world.booking_cert.key,
        world.config_path,
    ]
    assert {str(p.relative_to(workdir)): mode(p) for p in secret_files} == {
        str(p.relative_to(workdir)): 0o600 for p in secret_files
    }


# --------------------------------------------------------------------------- git


def _default_dir(*argv: str) -> Path:
    return Path(_parser().parse_args(list(argv)).dir)


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param(_default_dir("certs", "init") / "ca.key", id="certs-init-default"),
        pytest.param(
            _default_dir("certs", "issue", "--name", "x", "--spiffe-id", "s") / "x.key",
            id="certs-issue-default",
        ),
        pytest.param(_default_dir("demo") / "pki" / "ca.key", id="demo-default"),
        pytest.param(Path("config/certs/ca.key"), id="readme-config-certs"),
        pytest.param(Path("config/keys/txn-signing.pem"), id="example-config-keys"),
        pytest.param(Path("config/dev/agent.key"), id="any-key-file"),
        pytest.param(Path("deploy/secrets/server.key"), id="deploy-secrets"),
    ],
)
def test_private_key_locations_are_ignored_by_git(relative: Path) -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        if os.environ.get("CI") == "true":  # CI runs in a git clone: this must run there
            pytest.fail("CI requires git and a git checkout")
        pytest.skip("not a git checkout")
    assert not relative.is_absolute()
    result = subprocess.run(
        [git, "check-ignore", "--quiet", "--no-index", str(relative)],
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"{relative} is not ignored by git"
