"""Builders shared by the Txn-Token tests (unit and integration).

``identity``/``facts`` build the frozen context values a real pipeline would pass;
``MTLSServer`` serves one handler on the gateway's own mTLS listener
(:class:`gateway.net.listener.GatewayServer`, real TLS handshakes on loopback), so the Token
Service sees a verified ``Peer`` exactly as it will in production.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.context import Actor, CallerType, Identity, Mode, Peer, Principal, RequestFacts
from gateway.net import tls
from gateway.net.listener import GatewayServer
from gateway.settings import TLSSettings
from tests.support import TestPKI

TD = "example.org"
ISSUER = "https://gateway.example.org"
GATEWAY_ID = f"spiffe://{TD}/gateway"
PLANNER = f"spiffe://{TD}/agent/planner"
TRAVEL = f"spiffe://{TD}/agent/travel"
BILLING = f"spiffe://{TD}/agent/billing"

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_TXN = "urn:ietf:params:oauth:token-type:txn_token"
TT_AT = "urn:ietf:params:oauth:token-type:access_token"


def peer(spiffe_id: str | None = PLANNER) -> Peer:
    return Peer(
        spiffe_id=spiffe_id,
        trust_domain=TD if spiffe_id else None,
        cert_sha256="ab" * 32,
        cert_x5t_s256="q" * 43,
        subject="CN=test",
        issuer="CN=dev CA",
        not_after=0.0,
    )


def principal(
    subject: str = "alice",
    *,
    method: str = "bearer",
    subject_type: Any = "user",
    scopes: tuple[str, ...] = ("flights.read", "flights.book"),
    actors: tuple[Actor, ...] = (),
    amr: tuple[str, ...] = ("mfa",),
    claims: Mapping[str, Any] | None = None,
) -> Principal:
    return Principal(
        method=method,
        subject=subject,
        subject_type=subject_type,
        issuer="https://idp.example.org",
        scopes=scopes,
        actors=actors,
        amr=amr,
        claims=dict(claims or {}),
    )


def identity(
    main: Principal | None = None,
    *,
    caller: CallerType = "human_api",
    mode: Mode = "self",
    extra: Mapping[str, Principal] | None = None,
) -> Identity:
    main = main or principal()
    return Identity(
        principal=main,
        results={main.method: main, **(extra or {})},
        caller=caller,
        mode=mode,
    )


def facts(
    *,
    method: str = "POST",
    path: str = "/flights/42/book",
    client: str = "203.0.113.9",
    the_peer: Peer | None = None,
    request_id: str = "req-1",
) -> RequestFacts:
    return RequestFacts(
        request_id=request_id,
        method=method,
        scheme="https",
        host="gateway.example.org",
        path=path,
        raw_query="",
        client_address=client,
        peer_address=client,
        forwarded_for=client,
        forwarded_proto="https",
        forwarded_host="gateway.example.org",
        peer=the_peer,
        time_ns=0,
    )


def form(**params: str) -> str:
    return urlencode(params)


def exchange_form(subject_token: str, **extra: str) -> str:
    params = {
        "grant_type": GRANT,
        "requested_token_type": TT_TXN,
        "subject_token": subject_token,
        "subject_token_type": TT_TXN,
        **extra,
    }
    return urlencode(params)


class MTLSServer:
    """One handler on the gateway's mTLS listener (client certificates optional)."""

    def __init__(
        self, pki: TestPKI, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    ) -> None:
        settings = TLSSettings.model_validate(
            {
                "cert": str(pki.server.cert),
                "key": str(pki.server.key),
                "client_ca": str(pki.ca),
                "client_cert": "optional",
            }
        )
        self._ssl = tls.server_context(settings)
        self._server = GatewayServer(handler, header_read_s=10, access_log=None)
        self._runner = web.ServerRunner(self._server)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock, ssl_context=self._ssl)
        await site.start()
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    async def close(self) -> None:
        await self._runner.cleanup()


def client_ssl(pki: TestPKI, agent: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if agent is not None:
        pair = pki.agents[agent]
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx
