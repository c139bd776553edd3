"""The ``agentgate`` command line (DESIGN.md §3).

What an operator runs is checked as ``python -m gateway`` in a subprocess (exit codes, stdout
and stderr as the shell sees them); finer cases call :func:`gateway.cli.main` in-process, which
is the same argument parsing and error printing without an interpreter start per case.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.support import ROOT, subprocess_env

EXAMPLE_ENV = {
    "BILLING_KEY": "billing-key",
    "ERP_PASSWORD": "erp-password",
    "LEGACY_AGENT_SECRET": "0123456789abcdef0123456789abcdef",
    "ADMIN_TOKEN": "admin-token",
    "OAUTH_CLIENT_SECRET": "oauth-secret",
}


def agentgate(
    *args: str, timeout: float = 60, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**subprocess_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- as a subprocess


def test_check_config_accepts_the_shipped_dev_config() -> None:
    result = agentgate("check-config", "-c", "config/gateway.yaml")
    assert result.returncode == 0, result.stderr
    # Its one warning: the development issuer (dev access tokens, issue 15.5).
    [line] = result.stderr.splitlines()
    assert line.startswith("warning: issuers.0.dev_signing_key: issuer 'dev' is a development")


def test_the_shipped_mtls_dev_config_works_after_certs_init(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("keys"))
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    config = "config/gateway.mtls.yaml"
    missing = agentgate("check-config", "-c", config, cwd=tmp_path)
    assert missing.returncode == 2
    assert "server.tls.cert: file not found" in missing.stderr
    init = ("certs", "init", "--dir", "config/certs", "--agent", "travel")
    assert agentgate(*init, cwd=tmp_path).returncode == 0
    result = agentgate("check-config", "-c", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "will be created at the first start" in result.stderr
    assert not (tmp_path / "config" / "keys").exists()  # check-config creates no key


def test_example_config_works_after_its_documented_setup(tmp_path: Path) -> None:
    """The example names generated files and environment secrets; its header says how."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    example = "config/gateway.example.yaml"
    missing = agentgate("check-config", "-c", example, cwd=tmp_path)
    assert missing.returncode == 2
    assert "routes.1.credential.secret: environment variable BILLING_KEY is not set" in (
        missing.stderr.splitlines()
    )
    setup = [
        ("certs", "init", "--dir", "config/certs", "--agent", "travel"),
        ("keys", "generate", "--out", "config/keys/txn-signing.pem"),
    ]
    for command in setup:
        assert agentgate(*command, cwd=tmp_path).returncode == 0
    result = agentgate("check-config", "-c", example, cwd=tmp_path, env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    for value in EXAMPLE_ENV.values():
        assert value not in result.stdout + result.stderr


def test_check_config_reports_a_misspelt_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  listne: 127.0.0.1:8443\n")
    result = agentgate("check-config", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["server.listne: unknown key"]
    assert result.stdout == ""


def test_check_config_reports_invalid_yaml_with_a_line_number(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:8443\n   bad_indent: 1\n")
    result = agentgate("check-config", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{config}: invalid YAML at line 3, column 14"]


def test_config_schema_prints_json_schema() -> None:
    result = agentgate("config-schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False
    for key in ("server", "routes", "authn", "issuers", "pdp"):
        assert key in schema["properties"]


def test_run_with_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  listne: 127.0.0.1:0\n")
    result = agentgate("run", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["server.listne: unknown key"]


def test_run_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "gateway.yaml"
        config.write_text(f"server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:0\n")
        result = agentgate("run", "-c", str(config))
    assert result.returncode == 1
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- in-process


def test_check_config_defaults_to_config_gateway_yaml(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = run_main(capsys, "check-config")
    assert code == 0, err
    assert "config/gateway.yaml" in out


def test_check_config_prints_every_error_one_per_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  listne: x\n  admin_listen: nowhere\nroutes:\n  - name: r\n")
    code, out, err = run_main(capsys, "check-config", "-c", str(config))
    assert code == 2
    assert out == ""
    assert sorted(err.splitlines()) == sorted(
        [
            "server.listne: unknown key",
            "server.admin_listen: must be 'host:port' with a port in 0..65535",
            "routes.0.upstream: required key is missing",
        ]
    )


def test_check_config_never_prints_a_secret_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "issuers:\n"
        "  - name: corp\n    issuer: https://idp\n    audience: gw\n"
        "    introspection:\n      endpoint: https://idp/introspect\n      client_id: gw\n"
        "      client_secret: hunter2-inline-value\n"
    )
    code, out, err = run_main(capsys, "check-config", "-c", str(config))
    assert code == 2
    assert "hunter2-inline-value" not in out + err
    assert "issuers.0.introspection.client_secret: " in err


def test_check_config_missing_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, "check-config", "-c", str(tmp_path / "absent.yaml"))
    assert code == 2
    assert "absent.yaml" in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert capsys.readouterr().err


@pytest.mark.parametrize("given", ["debug", "Info", "WARNING", "error"])
def test_log_level_is_case_insensitive(given: str) -> None:
    from gateway.cli import _parser

    assert _parser().parse_args(["run", "--log-level", given]).log_level == given.upper()


def test_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--log-level", "loud"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
