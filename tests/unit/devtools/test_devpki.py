"""Unit tests for gateway.devtools.devpki: CA/leaf extensions per SPECS §11.2, CRLs, files."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.devtools.devpki import (
    DevPKIError,
    Issued,
    create_ca,
    create_crl,
    init_dev_pki,
    issue_leaf,
    issue_to_files,
    load_issued,
)

_E = TypeVar("_E", bound=x509.ExtensionType)
CertCheck = Callable[[x509.Certificate], bool]

TD = "agents.example.net"
AGENT_ID = f"spiffe://{TD}/agent/planner"


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca(trust_domain=TD)


@pytest.fixture(scope="module")
def leaf(ca: Issued) -> Issued:
    return issue_leaf(
        ca,
        common_name="planner",
        spiffe_id=AGENT_ID,
        dns_names=["planner.local"],
        ip_addresses=["127.0.0.1", "::1"],
    )


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- CA


def test_ca_basic_constraints_is_critical_ca(ca: Issued) -> None:
    bc = _ext(ca.cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    assert bc.value.path_length == 0


def test_ca_key_usage_is_critical_cert_and_crl_sign(ca: Issued) -> None:
    ku = _ext(ca.cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature


def test_ca_is_self_signed_with_ski(ca: Issued) -> None:
    assert ca.cert.issuer == ca.cert.subject
    ca.cert.verify_directly_issued_by(ca.cert)
    ski = _ext(ca.cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())


def test_ca_spiffe_uri_san_has_no_path(ca: Issued) -> None:
    san = _ext(ca.cert, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    assert ca.spiffe_id == f"spiffe://{TD}"


def test_ca_without_trust_domain_has_no_san() -> None:
    ca = create_ca("plain CA")
    with pytest.raises(x509.ExtensionNotFound):
        _ext(ca.cert, x509.SubjectAlternativeName)
    assert ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "plain CA"


def test_ca_validity_window() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    ca = create_ca(trust_domain=TD, valid_days=10, not_before=start)
    assert ca.cert.not_valid_before_utc == start
    assert ca.cert.not_valid_after_utc == start + timedelta(days=10)


# --------------------------------------------------------------------------- leaf


def test_leaf_verifies_against_ca(ca: Issued, leaf: Issued) -> None:
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert leaf.cert.issuer == ca.cert.subject


def test_leaf_not_signed_by_other_ca(leaf: Issued) -> None:
    other = create_ca(trust_domain=TD)
    with pytest.raises(InvalidSignature):
        leaf.cert.verify_directly_issued_by(other.cert)


@pytest.mark.parametrize(
    ("extension", "critical"),
    [
        (x509.BasicConstraints, True),
        (x509.KeyUsage, True),
        (x509.ExtendedKeyUsage, False),
        (x509.SubjectAlternativeName, False),
        (x509.SubjectKeyIdentifier, False),
        (x509.AuthorityKeyIdentifier, False),
    ],
)
def test_leaf_extension_criticality(
    leaf: Issued, extension: type[x509.ExtensionType], critical: bool
) -> None:
    assert _ext(leaf.cert, extension).critical is critical


def test_leaf_basic_constraints_not_ca(leaf: Issued) -> None:
    assert _ext(leaf.cert, x509.BasicConstraints).value.ca is False


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ("digital_signature", True),
        ("key_cert_sign", False),
        ("crl_sign", False),
        ("key_encipherment", False),
        ("content_commitment", False),
        ("data_encipherment", False),
        ("key_agreement", False),
    ],
)
def test_leaf_key_usage(leaf: Issued, usage: str, expected: bool) -> None:
    assert getattr(_ext(leaf.cert, x509.KeyUsage).value, usage) is expected


def test_leaf_eku_server_and_client(leaf: Issued) -> None:
    eku = list(_ext(leaf.cert, x509.ExtendedKeyUsage).value)
    assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_leaf_san_order_spiffe_first_and_exactly_one_uri(leaf: Issued) -> None:
    names = list(_ext(leaf.cert, x509.SubjectAlternativeName).value)
    assert names == [
        x509.UniformResourceIdentifier(AGENT_ID),
        x509.DNSName("planner.local"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    assert leaf.spiffe_id == AGENT_ID


def test_leaf_aki_matches_ca_ski(ca: Issued, leaf: Issued) -> None:
    aki = _ext(leaf.cert, x509.AuthorityKeyIdentifier).value
    ski = _ext(ca.cert, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_leaf_serials_are_random_and_positive(ca: Issued) -> None:
    serials = {issue_leaf(ca, common_name="s").cert.serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(0 < s < 2**160 for s in serials)


def test_leaf_key_is_p256(leaf: Issued) -> None:
    assert leaf.key.curve.name == "secp256r1"
    assert leaf.key.public_key() == leaf.cert.public_key()


def test_leaf_empty_subject_makes_san_critical(ca: Issued) -> None:
    cert = issue_leaf(ca, common_name="", spiffe_id=AGENT_ID).cert
    assert len(cert.subject) == 0
    assert _ext(cert, x509.SubjectAlternativeName).critical


def test_expired_leaf_via_not_after(ca: Issued) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    cert = issue_leaf(ca, common_name="old", spiffe_id=AGENT_ID, not_after=past).cert
    assert cert.not_valid_after_utc == past.replace(microsecond=0)
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    assert cert.not_valid_after_utc < datetime.now(UTC)
    cert.verify_directly_issued_by(ca.cert)


def test_not_before_after_not_after_rejected(ca: Issued) -> None:
    now = datetime.now(UTC)
    with pytest.raises(DevPKIError):
        issue_leaf(ca, common_name="x", not_before=now, not_after=now - timedelta(hours=1))


# Knobs that build deliberately invalid SVIDs for the listener's negative tests.
@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        pytest.param(
            {"uri_sans": ["spiffe://agents.example.net/agent/other"]},
            lambda c: (
                len(
                    _ext(c, x509.SubjectAlternativeName).value.get_values_for_type(
                        x509.UniformResourceIdentifier
                    )
                )
                == 2
            ),
            id="two-uri-sans",
        ),
        pytest.param(
            {"is_ca": True},
            lambda c: _ext(c, x509.BasicConstraints).value.ca is True,
            id="leaf-with-ca-true",
        ),
        pytest.param(
            {"server": False},
            lambda c: (
                list(_ext(c, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            id="client-only-eku",
        ),
        pytest.param(
            {"server": False, "client": False},
            lambda c: x509.ExtendedKeyUsage not in {type(e.value) for e in c.extensions},
            id="no-eku",
        ),
    ],
)
def test_invalid_leaf_knobs(ca: Issued, kwargs: dict[str, Any], check: CertCheck) -> None:
    cert = issue_leaf(ca, common_name="bad", spiffe_id=AGENT_ID, **kwargs).cert
    cert.verify_directly_issued_by(ca.cert)
    assert check(cert)


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "https://agents.example.net/agent/a",
        "spiffe://agents.example.net",
        "spiffe://agents.example.net/",
        "spiffe://Agents.example.net/agent/a",
        "spiffe://agents.example.net:443/agent/a",
        "spiffe://agents.example.net/agent/../a",
        "spiffe://agents.example.net/agent//a",
        "spiffe://agents.example.net/agent/a?x=1",
        "spiffe://agents.example.net/" + "a" * 2048,
    ],
)
def test_bad_spiffe_id_rejected(ca: Issued, spiffe_id: str) -> None:
    with pytest.raises(DevPKIError):
        issue_leaf(ca, common_name="x", spiffe_id=spiffe_id)


# --------------------------------------------------------------------------- CRL


def test_crl_lists_revoked_serial_and_is_signed_by_ca(ca: Issued, leaf: Issued) -> None:
    pem = create_crl(ca, [leaf.cert.serial_number], next_update_days=3)
    crl = x509.load_pem_x509_crl(pem)
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.issuer == ca.cert.subject
    assert crl.get_revoked_certificate_by_serial_number(leaf.cert.serial_number) is not None
    assert len(crl) == 1
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc > timedelta(days=3)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > 0


def test_crl_not_valid_for_other_ca(ca: Issued) -> None:
    crl = x509.load_pem_x509_crl(create_crl(ca, []))
    assert len(crl) == 0
    assert not crl.is_signature_valid(create_ca().key.public_key())


# --------------------------------------------------------------------------- repr


@pytest.mark.parametrize("which", ["ca", "leaf"])
def test_repr_has_no_key_material(ca: Issued, leaf: Issued, which: str) -> None:
    issued = ca if which == "ca" else leaf
    text = repr(issued) + str(issued)
    assert "PRIVATE KEY" not in text
    assert issued.key_pem.decode() not in text
    der = issued.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert der.hex() not in text
    assert str(issued.key.private_numbers().private_value) not in text
    assert "Issued(" in text


# --------------------------------------------------------------------------- files


def test_write_and_load_roundtrip_with_permissions(tmp_path: Path, leaf: Issued) -> None:
    cert_path, key_path = tmp_path / "sub" / "a.pem", tmp_path / "sub" / "a.key"
    leaf.write(cert_path, key_path)
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    loaded = load_issued(cert_path, key_path)
    assert loaded == leaf
    assert not list(cert_path.parent.glob(".*.tmp"))


def test_write_tightens_existing_key_file(tmp_path: Path, leaf: Issued) -> None:
    key_path = tmp_path / "a.key"
    key_path.write_bytes(b"old")
    key_path.chmod(0o644)
    leaf.write(tmp_path / "a.pem", key_path)
    assert _mode(key_path) == 0o600


def test_load_issued_rejects_mismatched_key(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    leaf.write(tmp_path / "a.pem", tmp_path / "a.key")
    ca.write(tmp_path / "b.pem", tmp_path / "b.key")
    with pytest.raises(DevPKIError):
        load_issued(tmp_path / "a.pem", tmp_path / "b.key")


def test_init_dev_pki_layout(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", trust_domain=TD, agents=["planner", "researcher"])
    assert pki.created_ca
    ca = load_issued(pki.ca.cert, pki.ca.key)
    assert ca.spiffe_id == f"spiffe://{TD}"
    expected = [
        (pki.server, f"spiffe://{TD}/gateway"),
        (pki.agents["planner"], f"spiffe://{TD}/agent/planner"),
        (pki.agents["researcher"], f"spiffe://{TD}/agent/researcher"),
    ]
    for files, spiffe_id in expected:
        issued = load_issued(files.cert, files.key)
        issued.cert.verify_directly_issued_by(ca.cert)
        assert issued.spiffe_id == spiffe_id == files.spiffe_id
    assert pki.agents["planner"].cert == tmp_path / "pki" / "agents" / "planner.pem"
    for key in [pki.ca.key, pki.server.key, *(f.key for f in pki.agents.values())]:
        assert _mode(key) == 0o600
    server = load_issued(pki.server.cert, pki.server.key).cert
    san = _ext(server, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_init_dev_pki_is_idempotent(tmp_path: Path) -> None:
    first = init_dev_pki(tmp_path, trust_domain=TD, agents=["planner"])
    ca_bytes = (first.ca.cert.read_bytes(), first.ca.key.read_bytes())
    leaf_bytes = first.agents["planner"].cert.read_bytes()
    second = init_dev_pki(tmp_path, trust_domain=TD, agents=["planner", "coder"])
    assert not second.created_ca
    assert (second.ca.cert.read_bytes(), second.ca.key.read_bytes()) == ca_bytes
    assert second.agents["planner"].cert.read_bytes() == leaf_bytes
    ca = load_issued(second.ca.cert, second.ca.key)
    coder = load_issued(second.agents["coder"].cert, second.agents["coder"].key)
    coder.cert.verify_directly_issued_by(ca.cert)


def test_init_dev_pki_reissues_server_when_names_change(tmp_path: Path) -> None:
    init_dev_pki(tmp_path, trust_domain=TD)
    pki = init_dev_pki(tmp_path, trust_domain=TD, server_names=["gw.local"], server_ips=[])
    san = _ext(load_issued(pki.server.cert, pki.server.key).cert, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["gw.local"]
    assert san.value.get_values_for_type(x509.IPAddress) == []


def test_init_dev_pki_refuses_other_trust_domain(tmp_path: Path) -> None:
    init_dev_pki(tmp_path, trust_domain=TD)
    with pytest.raises(DevPKIError):
        init_dev_pki(tmp_path, trust_domain="other.example.net")


def test_init_dev_pki_refuses_half_a_ca(tmp_path: Path) -> None:
    init_dev_pki(tmp_path, trust_domain=TD)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(DevPKIError):
        init_dev_pki(tmp_path, trust_domain=TD)
    assert not (tmp_path / "ca.key").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".", "..", "sp ace"])
def test_init_dev_pki_rejects_unsafe_agent_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(DevPKIError):
        init_dev_pki(tmp_path, trust_domain=TD, agents=[name])
    assert not (tmp_path / "ca.pem").exists()


def test_issue_to_files(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", trust_domain=TD)
    files = issue_to_files(
        tmp_path / "out",
        pki.ca.cert,
        pki.ca.key,
        name="svc",
        spiffe_id=f"spiffe://{TD}/svc",
        dns_names=["svc.local"],
    )
    assert files.cert == tmp_path / "out" / "svc.pem"
    assert _mode(files.key) == 0o600
    issued = load_issued(files.cert, files.key)
    issued.cert.verify_directly_issued_by(load_issued(pki.ca.cert, pki.ca.key).cert)
    assert issued.spiffe_id == f"spiffe://{TD}/svc"


def test_issue_to_files_rejects_path_traversal(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path, trust_domain=TD)
    with pytest.raises(DevPKIError):
        issue_to_files(tmp_path, pki.ca.cert, pki.ca.key, name="../x", spiffe_id=f"spiffe://{TD}/x")
