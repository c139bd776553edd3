"""gateway.net.tls on its own: the listener and upstream SSLContexts, with real handshakes.

The gateway-level behaviour (refusals logged and counted, resumption of an expired
certificate, TLS 1.1 clients, a key or CA bundle that does not load through ``Gateway``) is
``tests/integration/test_tls_listener.py`` and ``test_tls_refusals.py``. Here each context
:func:`server_context` / :func:`upstream_context` builds is checked directly:

- its settings (RFC 9325 §4: TLS 1.2 minimum or 1.3 by config, ECDHE+AEAD suites only for
  1.2, no compression, no renegotiation, no session tickets, ALPN ``http/1.1``, strict X.509,
  CRL checking only with a CRL, RFC 5280 §6.3);
- what it does in a real handshake against a bare asyncio TLS server (no gateway), the client
  certificate it hands over and the :class:`gateway.context.Peer` that certificate becomes;
- its load errors: ``ConfigError`` naming the config key and the file, never key material.

Certificates come from the suite's ``pki`` fixture (``gateway.devtools.devpki``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.errors import ConfigError
from gateway.net.spiffe import peer_from_der
from gateway.net.tls import certificate_not_after, server_context, upstream_context
from gateway.settings import TLSSettings, UpstreamTLS
from tests.support import LOCALHOST, CertPair, TestPKI, client_context

TIMEOUT_S = 10.0


def _tls(pki: TestPKI, mode: str = "required", **extra: Any) -> TLSSettings:
    fields: dict[str, Any] = {"cert": pki.server.cert, "key": pki.server.key, "client_cert": mode}
    if mode != "off":
        fields["client_ca"] = pki.ca
    return TLSSettings(**fields, **extra)


@dataclass(frozen=True)
class Seen:
    """What the server side of one handshake saw."""

    version: str | None
    cipher: str | None
    alpn: str | None
    compression: str | None
    peer_der: bytes | None


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> Seen | BaseException:
    """One TLS connection to a bare asyncio server using ``server``: what it saw, or why not."""
    seen: list[Seen] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        cipher = tls.cipher()
        seen.append(
            Seen(
                tls.version(),
                cipher[0] if cipher else None,
                tls.selected_alpn_protocol(),
                tls.compression(),
                tls.getpeercert(binary_form=True),
            )
        )
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(accepted, LOCALHOST, 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            try:
                reader, writer = await asyncio.open_connection(
                    LOCALHOST, port, ssl=client, server_hostname="localhost"
                )
                # TLS 1.3: a refused client certificate shows on the first read, not in connect.
                data = await reader.read()
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
            except (OSError, ssl.SSLError, EOFError) as exc:
                return exc
    finally:
        listener.close()
        await listener.wait_closed()
    if data != b"ok" or not seen:
        return ConnectionError(f"no answer ({data!r})")
    return seen[0]


def _pair(pki: TestPKI, who: str) -> CertPair:
    pairs: dict[str, CertPair] = {
        "agent": pki.agents["travel"],
        "foreign": pki.foreign,
        "expired": pki.expired,
        "revoked": pki.revoked,
        "no_spiffe": pki.no_spiffe,
    }
    return pairs[who]


def _client(pki: TestPKI, who: str | None, **kwargs: Any) -> ssl.SSLContext:
    return client_context(pki, _pair(pki, who) if who else None, **kwargs)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("mode", "verify_mode"),
    [
        pytest.param("required", ssl.CERT_REQUIRED, id="required"),
        pytest.param("optional", ssl.CERT_OPTIONAL, id="optional"),
        pytest.param("off", ssl.CERT_NONE, id="off"),
    ],
)
@pytest.mark.parametrize(
    ("min_version", "minimum"),
    [
        pytest.param("1.2", ssl.TLSVersion.TLSv1_2, id="min-1.2"),
        pytest.param("1.3", ssl.TLSVersion.TLSv1_3, id="min-1.3"),
    ],
)
def test_server_context_settings(
    pki: TestPKI,
    mode: str,
    verify_mode: ssl.VerifyMode,
    min_version: str,
    minimum: ssl.TLSVersion,
) -> None:
    ctx = server_context(_tls(pki, mode, min_version=min_version))
    assert ctx.minimum_version == minimum
    assert ctx.verify_mode == verify_mode
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert ctx.options & option == option
    assert ctx.num_tickets == 0
    # X.509 strictness and CRL checks only mean something when client certs are verified.
    assert bool(ctx.verify_flags & ssl.VERIFY_X509_STRICT) is (mode != "off")
    assert not ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_tls12_suites_are_ecdhe_with_aead_only(pki: TestPKI) -> None:
    # RFC 9325 §4.2: forward secrecy and authenticated encryption; no CBC, no RSA kx, no SHA-1.
    suites = [c for c in server_context(_tls(pki)).get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert suites
    for suite in suites:
        assert suite["kea"] == "kx-ecdhe", suite["name"]
        assert suite["aead"], suite["name"]


def test_crl_turns_on_leaf_checking(pki: TestPKI) -> None:
    ctx = server_context(_tls(pki, crl=pki.crl))
    assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


# --------------------------------------------------------------------------- handshakes

HANDSHAKES = [
    # (server config, client certificate, client options, who the server sees or "refused")
    pytest.param({"mode": "required"}, "agent", {}, "agent", id="required-agent"),
    pytest.param({"mode": "required"}, None, {}, "refused", id="required-no-cert"),
    pytest.param({"mode": "required"}, "foreign", {}, "refused", id="required-foreign-ca"),
    pytest.param({"mode": "required"}, "expired", {}, "refused", id="required-expired"),
    pytest.param({"mode": "required"}, "no_spiffe", {}, "no_spiffe", id="required-plain-cert"),
    pytest.param({"mode": "optional"}, None, {}, None, id="optional-no-cert"),
    pytest.param({"mode": "optional"}, "agent", {}, "agent", id="optional-agent"),
    pytest.param({"mode": "optional"}, "foreign", {}, "refused", id="optional-foreign-ca"),
    pytest.param({"mode": "off"}, "agent", {}, None, id="off-cert-not-asked-for"),
    pytest.param(
        {"mode": "required", "crl": True}, "revoked", {}, "refused", id="crl-revoked-refused"
    ),
    pytest.param({"mode": "required", "crl": True}, "agent", {}, "agent", id="crl-other-passes"),
    pytest.param({"mode": "required"}, "revoked", {}, "revoked", id="no-crl-revoked-passes"),
    pytest.param(
        {"mode": "required", "min_version": "1.3"},
        "agent",
        {"maximum_version": ssl.TLSVersion.TLSv1_2},
        "refused",
        id="min-1.3-refuses-1.2-client",
    ),
]


@pytest.mark.parametrize(("server", "who", "options", "expected"), HANDSHAKES)
async def test_handshake(
    pki: TestPKI,
    server: dict[str, Any],
    who: str | None,
    options: dict[str, Any],
    expected: str | None,
) -> None:
    cfg = _tls(
        pki,
        server["mode"],
        min_version=server.get("min_version", "1.2"),
        crl=pki.crl if server.get("crl") else None,
    )
    outcome = await handshake(server_context(cfg), _client(pki, who, **options))
    if expected == "refused":
        assert isinstance(outcome, BaseException), outcome
        return
    assert isinstance(outcome, Seen), outcome
    if expected is None:
        assert outcome.peer_der is None
        return
    assert outcome.peer_der is not None
    peer = peer_from_der(outcome.peer_der)
    presented = _pair(pki, expected)
    assert peer.spiffe_id == presented.spiffe_id  # None for the plain certificate
    sent = x509.load_pem_x509_certificate(presented.cert.read_bytes())
    assert peer.cert_sha256 == sent.fingerprint(hashes.SHA256()).hex()


async def test_tls13_preferred_alpn_http11_no_compression(pki: TestPKI) -> None:
    client = _client(pki, "agent")
    client.set_alpn_protocols(["h2", "http/1.1"])
    outcome = await handshake(server_context(_tls(pki)), client)
    assert isinstance(outcome, Seen), outcome
    assert outcome.version == "TLSv1.3"
    assert outcome.alpn == "http/1.1"  # never h2: the listener speaks HTTP/1.1 only
    assert outcome.compression is None


async def test_h2_only_client_gets_no_alpn(pki: TestPKI) -> None:
    client = _client(pki, "agent")
    client.set_alpn_protocols(["h2"])
    outcome = await handshake(server_context(_tls(pki)), client)
    assert isinstance(outcome, Seen), outcome
    assert outcome.alpn is None


@pytest.mark.parametrize(
    ("suites", "accepted"),
    [
        pytest.param("ECDHE-ECDSA-AES128-GCM-SHA256", True, id="ecdhe-aes-gcm"),
        pytest.param("ECDHE-ECDSA-CHACHA20-POLY1305", True, id="ecdhe-chacha20"),
        pytest.param("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA", False, id="ecdhe-cbc"),
    ],
)
async def test_tls12_client_suites(pki: TestPKI, suites: str, accepted: bool) -> None:
    client = _client(pki, "agent", maximum_version=ssl.TLSVersion.TLSv1_2)
    client.set_ciphers(suites)
    outcome = await handshake(server_context(_tls(pki)), client)
    assert isinstance(outcome, Seen) is accepted, outcome
    if isinstance(outcome, Seen):
        assert outcome.version == "TLSv1.2"
        assert outcome.cipher == suites


async def test_no_session_ticket_is_issued(pki: TestPKI) -> None:
    # A resumed session skips certificate verification: the server must offer none.
    client = _client(pki, "agent")
    server = server_context(_tls(pki))
    listener = await asyncio.start_server(_answer_ok, LOCALHOST, 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                LOCALHOST, port, ssl=client, server_hostname="localhost"
            )
            assert await reader.read() == b"ok"  # tickets, if any, arrive before the data
            tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
            session = tls.session
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()
    assert session is None or not session.has_ticket


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"ok")
    await writer.drain()
    writer.close()


# --------------------------------------------------------------------------- load errors


def _garbage(path: Path) -> Path:
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return path


LOAD_ERRORS = ["cert-garbage", "key-garbage", "key-of-another-cert", "cert-deleted"]
LOAD_ERRORS += ["client-ca-garbage", "client-ca-deleted", "crl-garbage", "crl-deleted"]


@pytest.mark.parametrize("case", LOAD_ERRORS)
def test_load_error_names_key_and_file_but_no_key_material(
    pki: TestPKI, tmp_path: Path, case: str
) -> None:
    def copy(source: Path, name: str) -> Path:
        target = tmp_path / name
        target.write_bytes(source.read_bytes())
        return target

    cert, key = copy(pki.server.cert, "server.pem"), copy(pki.server.key, "server.key")
    ca, crl = copy(pki.ca, "ca.pem"), copy(pki.crl, "crl.pem")
    cfg = TLSSettings(cert=cert, key=key, client_ca=ca, crl=crl)  # files exist: validation passes
    expected_key, culprit = {
        "cert-garbage": ("server.tls.cert", lambda: _garbage(cert)),
        "key-garbage": ("server.tls.cert", lambda: _garbage(key)),
        "key-of-another-cert": (
            "server.tls.cert",
            lambda: key.write_bytes(pki.agents["travel"].key.read_bytes()),
        ),
        "cert-deleted": ("server.tls.cert", cert.unlink),  # e.g. removed before a reload
        "client-ca-garbage": ("server.tls.client_ca", lambda: _garbage(ca)),
        "client-ca-deleted": ("server.tls.client_ca", ca.unlink),
        "crl-garbage": ("server.tls.crl", lambda: crl.write_text("not a CRL\n")),
        "crl-deleted": ("server.tls.crl", crl.unlink),
    }[case]
    culprit()
    with pytest.raises(ConfigError) as info:
        server_context(cfg)
    [(where, message)] = info.value.problems
    assert where == expected_key
    named = {"server.tls.cert": str(cert), "server.tls.client_ca": str(ca)}
    assert named.get(where, str(crl)) in message
    assert "cannot load" in message
    # SECURITY: the private keys' PEM bodies never reach an error (which reaches logs).
    for private in (pki.server.key, pki.agents["travel"].key):
        for line in private.read_text().splitlines()[1:-1]:
            assert line not in message


def test_certificate_not_after_is_the_leaf_expiry(pki: TestPKI) -> None:
    cert = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    assert certificate_not_after(pki.server.cert) == cert.not_valid_after_utc.timestamp()


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"\x30\x82\x01\x00"])
def test_certificate_not_after_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "server.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        certificate_not_after(path)
    [(where, message)] = info.value.problems
    assert where == "server.tls.cert"
    assert message.startswith(f"{path}: not a PEM certificate")


# --------------------------------------------------------------------------- upstream side


@pytest.mark.parametrize(
    "cfg",
    [pytest.param(None, id="no-upstream-tls"), pytest.param("ca", id="private-ca")],
)
def test_upstream_context_settings(pki: TestPKI, cfg: str | None) -> None:
    ctx = upstream_context(UpstreamTLS(ca=pki.ca) if cfg else None)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True


UPSTREAMS = [
    # (upstream TLS config, does the upstream demand a client certificate, handshake succeeds)
    pytest.param("system-trust", False, False, id="dev-ca-not-in-system-store"),
    pytest.param("private-ca", False, True, id="private-ca-trusted"),
    pytest.param("private-ca", True, False, id="mtls-upstream-without-client-cert"),
    pytest.param("private-ca+cert", True, True, id="mtls-upstream-with-client-cert"),
    pytest.param("foreign-ca", False, False, id="wrong-private-ca"),
]


@pytest.mark.parametrize(("cfg", "mtls", "ok"), UPSTREAMS)
async def test_upstream_handshake(pki: TestPKI, cfg: str, mtls: bool, ok: bool) -> None:
    upstream_tls = {
        "system-trust": None,
        "private-ca": UpstreamTLS(ca=pki.ca),
        "private-ca+cert": UpstreamTLS(
            ca=pki.ca, cert=pki.agents["planner"].cert, key=pki.agents["planner"].key
        ),
        "foreign-ca": UpstreamTLS(ca=pki.foreign_ca),
    }[cfg]
    # The upstream: the dev server certificate, asking for a client cert when ``mtls``.
    server = server_context(_tls(pki, "required" if mtls else "off"))
    outcome = await handshake(server, upstream_context(upstream_tls))
    assert isinstance(outcome, Seen) is ok, outcome
    if mtls and isinstance(outcome, Seen):
        assert outcome.peer_der is not None
        assert peer_from_der(outcome.peer_der).spiffe_id == pki.agents["planner"].spiffe_id
