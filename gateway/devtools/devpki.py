"""Development PKI: a throwaway CA plus X509-SVID server/agent certificates.

Used by ``agentgate certs init`` / ``agentgate certs issue``, ``agentgate demo`` and the
test-suite. Keys are EC P-256 (fast enough to mint hundreds of certificates per test run).

Contract
--------
* :func:`create_ca` returns a self-signed signing certificate: basicConstraints ``cA=true``
  (critical, pathLen 0), keyUsage ``keyCertSign``+``cRLSign`` (critical), SKI, and, when a
  trust domain is given, the single URI SAN ``spiffe://<trust-domain>`` (no path, as SPIFFE
  requires of signing certificates).
* :func:`issue_leaf` returns a leaf that is X509-SVID conformant by default (SPECS §11.2):
  basicConstraints ``cA=false`` (critical), keyUsage ``digitalSignature`` only (critical),
  extKeyUsage ``serverAuth``+``clientAuth``, SAN = the SPIFFE ID first, then DNS names, IP
  addresses and any extra URIs (the SAN is critical when the subject is empty), SKI, AKI
  from the CA, and a random 159-bit serial. The ``uri_sans``, ``is_ca``, ``server``/``client``
  and ``not_after`` knobs exist to build deliberately *invalid* certificates for tests;
  ``spiffe_id`` itself is checked against the SPIFFE ID grammar of SPECS §11.1.
* :func:`create_crl` returns a PEM CRL signed by the CA (with CRL number and AKI).
* :func:`init_dev_pki` lays out ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and
  ``agents/<name>.pem``/``.key`` in a directory. It is idempotent: an existing CA is reused
  (never overwritten), and an existing leaf is kept while it still matches the request
  (issued by that CA, same SANs, key matches, not about to expire); otherwise it is reissued.
* :func:`issue_to_files` issues one leaf into ``<directory>/<name>.pem``/``.key``.
* :func:`load_issued` loads a certificate + key pair and checks that they belong together.

SECURITY: this is a *development* PKI. Private keys are written as unencrypted PKCS#8 PEM
(file mode 0600, written atomically). Never use these certificates or keys in production.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.private_files import write_atomic

__all__ = [
    "CertFiles",
    "DevPKI",
    "DevPKIError",
    "Issued",
    "create_ca",
    "create_crl",
    "init_dev_pki",
    "issue_leaf",
    "issue_to_files",
    "load_issued",
]

# SPECS §11.1: trust domain [a-z0-9._-]; path segments [a-zA-Z0-9._-], not "." or "..".
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_SPIFFE_ID_BYTES = 2048
# Clock-skew allowance: certificates become valid a little before "now".
_BACKDATE = timedelta(minutes=5)
# A kept leaf must stay valid at least this long, or init_dev_pki reissues it.
_MIN_REMAINING = timedelta(days=1)
_HASH = hashes.SHA256()


class DevPKIError(ValueError):
    """Bad input or inconsistent on-disk state (e.g. a CA certificate without its key)."""


@dataclass(frozen=True, repr=False)
class Issued:
    """A certificate and its private key, both parsed and PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes = field(compare=False)
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(compare=False)

    def __repr__(self) -> str:
        # SECURITY: never render key material (logs, pytest failure output, tracebacks).
        return (
            f"Issued(subject={self.cert.subject.rfc4514_string()!r}, "
            f"serial={self.cert.serial_number:#x}, spiffe_id={self.spiffe_id!r}, "
            f"not_after={self.cert.not_valid_after_utc.isoformat()})"
        )

    @property
    def spiffe_id(self) -> str | None:
        """The first ``spiffe://`` URI SAN, or ``None``."""
        uris = _uri_sans(self.cert)
        return next((u for u in uris if u.startswith("spiffe://")), None)

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (mode 0644) and the key (mode 0600), each atomically."""
        _atomic_write(cert_path, self.cert_pem, 0o644)
        # SECURITY: unencrypted dev key; owner-only permissions.
        _atomic_write(key_path, self.key_pem, 0o600)


@dataclass(frozen=True)
class CertFiles:
    """Where a certificate/key pair lives, and the SPIFFE ID it carries (if any)."""

    cert: Path
    key: Path
    spiffe_id: str | None


@dataclass(frozen=True)
class DevPKI:
    """Result of :func:`init_dev_pki`."""

    directory: Path
    trust_domain: str
    ca: CertFiles
    server: CertFiles
    agents: Mapping[str, CertFiles] = field(hash=False)
    created_ca: bool


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # SECURITY: NoEncryption is acceptable only because this is a development PKI.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issued(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    return Issued(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_key_pem(key),
        cert=cert,
        key=key,
    )


def _name(common_name: str) -> x509.Name:
    if not common_name:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def _check_trust_domain(trust_domain: str) -> None:
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise DevPKIError(f"invalid SPIFFE trust domain: {trust_domain!r}")


def _check_segment(segment: str, what: str) -> None:
    # SECURITY: names become file names too; this rejects "/", "..", NUL and friends.
    if not _SEGMENT_RE.fullmatch(segment) or segment in {".", ".."}:
        raise DevPKIError(f"invalid {what}: {segment!r} (allowed: [A-Za-z0-9._-])")


def _check_spiffe_id(spiffe_id: str) -> None:
    """Leaf SPIFFE ID per SPECS §11.1: ``spiffe://<td>/<path>`` with a non-root path."""
    prefix = "spiffe://"
    if not spiffe_id.startswith(prefix) or len(spiffe_id.encode()) > _MAX_SPIFFE_ID_BYTES:
        raise DevPKIError(f"invalid SPIFFE ID: {spiffe_id!r}")
    trust_domain, sep, path = spiffe_id[len(prefix) :].partition("/")
    _check_trust_domain(trust_domain)
    if not sep or not path:
        raise DevPKIError(f"leaf SPIFFE ID needs a non-root path: {spiffe_id!r}")
    for segment in path.split("/"):
        _check_segment(segment, "SPIFFE ID path segment")


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a same-directory temp file and ``os.replace``."""
    # SECURITY: the temp file is created 0600, so key bytes are never readable by others,
    # not even briefly, whatever the umask; the final mode is applied before the rename.
    write_atomic(path, data, mode=mode)


def _validity(
    not_before: datetime | None, not_after: datetime | None, valid_days: int
) -> tuple[datetime, datetime]:
    start = _utc(not_before) if not_before is not None else _now() - _BACKDATE
    if not_after is None:
        end = start + timedelta(days=valid_days)
    else:
        end = _utc(not_after)
        if not_before is None:  # e.g. an already-expired cert: start before it ends
            start = min(start, end - timedelta(days=valid_days))
    if end <= start:
        raise DevPKIError(f"not_after ({end}) must be later than not_before ({start})")
    return start, end


# --------------------------------------------------------------------------- issuing


def create_ca(
    common_name: str = "agentgate dev CA",
    *,
    trust_domain: str | None = None,
    valid_days: int = 365,
    not_before: datetime | None = None,
) -> Issued:
    """Create a self-signed signing (CA) certificate for a SPIFFE trust domain."""
    if trust_domain is not None:
        _check_trust_domain(trust_domain)
    key = _new_key()
    start, end = _validity(not_before, None, valid_days)
    subject = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if trust_domain is not None:
        # SPIFFE: a signing certificate MAY carry the trust domain ID, without a path.
        san = x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
        )
        builder = builder.add_extension(san, critical=not common_name)
    return _issued(builder.sign(key, _HASH), key)


def _key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    """keyUsage for a CA (keyCertSign+cRLSign) or an X509-SVID leaf (digitalSignature)."""
    return x509.KeyUsage(
        digital_signature=not key_cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca: Issued) -> x509.AuthorityKeyIdentifier:
    """AKI copied from the CA's SKI (computed from its public key if it has none)."""
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_names(
    spiffe_id: str | None,
    dns_names: Iterable[str],
    ip_addresses: Iterable[str],
    uri_sans: Iterable[str],
) -> list[x509.GeneralName]:
    """SAN entries in X509-SVID order: the SPIFFE ID first, then DNS, IP, extra URIs."""
    names: list[x509.GeneralName] = []
    if spiffe_id is not None:
        names.append(x509.UniformResourceIdentifier(spiffe_id))
    names.extend(x509.DNSName(d) for d in dns_names)
    names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses)
    names.extend(x509.UniformResourceIdentifier(u) for u in uri_sans)
    return names


