"""The main listener's TLS (DESIGN.md §2, §4 ``server.tls``; SPECS.md §11): real handshakes on
loopback against the session dev PKI.

A refused client certificate must end the connection before any HTTP response byte. With TLS
1.3 the client's ``connect`` succeeds before the server has judged the certificate, so refusals
are asserted on the first read (:func:`tests.support.tls_outcome`). Python 3.11's asyncio closes
a server connection whose handshake failed without flushing the TLS alert, so the client sees a
bare EOF whatever the reason; every refusal test therefore also shows that a good certificate is
served by the same gateway, and the SPIFFE ones check the gateway's log for the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.devtools.devpki import issue_leaf, load_issued
from tests.integration.conftest import GatewayFactory, base_url, echo_route, spy_facts, tls_block
from tests.support import (
    CertPair,
    TestPKI,
    Upstream,
    client_context,
    http_request,
    tls_outcome,
    wait_until,
)

TD = "spiffe://example.org"

pytestmark = pytest.mark.integration


async def tls_gateway(
    gateway: GatewayFactory,
    upstream: Upstream,
    pki: TestPKI,
    mode: str,
    *,
    crl: bool = False,
    **tls: Any,
) -> Gateway:
    return await gateway(
        routes=[echo_route(upstream)],
        server={"tls": {**tls_block(pki, mode, crl=crl), **tls}},
    )


def assert_refused(outcome: bytes | BaseException) -> None:
    """The connection ended without a single response byte."""
    if isinstance(outcome, bytes):
        assert outcome == b"", f"expected no response, got {outcome[:80]!r}"
    else:
        assert isinstance(outcome, ssl.SSLError | ConnectionError), repr(outcome)


async def assert_good_cert_served(gw: Gateway, pki: TestPKI) -> None:
    status, _ = await get_json(gw, client_context(pki, pki.agents["travel"]))
    assert status == 200


async def get_json(gw: Gateway, ctx: ssl.SSLContext, path: str = "/") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(base_url(gw, "https") + path, ssl=ctx) as resp,
    ):
        return resp.status, await resp.json()


def seen(body: Any, name: str) -> list[str]:
    return [v for k, v in body["headers"] if k.lower() == name.lower()]


# --------------------------------------------------------------------------- client_cert: required


async def test_required_good_agent_cert_is_served_over_https(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required")
    facts = spy_facts(gw)
    status, body = await get_json(gw, client_context(pki, pki.agents["planner"]), "/hello")
    assert status == 200
    assert seen(body, "X-Forwarded-Proto") == ["https"]
    assert body["path"] == "/hello"
    [fact] = facts
    assert fact.scheme == "https"
    assert fact.peer is not None
    assert fact.peer.spiffe_id == "spiffe://example.org/agent/planner"
    assert fact.peer.trust_domain == "example.org"
    assert len(fact.peer.cert_sha256) == 64
    assert fact.peer.cert_sha256 == fact.peer.cert_sha256.lower()


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("none", id="no-client-cert"),
        pytest.param("foreign", id="cert-from-another-ca"),
        pytest.param("expired", id="expired-cert"),
    ],
)
async def test_required_refuses_bad_client_certs(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI, which: str
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required")
    pair = {"none": None, "foreign": pki.foreign, "expired": pki.expired}[which]
    assert gw.main_address is not None
    assert_refused(await tls_outcome(gw.main_address, client_context(pki, pair)))
    assert upstream.hits == []
    await assert_good_cert_served(gw, pki)


async def test_revoked_cert_is_refused_when_a_crl_is_configured(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required", crl=True)
    assert gw.main_address is not None
    outcome = await tls_outcome(gw.main_address, client_context(pki, pki.revoked))
    assert_refused(outcome)
    assert upstream.hits == []
    # The CRL does not make everything fail: an unrevoked cert from the same CA still works.
    await assert_good_cert_served(gw, pki)


async def test_revoked_cert_without_crl_is_accepted(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    # The control for the test above: the revoked cert is otherwise perfectly valid.
    gw = await tls_gateway(gateway, upstream, pki, "required")
    status, _ = await get_json(gw, client_context(pki, pki.revoked))
    assert status == 200


async def test_client_cert_without_spiffe_id_is_a_plain_peer(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required")
    facts = spy_facts(gw)
    status, _ = await get_json(gw, client_context(pki, pki.no_spiffe))
    assert status == 200
    [fact] = facts
    assert fact.peer is not None
    assert fact.peer.spiffe_id is None
    assert "plain-client" in fact.peer.subject


# --------------------------------------------------------------------------- client_cert: optional


async def test_optional_serves_with_and_without_cert(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "optional")
    facts = spy_facts(gw)
    status, _ = await get_json(gw, client_context(pki))
    assert status == 200
    status, _ = await get_json(gw, client_context(pki, pki.agents["billing"]))
    assert status == 200
    assert [f.peer.spiffe_id if f.peer else None for f in facts] == [
        None,
        "spiffe://example.org/agent/billing",
    ]


async def test_optional_still_refuses_an_untrusted_cert(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "optional")
    assert gw.main_address is not None
    assert_refused(await tls_outcome(gw.main_address, client_context(pki, pki.foreign)))
    await assert_good_cert_served(gw, pki)


# --------------------------------------------------------------------------- client_cert: off

IDENTITY_FREE = {
    "host",
    "accept",
    "accept-encoding",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "traceparent",  # DESIGN.md §5: the upstream always gets the gateway's trace context
}


async def test_off_ignores_a_presented_cert(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "off")
    facts = spy_facts(gw)
    # Even a certificate the gateway could never verify is simply not asked for.
    for pair in (pki.agents["planner"], pki.foreign):
        status, body = await get_json(gw, client_context(pki, pair))
        assert status == 200
        got = {k.lower() for k, _ in body["headers"]}
        assert got <= IDENTITY_FREE, (
            f"identity-related headers reached upstream: {got - IDENTITY_FREE}"
        )
    assert [f.peer for f in facts] == [None, None]


# --------------------------------------------------------------------------- resumption


def _fetch_blocking(
    address: tuple[str, int], ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One request on a blocking socket (the ssl module resumes sessions only there)."""
    with (
        socket.create_connection(address, timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=address[0], session=session) as tls,
    ):
        tls.sendall(http_request("GET", "/", [("Connection", "close")]))
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        return received, tls.session, tls.session_reused


