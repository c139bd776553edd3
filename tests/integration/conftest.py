"""Fixtures for the integration tests: an echo upstream, in-process gateways, subprocess gateways.

``gateway`` is a factory: ``await gateway(routes=[...], server={...}, extra={...})`` (``extra``:
further top-level sections) builds ``Settings`` with :func:`gateway.settings.parse_settings` (so
every test also exercises config validation), starts :class:`gateway.app.Gateway` on
``127.0.0.1:0`` (main and admin) and stops it at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.context import RequestFacts
from gateway.settings import parse_settings
from tests.support import GatewayProcess, TestPKI, Upstream

# Short drain and upstream timeouts keep teardown fast; tests that need more say so.
BASE_SERVER: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "admin_listen": "127.0.0.1:0",
    "timeouts": {"drain_s": 1, "upstream_total_s": 10, "upstream_connect_s": 2},
}


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins; ``None`` deletes a key."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def echo_route(upstream: Upstream, **extra: Any) -> dict[str, Any]:
    """A public (no authn) catch-all route to the echo upstream."""
    return {"name": "echo", "upstream": upstream.url, **extra}


def tls_block(pki: TestPKI, mode: str = "required", *, crl: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {
        "cert": str(pki.server.cert),
        "key": str(pki.server.key),
        "client_cert": mode,
    }
    if mode != "off":
        block["client_ca"] = str(pki.ca)
    if crl:
        block["crl"] = str(pki.crl)
    return block


class GatewayFactory(Protocol):
    def __call__(
        self,
        *,
        routes: list[dict[str, Any]] | None = ...,
        server: Mapping[str, Any] | None = ...,
        extra: Mapping[str, Any] | None = ...,
    ) -> Awaitable[Gateway]: ...


def base_url(gw: Gateway, scheme: str = "http") -> str:
    assert gw.main_address is not None
    host, port = gw.main_address
    return f"{scheme}://{host}:{port}"


def admin_url(gw: Gateway) -> str:
    assert gw.admin_address is not None
    host, port = gw.admin_address
    return f"http://{host}:{port}"


def spy_facts(gw: Gateway) -> list[RequestFacts]:
    """Record the ``RequestFacts`` the pipeline builds (to see the connection's ``Peer``)."""
    seen: list[RequestFacts] = []
    observe = gw.pipeline.observe

    def recording(request: Any, request_id: str) -> RequestFacts:
        facts = observe(request, request_id)
        seen.append(facts)
        return facts

    gw.pipeline.observe = recording  # type: ignore[method-assign]
    return seen


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def make(
        *,
        routes: list[dict[str, Any]] | None = None,
        server: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Gateway:
        config = {
            "server": merge(BASE_SERVER, server or {}),
            "routes": routes or [],
            **(extra or {}),
        }
        gw = Gateway(parse_settings(config, tmp_path))
        started.append(gw)
        await gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in reversed(started):
            await gw.stop()


@pytest.fixture
async def gateway_process(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    async def make(config: Mapping[str, Any]) -> GatewayProcess:
        workdir = tmp_path / f"gw{len(started)}"
        workdir.mkdir()
        proc = await GatewayProcess.start(config, workdir)
        started.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in reversed(started):
            await proc.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session that never follows redirects by accident."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s
