"""The admin listener (DESIGN.md §4 ``admin_listen``, §5): /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.integration.conftest import GatewayFactory, admin_url, base_url
from tests.support import LOCALHOST, Upstream, closed_port, http_request, raw_request

pytestmark = pytest.mark.integration


@pytest.fixture
async def gw(gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await gateway(
        routes=[
            {"name": "echo", "match": {"path_prefix": "/echo/"}, "upstream": upstream.url},
            {
                "name": "dead",
                "match": {"path_prefix": "/dead/"},
                "upstream": f"http://{LOCALHOST}:{closed_port()}",
            },
        ],
        server={"limits": {"max_header_bytes": 2048}},
    )


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


Key = tuple[str, str, str]  # route, status, reason


def request_counts(text: str) -> dict[Key, float]:
    counts: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "agentgate_requests_total":
                labels = sample.labels
                counts[(labels["route"], labels["status"], labels["reason"])] = sample.value
    return counts


def duration_counts(text: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "agentgate_request_duration_seconds_count":
                counts[(sample.labels["route"], sample.labels["status"])] = sample.value
    return counts


async def wait_for_counts(
    session: aiohttp.ClientSession, gw: Gateway, expected: dict[Key, float]
) -> str:
    """Scrape /metrics until ``expected`` shows or 3 s pass (a request is counted as its
    handler ends, which can be a moment after the client has the last byte)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while True:
        _, _, text = await fetch(session, admin_url(gw) + "/metrics")
        if request_counts(text) == expected or loop.time() > deadline:
            return text
        await asyncio.sleep(0.02)


async def test_healthz(gw: Gateway, session: aiohttp.ClientSession) -> None:
    status, ctype, body = await fetch(session, admin_url(gw) + "/healthz")
    assert status == 200
    assert ctype.startswith("application/json")
    assert '"ok"' in body


async def test_readyz_reports_its_checks(gw: Gateway, session: aiohttp.ClientSession) -> None:
    async with session.get(admin_url(gw) + "/readyz") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    assert body["ready"] is True
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert checks
    assert checks.get("config") is True
    assert all(value is True for value in checks.values())


async def test_readyz_is_503_while_a_check_fails(
    gateway: GatewayFactory, session: aiohttp.ClientSession
) -> None:
    gw = await gateway(routes=[])
    url = admin_url(gw) + "/readyz"
    gw.readiness.checks["pdp"] = lambda: False
    async with session.get(url) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["ready"] is False
    assert body["checks"]["pdp"] is False
    assert body["checks"]["config"] is True


async def test_admin_endpoints_are_not_on_the_main_listener(
    gw: Gateway, session: aiohttp.ClientSession, upstream: Upstream
) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _, _ = await fetch(session, base_url(gw) + path)
        assert status == 404, path
    assert upstream.hits == []


async def test_metrics_count_requests_by_route_status_and_reason(
    gw: Gateway, session: aiohttp.ClientSession
) -> None:
    made: Iterable[tuple[str, int]] = [
        *[("/echo/a", 200)] * 3,
        *[("/nowhere", 404)] * 2,
        ("/dead/x", 502),
        ("/echo/a%2Fb", 400),
    ]
    for path, status in made:
        got, _, _ = await fetch(session, base_url(gw) + path)
        assert got == status, path
    expected = {
        ("echo", "200", "ok"): 3.0,
        ("-", "404", "no_route"): 2.0,
        ("dead", "502", "upstream_unavailable"): 1.0,
        ("-", "400", "invalid_path"): 1.0,
    }
    text = await wait_for_counts(session, gw, expected)
    assert request_counts(text) == expected
    assert duration_counts(text) == {
        ("echo", "200"): 3.0,
        ("-", "404"): 2.0,
        ("dead", "502"): 1.0,
        ("-", "400"): 1.0,
    }
    async with session.get(admin_url(gw) + "/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
    # Labels stay bounded: no path, address or request id ever becomes a label value.
    for needle in ("/echo/a", "/nowhere", LOCALHOST, "a%2Fb"):
        assert needle not in text


async def test_metrics_count_requests_refused_by_the_http_parser(
    gw: Gateway, session: aiohttp.ClientSession
) -> None:
    assert gw.main_address is not None
    resp = await raw_request(
        gw.main_address, http_request("GET", "/echo/a", [("X-Big", "a" * 4096)])
    )
    assert resp.status == 431
    expected = {("-", "431", "headers_too_large"): 1.0}
    text = await wait_for_counts(session, gw, expected)
    assert request_counts(text) == expected
