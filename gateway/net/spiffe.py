"""SPIFFE IDs and X.509-SVIDs: parse the peer certificate of a verified TLS connection.

Contract (SPECS.md §11; spiffe/spiffe ``standards/SPIFFE-ID.md`` and ``X509-SVID.md``):

- :func:`parse_spiffe_id` returns ``(trust_domain, path)`` for a well-formed SPIFFE ID
  (SPIFFE-ID §2, §2.1-§2.2; length limits §2.3) or raises :class:`InvalidSpiffeID`.
- :func:`peer_from_der` turns the DER of a leaf certificate that the TLS layer has *already*
  verified into a :class:`gateway.context.Peer`. It does no path validation and no time check.
  A certificate without any ``spiffe:`` URI SAN is a valid non-SPIFFE peer (``spiffe_id`` is
  None). A certificate that claims a SPIFFE ID but breaks the X.509-SVID leaf rules of
  X509-SVID §5.2 (exactly one URI SAN, §2; ``cA`` false, §4.1; no ``keyCertSign`` or
  ``cRLSign``, §4.3; a valid ID with a path, §3.1) raises :class:`InvalidSpiffeID`, as does an
  undecodable certificate or extension: a claimed identity is either valid or refused, never
  ignored. The ``spiffe:`` prefix is matched case-insensitively so that ``SPIFFE://...`` is
  refused rather than silently treated as "no SPIFFE ID".

The SHA-256 thumbprint is that of RFC 8705 §3.1 (``cnf.x5t#S256``): the digest of the DER,
given both as lowercase hex and as base64url without padding.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TypeVar

from cryptography import x509

from gateway.context import Peer

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048  # SPIFFE-ID §2.3: implementations MUST support, SHOULD NOT mint longer
MAX_TRUST_DOMAIN_BYTES = 255  # SPIFFE-ID §2.3

_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeID(ValueError):
    """A SPIFFE ID, or the X.509-SVID carrying it, breaks the SPIFFE standards."""


def parse_spiffe_id(uri: str, *, require_path: bool = True) -> tuple[str, str]:
    """Return ``(trust_domain, path)`` of ``uri``; ``path`` is ``""`` or starts with ``/``.

    ``require_path`` is True for workload (leaf) IDs, which must name a workload; pass False to
    also accept a bare trust domain ID such as ``spiffe://example.org``.
    """
    # SECURITY: the character sets below exclude ':', '@', '?', '#', '%' and upper case, so
    # ports, userinfo, queries, fragments, escapes and case variants all fail here.
    if not uri.isascii():
        raise InvalidSpiffeID("SPIFFE ID has non-ASCII characters")
    if len(uri) > MAX_ID_BYTES:
        raise InvalidSpiffeID(f"SPIFFE ID longer than {MAX_ID_BYTES} bytes")
    if not uri.startswith(SCHEME_PREFIX):
        raise InvalidSpiffeID("scheme is not 'spiffe://'")
    trust_domain, slash, rest = uri[len(SCHEME_PREFIX) :].partition("/")
    if not trust_domain:
        raise InvalidSpiffeID("empty trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeID(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise InvalidSpiffeID("trust domain has characters outside [a-z0-9._-]")
    path = slash + rest
    if not path:
        if require_path:
            raise InvalidSpiffeID("workload SPIFFE ID has no path")
        return trust_domain, ""
    for segment in rest.split("/"):
        if not segment:
            raise InvalidSpiffeID("empty path segment or trailing '/'")
        if segment in (".", ".."):
            raise InvalidSpiffeID("dot segment in path")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidSpiffeID("path segment has characters outside [A-Za-z0-9._-]")
    return trust_domain, path


def peer_from_der(der: bytes) -> Peer:
    """Describe the verified leaf certificate ``der`` as a :class:`Peer` (see module docstring)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidSpiffeID("peer certificate is not valid DER") from exc
    spiffe_id, trust_domain = _svid_identity(cert)
    digest = hashlib.sha256(der).digest()
    return Peer(
        spiffe_id=spiffe_id,
        trust_domain=trust_domain,
        cert_sha256=digest.hex(),
        cert_x5t_s256=base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def _svid_identity(cert: x509.Certificate) -> tuple[str | None, str | None]:
    """``(spiffe_id, trust_domain)`` of an X.509-SVID leaf; Nones when no URI SAN claims one."""
    try:
        extensions = cert.extensions
        san = _optional(extensions, x509.SubjectAlternativeName)
        constraints = _optional(extensions, x509.BasicConstraints)
        usage = _optional(extensions, x509.KeyUsage)
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType, ValueError) as exc:
        # SECURITY: an extension we cannot read may hide a second identity; refuse.
        raise InvalidSpiffeID("certificate extensions cannot be decoded") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    claimed = [uri for uri in uris if uri[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX]
    if not claimed:
        return None, None
    # SECURITY: X509-SVID §2: exactly one URI SAN; with two, which one is "the" identity would
    # depend on the reader.
    if len(uris) != 1:
        raise InvalidSpiffeID(f"X.509-SVID has {len(uris)} URI SANs, expected exactly one")
    # SECURITY: X509-SVID §4.1, §4.3, §5.2: a signing (CA) certificate never names a workload.
    if constraints is not None and constraints.ca:
        raise InvalidSpiffeID("X.509-SVID leaf has basicConstraints cA=true")
    if usage is not None and (usage.key_cert_sign or usage.crl_sign):
        raise InvalidSpiffeID("X.509-SVID leaf has keyCertSign or cRLSign key usage")
    trust_domain, _ = parse_spiffe_id(claimed[0])
    return claimed[0], trust_domain


def _optional(extensions: x509.Extensions, kind: type[_Ext]) -> _Ext | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
