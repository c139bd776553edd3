"""Policy decision latency per engine, uncached and cached (run: python bench/bench_pdp.py).

    python bench/bench_pdp.py [--ops 2000] [--runs 3] [--no-opa]

Inputs are the three golden requests in ``tests/golden/`` (mTLS agent; user via a two-agent
``act`` chain; API-key partner), cycled, each with a fresh ``request.id``; the policy is the
real ``policies/`` with ``policies/data.json``. For every line the p50 and p99 of single
operations are printed (median over ``--runs`` runs), next to the target:

* ``embedded query``       -- regopy only: input conversion + bundle query (no wrapper);
* ``embedded decide``      -- ``PolicyDecisionPoint.decide`` with the cache off (target p50 200 us);
* ``embedded decide, offload`` -- the same on the dedicated regopy thread;
* ``opa decide``           -- the same against a real ``opa run --server`` on loopback, one
                              keep-alive connection pool (target p99 1 ms);
* ``cached decide``        -- a cache hit through ``decide`` (key + lookup; target 10 us);
* ``cache key`` / ``cache get`` -- the two halves of a hit.

``cpu`` is the mean CPU time of the benchmarking thread per operation: on a busy machine the
wall-clock percentiles include waiting for a CPU, the CPU time does not. (For OPA it leaves
out OPA's own CPU time, so only the wall clock counts there.)

OPA is found on PATH or in ``.tools/bin``; without it the OPA lines are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.authz.cache import DecisionCache, cache_key  # noqa: E402
from gateway.authz.embedded import EmbeddedPDP  # noqa: E402
from gateway.authz.engine import PolicyDecisionPoint  # noqa: E402
from gateway.authz.opa import OPAClient  # noqa: E402
from gateway.authz.pdp import PDP  # noqa: E402

POLICIES = ROOT / "policies"
DATA = POLICIES / "data.json"
DECISION = "agentgate/authz/decision"
GOLDEN = sorted((ROOT / "tests" / "golden").glob("input_*.json"))


def inputs(n: int) -> list[dict[str, Any]]:
    base = [json.loads(p.read_text()) for p in GOLDEN]
    out = []
    for i in range(n):
        doc = copy.deepcopy(base[i % len(base)])
        doc["request"]["id"] = f"bench-{i}"
        out.append(doc)
    return out


def scopes_of(doc: dict[str, Any]) -> list[str] | None:
    subject = doc.get("subject") or {}
    return list(subject.get("scopes") or []) or None


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 / 1000, p99 / 1000


# CPU time this thread spent in the last timed loop, per operation: unlike wall-clock
# percentiles it does not grow when other processes compete for the CPUs.
_cpu_per_op_ns = [0.0]


def time_sync(fn: Callable[[dict[str, Any]], object], docs: list[dict[str, Any]]) -> list[int]:
    for doc in docs[:50]:
        fn(doc)
    out = []
    clock = time.perf_counter_ns
    cpu0 = time.thread_time_ns()
    for doc in docs:
        t0 = clock()
        fn(doc)
        out.append(clock() - t0)
    _cpu_per_op_ns[0] = (time.thread_time_ns() - cpu0) / len(docs)
    return out


async def time_async(
    fn: Callable[[dict[str, Any]], Awaitable[object]], docs: list[dict[str, Any]]
) -> list[int]:
    for doc in docs[:50]:
        await fn(doc)
    out = []
    clock = time.perf_counter_ns
    cpu0 = time.thread_time_ns()
    for doc in docs:
        t0 = clock()
        await fn(doc)
        out.append(clock() - t0)
    _cpu_per_op_ns[0] = (time.thread_time_ns() - cpu0) / len(docs)
    return out


class Report:
    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.rows: list[tuple[str, float, float, float, str]] = []

    async def measure(
        self, label: str, target: str, run: Callable[[], Awaitable[list[int]]]
    ) -> None:
        p50s, p99s, cpus = [], [], []
        for _ in range(self.runs):
            gc.collect()
            _cpu_per_op_ns[0] = float("nan")
            p50, p99 = percentiles(await run())
            p50s.append(p50)
            p99s.append(p99)
            cpus.append(_cpu_per_op_ns[0] / 1000)
        row = (label, statistics.median(p50s), statistics.median(p99s), statistics.median(cpus))
        self.rows.append((*row, target))
        print(
            f"  {label:<26} p50 {row[1]:>8.1f} us  p99 {row[2]:>8.1f} us  "
            f"cpu {row[3]:>7.1f} us/op   {target}",
            flush=True,
        )


def wrap(engine: PDP, cached: bool) -> PolicyDecisionPoint:
    cache = DecisionCache(60, 100_000) if cached else DecisionCache(0, 0)
    return PolicyDecisionPoint(engine, timeout_s=5, cache=cache)


def decider(pdp: PolicyDecisionPoint) -> Callable[[dict[str, Any]], Awaitable[object]]:
    async def run(doc: dict[str, Any]) -> object:
        return await pdp.decide(doc, scopes_of(doc))

    return run


def find_opa() -> str | None:
    local = ROOT / ".tools" / "bin" / "opa"
    return shutil.which("opa") or (str(local) if local.exists() else None)


def start_opa(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "run", "--server", "--addr", f"127.0.0.1:{port}", "--disable-telemetry",
         "--log-level", "error", str(POLICIES)],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=0.5):  # noqa: S310
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("opa did not start")


async def main(ops: int, runs: int, with_opa: bool) -> None:
    docs = inputs(ops)
    load = os.getloadavg()[0]
    print(f"bench_pdp: {ops} ops x {runs} runs, {os.cpu_count()} CPUs, load avg {load:.2f}")
    report = Report(runs)
    # Calibration: how fast this machine is right now (compare runs on different machines).
    await report.measure(
        "calibration: json.dumps",
        "(1.7 kB golden input)",
        lambda: _async(time_sync(json.dumps, docs)),
    )

    embedded = EmbeddedPDP(POLICIES, DATA, DECISION)
    await embedded.start()

    async def raw_query() -> list[int]:
        return time_sync(embedded.evaluate_sync, docs)

    await report.measure("embedded query", "(regopy only)", raw_query)
    uncached = wrap(embedded, cached=False)
    await report.measure(
        "embedded decide", "target p50 <= 200 us", lambda: time_async(decider(uncached), docs)
    )
    offload = EmbeddedPDP(POLICIES, DATA, DECISION, offload=True)
    await offload.start()
    off = wrap(offload, cached=False)
    await report.measure("embedded decide, offload", "", lambda: time_async(decider(off), docs))
    await offload.close()

    cached = wrap(embedded, cached=True)
    await report.measure(
        "cached decide (embedded)", "target <= 10 us", lambda: time_async(decider(cached), docs)
    )
    assert cached.cache is not None
    cache = cached.cache
    await report.measure(
        "cache key", "", lambda: _async(time_sync(lambda d: cache_key(d, scopes_of(d)), docs))
    )
    keys = [cache_key(d, scopes_of(d)) for d in docs]
    await report.measure("cache get", "", lambda: _async(_time_get(cache, keys)))

    binary = find_opa() if with_opa else None
    if binary is None:
        print("  opa: skipped (not installed or --no-opa)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = start_opa(binary, Path(tmp))
            try:
                client = OPAClient(url, DECISION)
                opa = wrap(client, cached=False)
                await opa.start()
                await report.measure(
                    "opa decide (loopback)", "target p99 <= 1 ms",
                    lambda: time_async(decider(opa), docs),
                )  # fmt: skip
                opa_cached = PolicyDecisionPoint(
                    client, timeout_s=5, cache=DecisionCache(60, 100_000)
                )
                await report.measure(
                    "cached decide (opa)", "target <= 10 us",
                    lambda: time_async(decider(opa_cached), docs),
                )  # fmt: skip
                await opa.close()
            finally:
                proc.terminate()
                proc.wait(timeout=5)
    await embedded.close()


def _time_get(cache: DecisionCache, keys: list[bytes]) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    cpu0 = time.thread_time_ns()
    for key in keys:
        t0 = clock()
        cache.get(key)
        out.append(clock() - t0)
    _cpu_per_op_ns[0] = (time.thread_time_ns() - cpu0) / len(keys)
    return out


async def _async(value: list[int]) -> list[int]:
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-opa", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.runs, not args.no_opa))
