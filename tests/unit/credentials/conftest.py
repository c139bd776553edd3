"""Helpers for the converter tests: settings parsed for real, requests and contexts to apply."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway import secret
from gateway.context import Identity, Principal, RequestFacts
from gateway.credentials import ConvertContext, Converter, Outbound
from gateway.credentials.manager import CredentialManager
from gateway.settings import parse_settings

Build = Callable[..., Converter]


def outbound(url: str = "http://backend.internal/api/x?a=1", method: str = "GET") -> Outbound:
    return Outbound(method, URL(url, encoded=True), CIMultiDict())


def facts() -> RequestFacts:
    return RequestFacts(
        request_id="r1",
        method="GET",
        scheme="https",
        host="gw.example.org",
        path="/api/x",
        raw_query="a=1",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto="https",
        forwarded_host="gw.example.org",
        peer=None,
        time_ns=time.time_ns(),
    )


def context(
    txn: str | None = "txn.jwt.value",
    *,
    inbound_token: str | None = None,
    subject: str | None = "spiffe://example.org/agent/a",
) -> ConvertContext:
    identity = None
    if subject is not None:
        principal = Principal(method="mtls", subject=subject, subject_type="agent")
        identity = Identity(
            principal=principal, results={"mtls": principal}, caller="agent", mode="self"
        )
    return ConvertContext(
        facts=facts(), identity=identity, txn_token=txn, inbound_token=inbound_token
    )


def manager(
    folder: Path, route: dict[str, Any], *, txn: bool = False, authn: bool = True
) -> CredentialManager:
    data: dict[str, Any] = {"routes": [{"name": "r", "upstream": "http://127.0.0.1:9", **route}]}
    if authn:
        data["authn"] = {"mtls": {}}
    settings = parse_settings(data, folder)
    return CredentialManager(settings.routes, txn_header="Txn-Token" if txn else None)


@pytest.fixture
def build(tmp_path: Path) -> Build:
    """``build(credential_dict)``: the route's default converter, built from parsed settings."""

    def _build(
        credential: dict[str, Any], *, txn: bool = False, upstream: str = "http://127.0.0.1:9"
    ) -> Converter:
        route = {"credential": credential, "upstream": upstream}
        return manager(tmp_path, route, txn=txn).select("r", None)

    return _build


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Move the secrets' clock past their once-a-second re-check of ``file:`` secrets."""

    offset = [0.0]
    # Only gateway.secret's view of the clock moves (the event loop keeps the real one).
    monkeypatch.setattr(
        secret, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + offset[0])
    )

    def _later() -> None:
        offset[0] += 2.0

    return _later


class TokenServer:
    """A small real OAuth token endpoint on 127.0.0.1: records each request, answers a script.

    ``answer`` is (status, body, headers); ``delay`` stalls each answer (single-flight and
    timeout tests). Real HTTP over a socket, so the converter's own client code is exercised.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []  # (headers, form)
        self.answer: tuple[int, bytes, dict[str, str]] = (
            200,
            b'{"access_token": "at-1", "token_type": "Bearer", "expires_in": 300}',
            {"Content-Type": "application/json"},
        )
        self.delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    def json(self, doc: object, status: int = 200) -> None:
        self.answer = (status, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append((dict(request.headers), form))
        if self.delay:
            await asyncio.sleep(self.delay)
        status, body, headers = self.answer
        return web.Response(status=status, body=body, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._handle)
        app.router.add_post("/elsewhere", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        if not isinstance(server, asyncio.Server):
            raise RuntimeError("no TCP server")
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/token"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = TokenServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


Start = Callable[..., Any]


@pytest.fixture
async def start_converters(build: Build) -> AsyncIterator[Callable[[dict[str, Any], type], Start]]:
    """``start_converters(base, cls)`` gives ``make(url, **cfg)``: a started converter of
    type ``cls`` built from ``base`` + ``token_endpoint`` + ``cfg``; all closed at teardown."""
    converters: list[Converter] = []

    def _factory(base: dict[str, Any], cls: type) -> Start:
        async def _make(url: str, **cfg: Any) -> Converter:
            conv = build({**base, "token_endpoint": url, **cfg})
            assert isinstance(conv, cls)
            await conv.start()
            converters.append(conv)
            return conv

        return _make

    yield _factory
    for conv in converters:
        await conv.close()
