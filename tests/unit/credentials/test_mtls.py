"""gateway.credentials.mtls: a client certificate on the upstream connection, over real TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.credentials.mtls import MTLSConverter
from tests.support import TestPKI
from tests.unit.credentials.conftest import Build, context, manager, outbound

HTTPS = "https://localhost:9"


class ClientCertServer:
    """An HTTPS server that requires a client certificate and echoes its subject CN."""

    def __init__(self, pki: TestPKI) -> None:
        self.pki = pki
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        cert = ssl_object.getpeercert() if ssl_object else None
        subject = dict(pair[0] for pair in cert["subject"]) if cert else {}
        return web.Response(text=str(subject.get("commonName", "")))

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.server.cert), str(self.pki.server.key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        server = site._server
        if not isinstance(server, asyncio.Server):
            raise RuntimeError("no TCP server")
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server(pki: TestPKI) -> AsyncIterator[ClientCertServer]:
    srv = ClientCertServer(pki)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def _get(out: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(out.url, ssl=out.ssl_context or True) as resp,
    ):
        return resp.status, await resp.text()


def _agent(pki: TestPKI) -> Any:
    return next(iter(pki.agents.values()))


async def test_certificate_reaches_a_cert_requiring_server(
    build: Build, pki: TestPKI, server: ClientCertServer
) -> None:
    pair = _agent(pki)
    conv = build(
        {"type": "mtls", "cert": str(pair.cert), "key": str(pair.key), "ca": str(pki.ca)},
        upstream=HTTPS,
    )
    assert isinstance(conv, MTLSConverter)
    out = outbound(f"https://localhost:{server.port}/")
    await conv.apply(out, context())
    assert isinstance(out.ssl_context, ssl.SSLContext)
    assert dict(out.headers) == {}  # the credential is the TLS handshake, not a header
    status, cn = await _get(out)
    assert status == 200
    assert cn  # the server saw a client certificate


async def test_same_context_for_every_request(build: Build, pki: TestPKI) -> None:
    pair = _agent(pki)
    conv = build(
        {"type": "mtls", "cert": str(pair.cert), "key": str(pair.key), "ca": str(pki.ca)},
        upstream=HTTPS,
    )
    first, second = outbound("https://localhost/"), outbound("https://localhost/")
    await conv.apply(first, context())
    await conv.apply(second, context())
    assert first.ssl_context is second.ssl_context  # built once: one connection pool
    ctx = first.ssl_context
    assert ctx is not None
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


async def test_without_the_credential_the_server_refuses(
    pki: TestPKI, server: ClientCertServer
) -> None:
    out = outbound(f"https://localhost:{server.port}/")
    out.ssl_context = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises(aiohttp.ClientError):
        await _get(out)


async def test_server_outside_the_trusted_ca_is_refused(
    build: Build, pki: TestPKI, server: ClientCertServer
) -> None:
    pair = _agent(pki)
    conv = build(
        {"type": "mtls", "cert": str(pair.cert), "key": str(pair.key), "ca": str(pki.foreign_ca)},
        upstream=HTTPS,
    )
    out = outbound(f"https://localhost:{server.port}/")
    await conv.apply(out, context())
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(out)


@pytest.mark.parametrize(
    ("upstream_ca", "ok"),
    [
        pytest.param(True, True, id="route-upstream-ca"),
        pytest.param(False, False, id="system-store"),
    ],
)
async def test_route_upstream_ca_is_used_when_the_credential_has_none(
    tmp_path: Path, pki: TestPKI, server: ClientCertServer, upstream_ca: bool, ok: bool
) -> None:
    pair = _agent(pki)
    route: dict[str, Any] = {
        "upstream": f"https://localhost:{server.port}",
        "credential": {"type": "mtls", "cert": str(pair.cert), "key": str(pair.key)},
    }
    if upstream_ca:
        route["upstream_tls"] = {"ca": str(pki.ca)}
    conv = manager(tmp_path, route).select("r", None)
    out = outbound(f"https://localhost:{server.port}/")
    await conv.apply(out, context())
    if ok:
        assert (await _get(out))[0] == 200
    else:  # the dev CA is in no system store
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(out)


def test_a_key_that_does_not_match_fails_at_build(build: Build, pki: TestPKI) -> None:
    pair = _agent(pki)
    with pytest.raises(ssl.SSLError):
        build({"type": "mtls", "cert": str(pair.cert), "key": str(pki.server.key)}, upstream=HTTPS)