def _eku(*, server: bool, client: bool) -> x509.ExtendedKeyUsage | None:
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    return x509.ExtendedKeyUsage(usages) if usages else None


def issue_leaf(
    ca: Issued,
    *,
    common_name: str,
    spiffe_id: str | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    uri_sans: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
    valid_days: int = 30,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    is_ca: bool = False,
) -> Issued:
    """Issue a leaf signed by ``ca``; X509-SVID conformant unless a test knob says otherwise.

    ``uri_sans`` adds URI SANs after the SPIFFE ID unchecked (to build invalid SVIDs),
    ``is_ca`` flips only basicConstraints to ``cA=true``, ``server``/``client`` drop the
    matching EKU (both off: no EKU extension), ``not_after`` overrides ``valid_days``.
    An empty ``common_name`` yields an empty subject and a critical SAN extension.
    """
    if spiffe_id is not None:
        _check_spiffe_id(spiffe_id)
    key = _new_key()
    start, end = _validity(not_before, not_after, valid_days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        # SECURITY: random (not sequential) serials, as RFC 5280 / CA/B practice expects.
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_authority_key_id(ca), critical=False)
    )
    eku = _eku(server=server, client=client)
    if eku is not None:
        builder = builder.add_extension(eku, critical=False)
    names = _general_names(spiffe_id, dns_names, ip_addresses, uri_sans)
    if names:
        # X509-SVID: if the subject is empty, the SAN extension MUST be critical.
        builder = builder.add_extension(x509.SubjectAlternativeName(names), not common_name)
    return _issued(builder.sign(ca.key, _HASH), key)


def create_crl(
    ca: Issued,
    revoked_serials: Sequence[int],
    *,
    next_update_days: int = 7,
    crl_number: int | None = None,
) -> bytes:
    """A PEM CRL signed by ``ca`` revoking ``revoked_serials`` (CRL number defaults to now)."""
    now = _now()
    number = int(now.timestamp()) if crl_number is None else crl_number
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
    )
    for serial in revoked_serials:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - _BACKDATE)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(ca.key, _HASH).public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- files


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Load a PEM certificate and its unencrypted PEM EC key; they must match."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DevPKIError(f"{key_path}: expected an EC private key")
    # SECURITY: refuse a mismatched pair rather than sign with the wrong identity.
    if key.public_key() != cert.public_key():
        raise DevPKIError(f"{key_path} does not match the certificate in {cert_path}")
    return _issued(cert, key)


def _load_or_create_ca(directory: Path, trust_domain: str) -> tuple[Issued, bool]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        ca = load_issued(cert_path, key_path)
        if f"spiffe://{trust_domain}" not in _uri_sans(ca.cert):
            raise DevPKIError(f"{cert_path} is not a CA for trust domain {trust_domain!r}")
        return ca, False
    if cert_path.exists() or key_path.exists():
        # SECURITY: never silently replace half of an existing CA (clients may trust it).
        raise DevPKIError(f"{directory}: found only one of ca.pem / ca.key; refusing to overwrite")
    ca = create_ca(f"agentgate dev CA ({trust_domain})", trust_domain=trust_domain)
    ca.write(cert_path, key_path)
    return ca, True


def _names_key(names: Iterable[x509.GeneralName]) -> set[str]:
    return {f"{type(n).__name__}:{n.value}" for n in names}


def _san_set(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return _names_key(san)


def _reusable(files: CertFiles, ca: Issued, expected_sans: set[str]) -> bool:
    """Keep an existing leaf if it still matches what we would issue now."""
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        current = load_issued(files.cert, files.key)
        current.cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    fresh = current.cert.not_valid_after_utc - _now() > _MIN_REMAINING
    return fresh and _san_set(current.cert) == expected_sans


def _ensure_leaf(
    files: CertFiles,
    ca: Issued,
    *,
    common_name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> None:
    """Issue ``files`` unless an equivalent, still-valid leaf from ``ca`` is already there."""
    names = _general_names(files.spiffe_id, dns_names, ip_addresses, ())
    if _reusable(files, ca, _names_key(names)):
        return
    leaf = issue_leaf(
        ca,
        common_name=common_name,
        spiffe_id=files.spiffe_id,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    leaf.write(files.cert, files.key)


def init_dev_pki(
    directory: Path,
    *,
    trust_domain: str,
    server_names: Sequence[str] = ("localhost",),
    server_ips: Sequence[str] = ("127.0.0.1", "::1"),
    agents: Sequence[str] = (),
) -> DevPKI:
    """Create (or refresh) the dev CA, gateway server cert and agent certs in ``directory``."""
    _check_trust_domain(trust_domain)
    for agent in agents:
        _check_segment(agent, "agent name")
    directory = Path(directory)
    ca, created = _load_or_create_ca(directory, trust_domain)
    td = f"spiffe://{trust_domain}"
    server = CertFiles(directory / "server.pem", directory / "server.key", f"{td}/gateway")
    _ensure_leaf(
        server, ca, common_name="agentgate gateway", dns_names=server_names, ip_addresses=server_ips
    )
    agent_files: dict[str, CertFiles] = {}
    for agent in agents:
        agent_dir = directory / "agents"
        files = CertFiles(
            agent_dir / f"{agent}.pem", agent_dir / f"{agent}.key", f"{td}/agent/{agent}"
        )
        _ensure_leaf(files, ca, common_name=agent)
        agent_files[agent] = files
    return DevPKI(
        directory=directory,
        trust_domain=trust_domain,
        ca=CertFiles(directory / "ca.pem", directory / "ca.key", td),
        server=server,
        agents=MappingProxyType(agent_files),
        created_ca=created,
    )


def issue_to_files(
    directory: Path,
    ca_cert_path: Path,
    ca_key_path: Path,
    *,
    name: str,
    spiffe_id: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
    valid_days: int = 30,
) -> CertFiles:
    """Issue one leaf signed by the CA on disk into ``<directory>/<name>.pem`` / ``.key``."""
    _check_segment(name, "certificate name")
    ca = load_issued(ca_cert_path, ca_key_path)
    leaf = issue_leaf(
        ca,
        common_name=name,
        spiffe_id=spiffe_id,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        server=server,
        client=client,
        valid_days=valid_days,
    )
    files = CertFiles(Path(directory) / f"{name}.pem", Path(directory) / f"{name}.key", spiffe_id)
    leaf.write(files.cert, files.key)
    return files
