"""gateway.agent_cli: ``agentgate agent derive | inspect | headers``.

Run through :func:`gateway.cli.main` (the argument parsing and error printing an operator
gets), with credentials minted by the SDK the gateway uses; a derived credential and its
``headers`` output are checked by the gateway's own verifier
(:class:`gateway.authn.agent_credential.AgentCredentialAuthenticator`), built the way
``tests/unit/authn/test_agent_credential.py`` builds it. Every case also checks that the
holder form, the tag and the signing key appear in no output and no error text.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.authn.agent_credential import AgentCredentialAuthenticator
from gateway.cli import main
from gateway.errors import Unauthorized
from gateway.sdk.agent import AgentCredential, mint_root, signing_key
from gateway.settings.agents import AgentCredentialSettings
from gateway.state.memory import MemoryReplayCache
from tests.support import ROOT, subprocess_env
from tests.unit.authn.agent_requests import HOST, facts, request

ISSUER = "spiffe://example.org/gateway"
TRAVEL = "spiffe://example.org/agent/travel"
FARE = f"{TRAVEL}/fare-checker"
KEY = b"k" * 32
PREFIX = "agentgate agent: "


# --------------------------------------------------------------------------- helpers


def mint(**kw: Any) -> AgentCredential:
    args: dict[str, Any] = {
        "genesis": {"type": "user", "sub": "alice", "iss": "https://idp.example.org"},
        "agent": TRAVEL,
        "scope": ["flights.read", "pay"],
        "ttl_s": 300,
        "depth": 2,
        "restrictions": {"methods": ["GET", "POST"]},
    }
    args.update(kw)
    return mint_root(KEY, kid="k1", issuer=ISSUER, **args)


def secrets_of(credential: AgentCredential) -> list[str]:
    """Every form of the credential's secret a leak could take."""
    tag: bytes = credential._tag  # the test looks inside; the CLI never prints it
    key = signing_key(tag)
    holder = credential.serialize()
    forms = [holder, holder[:40], holder[-40:]]
    for raw in (tag, key):
        forms += [
            raw.hex(),
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
        ]
    return forms


