"""gateway.net.spiffe: SPIFFE ID syntax and X.509-SVID leaf rules (SPECS.md §11.1-§11.2)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.net.spiffe import InvalidSpiffeID, parse_spiffe_id, peer_from_der

# ---------------------------------------------------------------------------------------------
# parse_spiffe_id

VALID_IDS = [
    pytest.param(
        "spiffe://agents.example.net/agent/planner",
        ("agents.example.net", "/agent/planner"),
        id="typical",
    ),
    pytest.param("spiffe://td/a", ("td", "/a"), id="one-segment"),
    pytest.param("spiffe://a-b_c.9/A.b-C_d/x", ("a-b_c.9", "/A.b-C_d/x"), id="all-char-classes"),
    pytest.param("spiffe://td/...", ("td", "/..."), id="three-dots-is-a-name"),
    pytest.param("spiffe://td/.hidden", ("td", "/.hidden"), id="leading-dot-name"),
    pytest.param("spiffe://" + "t" * 255 + "/a", ("t" * 255, "/a"), id="trust-domain-at-255-bytes"),
    pytest.param(
        "spiffe://td/" + "a" * (2048 - len("spiffe://td/")),
        ("td", "/" + "a" * (2048 - len("spiffe://td/"))),
        id="id-at-2048-bytes",
    ),
]

INVALID_IDS = [
    pytest.param("", id="empty"),
    pytest.param("SPIFFE://td/a", id="uppercase-scheme"),
    pytest.param("Spiffe://td/a", id="mixed-case-scheme"),
    pytest.param("https://td/a", id="wrong-scheme"),
    pytest.param("spiffe:td/a", id="no-authority"),
    pytest.param("spiffe:///a", id="empty-trust-domain"),
    pytest.param("spiffe://TD/a", id="uppercase-trust-domain"),
    pytest.param("spiffe://td:8443/a", id="port"),
    pytest.param("spiffe://user@td/a", id="userinfo"),
    pytest.param("spiffe://td/a?x=1", id="query"),
    pytest.param("spiffe://td/a#frag", id="fragment"),
    pytest.param("spiffe://td?x=1", id="query-on-trust-domain"),
    pytest.param("spiffe://td/a/../b", id="dotdot-segment"),
    pytest.param("spiffe://td/a/./b", id="dot-segment"),
    pytest.param("spiffe://td/..", id="only-dotdot"),
    pytest.param("spiffe://td/a/", id="trailing-slash"),
    pytest.param("spiffe://td/", id="root-path"),
    pytest.param("spiffe://td//a", id="empty-segment"),
    pytest.param("spiffe://td/a%2Fb", id="percent-escape"),
    pytest.param("spiffe://td/a b", id="space"),
    pytest.param("spiffe://td/a:b", id="colon-in-path"),
    pytest.param("spiffe://tdé/a", id="non-ascii-trust-domain"),
    pytest.param("spiffe://td/é", id="non-ascii-path"),
    pytest.param("spiffe://[::1]/a", id="ip-literal"),
    pytest.param("spiffe://" + "t" * 256 + "/a", id="trust-domain-256-bytes"),
    pytest.param("spiffe://td/" + "a" * (2049 - len("spiffe://td/")), id="id-2049-bytes"),
    pytest.param("spiffe://td", id="no-path-for-leaf"),
]


@pytest.mark.parametrize(("uri", "expected"), VALID_IDS)
def test_parse_valid(uri: str, expected: tuple[str, str]) -> None:
    assert parse_spiffe_id(uri) == expected


@pytest.mark.parametrize("uri", INVALID_IDS)
def test_parse_invalid(uri: str) -> None:
    with pytest.raises(InvalidSpiffeID):
        parse_spiffe_id(uri)


def test_trust_domain_id_allowed_when_path_not_required() -> None:
    assert parse_spiffe_id("spiffe://td", require_path=False) == ("td", "")
    with pytest.raises(InvalidSpiffeID):
        parse_spiffe_id("spiffe://td/", require_path=False)


def test_invalid_spiffe_id_is_a_value_error() -> None:
    assert issubclass(InvalidSpiffeID, ValueError)


# ---------------------------------------------------------------------------------------------
# peer_from_der: a throwaway CA and a leaf generator

_NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
# An unassigned OID in the certificate-extension arc with the same encoded length as SAN's
# (2.5.29.17), so the DER can be patched to carry a SAN the builder would refuse to write.
_PLACEHOLDER_OID = x509.ObjectIdentifier("2.5.29.99")
_PLACEHOLDER_DER = bytes.fromhex("0603551d63")
_SAN_OID_DER = bytes.fromhex("0603551d11")
_KEY_USAGE_FLAGS = dict.fromkeys(
    ["content_commitment", "key_encipherment", "data_encipherment", "key_agreement"], False
)
_SIGNING_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
    **_KEY_USAGE_FLAGS,
)


def _leaf(
    uris: list[str] | None = None,
    *,
    dns: list[str] | None = None,
    ca: bool | None = False,
    raw_second_san: bytes | None = None,
    signing_usage: bool = False,
    common_name: str = "agent",
) -> bytes:
    """DER of a leaf signed by the test CA; ``raw_second_san`` patches in a second SAN."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris or []]
    names += [x509.DNSName(d) for d in dns or []]
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(_CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - dt.timedelta(hours=1))
        .not_valid_after(_NOW + dt.timedelta(hours=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if signing_usage:
        builder = builder.add_extension(_SIGNING_KEY_USAGE, critical=True)
    if raw_second_san is not None:
        placeholder = x509.UnrecognizedExtension(_PLACEHOLDER_OID, raw_second_san)
        builder = builder.add_extension(placeholder, critical=False)
    der = builder.sign(_CA_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if raw_second_san is not None:
        assert der.count(_PLACEHOLDER_DER) == 1
        der = der.replace(_PLACEHOLDER_DER, _SAN_OID_DER)
    return der


def test_peer_with_one_spiffe_san() -> None:
    der = _leaf(["spiffe://agents.example.net/agent/planner"], dns=["planner.local"])
    peer = peer_from_der(der)
    digest = hashlib.sha256(der).digest()
    assert peer.spiffe_id == "spiffe://agents.example.net/agent/planner"
    assert peer.trust_domain == "agents.example.net"
    assert peer.cert_sha256 == digest.hex()
    assert peer.cert_x5t_s256 == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert len(peer.cert_x5t_s256) == 43  # 32 bytes, unpadded
    assert peer.subject == "CN=agent"
    assert peer.issuer == "CN=Test CA"
    assert peer.not_after == (_NOW + dt.timedelta(hours=1)).timestamp()


NON_SPIFFE_PEERS = [
    pytest.param(_leaf(), id="no-san"),
    pytest.param(_leaf(dns=["svc.local"]), id="dns-only"),
    pytest.param(_leaf(["https://svc.example/"]), id="one-https-uri"),
    pytest.param(_leaf(["https://a.example/", "urn:x:y"]), id="two-non-spiffe-uris"),
    pytest.param(_leaf(ca=None), id="no-basic-constraints"),
    pytest.param(_leaf(ca=True), id="ca-cert-without-spiffe-id"),
    pytest.param(_leaf(signing_usage=True), id="signing-key-usage-without-spiffe-id"),
]


@pytest.mark.parametrize("der", NON_SPIFFE_PEERS)
def test_peer_without_spiffe_id(der: bytes) -> None:
    peer = peer_from_der(der)
    assert peer.spiffe_id is None
    assert peer.trust_domain is None
    assert peer.cert_sha256 == hashlib.sha256(der).hexdigest()


_VALID_SAN_DER = x509.SubjectAlternativeName(
    [x509.UniformResourceIdentifier("spiffe://td/other")]
).public_bytes()

REFUSED_PEERS = [
    pytest.param(_leaf(["spiffe://td/a", "spiffe://td/b"]), "2 URI SANs", id="two-spiffe-sans"),
    pytest.param(
        _leaf(["spiffe://td/a", "https://td.example/"]), "2 URI SANs", id="spiffe-plus-https-uri"
    ),
    pytest.param(
        _leaf(["https://td.example/", "spiffe://td/a"]), "2 URI SANs", id="https-plus-spiffe-uri"
    ),
    pytest.param(_leaf(["SPIFFE://td/a"]), "scheme", id="uppercase-scheme"),
    pytest.param(_leaf(["spiffe://td/a/"]), "trailing", id="trailing-slash"),
    pytest.param(_leaf(["spiffe://td"]), "no path", id="leaf-without-path"),
    pytest.param(_leaf(["spiffe://td:443/a"]), "trust domain", id="port"),
    pytest.param(_leaf(["spiffe://td/a"], ca=True), "cA=true", id="ca-cert-as-leaf"),
    pytest.param(
        _leaf(["spiffe://td/a"], signing_usage=True), "keyCertSign", id="key-cert-sign-leaf"
    ),
    pytest.param(
        _leaf(["spiffe://td/a"], raw_second_san=_VALID_SAN_DER),
        "cannot be decoded",
        id="duplicate-san-extension",
    ),
    pytest.param(
        _leaf(["spiffe://td/a"], raw_second_san=b"\x30\x05\x86\x01"),
        "cannot be decoded",
        id="unparseable-second-san",
    ),
    pytest.param(
        _leaf(raw_second_san=b"\x30\x05\x86\x01"), "cannot be decoded", id="unparseable-only-san"
    ),
    pytest.param(b"not a certificate", "not valid DER", id="not-der"),
]


@pytest.mark.parametrize(("der", "why"), REFUSED_PEERS)
def test_peer_refused(der: bytes, why: str) -> None:
    with pytest.raises(InvalidSpiffeID, match=re.escape(why)):
        peer_from_der(der)
