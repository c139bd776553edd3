"""The README's "see a trace" steps (issue 15.8): deploy/jaeger/jaeger.yaml keeps Jaeger on
loopback, and a gateway pointed at it produces a trace the query API returns.

The shipped file is run as written except for its ports (free ones, so the test never
collides with a Jaeger a developer already runs on 4318/16686); every host is asserted first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.settings import parse_settings
from tests.jaeger_server import JaegerServer
from tests.support import ROOT, Upstream

pytestmark = pytest.mark.integration

SHIPPED = ROOT / "deploy" / "jaeger" / "jaeger.yaml"


def _endpoints(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "endpoint":
                yield value
            else:
                yield from _endpoints(value)
    elif isinstance(node, list):
        for value in node:
            yield from _endpoints(value)


def test_every_shipped_jaeger_endpoint_is_loopback() -> None:
    config = yaml.safe_load(SHIPPED.read_text())
    endpoints = list(_endpoints(config))
    assert len(endpoints) == 4  # otlp http, query http + grpc, health
    assert all(e.startswith("127.0.0.1:") for e in endpoints), endpoints
    assert "127.0.0.1:4318" in endpoints  # where telemetry.otlp_endpoint points by default
    assert "127.0.0.1:16686" in endpoints


async def test_a_gateway_request_shows_up_in_the_shipped_jaeger(
    tmp_path: Path, upstream: Upstream
) -> None:
    jaeger = JaegerServer.start(tmp_path, template=yaml.safe_load(SHIPPED.read_text()))
    try:
        settings = parse_settings(
            {
                "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
                "telemetry": {
                    "service_name": "agentgate",
                    "otlp_endpoint": jaeger.otlp_endpoint,
                    "sample_ratio": 1.0,
                },
                "routes": [
                    {
                        "name": "public",
                        "match": {"path_prefix": "/public/"},
                        "upstream": upstream.url,
                        "segment": "public",
                        "tags": ["public"],
                    }
                ],
            },
            tmp_path,
        )
        gw = Gateway(settings)
        await gw.start()
        try:
            assert gw.main_address is not None
            url = f"http://127.0.0.1:{gw.main_address[1]}/public/hello"
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                assert resp.status == 200
        finally:
            await gw.stop()  # flushes the batch span processor
        spans: list[dict[str, Any]] = []
        for _ in range(100):  # the query API may lag the OTLP receiver by a moment
            spans = await jaeger.find("agentgate")
            if any(s.get("name") == "GET /public/" for s in spans):
                break
            await asyncio.sleep(0.1)
        assert any(s.get("name") == "GET /public/" for s in spans), [s.get("name") for s in spans]
    finally:
        jaeger.stop()