def assert_no_secret(text: str, *credentials: AgentCredential) -> None:
    for credential in credentials:
        for form in secrets_of(credential):
            assert form not in text


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["agent", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def parse_header_lines(text: str) -> dict[str, str]:
    """What ``curl -H @file`` sends: one ``Name: value`` per line."""
    headers = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        assert sep, line
        assert name not in headers, name
        headers[name] = value
    return headers


@pytest.fixture
def root() -> AgentCredential:
    return mint()


@pytest.fixture
def root_file(tmp_path: Path, root: AgentCredential) -> Path:
    return private_file(tmp_path / "root.cred", root.serialize() + "\n")


@pytest.fixture
def authenticator(monkeypatch: pytest.MonkeyPatch) -> AgentCredentialAuthenticator:
    monkeypatch.setenv("AC_CLI_KEY", KEY.decode())
    cfg = AgentCredentialSettings.model_validate(
        {"issuer": ISSUER, "keys": [{"id": "k1", "secret": "env:AC_CLI_KEY"}], "max_skew_s": 30}
    )
    return AgentCredentialAuthenticator("subagents", cfg, MemoryReplayCache(), 1024 * 1024)


def derive_child(capsys: pytest.CaptureFixture[str], parent: Path, out: Path, *extra: str) -> Path:
    code, _, err = cli(
        capsys, "derive", "--credential", str(parent), "--agent", FARE, "--out", str(out), *extra
    )
    assert code == 0, err
    return out


# --------------------------------------------------------------------------- derive + inspect


def test_derive_then_inspect_shows_the_new_block(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: AgentCredential, root_file: Path
) -> None:
    out = tmp_path / "child.cred"
    code, stdout, err = cli(
        capsys,
        "derive",
        "--credential",
        str(root_file),
        "--agent",
        FARE,
        "--scope",
        "flights.read",
        "--ttl-s",
        "30",
        "--methods",
        "get",
        "--routes",
        "flights",
        "--out",
        str(out),
    )
    assert (code, err) == (0, "")
    assert stdout.startswith(f"{out}: {FARE}, credential id ")
    assert "mode 0600" in stdout
    child = AgentCredential.parse(out.read_text("utf-8"))

    code, stdout, err = cli(capsys, "inspect", "--credential", str(out))
    assert (code, err) == (0, "")
    document = json.loads(stdout)
    assert document["depth"] == 1
    assert document["agent"] == FARE
    assert document["genesis"] == {"type": "user", "sub": "alice", "iss": "https://idp.example.org"}
    assert (document["issuer"], document["key_id"]) == (ISSUER, "k1")
    assert document["credential_id"] == child.credential_id == document["chain"][1]["credential_id"]
    assert document["chain"][0] == root.blocks[0].as_input()
    block = document["chain"][1]
    assert block["agent"] == FARE
    assert block["scope"] == ["flights.read"]
    assert block["methods"] == ["GET"]  # upper-cased by the CLI
    assert block["routes"] == ["flights"]
    assert block["depth"] == 1  # the parent's minus one
    assert block["exp"] - block["iat"] == 30
    assert document["expires_at"] == block["exp"]
    assert_no_secret(stdout, root, child)


def test_defaults_are_the_parents(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: AgentCredential, root_file: Path
) -> None:
    child = AgentCredential.parse(
        derive_child(capsys, root_file, tmp_path / "c.cred").read_text("utf-8")
    )
    leaf, parent = child.blocks[-1], root.blocks[0]
    assert (leaf.scope, leaf.exp, leaf.depth) == (parent.scope, parent.exp, parent.depth - 1)
    assert leaf.restrictions == parent.restrictions


def test_exp_sets_the_expiry_and_ttl_is_cut_to_the_parents(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: AgentCredential, root_file: Path
) -> None:
    exp = root.expires_at - 100
    by_exp = derive_child(capsys, root_file, tmp_path / "a.cred", "--exp", str(exp))
    assert AgentCredential.parse(by_exp.read_text("utf-8")).expires_at == exp
    by_ttl = derive_child(capsys, root_file, tmp_path / "b.cred", "--ttl-s", "86400")
    assert AgentCredential.parse(by_ttl.read_text("utf-8")).expires_at == root.expires_at


def test_a_grandchild_from_a_derived_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root_file: Path
) -> None:
    child = derive_child(capsys, root_file, tmp_path / "c.cred", "--scope", "flights.read")
    code, _, err = cli(
        capsys,
        "derive",
        "--credential",
        str(child),
        "--agent",
        f"{FARE}/leaf",
        "--depth",
        "0",
        "--out",
        str(tmp_path / "g.cred"),
    )
    assert code == 0, err
    code, stdout, _ = cli(capsys, "inspect", "--credential", str(tmp_path / "g.cred"))
    document = json.loads(stdout)
    assert [b["agent"] for b in document["chain"]] == [TRAVEL, FARE, f"{FARE}/leaf"]
    assert (document["depth"], document["chain"][2]["depth"]) == (2, 0)


def test_inspect_text_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: AgentCredential, root_file: Path
) -> None:
    child_file = derive_child(capsys, root_file, tmp_path / "c.cred", "--tools", "search")
    code, stdout, err = cli(capsys, "inspect", "--credential", str(child_file), "--format", "text")
    assert (code, err) == (0, "")
    assert "MAC NOT verified" in stdout.splitlines()[0]
    assert "genesis:       user alice (iss https://idp.example.org)" in stdout
    assert f"agent:         {FARE}" in stdout
    assert f"  1. {FARE}" in stdout
    assert "     tools search" in stdout
    assert "depth:         1 delegation(s)" in stdout
    assert_no_secret(stdout, root, AgentCredential.parse(child_file.read_text("utf-8")))


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda c: c.serialize(), id="raw-no-newline"),
        pytest.param(lambda c: f"  {c.serialize()}\r\n", id="raw-with-whitespace"),
        pytest.param(lambda c: json.dumps(c.serialize()) + "\n", id="jq-without-r"),
        pytest.param(
            lambda c: json.dumps(
                {"credential": c.serialize(), "credential_id": c.credential_id, "depth": 2}
            ),
            id="genesis-answer",
        ),
    ],
)
def test_credential_forms(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    root: AgentCredential,
    form: Callable[[AgentCredential], str],
) -> None:
    path = private_file(tmp_path / "in", form(root))
    code, stdout, err = cli(capsys, "inspect", "--credential", str(path))
    assert (code, err) == (0, "")
    assert json.loads(stdout)["credential_id"] == root.credential_id


