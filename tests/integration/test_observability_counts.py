"""Metrics and audit records agree, request for request, on a scripted run."""

from __future__ import annotations

import collections
import hashlib
import json
import re
import shutil
from pathlib import Path

import aiohttp
import pytest
import yaml
import yarl

from gateway.app import Gateway
from gateway.settings import load_settings
from tests.support import ROOT, Upstream

pytestmark = pytest.mark.integration

KEY = "observability-test-key-0123456789"
_SAMPLE = re.compile(
    r'^agentgate_requests_total\{reason="(?P<reason>[^"]*)",route="(?P<route>[^"]*)",'
    r'status="(?P<status>\d+)"\} (?P<value>[0-9.e+]+)$'
)


def _counts_from_metrics(text: str) -> collections.Counter[tuple[str, int, str]]:
    counts: collections.Counter[tuple[str, int, str]] = collections.Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            key = (match["route"], int(match["status"]), match["reason"])
            counts[key] += int(float(match["value"]))
    return counts


async def test_metrics_and_audit_agree(tmp_path: Path, upstream: Upstream) -> None:
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    keys = {
        "keys": [
            {
                "id": "p1",
                "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                "subject": "partner-agent-1",
                "type": "agent",
                "roles": ["partner"],
            }
        ]
    }
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump(keys))
    config = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "authn": {"api_key": {"keys_file": "keys.yaml"}},
        "pdp": {"engine": "embedded", "policies": "policies", "data": "policies/data.json"},
        "telemetry": {"audit_log": str(tmp_path / "audit.log")},
        "routes": [
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/"},
                "authn": "api_key",
                "upstream": upstream.url,
                "segment": "booking",
            },
            {
                "name": "public",
                "match": {"path_prefix": "/public/"},
                "upstream": upstream.url,
                "segment": "public",
                "tags": ["public"],
            },
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = Gateway(load_settings(path))
    await gw.start()
    assert gw.main_address is not None
    assert gw.admin_address is not None
    base = f"http://127.0.0.1:{gw.main_address[1]}"
    script = [
        ("GET", "/flights/1", {"X-API-Key": KEY}, 200),
        ("GET", "/flights/2", {"X-API-Key": KEY}, 200),
        ("POST", "/flights/3", {"X-API-Key": KEY}, 403),  # the partner role may only read
        ("GET", "/flights/4", {}, 401),
        ("GET", "/flights/5", {"X-API-Key": "wrong"}, 401),
        ("GET", "/public/x", {}, 200),
        ("GET", "/nowhere", {}, 404),
        ("GET", "/flights/%2fetc", {"X-API-Key": KEY}, 400),
    ]
    try:
        async with aiohttp.ClientSession() as session:
            for method, target, headers, expected in script:
                url = yarl_url(base + target)
                async with session.request(method, url, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == expected, (method, target)
            async with session.get(f"http://127.0.0.1:{gw.admin_address[1]}/metrics") as resp:
                metrics = _counts_from_metrics(await resp.text())
    finally:
        await gw.stop()  # drains the audit queue
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert len(records) == len(script)
    audited: collections.Counter[tuple[str, int, str]] = collections.Counter(
        (r["route"] or "-", r["status"], r["reason"]) for r in records
    )
    assert audited == metrics
    # Every decision the PDP made is in the audit trail, with its id.
    decided = [r for r in records if r["decision_id"]]
    assert {r["status"] for r in decided} == {200, 403}
    assert all(r["request_id"] for r in records)


def yarl_url(raw: str) -> yarl.URL:
    return yarl.URL(raw, encoded=True)  # send the target byte for byte (%2f stays)
