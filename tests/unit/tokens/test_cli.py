"""gateway.tokens.cli: ``agentgate keys ...`` and ``agentgate token ...``."""

from __future__ import annotations

import argparse
import io
import json
import stat
from pathlib import Path

import pytest

from gateway.sdk.txn import decode_unverified
from gateway.tokens.cli import add_subcommands, dispatch
from gateway.tokens.keys import load_private_key


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="agentgate")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    return dispatch(parser.parse_args(list(argv)))


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_keys_generate(tmp_path: Path, alg: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k.pem"
    assert run("keys", "generate", "--alg", alg, "--out", str(out)) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_private_key(out)
    assert key.alg == alg
    assert key.kid in capsys.readouterr().out
    assert run("keys", "generate", "--alg", alg, "--out", str(out)) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert run("keys", "generate", "--alg", alg, "--out", str(out), "--force") == 0
    assert load_private_key(out).kid != key.kid


def _mint(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, Path]:
    key = tmp_path / "dev.pem"
    if not key.exists():
        assert run("keys", "generate", "--out", str(key)) == 0
    capsys.readouterr()
    rc = run(
        "token",
        "mint",
        "--key",
        str(key),
        "--sub",
        "alice",
        "--scope",
        "a b",
        "--scope",
        "c",
        "--aud",
        "example.org",
        "--iss",
        "https://dev",
        *extra,
    )
    assert rc == 0
    return capsys.readouterr().out.strip(), key


def test_mint_inspect_verify_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token, key = _mint(
        tmp_path,
        capsys,
        "--actor",
        "spiffe://example.org/agent/planner",
        "--tctx",
        '{"route": "demo"}',
        "--ttl",
        "120",
    )
    header, claims = decode_unverified(token)
    assert header["typ"] == "txntoken+jwt"
    assert header["kid"] == load_private_key(key).kid
    assert claims["sub"] == "alice"
    assert claims["scope"] == "a b c"
    assert claims["aud"] == "example.org"
    assert claims["exp"] - claims["iat"] == 120
    assert claims["act"] == {"sub": "spiffe://example.org/agent/planner"}
    assert claims["tctx"] == {"subject_type": "user", "route": "demo"}

    assert run("token", "inspect", token) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("UNVERIFIED")
    assert '"sub": "alice"' in shown

    jwks = tmp_path / "jwks.json"
    assert run("keys", "jwks", str(key)) == 0
    jwks.write_text(capsys.readouterr().out)
    assert json.loads(jwks.read_text())["keys"][0]["kid"] == header["kid"]
    assert (
        run(
            "token",
            "verify",
            token,
            "--jwks",
            str(jwks),
            "--audience",
            "example.org",
            "--issuer",
            "https://dev",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED")
    assert '"txn"' in out
    assert run("token", "verify", token, "--jwks", str(jwks), "--audience", "other.org") == 1
    assert "wrong_audience" in capsys.readouterr().err


def test_token_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = _mint(tmp_path, capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert run("token", "inspect", "-") == 0
    assert "UNVERIFIED" in capsys.readouterr().out


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("token", "inspect", "garbage") == 1
    key = tmp_path / "k.pem"
    run("keys", "generate", "--out", str(key))
    capsys.readouterr()
    assert run("token", "mint", "--key", str(key), "--sub", "a", "--aud", "x", "--ttl", "301") == 2
    assert run("token", "mint", "--key", str(key), "--sub", "a", "--aud", "x", "--tctx", "[1]") == 2
    assert (
        run("token", "mint", "--key", str(tmp_path / "missing.pem"), "--sub", "a", "--aud", "x")
        == 2
    )