def test_credential_from_stdin_and_child_to_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, root: AgentCredential
) -> None:
    feed_stdin(monkeypatch, root.serialize().encode())
    code, stdout, err = cli(capsys, "derive", "--credential", "-", "--agent", FARE, "--out", "-")
    assert (code, err) == (0, "")
    child = AgentCredential.parse(stdout)  # stdout holds the holder form and nothing else
    assert stdout == child.serialize() + "\n"
    assert child.blocks[0].raw == root.blocks[0].raw


def test_output_file_is_0600_even_over_a_readable_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root_file: Path
) -> None:
    out = tmp_path / "child.cred"
    out.write_text("old")
    out.chmod(0o644)
    old_umask = os.umask(0)  # the widest umask: the mode must not depend on it
    try:
        derive_child(capsys, root_file, out)
        headers = tmp_path / "headers.txt"
        code, _, err = cli(
            capsys,
            "headers",
            "--credential",
            str(out),
            "--url",
            f"https://{HOST}/flights/1",
            "--out",
            str(headers),
        )
        assert code == 0, err
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(headers.stat().st_mode) == 0o600


def test_a_credential_file_readable_by_others_draws_a_warning(
    capsys: pytest.CaptureFixture[str], root_file: Path
) -> None:
    root_file.chmod(0o644)
    code, _, err = cli(capsys, "inspect", "--credential", str(root_file))
    assert code == 0
    assert err == (
        f"{PREFIX}warning: {root_file} holds a secret but has mode 0644: chmod 600 {root_file}\n"
    )


def test_a_readable_file_that_is_no_credential_gets_only_the_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    path.chmod(0o644)
    code, _, err = cli(capsys, "inspect", "--credential", str(path))
    assert code == 2
    assert err == f"{PREFIX}{path}: not a credential (credential is not base64url)\n"


# --------------------------------------------------------------------------- headers


async def test_derived_credential_verifies_at_the_gateway(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    root: AgentCredential,
    root_file: Path,
    authenticator: AgentCredentialAuthenticator,
) -> None:
    child_file = derive_child(capsys, root_file, tmp_path / "c.cred", "--scope", "flights.read")
    child = AgentCredential.parse(child_file.read_text("utf-8"))
    code, stdout, err = cli(
        capsys,
        "headers",
        "--credential",
        str(child_file),
        "--url",
        f"https://{HOST}/flights/42?seat=1",
    )
    assert (code, err) == (0, "")
    assert_no_secret(stdout, root, child)
    headers = parse_header_lines(stdout)
    assert set(headers) == {"Agent-Credential", "Signature-Input", "Signature"}
    assert headers["Agent-Credential"] == child.header()

    principal = await authenticator.authenticate(
        request(headers, "GET", "/flights/42?seat=1"), facts("GET", "/flights/42")
    )
    assert principal is not None
    assert principal.subject == "alice"
    assert principal.scopes == ("flights.read",)
    assert [a.sub for a in principal.actors] == [FARE, TRAVEL]
    assert principal.token_id == child.credential_id
    # Single use: the same header lines a second time are a replay.
    with pytest.raises(Unauthorized) as caught:
        await authenticator.authenticate(
            request(headers, "GET", "/flights/42?seat=1"), facts("GET", "/flights/42")
        )
    assert "replayed" in caught.value.headers["WWW-Authenticate"]


