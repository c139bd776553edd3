"""gateway.admin: the admin listener's application (probes table, readiness, metrics, /admin).

A real aiohttp server per test; the revocation API itself is tested in test_admin_api.py,
here only that it is mounted (and disabled without a token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin import PROBES, Readiness, admin_app
from gateway.observability.metrics import Metrics
from gateway.settings import Secret
from gateway.state.revocation import MemoryRevocationStore

ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
TOKEN = "admin-token-5d2e8b1c"


def _boom() -> bool:
    raise RuntimeError("check failed")


async def _client(
    aiohttp_client: ClientMaker,
    checks: dict[str, Callable[[], bool]] | None = None,
    token: str | None = None,
) -> TestClient[Any, Any]:
    secret = Secret("env:ADMIN", token.encode()) if token is not None else None
    app = admin_app(Metrics(), Readiness(dict(checks or {})), MemoryRevocationStore(), secret)
    return await aiohttp_client(app)


def test_probes_table_is_the_listening_line_order() -> None:
    # gateway.app.Gateway.describe prints "(/healthz /readyz /metrics)" from this table.
    assert " ".join(PROBES) == "/healthz /readyz /metrics"


async def test_healthz(aiohttp_client: ClientMaker) -> None:
    client = await _client(aiohttp_client, {"config": lambda: False})
    resp = await client.get("/healthz")
    assert resp.status == 200  # alive even while not ready
    assert await resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("checks", "status", "report"),
    [
        pytest.param({}, 200, {}, id="no-checks-ready"),
        pytest.param(
            {"config": lambda: True, "pdp": lambda: True},
            200,
            {"config": True, "pdp": True},
            id="all-pass",
        ),
        pytest.param(
            {"config": lambda: True, "pdp": lambda: False},
            503,
            {"config": True, "pdp": False},
            id="one-fails",
        ),
        pytest.param(
            {"config": lambda: True, "state": _boom},
            503,
            {"config": True, "state": False},
            id="raising-check-is-not-ready-never-500",
        ),
    ],
)
async def test_readyz(
    aiohttp_client: ClientMaker,
    checks: dict[str, Callable[[], bool]],
    status: int,
    report: dict[str, bool],
) -> None:
    client = await _client(aiohttp_client, checks)
    resp = await client.get("/readyz")
    assert resp.status == status
    assert await resp.json() == {"ready": status == 200, "checks": report}


async def test_metrics_is_the_prometheus_exposition(aiohttp_client: ClientMaker) -> None:
    client = await _client(aiohttp_client)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == Metrics.content_type
    assert b"# TYPE " in await resp.read()


@pytest.mark.parametrize(
    ("token", "status"),
    [
        pytest.param(None, 404, id="no-token-admin-api-absent"),
        pytest.param(TOKEN, 401, id="token-admin-api-mounted"),
    ],
)
async def test_admin_api_is_mounted(
    aiohttp_client: ClientMaker, token: str | None, status: int
) -> None:
    client = await _client(aiohttp_client, token=token)
    resp = await client.get("/admin/revocations")  # no Authorization header
    assert resp.status == status


@pytest.mark.parametrize("path", list(PROBES))
async def test_probes_are_get_only(aiohttp_client: ClientMaker, path: str) -> None:
    client = await _client(aiohttp_client)
    resp = await client.post(path)
    assert resp.status == 405
