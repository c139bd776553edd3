"""Heartbeats (issue 18): recording an action and verifying a heartbeat, on one core.

    python bench/bench_heartbeat.py [--seconds 1.0] [--runs 5] [--window 64] [--no-pin]

Rows, for the agent ``spiffe://example.org/agent/travel``:

* ``record action (canonical + memory)`` -- what the gateway does when a request is done:
  :func:`gateway.agents.heartbeat.canonical_action` of (seq, request id, method, status) and
  :meth:`gateway.state.actions.MemoryActionLog.record` under a seq reserved beforehand
  (the seqs of each batch of 200 are reserved outside the timed section); the issue 18
  "recording an action" figure;
* ``reserve + record`` -- the same with :meth:`~gateway.state.actions.MemoryActionLog.reserve`
  inside the timed section (the whole per-request cost of the chain, memory backend);
* ``verify heartbeat (parse + compare, 64)`` -- :func:`gateway.agents.heartbeat.parse_heartbeat`
  of a 64-action heartbeat body and :func:`~gateway.agents.heartbeat.compare` against the
  gateway's 64 records (64 SHA-256 blocks, constant-time digest comparison): the issue 18
  "heartbeat verification" figure;
* ``verify + memory window (64)`` -- the same plus reading the window from the memory log;
* ``sdk observe`` -- :meth:`gateway.sdk.heartbeat.ActionRecorder.observe` of one response
  (the agent's cost per call);
* ``floor chain (64 x sha256)`` -- :func:`~gateway.agents.heartbeat.chain` alone.

The memory log's coroutines never suspend; they are driven with ``coro.send(None)`` (no
event-loop scheduling in the figures; the bench fails if one ever suspends). The verify
rows check the verdict is ``healthy`` once before timing.

The process pins itself to one CPU unless ``--no-pin``; each figure is the median of
``--runs`` runs of ``--seconds`` CPU-seconds (``time.thread_time``), as µs per operation,
operations per CPU-second and per wall-second. Targets: record <= 5 µs; verify <= 20 µs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.agents.heartbeat import (  # noqa: E402
    canonical_action,
    chain,
    compare,
    parse_heartbeat,
)
from gateway.sdk.heartbeat import ActionRecorder  # noqa: E402
from gateway.state.actions import MemoryActionLog  # noqa: E402

AGENT = "spiffe://example.org/agent/travel"
REQUEST_ID = "5b6f0c3e-8d7e-4a53-9a8c-0d6b1f3e2a10"
WINDOW = 64
BATCH = 200
TARGETS = {"record_us": 5.0, "verify_us": 20.0}

Batch = Callable[[int], Sequence[Any]]


def rate(op: Callable[..., object], batch: Batch | None, seconds: float) -> tuple[float, float]:
    """(ops per CPU-second, ops per wall-second) of ``op`` over about ``seconds`` of CPU."""
    done, cpu, wall = 0, 0.0, 0.0
    while cpu < seconds:
        items = batch(BATCH) if batch is not None else None
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        if items is None:
            for _ in range(BATCH):
                op()
        else:
            for item in items:
                op(item)
        cpu += time.thread_time() - cpu0
        wall += time.perf_counter() - wall0
        done += BATCH
    return done / cpu, done / wall


def median_rate(
    op: Callable[..., object], batch: Batch | None, seconds: float, runs: int
) -> tuple[float, float]:
    rate(op, batch, min(0.05, seconds))
    results = [rate(op, batch, seconds) for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its result, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the memory action log suspended: the figure would need an event loop")


def cases(window: int = WINDOW) -> list[tuple[str, Callable[..., object], Batch | None]]:
    log = MemoryActionLog()

    def reserved(n: int) -> list[int]:
        return [drive(log.reserve(AGENT)) for _ in range(n)]

    def record(seq: int) -> None:
        drive(log.record(AGENT, seq, canonical_action(seq, REQUEST_ID, "GET", 200)))

    def reserve_record() -> None:
        seq = drive(log.reserve(AGENT))
        drive(log.record(AGENT, seq, canonical_action(seq, REQUEST_ID, "GET", 200)))

    # A verification window: 64 actions the gateway recorded and the agent observed.
    vlog, recorder = MemoryActionLog(), ActionRecorder(AGENT)
    for i in range(window):
        seq = drive(vlog.reserve(AGENT))
        rid = f"{REQUEST_ID[:-4]}{i:04d}"
        drive(vlog.record(AGENT, seq, canonical_action(seq, rid, "POST", 200)))
        recorder.observe("POST", 200, {"X-Request-Id": rid, "Agentgate-Action": f"seq={seq}"})
    body = json.dumps(recorder.heartbeat(), separators=(",", ":")).encode()
    records, missing = drive(vlog.window(AGENT, 0, window))
    if compare(parse_heartbeat(body), records, missing).verdict != "healthy":
        raise RuntimeError("the bench heartbeat is not healthy")
    actions = [a for _, a in records]

    def verify_window() -> None:
        beat = parse_heartbeat(body)
        found, gone = drive(vlog.window(AGENT, beat.first, beat.last))
        compare(beat, found, gone)

    headers = {"X-Request-Id": REQUEST_ID, "Agentgate-Action": "seq=12345"}
    agent_side = ActionRecorder(AGENT)
    return [
        ("record action (canonical + memory)", record, reserved),
        ("reserve + record", reserve_record, None),
        (f"verify heartbeat (parse + compare, {window})", lambda: compare(parse_heartbeat(body), records), None),
        (f"verify + memory window ({window})", verify_window, None),
        ("sdk observe", lambda: agent_side.observe("GET", 200, headers), None),
        (f"floor chain ({window} x sha256)", lambda: chain(actions), None),
    ]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--window", type=int, default=WINDOW, help="actions per heartbeat")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        print(f"pinned to CPU {core}")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'operation':40} {'µs/op':>8} {'ops/CPU-s':>12} {'ops/wall-s':>12}")
    us: dict[str, float] = {}
    for name, op, batch in cases(args.window):
        per_cpu, per_wall = median_rate(op, batch, args.seconds, args.runs)
        us[name] = 1e6 / per_cpu
        print(f"{name:40} {1e6 / per_cpu:8.2f} {per_cpu:12,.0f} {per_wall:12,.0f}")
    print("- issue 18 targets, against this run:")
    verify = f"verify heartbeat (parse + compare, {args.window})"
    checks = [
        ("record an action", us["record action (canonical + memory)"], TARGETS["record_us"]),
        (f"verify a heartbeat ({args.window} actions)", us[verify], TARGETS["verify_us"]),
    ]
    for what, figure, target in checks:
        met = "met" if figure <= target else "NOT met"
        print(f"  - target: {what}: {figure:.2f} µs (target <= {target:g} µs): {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