@pytest.mark.parametrize("from_stdin", [False, True], ids=["body-file", "body-stdin"])
async def test_headers_with_a_body_carry_its_digest(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    root_file: Path,
    authenticator: AgentCredentialAuthenticator,
    from_stdin: bool,
) -> None:
    body = b'{"amount": 42}\n'
    body_arg = "-"
    if from_stdin:
        feed_stdin(monkeypatch, body)
    else:
        body_arg = _write(tmp_path, "body.json", body)
    out = tmp_path / "headers.txt"
    code, stdout, err = cli(
        capsys,
        "headers",
        "--credential",
        str(root_file),
        "--method",
        "post",
        "--url",
        f"https://{HOST}/pay",
        "--body",
        body_arg,
        "--out",
        str(out),
    )
    assert (code, stdout, err) == (0, "", "")
    headers = parse_header_lines(out.read_text("utf-8"))
    assert set(headers) == {"Agent-Credential", "Signature-Input", "Signature", "Content-Digest"}
    assert '"content-digest"' in headers["Signature-Input"]
    principal = await authenticator.authenticate(
        request(headers, "POST", "/pay", body), facts("POST", "/pay")
    )
    assert principal is not None


# --------------------------------------------------------------------------- bad input


def _write(tmp: Path, name: str, data: str | bytes) -> str:
    path = tmp / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


def _root_with(tmp: Path, **kw: Any) -> str:
    return _write(tmp, "other.cred", mint(**kw).serialize())


def _derive(*extra: str) -> Callable[[Path, str], list[str]]:
    return lambda tmp, cred: [
        "derive",
        "--credential",
        cred,
        "--agent",
        FARE,
        "--out",
        str(tmp / "out.cred"),
        *extra,
    ]


def _headers(*extra: str) -> Callable[[Path, str], list[str]]:
    return lambda tmp, cred: ["headers", "--credential", cred, *extra]


