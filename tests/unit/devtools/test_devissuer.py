"""gateway.devtools.devissuer: the development issuer's key, its RFC 9068 tokens and DPoP proofs.

Tokens are checked with the gateway's own verification code (the issuer's JWKS through
:class:`gateway.authn.jwks.JWKSClient`, the RFC 9068 claim checks of the bearer method, the
RFC 9449 verifier), so "what is minted" is "what the gateway accepts".
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from gateway.authn.dpop import DPoPVerifier
from gateway.authn.jwks import JWKSClient
from gateway.authn.jwt_bearer import check_jwt_claims
from gateway.checks import dev_issuer_warnings, static_problems
from gateway.devtools.devissuer import (
    DevIssuerError,
    access_token_claims,
    cert_thumbprint,
    dpop_proof,
    jwks,
    load_existing,
    load_or_create,
    public_jwks,
    sign_access_token,
)
from gateway.devtools.devpki import init_dev_pki
from gateway.errors import ConfigError, Unauthorized
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import jwk_thumbprint
from gateway.jose.jws import b64url_encode, parse_compact
from gateway.private_files import create_exclusive
from gateway.settings import DPoPSettings, Issuer, parse_settings
from gateway.state.memory import MemoryReplayCache
from gateway.tokens.keys import generate_private_key, private_key_pem
from tests.support import ROOT

ISS = "https://dev-issuer.agentgate.invalid"
AUD = "https://gateway.example.org"


def _issuer(key: Path, **extra: Any) -> Issuer:
    return Issuer.model_validate(
        {"name": "dev", "issuer": ISS, "audience": AUD, "dev_signing_key": str(key), **extra}
    )


# --------------------------------------------------------------------------- the key file


def test_a_missing_key_is_created_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "dev-issuer.pem"
    key, created = load_or_create(path, ("ES256",))
    assert created
    assert key.alg == "ES256"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, created_again = load_or_create(path, ("ES256",))
    assert (again.kid, created_again) == (key.kid, False)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_the_mode_holds_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create(tmp_path / "k" / "dev.pem", ("ES256",))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k" / "dev.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700


def test_an_eddsa_only_issuer_gets_an_ed25519_key(tmp_path: Path) -> None:
    key, _ = load_or_create(tmp_path / "dev.pem", ("EdDSA",))
    assert key.alg == "EdDSA"


def test_concurrent_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    kids: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        kids.append(load_or_create(path, ("ES256",))[0].kid)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(kids) == 8
    assert len(set(kids)) == 1


def test_create_exclusive_never_replaces_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert create_exclusive(path, b"first")
    assert not create_exclusive(path, b"second")
    assert path.read_bytes() == b"first"


@pytest.mark.parametrize(
    ("content", "mode", "algorithms", "message"),
    [
        (b"not a key", 0o600, ("ES256",), "not an unencrypted PEM private key"),
        (None, 0o640, ("ES256",), "readable by group/others"),
        (None, 0o604, ("ES256",), "readable by group/others"),
        (None, 0o600, ("EdDSA",), "an ES256 key, but the issuer allows ['EdDSA']"),
    ],
    ids=["garbage", "group-readable", "world-readable", "wrong-algorithm"],
)
def test_an_unusable_key_file_is_refused_naming_the_file(
    tmp_path: Path, content: bytes | None, mode: int, algorithms: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "dev.pem"
    pem = private_key_pem(generate_private_key("ES256"))
    path.write_bytes(pem if content is None else content)
    path.chmod(mode)
    with pytest.raises(DevIssuerError) as caught:
        load_or_create(path, algorithms)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "PRIVATE" not in str(caught.value)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"jwks_uri": "https://idp.example.org/jwks"}, "dev_signing_key excludes jwks_uri"),
        ({"algorithms": ["RS256"]}, "dev_signing_key needs ES256 or EdDSA"),
    ],
    ids=["with-jwks-uri", "no-usable-algorithm"],
)
def test_settings_refuse_a_dev_key_with_other_sources(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _issuer(tmp_path / "dev.pem", **extra)


def test_settings_take_a_missing_dev_key_relative_to_the_config(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "issuers": [
                {"name": "dev", "issuer": ISS, "audience": AUD, "dev_signing_key": "keys/d.pem"}
            ]
        },
        tmp_path,
    )
    assert settings.issuers[0].dev_signing_key == tmp_path / "keys" / "d.pem"
    assert not (tmp_path / "keys").exists()  # parsing creates nothing


def test_check_config_warns_and_accepts_a_missing_key(tmp_path: Path) -> None:
    settings = parse_settings(
        {"issuers": [{"name": "dev", "issuer": ISS, "audience": AUD, "dev_signing_key": "k.pem"}]},
        tmp_path,
    )
    assert static_problems(settings) == []
    [(key, message)] = dev_issuer_warnings(settings)
    assert key == "issuers.0.dev_signing_key"
    assert "'dev' is a development issuer" in message
    assert "will be created at the first start" in message
    assert not (tmp_path / "k.pem").exists()
    (tmp_path / "k.pem").write_text("garbage")
    (tmp_path / "k.pem").chmod(0o600)
    [(key, message)] = static_problems(settings)
    assert key == "issuers.0.dev_signing_key"
    assert "not an unencrypted PEM private key" in message


# --------------------------------------------------------------------------- tokens


async def _verify(issuer: Issuer, token: str) -> dict[str, Any]:
    """The bearer method's own steps: the issuer's keys by kid, signature, RFC 9068 claims."""
    client = JWKSClient(issuer, dev_keys=public_jwks)
    await client.start()
    jws = parse_compact(token, max_bytes=8192, header_cache={})
    key = await client.get_key(jws.kid, jws.alg)
    key.verify(jws.alg, jws.signing_input, jws.signature)
    claims = jws.claims()
    check_jwt_claims(claims, issuer, time.time())
    return {"header": jws.header, "claims": claims}


async def test_a_minted_token_verifies_with_the_issuer_jwks(tmp_path: Path) -> None:
    issuer = _issuer(tmp_path / "dev.pem")
    key, _ = load_or_create(tmp_path / "dev.pem", issuer.algorithms)
    claims = access_token_claims(
        issuer=ISS, audience=AUD, sub="alice", scopes=["a b", "c a"], actors=["agent-1", "agent-0"]
    )
    seen = await _verify(issuer, sign_access_token(key, claims))
    assert seen["header"] == {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    got = seen["claims"]
    assert {k: got[k] for k in ("iss", "sub", "aud", "client_id", "scope")} == {
        "iss": ISS,
        "sub": "alice",
        "aud": AUD,
        "client_id": "agent-1",  # the current actor
        "scope": "a b c",
    }
    assert got["act"] == {"sub": "agent-1", "act": {"sub": "agent-0"}}  # RFC 8693 §4.1
    assert got["exp"] - got["iat"] == 300
    assert len(got["jti"]) == 36
    assert "cnf" not in got


async def test_a_token_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    issuer = _issuer(tmp_path / "dev.pem")
    other, _ = load_or_create(tmp_path / "other.pem", issuer.algorithms)
    token = sign_access_token(other, access_token_claims(issuer=ISS, audience=AUD, sub="alice"))
    with pytest.raises(JOSEError, match="unknown signing key"):
        await _verify(issuer, token)


def test_claims_without_actors_name_the_cli_as_client_and_carry_bindings() -> None:
    claims = access_token_claims(
        issuer=ISS, audience=AUD, sub="alice", jkt="thumb", x5t_s256="x5t", now=1000, ttl_s=60
    )
    assert claims["client_id"] == "agentgate-dev-cli"
    assert claims["cnf"] == {"jkt": "thumb", "x5t#S256": "x5t"}
    assert (claims["iat"], claims["exp"]) == (1000, 1060)
    assert "scope" not in claims
    assert "act" not in claims


@pytest.mark.parametrize("ttl", [0, -5, 3601])
def test_the_lifetime_is_bounded(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        access_token_claims(issuer=ISS, audience=AUD, sub="alice", ttl_s=ttl)


def test_the_jwks_holds_only_public_members(tmp_path: Path) -> None:
    key, _ = load_or_create(tmp_path / "dev.pem", ("ES256",))
    [jwk] = jwks(key)["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert jwk["kid"] == jwk_thumbprint(jwk)


# --------------------------------------------------------------------------- DPoP


async def test_a_dpop_proof_passes_the_gateway_verifier(tmp_path: Path) -> None:
    holder, _ = load_or_create(tmp_path / "dpop.pem", ("ES256",))
    verifier = DPoPVerifier(DPoPSettings(), MemoryReplayCache())
    url = "http://127.0.0.1:8080/flights/dpop/42"
    proof = dpop_proof(holder, htm="get", htu=url + "?q=1#frag", access_token="tok")
    result = await verifier.verify_proof(
        proof, htm="GET", htu=url, access_token="tok", jkt=holder.kid
    )
    assert result.jkt == holder.kid  # the kid is the RFC 7638 thumbprint: cnf.jkt
    header = parse_compact(proof, max_bytes=8192, header_cache={}).header
    assert header["typ"] == "dpop+jwt"
    assert set(header["jwk"]) == {"kty", "crv", "x", "y"}  # public members only
    claims = parse_compact(proof, max_bytes=8192, header_cache={}).claims()
    assert claims["htu"] == url  # query and fragment dropped (RFC 9449 §4.2)
    assert claims["ath"] == b64url_encode(hashlib.sha256(b"tok").digest())


@pytest.mark.parametrize(
    ("htm", "htu", "token", "message"),
    [
        ("POST", "http://127.0.0.1:8080/flights/dpop/42", "tok", "htm does not match"),
        ("GET", "http://127.0.0.1:8080/flights/dpop/43", "tok", "htu does not match"),
        ("GET", "http://127.0.0.1:8080/flights/dpop/42", "other", "ath does not match"),
    ],
    ids=["method", "url", "token"],
)
async def test_a_proof_for_another_request_is_refused(
    tmp_path: Path, htm: str, htu: str, token: str, message: str
) -> None:
    holder, _ = load_or_create(tmp_path / "dpop.pem", ("ES256",))
    verifier = DPoPVerifier(DPoPSettings(), MemoryReplayCache())
    proof = dpop_proof(holder, htm=htm, htu=htu, access_token=token)
    with pytest.raises(Unauthorized) as caught:
        await verifier.verify_proof(
            proof,
            htm="GET",
            htu="http://127.0.0.1:8080/flights/dpop/42",
            access_token="tok",
            jkt=holder.kid,
        )
    assert caught.value.status == 401
    assert message in str(caught.value)


def test_dpop_proof_refuses_a_relative_url(tmp_path: Path) -> None:
    holder, _ = load_or_create(tmp_path / "dpop.pem", ("ES256",))
    with pytest.raises(ValueError, match="absolute"):
        dpop_proof(holder, htm="GET", htu="/flights/42")


# --------------------------------------------------------------------------- certificates


def test_cert_thumbprint_is_x5t_s256_of_the_der(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", trust_domain="example.org", agents=("travel",))
    cert_file = pki.agents["travel"].cert
    der = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert cert_thumbprint(cert_file) == b64url_encode(hashlib.sha256(der).digest())
    with pytest.raises(DevIssuerError, match="not a PEM certificate"):
        cert_thumbprint(pki.agents["travel"].key)


# --------------------------------------------------------------------------- git


@pytest.mark.parametrize("name", ["dev-issuer.pem", "dev-dpop-client.pem"])
def test_the_shipped_key_locations_are_git_ignored(name: str) -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", f"config/keys/{name}"],
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, f"config/keys/{name} is not git-ignored"


@pytest.mark.parametrize("config", ["gateway.yaml", "gateway.mtls.yaml"])
def test_the_shipped_configs_share_one_dev_key_in_an_ignored_place(config: str) -> None:
    path = ROOT / "config" / config
    issuers = yaml.safe_load(path.read_text("utf-8"))["issuers"]
    [dev] = [Issuer.model_validate(i, context={"base_dir": path.parent}) for i in issuers]
    assert dev.dev_signing_key == ROOT / "config" / "keys" / "dev-issuer.pem"
    assert (dev.name, dev.issuer, dev.audience) == ("dev", ISS, AUD)


def test_load_existing_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(DevIssuerError, match="cannot read"):
        load_existing(tmp_path / "absent.pem", ("ES256",))
    assert not (tmp_path / "absent.pem").exists()


async def test_jwks_client_maps_a_bad_key_to_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    path.write_text("garbage")
    path.chmod(0o600)
    client = JWKSClient(_issuer(path), dev_keys=public_jwks)
    with pytest.raises(ConfigError) as caught:
        await client.start()
    assert caught.value.lines()[0].startswith("issuers.dev.dev_signing_key: ")


async def test_the_dev_issuer_is_announced_once_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = _issuer(tmp_path / "keys" / "dev.pem")
    with caplog.at_level("INFO", logger="agentgate.authn.jwks"):
        for _ in range(2):  # two bearer methods on one issuer, or a reload
            await JWKSClient(issuer, dev_keys=public_jwks).start()
    warnings = [r for r in caplog.records if "DEVELOPMENT issuer" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert "issuer dev is a DEVELOPMENT issuer" in warnings[0].getMessage()
    assert str(tmp_path / "keys" / "dev.pem") in warnings[0].getMessage()
    assert "PRIVATE KEY" not in caplog.text


async def test_without_the_wired_loader_a_dev_issuer_is_a_config_error(tmp_path: Path) -> None:
    # Authentication never imports the dev tools: only the composition root hands them in.
    with pytest.raises(ConfigError) as caught:
        await JWKSClient(_issuer(tmp_path / "k.pem")).start()
    assert caught.value.lines() == [
        "issuers.dev.dev_signing_key: no development key loader was wired in"
    ]
    assert not (tmp_path / "k.pem").exists()  # nothing was created either
