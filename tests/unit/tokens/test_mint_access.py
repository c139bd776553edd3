"""``agentgate token mint-access`` and ``agentgate token dpop-proof`` (gateway/tokens/cli.py).

Run through :func:`gateway.cli.main` (the real argument parser) against a copy of the shipped
``config/gateway.yaml``; the tokens are decoded here and verified by a real gateway in
``tests/integration/test_dev_tokens.py``.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.devtools.devissuer import cert_thumbprint
from gateway.devtools.devpki import init_dev_pki
from gateway.sdk.txn import decode_unverified
from gateway.tokens.keys import load_private_key
from tests.support import ROOT


@pytest.fixture
def config(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("keys"))
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    return tmp_path / "config" / "gateway.yaml"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_mint_access_creates_the_key_and_prints_one_rfc9068_token(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = config.parent / "keys" / "dev-issuer.pem"
    code, out, err = cli(
        capsys, "token", "mint-access", "-c", str(config), "--sub", "alice",
        "--scope", "flights.read flights.book", "--act", "travel-agent",
    )  # fmt: skip
    assert code == 0, err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert f"created the development issuer key {key_file} (mode 0600)" in err
    token = out.strip()
    assert out.count("\n") == 1
    header, claims = decode_unverified(token)
    assert header == {"alg": "ES256", "kid": load_private_key(key_file).kid, "typ": "at+jwt"}
    assert claims["iss"] == "https://dev-issuer.agentgate.invalid"
    assert claims["aud"] == "https://gateway.example.org"
    assert claims["sub"] == "alice"
    assert claims["scope"] == "flights.read flights.book"
    assert claims["act"] == {"sub": "travel-agent"}
    assert claims["client_id"] == "travel-agent"
    assert {"iat", "exp", "jti"} <= set(claims)
    assert "PRIVATE" not in out + err
    # The second run keeps the key and says nothing about it.
    code, out2, err2 = cli(capsys, "token", "mint-access", "-c", str(config), "--sub", "bob")
    assert (code, err2) == (0, "")
    assert decode_unverified(out2.strip())[0]["kid"] == header["kid"]


def test_dpop_binds_the_token_to_the_client_key_and_headers_carry_a_proof(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:8080/flights/dpop/42"
    code, out, err = cli(
        capsys, "token", "mint-access", "-c", str(config), "--sub", "alice", "--dpop",
        "--headers", "--htu", url,
    )  # fmt: skip
    assert code == 0, err
    dpop_key = config.parent / "keys" / "dev-dpop-client.pem"
    assert stat.S_IMODE(dpop_key.stat().st_mode) == 0o600
    auth, proof_line = out.splitlines()
    assert auth.startswith("Authorization: DPoP ")
    assert proof_line.startswith("DPoP: ")
    _, claims = decode_unverified(auth.removeprefix("Authorization: DPoP "))
    assert claims["cnf"] == {"jkt": load_private_key(dpop_key).kid}
    proof_header, proof = decode_unverified(proof_line.removeprefix("DPoP: "))
    assert proof_header["typ"] == "dpop+jwt"
    assert (proof["htm"], proof["htu"]) == ("GET", url)
    assert "ath" in proof
    # dpop-proof: a new proof (new jti) for the same key, with ath when a token is given.
    code, out, err = cli(
        capsys, "token", "dpop-proof", "-c", str(config), "--htu", url, "--htm", "post",
    )  # fmt: skip
    assert code == 0, err
    header, again = decode_unverified(out.strip())
    assert header["jwk"] == proof_header["jwk"]
    assert again["jti"] != proof["jti"]
    assert again["htm"] == "POST"
    assert "ath" not in again


def test_cnf_cert_binds_to_the_certificate_thumbprint(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = init_dev_pki(tmp_path / "pki", trust_domain="example.org", agents=("travel",))
    cert = pki.agents["travel"].cert
    code, out, err = cli(
        capsys, "token", "mint-access", "-c", str(config), "--sub", "alice",
        "--cnf-cert", str(cert), "--headers",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("Authorization: Bearer ")
    _, claims = decode_unverified(out.strip().removeprefix("Authorization: Bearer "))
    assert claims["cnf"] == {"x5t#S256": cert_thumbprint(cert)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--issuer", "nope"], "no issuer named 'nope'"),
        (["--dpop", "--headers"], "--dpop --headers needs --htu URL"),
        (["--htu", "http://127.0.0.1/"], "--htu goes with --headers"),
        (["--ttl", "7200"], "ttl must be 1..3600 seconds"),
        (["--cnf-cert", "/nonexistent.pem"], "/nonexistent.pem: cannot read"),
    ],
    ids=["unknown-issuer", "dpop-headers-without-htu", "htu-alone", "ttl", "missing-cert"],
)
def test_usage_errors_exit_2_with_one_line(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = cli(capsys, "token", "mint-access", "-c", str(config), "--sub", "alice", *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (config.parent / "keys").exists()  # refused before any key file is made


def test_an_issuer_without_dev_signing_key_is_never_signed_for(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(config.read_text())
    doc["issuers"].append(
        {
            "name": "corp",
            "issuer": "https://idp.example.org",
            "jwks_file": "corp-jwks.json",
            "audience": "https://gateway.example.org",
        }
    )
    (config.parent / "corp-jwks.json").write_text('{"keys": []}')
    config.write_text(yaml.safe_dump(doc))
    code, out, err = cli(
        capsys, "token", "mint-access", "-c", str(config), "--issuer", "corp", "--sub", "x"
    )
    assert code == 2
    assert out == ""
    assert "issuer 'corp' is not a development issuer (no dev_signing_key)" in err


def test_a_config_without_a_dev_issuer_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server: {listen: 127.0.0.1:0}\n")
    code, out, err = cli(capsys, "token", "mint-access", "-c", str(config), "--sub", "alice")
    assert code == 2
    assert out == ""
    assert "want one issuer with dev_signing_key (or --issuer), found none" in err
    assert not (tmp_path / "keys").exists()
