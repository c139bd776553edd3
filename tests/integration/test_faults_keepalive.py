"""A kept-alive TLS connection is never answered for a request it did not send.

Found by ``bench/soak.py``: behind the TLS acceptor (``loop.start_tls``) the first request's
bytes reach the connection before ``connection_made``, both armed the ``header_read_s``
timer, and the first timer was orphaned. ``header_read_s`` after the connection opened it
fired into the idle keep-alive connection: a ``408`` and a close. A request sent on that
connection at that moment was served by the upstream while its caller read the ``408`` --
a request lost, and for a non-idempotent one an invitation to send it twice.

The client here is a raw socket (no pool, no retry): one request, a pause past
``header_read_s``, a second request on the same connection; both must get their own 200,
and nothing may arrive unasked in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from tests.integration.conftest import GatewayFactory, echo_route, tls_block
from tests.support import TestPKI, Upstream, client_context, http_request, read_response

pytestmark = pytest.mark.integration

HEADER_READ_S = 1.0


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_idle_keep_alive_connection_gets_no_unsolicited_408(
    gateway: GatewayFactory, upstream: Upstream, pki: TestPKI, tls: bool
) -> None:
    server = {"timeouts": {"header_read_s": HEADER_READ_S}}
    if tls:
        server["tls"] = tls_block(pki, "off")
    gw = await gateway(routes=[echo_route(upstream)], server=server)
    assert gw.main_address is not None
    ctx: ssl.SSLContext | None = client_context(pki) if tls else None
    async with asyncio.timeout(15):
        reader, writer = await asyncio.open_connection(
            *gw.main_address, ssl=ctx, server_hostname="localhost" if tls else None
        )
        try:
            writer.write(http_request("GET", "/first", host="localhost"))
            first = await read_response(reader)
            assert first.status == 200
            # Idle past header_read_s counted from when the connection opened.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEADER_READ_S * 1.5):
                    unasked = await reader.read(1)
                    raise AssertionError(f"unsolicited bytes on an idle connection: {unasked!r}")
            writer.write(http_request("GET", "/second", host="localhost"))
            second = await read_response(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    assert second.status == 200, second.body
    assert upstream.paths() == ["/first", "/second"]
