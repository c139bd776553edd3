"""``check-config`` catches what ``run`` would refuse (issue 15.2), and start-up errors are
one line each on stderr with exit 2 (issue 15.3).

Each case is a configuration that passed ``check-config`` in 0.1 and then failed ``run``
(or ran and misbehaved): a policy that does not compile, an expired / not yet valid /
mismatched certificate, an empty file, a PDP URL that does not parse, a malformed JWKS or
credential file. ``--strict`` connects to what the gateway will call.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.checks import certificate_problems, reachability, static_problems
from gateway.cli import main
from gateway.settings import parse_settings
from tests.support import ROOT, closed_port, subprocess_env

NOW = dt.datetime.now(dt.UTC)


def _cert(path: Path, *, not_before: dt.datetime, not_after: dt.datetime) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = path.with_suffix(".pem"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _base(**extra: Any) -> dict[str, Any]:
    return {"server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}, **extra}


def _check(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str, str]:
    code = main(["check-config", "-c", str(path), *flags])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- certificates


@pytest.mark.parametrize(
    ("not_before", "not_after", "expected"),
    [
        pytest.param(
            NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=1), "expired on", id="expired"
        ),
        pytest.param(
            NOW + dt.timedelta(days=1),
            NOW + dt.timedelta(days=2),
            "not valid before",
            id="not-yet-valid",
        ),
    ],
)
def test_certificate_outside_its_validity_is_reported(
    tmp_path: Path, not_before: dt.datetime, not_after: dt.datetime, expected: str
) -> None:
    cert, key = _cert(tmp_path / "server", not_before=not_before, not_after=not_after)
    problems = certificate_problems("server.tls", cert, key, NOW)
    assert problems == [("server.tls.cert", problems[0][1])]
    assert expected in problems[0][1]
    assert str(cert) in problems[0][1]


def test_certificate_that_does_not_match_its_key_is_reported(tmp_path: Path) -> None:
    window = {"not_before": NOW - dt.timedelta(days=1), "not_after": NOW + dt.timedelta(days=1)}
    cert, _ = _cert(tmp_path / "a", **window)
    _, other_key = _cert(tmp_path / "b", **window)
    assert certificate_problems("server.tls", cert, other_key, NOW) == [
        ("server.tls.key", f"{other_key}: does not match the certificate {cert}")
    ]


def test_a_valid_pair_has_no_problem(tmp_path: Path) -> None:
    cert, key = _cert(
        tmp_path / "ok", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=1)
    )
    assert certificate_problems("server.tls", cert, key, NOW) == []


def test_garbage_key_file_is_named_but_never_echoed(tmp_path: Path) -> None:
    cert, key = _cert(
        tmp_path / "ok", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=1)
    )
    key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n-----END PRIVATE KEY-----\n")
    [(where, message)] = certificate_problems("server.tls", cert, key, NOW)
    assert where == "server.tls.key"
    assert "c2VjcmV0LXZhbHVl" not in message
    assert str(key) in message


def test_check_config_reports_an_expired_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = _cert(
        tmp_path / "server",
        not_before=NOW - dt.timedelta(days=10),
        not_after=NOW - dt.timedelta(days=1),
    )
    tls = {"cert": str(cert), "key": str(key), "client_cert": "off"}
    config = _base()
    config["server"]["tls"] = tls
    code, out, err = _check(capsys, _write(tmp_path, config))
    assert code == 2
    assert out == ""
    assert err.startswith("server.tls.cert: ")
    assert "expired on" in err


# --------------------------------------------------------------------------- policies


def _broken_policies(tmp_path: Path) -> tuple[Path, int]:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    rego = policies / "agentgate" / "rbac" / "rbac.rego"
    text = rego.read_text()
    rego.write_text(text + "\nbroken := {\n")
    return rego, text.count("\n") + 2


def test_check_config_reports_rego_that_does_not_compile_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rego, line = _broken_policies(tmp_path)
    config = _base(pdp={"engine": "embedded", "policies": "policies", "data": "policies/data.json"})
    code, out, err = _check(capsys, _write(tmp_path, config))
    assert code == 2
    assert out == ""
    assert f"pdp.policies: {rego}:{line}: this is unclosed" in err.splitlines()


def test_static_problems_is_empty_for_the_shipped_policies() -> None:
    settings = parse_settings(
        _base(pdp={"engine": "embedded", "policies": "policies", "data": "policies/data.json"}),
        ROOT,
    )
    assert static_problems(settings) == []


def test_run_with_a_broken_policy_prints_one_line_per_error_and_exits_2(tmp_path: Path) -> None:
    rego, line = _broken_policies(tmp_path)
    config = _base(pdp={"engine": "embedded", "policies": "policies", "data": "policies/data.json"})
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(_write(tmp_path, config))],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""  # rego-cpp's own error dump no longer lands on stdout
    assert "Traceback" not in result.stderr
    assert "Unclosed client session" not in result.stderr
    assert f"agentgate: cannot start: {rego}:{line}: this is unclosed" in result.stderr.splitlines()
    assert all(ln.startswith("agentgate: cannot start: ") for ln in result.stderr.splitlines())


# --------------------------------------------------------------------------- files and URLs


def test_check_config_refuses_an_empty_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("# nothing but a comment\n")
    code, _, err = _check(capsys, path)
    assert code == 2
    assert err == f"{path}: the configuration file is empty\n"


@pytest.mark.parametrize(
    "url", ["ht!tp://::nope", "opa:8181", "http://", "http://127.0.0.1:99999", "ftp://127.0.0.1"]
)
def test_check_config_refuses_a_pdp_url_that_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, _, err = _check(capsys, _write(tmp_path, _base(pdp={"engine": "opa", "url": url})))
    assert code == 2
    assert err.startswith("pdp.url: ")


@pytest.mark.parametrize(
    ("url", "code"), [("redis://127.0.0.1:6379/0", 0), ("redis//nohost", 2), ("http://x", 2)]
)
def test_check_config_checks_the_redis_url_scheme(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    code: int,
) -> None:
    monkeypatch.setenv("AGENTGATE_TEST_REDIS_URL", url)
    state = {"backend": "redis", "redis_url": "env:AGENTGATE_TEST_REDIS_URL"}
    got, _, err = _check(capsys, _write(tmp_path, _base(state=state)))
    assert got == code, err
    if code:
        assert err.startswith("state.redis_url: ")
        assert url not in err  # the URL may carry a password: never echoed


def test_check_config_refuses_a_malformed_jwks_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "EC", "crv": "P-256"')
    config = _base(
        issuers=[
            {"name": "corp", "issuer": "https://idp", "jwks_file": "jwks.json", "audience": "gw"}
        ],
        authn={"bearer": {"issuers": ["corp"]}},
    )
    code, _, err = _check(capsys, _write(tmp_path, config))
    assert code == 2
    assert "jwks.json" in err


def test_check_config_refuses_a_malformed_credential_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys.yaml").write_text("keys:\n  - id: a\n    sha256: not-hex\n")
    config = _base(authn={"api_key": {"keys_file": "keys.yaml"}})
    code, _, err = _check(capsys, _write(tmp_path, config))
    assert code == 2
    assert err.strip()
    assert "Traceback" not in err


# --------------------------------------------------------------------------- --strict


async def test_strict_reports_each_unreachable_dependency(tmp_path: Path) -> None:
    dead = closed_port()
    settings = parse_settings(
        _base(
            pdp={"engine": "opa", "url": f"http://127.0.0.1:{dead}"},
            issuers=[
                {
                    "name": "corp",
                    "issuer": "https://idp",
                    "jwks_uri": f"http://127.0.0.1:{dead}/jwks.json",
                    "audience": "gw",
                }
            ],
        ),
        tmp_path,
    )
    problems = await reachability(settings, timeout_s=2)
    assert [key for key, _ in problems] == ["pdp.url", "issuers.0.jwks_uri"]
    assert all(message.startswith("unreachable: ") for _, message in problems)


def test_strict_passes_when_nothing_is_called(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _check(capsys, _write(tmp_path, _base()), "--strict")
    assert code == 0
    assert "dependencies reachable" in out


# --------------------------------------------------------------------------- warnings


def test_a_route_without_segment_that_no_flow_reaches_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pdp = {
        "engine": "embedded",
        "policies": str(ROOT / "policies"),
        "data": str(ROOT / "policies" / "data.json"),
    }
    routes = [
        {"name": "a", "match": {"path_prefix": "/a/"}, "upstream": "http://127.0.0.1:9"},
        {
            "name": "b",
            "match": {"path_prefix": "/b/"},
            "upstream": "http://127.0.0.1:9",
            "segment": "booking",
        },
    ]
    code, out, err = _check(capsys, _write(tmp_path, _base(pdp=pdp, routes=routes)))
    assert code == 0  # valid, only probably not meant
    assert "ok (2 route(s))" in out
    [line] = err.splitlines()
    assert line.startswith("warning: routes.0.segment: not set, so 'default'")
    assert "segments:lateral_movement" in line
