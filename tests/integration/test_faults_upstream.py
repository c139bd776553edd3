"""An upstream that breaks off mid-response, in a steady stream of requests.

The upstream (:class:`tests.faults.CountingUpstream`) sends a 200 head and part of a
64 KiB body and then resets the connection (``rst``), closes it cleanly (``fin``), cuts a
chunked body (``chunked``), resets right after the head (``head``), or resets before any byte
of a response (``early``). Every third request of a paced stream is such a POST; the others are
plain GETs.

* The caller sees the cut: the head arrives and the body does not complete (a short
  ``Content-Length`` body or an unterminated chunked one) -- never a short body that looks
  whole. Before any byte (``early``) it is a complete 502.
* The audit record and the metrics say so: reason ``upstream_cut`` and
  ``agentgate_upstream_errors_total{kind="upstream_cut"}`` -- never ``200 ok``.
* The upstream saw every request exactly once: a broken POST is not retried.
* The other requests of the stream, on the same pooled connections, are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults import (
    LOCALHOST,
    CountingUpstream,
    Outcome,
    fetch,
    metric_lines,
    paced,
    tally,
    wait_for,
)
from tests.support import GatewayProcess

pytestmark = pytest.mark.integration

RATE = 30.0
DURATION_S = 3.0

GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


@pytest.fixture
async def counting() -> AsyncIterator[CountingUpstream]:
    up = CountingUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


def is_cut(i: int) -> bool:
    return i % 3 == 1


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["rst", "fin", "chunked", "head", "early"])
async def test_upstream_cut_mid_response_is_a_cut_everywhere(
    gateway_process: GatewayStarter, tmp_path: Path, counting: CountingUpstream, mode: str
) -> None:
    audit = tmp_path / "audit.jsonl"
    gw = await gateway_process(
        {
            "server": {
                "listen": f"{LOCALHOST}:0",
                "admin_listen": f"{LOCALHOST}:0",
                "timeouts": {"drain_s": 1, "upstream_connect_s": 1, "upstream_total_s": 10},
            },
            "telemetry": {"audit_log": str(audit)},
            "routes": [{"name": "up", "upstream": counting.url}],
        }
    )
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(i: int, t: float) -> Outcome:
            headers = {"X-Fault-Id": str(i), "Host": "gw.test"}
            if is_cut(i):
                url, method, body = f"{gw.url}/cut/{mode}/{i}", "POST", b'{"book": "LH400"}'
            else:
                url, method, body = f"{gw.url}/ok/{i}", "GET", None
            return await fetch(
                session, method, url, index=i, t=t, timeout_s=5.0, headers=headers, data=body
            )

        outcomes = await paced(send, rate=RATE, duration_s=DURATION_S)
    total = len(outcomes)
    cut = [o for o in outcomes if is_cut(o.index)]
    plain = [o for o in outcomes if not is_cut(o.index)]
    print(f"{mode}: {tally(outcomes)}")

    # The caller: plain requests complete, broken ones are visibly broken.
    assert {(o.kind, o.status) for o in plain} == {("status", 200)}
    if mode == "early":
        assert {(o.kind, o.status) for o in cut} == {("status", 502)}
    else:
        assert {(o.kind, o.status) for o in cut} == {("cut", 200)}, tally(cut)

    # The upstream: every request exactly once; no broken POST was sent again.
    assert counting.duplicates() == {}
    assert set(counting.hits) == {str(i) for i in range(total)}
    assert counting.cuts[mode] == len(cut)

    # The audit trail: one record per request; a cut is never "ok".
    async def all_written() -> bool:
        return len(audit_records(audit)) >= total

    await wait_for(all_written, timeout_s=10, what="an audit record per request")
    records = audit_records(audit)
    assert len(records) == total
    by_path = {r["path"]: r for r in records}
    expected_reason = "upstream_unavailable" if mode == "early" else "upstream_cut"
    for o in cut:
        record = by_path[f"/cut/{mode}/{o.index}"]
        assert record["reason"] == expected_reason, record
    for o in plain:
        assert by_path[f"/ok/{o.index}"]["reason"] == "ok"

    # The metrics agree.
    errors = await metric_lines(gw.admin_url, "agentgate_upstream_errors_total")
    wanted = f'agentgate_upstream_errors_total{{kind="{expected_reason}",route="up"}} {len(cut)}.0'
    assert wanted in errors, errors
    requests = await metric_lines(gw.admin_url, "agentgate_requests_total")
    assert f'agentgate_requests_total{{reason="ok",route="up",status="200"}} {len(plain)}.0' in (
        requests
    )
    status = "502" if mode == "early" else "200"
    wanted = f'agentgate_requests_total{{reason="{expected_reason}",route="up",status="{status}"}}'
    assert f"{wanted} {len(cut)}.0" in requests, requests
    assert gw.proc.returncode is None
