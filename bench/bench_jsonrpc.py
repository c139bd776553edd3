"""JSON-RPC inspection (issue 17): what an ``mcp``/``a2a`` route adds over a plain HTTP route.

    python bench/bench_jsonrpc.py [--seconds 1.0] [--runs 5] [--no-pin]

A plain HTTP route does none of this work; each row is the pure-Python cost the gateway adds
per request (or per response, per event), in one process on one core:

* ``parse + mcp.facts (2 KB tools/call)`` -- :func:`gateway.protocols.jsonrpc.parse` of a
  2 KB ``tools/call`` body (``transfer_funds`` with realistic arguments: amounts, IBANs, a
  memo, line items, metadata) and :func:`gateway.protocols.mcp.facts` with a 3-key argument
  allowlist: the issue's "inspection" figure. ``parse only`` and ``mcp.facts only`` split it;
  ``floor json.loads`` is the stdlib C decoder without the strict checks (duplicate members,
  NaN/Infinity, 1e400), what strict parsing cannot go below;
* ``parse + a2a.facts (2 KB message/send)`` -- the same for an A2A v0.3 ``message/send``;
* ``scan + rewrite, 20 tools, 10 allowed`` -- :func:`gateway.protocols.mcp.scan` and
  :func:`~gateway.protocols.mcp.rewrite` of a ``tools/list`` response with 20 tools (each with
  an input schema, ~6 KB) keeping 10 (re-serialised); ``..., all allowed`` -- the same when the
  policy allows every tool (the original bytes come back, nothing is re-serialised);
* ``sse feed, 2 KB event`` -- :meth:`gateway.protocols.sse.SSEParser.feed` of one 2 KB
  ``message`` event (one JSON-RPC response in its ``data``), in one chunk and in 4 chunks.

The PDP call per tool between ``scan`` and ``rewrite`` is the lead's code and not measured here.
The process pins itself to one CPU (``os.sched_setaffinity``) unless ``--no-pin``; each figure
is the median of ``--runs`` runs of ``--seconds`` CPU-seconds each (``time.thread_time``,
robust to other load on a shared host), as µs per operation. Issue 17 target: inspection
<= 30 µs for a 2 KB body.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.protocols import a2a, mcp  # noqa: E402
from gateway.protocols.jsonrpc import Id, parse  # noqa: E402
from gateway.protocols.sse import SSEParser  # noqa: E402

BATCH = 200
TARGET_US = 30.0
BODY_BYTES = 2048
ALLOW = {"transfer_funds": frozenset({"amount", "currency", "to_account"})}

Op = Callable[[], object]


# --------------------------------------------------------------------------- timing


def rate(op: Op, seconds: float) -> float:
    """Operations per CPU-second of ``op`` over about ``seconds`` of CPU."""
    done, cpu = 0, 0.0
    while cpu < seconds:
        cpu0 = time.thread_time()
        for _ in range(BATCH):
            op()
        cpu += time.thread_time() - cpu0
        done += BATCH
    return done / cpu


def median_us(op: Op, seconds: float, runs: int) -> float:
    """Median µs per operation over ``runs`` runs, after a short warm-up."""
    rate(op, min(0.05, seconds))
    return statistics.median(1e6 / rate(op, seconds) for _ in range(runs))


# --------------------------------------------------------------------------- fixtures


def _padded(value: dict[str, Any], pad: list[str | int]) -> bytes:
    """``value`` as compact JSON grown to :data:`BODY_BYTES` through the text at ``pad``."""
    body = json.dumps(value, separators=(",", ":")).encode()
    target: Any = value
    for key in pad[:-1]:
        target = target[key]
    target[pad[-1]] += "x" * (BODY_BYTES - len(body))
    body = json.dumps(value, separators=(",", ":")).encode()
    if len(body) != BODY_BYTES:
        raise RuntimeError(f"fixture is {len(body)} bytes, not {BODY_BYTES}")
    return body


def tools_call() -> bytes:
    items = [
        {"sku": f"SKU-{i:05d}", "description": f"Line item {i}", "quantity": i, "unit": 12.5 * i}
        for i in range(1, 9)
    ]
    return _padded(
        {
            "jsonrpc": "2.0",
            "id": 42,
            "method": "tools/call",
            "params": {
                "name": "transfer_funds",
                "arguments": {
                    "amount": 1250.75,
                    "currency": "EUR",
                    "from_account": "DE89370400440532013000",
                    "to_account": "FR1420041010050500013M02606",
                    "reference": "INV-2026-000123",
                    "memo": "Quarterly settlement for consulting services; see attached. ",
                    "line_items": items,
                    "metadata": {"requested_by": "agent://travel/planner", "priority": "normal"},
                },
                "_meta": {"progressToken": "p-42"},
            },
        },
        ["params", "arguments", "memo"],
    )


def message_send() -> bytes:
    return _padded(
        {
            "jsonrpc": "2.0",
            "id": "req-7",
            "method": "message/send",
            "params": {
                "message": {
                    "kind": "message",
                    "messageId": "9f2c6a1e-3b1d-4c55-8a2e-7d41b1f0c9aa",
                    "role": "user",
                    "taskId": "task-1234",
                    "contextId": "ctx-5678",
                    "parts": [{"kind": "text", "text": "Book a flight from Paris to Tokyo. "}],
                    "metadata": {"skill": "book-flight"},
                },
                "configuration": {"acceptedOutputModes": ["text/plain"], "blocking": True},
            },
        },
        ["params", "message", "parts", 0, "text"],
    )


def tools_list() -> bytes:
    tools = [
        {
            "name": f"tool_{i:02d}",
            "title": f"Tool {i}",
            "description": f"Does thing number {i} for the caller, with care.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "account": {"type": "string", "description": "The account id"},
                    "amount": {"type": "number", "minimum": 0},
                    "note": {"type": "string"},
                },
                "required": ["account"],
            },
        }
        for i in range(20)
    ]
    response = {"jsonrpc": "2.0", "id": 3, "result": {"tools": tools, "nextCursor": "page-2"}}
    return json.dumps(response, separators=(",", ":")).encode()


def cases() -> list[tuple[str, Op]]:
    call = tools_call()
    (message,) = parse(call).messages
    send = message_send()
    listing = tools_list()
    pending: dict[Id, str] = {3: "tools/list"}
    half: dict[Id, Collection[str]] = {3: {f"tool_{i:02d}" for i in range(0, 20, 2)}}
    every: dict[Id, Collection[str]] = {3: {f"tool_{i:02d}" for i in range(20)}}
    if (
        len(mcp.scan(listing, pending).names[3]) != 20
        or mcp.filter_response(listing, pending, every) is not listing
    ):
        raise RuntimeError("the tools/list fixture does not scan as 20 tools")
    result = {"jsonrpc": "2.0", "id": 42, "result": {"content": [{"type": "text", "text": ""}]}}
    event = f"event: message\nid: 17\ndata: {json.dumps(result)}\n\n".encode()
    event = event.replace(b'"text": ""', b'"text": "' + b"y" * (BODY_BYTES - len(event)) + b'"')
    quarter = len(event) // 4
    chunks = [event[i * quarter : (i + 1) * quarter if i < 3 else None] for i in range(4)]
    sse = SSEParser()
    if len(event) != BODY_BYTES or len(sse.feed(event)) != 1:
        raise RuntimeError("the SSE fixture is not one 2 KB event")

    def inspect_mcp() -> object:
        return [mcp.facts(m, arguments=ALLOW, session="s") for m in parse(call).messages]

    def inspect_a2a() -> object:
        return [a2a.facts(m) for m in parse(send).messages]

    def feed_chunks() -> object:
        return [sse.feed(c) for c in chunks]

    return [
        ("parse + mcp.facts (2 KB tools/call)", inspect_mcp),
        ("parse only (2 KB tools/call)", lambda: parse(call)),
        ("mcp.facts only", lambda: mcp.facts(message, arguments=ALLOW, session="s")),
        ("floor json.loads (2 KB, not strict)", lambda: json.loads(call)),
        ("parse + a2a.facts (2 KB message/send)", inspect_a2a),
        ("scan + rewrite, 20 tools, 10 allowed", lambda: mcp.rewrite(mcp.scan(listing, pending), half)),
        ("scan + rewrite, 20 tools, all allowed", lambda: mcp.rewrite(mcp.scan(listing, pending), every)),
        ("sse feed, 2 KB event, 1 chunk", lambda: sse.feed(event)),
        ("sse feed, 2 KB event, 4 chunks", feed_chunks),
    ]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        print(f"pinned to CPU {core}")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"tools/list response: {len(tools_list())} bytes; request bodies: {BODY_BYTES} bytes")
    print(f"{'operation':40} {'µs/op':>8} {'ops/CPU-s':>12}")
    us: dict[str, float] = {}
    for name, op in cases():
        us[name] = median_us(op, args.seconds, args.runs)
        print(f"{name:40} {us[name]:8.2f} {1e6 / us[name]:12,.0f}")
    print("- issue 17 target, against this run:")
    for name in ("parse + mcp.facts (2 KB tools/call)", "parse + a2a.facts (2 KB message/send)"):
        met = "met" if us[name] <= TARGET_US else "NOT met"
        print(
            f"  - target: inspection, {name}: {us[name]:.2f} µs (target <= {TARGET_US:g} µs): {met}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