async def test_expired_cert_cannot_come_back_through_session_resumption(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI, tmp_path: Path
) -> None:
    # A resumed TLS session skips certificate verification, so an agent whose certificate has
    # expired (or been revoked) since could keep connecting with its old identity for the
    # session's lifetime (OpenSSL: 2 h). Checked for TLS 1.3 tickets and TLS 1.2 session ids.
    gw = await tls_gateway(gateway, upstream, pki, "required")
    assert gw.main_address is not None
    ca = load_issued(pki.ca, pki.directory / "ca.key")
    # Valid for 5 s: long enough for two handshakes on a loaded machine, short for the test.
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    leaf = issue_leaf(
        ca, common_name="short-lived", spiffe_id=f"{TD}/agent/short", not_after=not_after
    )
    leaf.write(tmp_path / "short.pem", tmp_path / "short.key")
    pair = CertPair(tmp_path / "short.pem", tmp_path / "short.key")
    versions = {"TLSv1.3": None, "TLSv1.2": ssl.TLSVersion.TLSv1_2}
    contexts = {v: client_context(pki, pair, maximum_version=m) for v, m in versions.items()}

    sessions = {}
    for version, ctx in contexts.items():
        first, session, _ = await asyncio.to_thread(_fetch_blocking, gw.main_address, ctx)
        if not first.startswith(b"HTTP/1.1 200 "):
            if os.environ.get("CI") == "true":  # a skipped test proves nothing in CI
                pytest.fail("the first handshake did not succeed while the certificate was valid")
            pytest.skip("the machine was too slow to use a 5-second certificate while valid")
        sessions[version] = session
    # X.509 times have a one-second resolution: wait until the certificate is surely expired.
    await wait_until(lambda: datetime.now(UTC) > not_after + timedelta(seconds=1), timeout=10)
    served = {}
    for version, ctx in contexts.items():
        again, _, resumed = await asyncio.to_thread(
            _fetch_blocking, gw.main_address, ctx, sessions[version]
        )
        if again.startswith(b"HTTP/"):
            served[version] = f"served (session resumed: {resumed})"
    assert served == {}, f"expired certificate accepted: {served}"


