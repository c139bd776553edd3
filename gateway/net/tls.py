"""TLS for the main listener and for upstream connections.

``server_context`` builds the listener's :class:`ssl.SSLContext` once at
startup: TLS 1.2 minimum (1.3 preferred and negotiated whenever the client can),
AEAD-only ECDHE suites for 1.2, no compression, no renegotiation, ALPN
``http/1.1``, and client-certificate verification against ``client_ca`` in the
configured mode (``required`` | ``optional`` | ``off``), with an optional CRL
checked for the leaf.

``upstream_context`` builds the client-side context for one route's upstream
(optional private CA, optional client certificate).

Peer identity (SPIFFE ID, thumbprints) is read from the verified certificate in
:mod:`gateway.net.spiffe`; this module only configures OpenSSL.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import ConfigError
from gateway.settings.routes import UpstreamTLS
from gateway.settings.server import TLSSettings

# SECURITY: RFC 9325 §4.2 recommended TLS 1.2 suites: ECDHE key exchange with AEAD only.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cfg: TLSSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(_TLS12_CIPHERS)
    # SECURITY: CRIME (compression) and renegotiation-based attacks are off.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    # SECURITY: no session resumption. A resumed session skips certificate verification, so a
    # client certificate that has expired since (or a CRL that lists it after a reload) would
    # keep working for the ticket's lifetime (OpenSSL: 2 h). Full handshakes are cheap here.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    ctx.set_alpn_protocols(["http/1.1"])
    with _naming("server.tls.cert", cfg.cert, cfg.key):
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    if cfg.client_cert == "off":
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if cfg.client_ca is None:  # TLSSettings validation guarantees it
        raise ConfigError([("server.tls.client_ca", "required unless client_cert is 'off'")])
    with _naming("server.tls.client_ca", cfg.client_ca):
        ctx.load_verify_locations(cafile=str(cfg.client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_cert == "required" else ssl.CERT_OPTIONAL
    if cfg.crl is not None:
        # SECURITY: a revoked client certificate fails the handshake (RFC 5280 §6.3).
        with _naming("server.tls.crl", cfg.crl):
            ctx.load_verify_locations(cafile=str(cfg.crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


@contextlib.contextmanager
def _naming(key: str, *paths: Path) -> Iterator[None]:
    """OpenSSL's load errors ("[SSL] PEM lib") name no file: say which key and file failed."""
    try:
        yield
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        files = " / ".join(str(p) for p in paths)
        raise ConfigError([(key, f"{files}: cannot load ({reason})")]) from None


def certificate_not_after(path: Path) -> float:
    """The POSIX time at which the first certificate in a PEM file expires."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError([("server.tls.cert", f"{path}: not a PEM certificate ({exc})")]) from None
    return cert.not_valid_after_utc.timestamp()


def upstream_context(cfg: UpstreamTLS | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca) if cfg and cfg.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg is not None and cfg.cert is not None and cfg.key is not None:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    return ctx
