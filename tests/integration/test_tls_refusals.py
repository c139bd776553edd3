"""TLS refusals are visible (issue 15.6): every refused handshake logs one line with the
reason and the peer address and counts in ``agentgate_tls_handshake_failures{reason}``;
the server certificate's expiry shows in metrics and ``/readyz``; load errors name the file.

Before: asyncio performed the handshake and dropped a failure silently (no log, no metric),
and OpenSSL's load errors read "[SSL] PEM lib" with no file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import Gateway
from gateway.errors import ConfigError
from gateway.settings import parse_settings
from tests.integration.conftest import GatewayFactory, admin_url, echo_route, tls_block
from tests.support import TestPKI, Upstream, client_context, tls_outcome

pytestmark = pytest.mark.integration


def _refusals(gw: Gateway) -> dict[str, float]:
    out = {}
    for metric in gw.metrics.registry.collect():
        if metric.name == "agentgate_tls_handshake_failures":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["reason"]] = sample.value
    return out


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        pytest.param("none", "no_client_cert", id="no-client-cert"),
        pytest.param("foreign", "unknown_ca", id="unknown-ca"),
        pytest.param("expired", "expired", id="expired"),
        pytest.param("revoked", "revoked", id="revoked"),
    ],
)
async def test_each_refused_handshake_is_logged_and_counted(
    gateway: GatewayFactory,
    upstream: Upstream,
    pki: TestPKI,
    caplog: pytest.LogCaptureFixture,
    which: str,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="agentgate.tls")
    gw = await gateway(
        routes=[echo_route(upstream)], server={"tls": tls_block(pki, "required", crl=True)}
    )
    assert gw.main_address is not None
    pair = {"none": None, "foreign": pki.foreign, "expired": pki.expired, "revoked": pki.revoked}
    outcome = await tls_outcome(gw.main_address, client_context(pki, pair[which]))
    assert not isinstance(outcome, bytes) or outcome == b""
    for _ in range(100):  # the server side may finish a moment after the client gave up
        if _refusals(gw):
            break
        await asyncio.sleep(0.02)
    assert _refusals(gw) == {reason: 1.0}
    lines = [r.getMessage() for r in caplog.records if r.name == "agentgate.tls"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"TLS handshake refused: {reason} (")
    assert lines[0].endswith(f"from 127.0.0.1:{_client_port(lines[0])}")
    assert upstream.hits == []
    # The listener still serves a good client afterwards.
    ok = await tls_outcome(gw.main_address, client_context(pki, pki.agents["travel"]))
    assert isinstance(ok, bytes)
    assert ok.startswith(b"HTTP/1.1 200")


def _client_port(line: str) -> str:
    port = line.rsplit(":", 1)[1]
    assert port.isdigit()
    return port


async def test_plain_http_to_the_tls_port_is_not_tls(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentgate.tls")
    gw = await gateway(routes=[echo_route(upstream)], server={"tls": tls_block(pki, "optional")})
    assert gw.main_address is not None
    reader, writer = await asyncio.open_connection(*gw.main_address)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    for _ in range(100):
        if _refusals(gw):
            break
        await asyncio.sleep(0.02)
    assert _refusals(gw) == {"not_tls": 1.0}


def _self_signed(directory: Path, *, days_left: float) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("days_left", "expiring", "ready"),
    [(90, 0.0, True), (3, 1.0, True), (-1, 1.0, False)],
    ids=["valid", "within-warning-window", "expired"],
)
async def test_server_certificate_expiry_in_metrics_and_readyz(
    gateway: GatewayFactory,
    upstream: Upstream,
    tmp_path: Path,
    days_left: float,
    expiring: float,
    ready: bool,
) -> None:
    cert, key = _self_signed(tmp_path, days_left=days_left)
    tls = {"cert": str(cert), "key": str(key), "client_cert": "off", "expiry_warning_days": 14}
    gw = await gateway(routes=[echo_route(upstream)], server={"tls": tls})
    values = {
        s.name: s.value
        for m in gw.metrics.registry.collect()
        for s in m.samples
        if s.name.startswith("agentgate_server_certificate")
    }
    assert values["agentgate_server_certificate_expiring"] == expiring
    assert abs(values["agentgate_server_certificate_expiry_seconds"] - days_left * 86400) < 120
    async with aiohttp.ClientSession() as session, session.get(admin_url(gw) + "/readyz") as resp:
        body = await resp.json()
    assert body["checks"]["server_certificate"] is ready
    assert resp.status == (200 if ready else 503)


def test_a_key_that_does_not_load_names_the_file(tmp_path: Path, pki: TestPKI) -> None:
    broken = tmp_path / "broken.key"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    tls = {"cert": str(pki.server.cert), "key": str(broken), "client_cert": "off"}
    settings = parse_settings(
        {"server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "tls": tls}}, tmp_path
    )
    with pytest.raises(ConfigError) as info:
        Gateway(settings)
    [line] = info.value.lines()
    assert line.startswith("server.tls.cert: ")
    assert str(broken) in line
    assert "AAAA" not in line


def test_an_unreadable_ca_bundle_names_the_file(tmp_path: Path, pki: TestPKI) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    tls = {**tls_block(pki, "required"), "client_ca": str(bundle)}
    settings = parse_settings(
        {"server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "tls": tls}}, tmp_path
    )
    with pytest.raises(ConfigError) as info:
        Gateway(settings)
    assert info.value.lines()[0].startswith(f"server.tls.client_ca: {bundle}: cannot load")


async def test_a_bad_svid_after_the_handshake_is_counted_with_its_peer(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentgate.listener")
    gw = await gateway(routes=[echo_route(upstream)], server={"tls": tls_block(pki, "required")})
    assert gw.main_address is not None
    # Same CA, valid chain: only the SPIFFE identity (two URI SANs) is unacceptable.
    outcome = await tls_outcome(gw.main_address, client_context(pki, pki.two_uris))
    assert not isinstance(outcome, bytes) or outcome == b""
    for _ in range(100):
        if _refusals(gw):
            break
        await asyncio.sleep(0.02)
    assert _refusals(gw) == {"bad_svid": 1.0}
    [line] = [
        r.getMessage() for r in caplog.records if "client certificate refused" in r.getMessage()
    ]
    assert " from 127.0.0.1:" in line
    assert upstream.hits == []