# --------------------------------------------------------------------------- protocol versions


async def test_tls13_is_negotiated_by_default(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required")
    assert gw.main_address is not None
    ctx = client_context(pki, pki.agents["planner"])
    _, writer = await asyncio.open_connection(*gw.main_address, ssl=ctx)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        assert ssl_object.selected_alpn_protocol() in (None, "http/1.1")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_tls12_client_is_accepted_with_an_aead_suite(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required")
    assert gw.main_address is not None
    ctx = client_context(pki, pki.agents["planner"], maximum_version=ssl.TLSVersion.TLSv1_2)
    _, writer = await asyncio.open_connection(*gw.main_address, ssl=ctx)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.2"
        cipher, _, _ = ssl_object.cipher()
        assert cipher.startswith("ECDHE-"), cipher
        assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_tls12_client_is_refused_when_min_version_is_13(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required", min_version="1.3")
    assert gw.main_address is not None
    ctx = client_context(pki, pki.agents["planner"], maximum_version=ssl.TLSVersion.TLSv1_2)
    assert_refused(await tls_outcome(gw.main_address, ctx))
    status, _ = await get_json(gw, client_context(pki, pki.agents["travel"]))
    assert status == 200


async def test_tls11_client_is_refused(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, "required")
    assert gw.main_address is not None
    with warnings.catch_warnings():
        # ssl deprecates TLS 1.0/1.1 constants; using them is the point of this test.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = client_context(
            pki,
            pki.agents["planner"],
            minimum_version=ssl.TLSVersion.TLSv1,
            maximum_version=ssl.TLSVersion.TLSv1_1,
        )
        with contextlib.suppress(ssl.SSLError):
            # Let the client at least try to offer 1.1; a local OpenSSL policy may forbid it,
            # in which case the handshake must fail all the same.
            ctx.set_ciphers("ALL:@SECLEVEL=0")
    assert_refused(await tls_outcome(gw.main_address, ctx))
    assert upstream.hits == []
    await assert_good_cert_served(gw, pki)


# --------------------------------------------------------------------------- SPIFFE identities


def _bad_identity_cases() -> list[Any]:
    cases = [pytest.param("two-uris", id="two-uri-sans")]
    from tests.conftest import MALFORMED_SPIFFE

    cases += [pytest.param(label, id=f"malformed-{label}") for label in MALFORMED_SPIFFE]
    return cases


def _pair(pki: TestPKI, which: str) -> CertPair:
    return pki.two_uris if which == "two-uris" else pki.malformed[which]


@pytest.mark.parametrize("mode", ["required", "optional"])
@pytest.mark.parametrize("which", _bad_identity_cases())
async def test_bad_spiffe_identity_closes_the_connection_before_any_response(
    gateway: GatewayFactory,
    upstream: Upstream,
    pki: TestPKI,
    caplog: pytest.LogCaptureFixture,
    which: str,
    mode: str,
) -> None:
    gw = await tls_gateway(gateway, upstream, pki, mode)
    assert gw.main_address is not None
    caplog.set_level(logging.WARNING, logger="agentgate.listener")
    # The chain itself is valid (same CA): only the identity it claims is unacceptable.
    assert_refused(await tls_outcome(gw.main_address, client_context(pki, _pair(pki, which))))
    assert upstream.hits == []
    refusals = [r for r in caplog.records if "client certificate refused" in r.getMessage()]
    assert len(refusals) == 1
    await assert_good_cert_served(gw, pki)