URL = f"https://{HOST}/flights/1"
Argv = Callable[[Path, str], list[str]]
BAD: list[tuple[str, Argv, str]] = [
    (
        "missing-file",
        lambda tmp, _: ["inspect", "--credential", str(tmp / "nope.cred")],
        "nope.cred: No such file or directory",
    ),
    (
        "a-folder",
        lambda tmp, _: ["inspect", "--credential", str(tmp)],
        "cannot read",
    ),
    (
        "not-a-credential",
        lambda tmp, _: ["inspect", "--credential", _write(tmp, "x", "hello world")],
        "not a credential (credential is not base64url)",
    ),
    (
        "binary-file",
        lambda tmp, _: ["inspect", "--credential", _write(tmp, "x", b"\xff\xfe\x00")],
        "not a credential (not text)",
    ),
    (
        "huge-file",
        lambda tmp, _: ["inspect", "--credential", _write(tmp, "x", "A" * 70_000)],
        "larger than 65536 bytes",
    ),
    (
        "truncated",
        lambda tmp, cred: [
            "inspect",
            "--credential",
            _write(tmp, "x", Path(cred).read_text()[:-9]),
        ],
        "not a credential",
    ),
    (
        "json-without-credential",
        lambda tmp, _: ["inspect", "--credential", _write(tmp, "x", '{"credential_id": "x"}')],
        "string 'credential'",
    ),
    (
        "malformed-json",
        lambda tmp, cred: [
            "inspect",
            "--credential",
            _write(tmp, "x", '{"credential": "' + Path(cred).read_text()),
        ],
        "not a credential (malformed JSON)",
    ),
    (
        "widening-scope",
        _derive("--scope", "flights.read admin"),
        "cannot derive: block 1 widens scope",
    ),
    ("widening-methods", _derive("--methods", "DELETE"), "cannot derive: block 1 widens methods"),
    ("over-depth", _derive("--depth", "2"), "cannot derive: block 1 widens depth"),
    ("negative-depth", _derive("--depth", "-1"), "block 1 depth must be an integer"),
    (
        "depth-exhausted",
        lambda tmp, _: _derive()(tmp, _root_with(tmp, depth=0)),
        "cannot derive: block 1: delegation depth exhausted",
    ),
    ("later-expiry", _derive("--exp", str(2**40)), "is later than the credential's expiry"),
    ("past-expiry", _derive("--exp", "1000"), "is not in the future"),
    ("zero-ttl", _derive("--ttl-s", "0"), "--ttl-s must be at least 1"),
    (
        "bad-spiffe-id",
        lambda tmp, cred: ["derive", "--credential", cred, "--agent", "travel/fare", "--out", "-"],
        "--agent 'travel/fare' is not a SPIFFE ID: scheme is not 'spiffe://'",
    ),
    (
        "spiffe-id-trailing-slash",
        lambda tmp, cred: ["derive", "--credential", cred, "--agent", f"{TRAVEL}/", "--out", "-"],
        "is not a SPIFFE ID: empty path segment",
    ),
    (
        "other-trust-domain",
        lambda tmp, cred: [
            "derive",
            "--credential",
            cred,
            "--agent",
            "spiffe://evil.org/x",
            "--out",
            "-",
        ],
        "agent is outside the trust domain example.org",
    ),
    (
        "expired-parent",
        lambda tmp, _: _derive()(tmp, _root_with(tmp, ttl_s=10, now=int(time.time()) - 60)),
        "the credential expired at ",
    ),
    (
        "unwritable-out",
        lambda tmp, cred: [
            "derive",
            "--credential",
            cred,
            "--agent",
            FARE,
            "--out",
            f"{cred}/child.cred",
        ],
        "cannot write",
    ),
    ("relative-url", _headers("--url", "/flights/1"), "--url must be absolute"),
    ("ftp-url", _headers("--url", f"ftp://{HOST}/x"), "--url must be absolute"),
    ("url-fragment", _headers("--url", f"{URL}#top"), "must not hold a fragment"),
    ("bad-method", _headers("--method", "G T", "--url", URL), "is not an HTTP method"),
    (
        "method-not-allowed",
        _headers("--method", "DELETE", "--url", URL),
        "the credential does not allow DELETE",
    ),
    ("missing-body", _headers("--url", URL, "--body", "/nonexistent/b"), "cannot read"),
    (
        "both-stdin",
        lambda tmp, _: ["headers", "--credential", "-", "--url", URL, "--body", "-"],
        "cannot both be read from stdin",
    ),
    (
        "expired-headers",
        lambda tmp, _: _headers("--url", URL)(tmp, _root_with(tmp, ttl_s=1, now=1000)),
        "the credential expired at 1970-01-01T00:16:41+00:00",
    ),
]


@pytest.mark.parametrize(("argv", "message"), [pytest.param(a, m, id=i) for i, a, m in BAD])
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    root: AgentCredential,
    root_file: Path,
    argv: Argv,
    message: str,
) -> None:
    args = argv(tmp_path, str(root_file))
    code, stdout, err = cli(capsys, *args)
    assert code == 2
    assert stdout == ""
    assert err.startswith(PREFIX), err
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.cred").exists()
    assert_no_secret(err, root)


def test_ttl_and_exp_exclude_each_other(
    capsys: pytest.CaptureFixture[str], root_file: Path
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(
            [
                "agent",
                "derive",
                "--credential",
                str(root_file),
                "--agent",
                FARE,
                "--ttl-s",
                "5",
                "--exp",
                "5",
                "--out",
                "-",
            ]
        )
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --------------------------------------------------------------------------- as a subprocess


def test_agent_help_as_the_shell_runs_it() -> None:
    def agentgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    top = agentgate("agent", "--help")
    assert top.returncode == 0, top.stderr
    for command in ("derive", "inspect", "headers"):
        assert command in top.stdout
    headers = agentgate("agent", "headers", "--help")
    assert headers.returncode == 0, headers.stderr
    assert "single use" in headers.stdout
    assert "max_skew_s" in headers.stdout
    missing = agentgate("agent", "inspect", "--credential", "/nonexistent/root.cred")
    assert missing.returncode == 2
    assert missing.stderr == (
        "agentgate agent: cannot read /nonexistent/root.cred: No such file or directory\n"
    )
