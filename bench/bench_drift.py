"""Drift scoring (issue 18): :class:`gateway.agents.baseline.BaselineStore` per request.

    python bench/bench_drift.py [--seconds 1.0] [--runs 5] [--no-pin]

What the pipeline does for each request of an identified agent: ``drift`` before deciding
(the new call against the agent's learned baseline) and ``observe`` when the status is known.
Each row, in one process on one core:

* ``drift + observe (learned)`` -- both calls for an MCP ``tools/call`` of an agent whose
  profile holds a full 1 h window (1,800 calls at one every 2 s, three tools, 1 % errors);
  every operation advances the clock 2 s, so the window keeps sliding (slots expire and
  their counts are subtracted as in production). This is the per-request figure;
* ``drift + observe, 1,000 agents`` -- the same over 1,000 learned agents in turn (the LRU
  bookkeeping of the store on every call, profiles spread over memory);
* ``drift (learned)`` / ``observe (learned)`` -- each half alone;
* ``drift, unknown agent`` -- an agent without a profile (``learning``, nothing allocated).

Each figure is the median of ``--runs`` runs of ``--seconds`` CPU-seconds each
(``time.thread_time``, robust to other load on a shared host), as µs per operation,
operations per CPU-second and per wall-second. The process pins itself to one CPU
(``os.sched_setaffinity``) unless ``--no-pin``. Issue 18 target: drift scoring <= 20 µs per
request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.agents.baseline import BaselineStore  # noqa: E402

AGENT = "spiffe://example.org/agent/travel"
TOOLS = ("search_flights", "get_booking", "list_fares")
START = 19675 * 86400.0 + 10 * 3600  # 10:00 UTC
STEP_S = 2.0
LEARN_CALLS = 1800
BATCH = 200
TARGETS = {"drift_us": 20.0}
Op = Callable[[], object]


def rate(op: Op, seconds: float) -> tuple[float, float]:
    """(ops per CPU-second, ops per wall-second) of ``op`` over about ``seconds`` of CPU."""
    done, cpu, wall = 0, 0.0, 0.0
    while cpu < seconds:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        for _ in range(BATCH):
            op()
        cpu += time.thread_time() - cpu0
        wall += time.perf_counter() - wall0
        done += BATCH
    return done / cpu, done / wall


def median_rate(op: Op, seconds: float, runs: int) -> tuple[float, float]:
    """Medians over ``runs`` of (CPU rate, wall rate), after a short warm-up."""
    rate(op, min(0.05, seconds))
    results = [rate(op, seconds) for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def learned(agents: list[str]) -> tuple[BaselineStore, float]:
    """A store whose agents each hold a full window; the time of the next call."""
    store = BaselineStore(max_agents=max(10_000, len(agents)))
    t = START
    for i in range(LEARN_CALLS):
        status = 502 if i % 100 == 0 else 200
        for agent in agents:
            store.observe(agent, t, "mcp", TOOLS[i % 3], "POST", status, False)
        t += STEP_S
    return store, t


def cases() -> list[tuple[str, Op]]:
    one, t_one = learned([AGENT])
    many_agents = [f"{AGENT}/{i}" for i in range(1000)]
    many, t_many = learned(many_agents)
    clock = {"one": t_one, "many": t_many, "i": 0}

    def drift_observe() -> object:
        i = clock["i"] = int(clock["i"]) + 1
        now = clock["one"] = clock["one"] + STEP_S
        tool = TOOLS[i % 3]
        drift = one.drift(AGENT, now, "mcp", tool, "POST")
        one.observe(AGENT, now, "mcp", tool, "POST", 200, False)
        return drift

    def drift_observe_many() -> object:
        i = clock["i"] = int(clock["i"]) + 1
        agent = many_agents[i % 1000]
        if i % 1000 == 0:
            clock["many"] = clock["many"] + STEP_S
        now = clock["many"]
        tool = TOOLS[(i // 1000) % 3]
        drift = many.drift(agent, now, "mcp", tool, "POST")
        many.observe(agent, now, "mcp", tool, "POST", 200, False)
        return drift

    def drift_only() -> object:
        return one.drift(AGENT, clock["one"], "mcp", TOOLS[0], "POST")

    def observe_only() -> object:
        now = clock["one"] = clock["one"] + STEP_S
        one.observe(AGENT, now, "mcp", TOOLS[int(now) % 3], "POST", 200, False)
        return None

    drift = one.drift(AGENT, clock["one"], "mcp", TOOLS[0], "POST")
    if drift.learning:
        raise RuntimeError("the learned profile is still learning: the figure would be wrong")
    return [
        ("drift + observe (learned)", drift_observe),
        ("drift + observe, 1,000 agents", drift_observe_many),
        ("drift (learned)", drift_only),
        ("observe (learned)", observe_only),
        ("drift, unknown agent", lambda: one.drift("nobody", START, "mcp", None, "GET")),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        print(f"pinned to CPU {core}")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'operation':32} {'µs/op':>8} {'ops/CPU-s':>12} {'ops/wall-s':>12}")
    us: dict[str, float] = {}
    for name, op in cases():
        per_cpu, per_wall = median_rate(op, args.seconds, args.runs)
        us[name] = 1e6 / per_cpu
        print(f"{name:32} {1e6 / per_cpu:8.2f} {per_cpu:12,.0f} {per_wall:12,.0f}")
    print("- issue 18 target, against this run:")
    for row in ("drift + observe (learned)", "drift + observe, 1,000 agents"):
        met = us[row] <= TARGETS["drift_us"]
        print(
            f"  - target: drift scoring per request ({row}): {us[row]:.2f} µs "
            f"(target <= {TARGETS['drift_us']:g} µs): {'met' if met else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
