"""Shared-state latency: memory vs redis for the three hot-path calls.

    python bench/bench_state.py [--ops 20000] [--concurrency 1] [--redis-url URL]

For each backend, times ``--ops`` sequential (or ``--concurrency`` concurrent) calls of

* ``first_use`` -- replay cache (redis: ``SET NX PX``), a new key each call;
* ``check``     -- revocation check (both: local dict lookups; redis: against the replica),
  with 1,000 live revocations so the lookups are not against an empty table;
* ``hit``       -- token bucket (redis: one EVALSHA on Redis's clock), over 1,000 keys;

and prints p50 / p99 / max in microseconds and calls per second. Without ``--redis-url``
a throw-away ``redis-server`` (loopback, no persistence) is started on a free port;
without redis-server on PATH only the memory backend runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.settings import Secret, StateSettings  # noqa: E402
from gateway.state import State, StateUnavailable  # noqa: E402
from gateway.state.factory import build_state  # noqa: E402

REVOKED = 1_000
KEYS = 1_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def _measure(
    call: Callable[[int], Awaitable[object]], ops: int, concurrency: int
) -> tuple[list[float], float, int]:
    """Per-call latencies (seconds), the run's wall time, and calls that failed closed."""
    latencies: list[float] = []
    failed = 0
    counter = iter(range(ops))

    async def worker() -> None:
        nonlocal failed
        for i in counter:
            t0 = time.perf_counter()
            try:
                await call(i)
            except StateUnavailable:  # e.g. a timeout on an overloaded host: counted
                failed += 1
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, failed


def _row(backend: str, op: str, latencies: list[float], wall: float, failed: int) -> str:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return (
        f"{backend:<7} {op:<10} p50 {q[49] * 1e6:8.1f} us   p99 {q[98] * 1e6:8.1f} us   "
        f"max {max(latencies) * 1e6:9.1f} us   {len(latencies) / wall:10,.0f} calls/s"
        + (f"   ({failed} failed closed)" if failed else "")
    )


async def bench(state: State, ops: int, concurrency: int) -> list[str]:
    await state.start()
    try:
        for i in range(REVOKED):
            await state.revocations.revoke("jti", f"revoked-{i}", ttl_s=600)
        sync = getattr(state.revocations, "sync", None)
        if sync is not None:
            await sync()  # the replica holds all of them before we time checks
        run = f"{time.monotonic_ns()}"

        async def first_use(i: int) -> object:
            return await state.replay.first_use(f"bench:{run}:{i}", 60)

        async def check(i: int) -> object:
            return await state.revocations.check(
                subject=f"user-{i}",
                agent="spiffe://example.org/agent/bench",
                cert_sha256="ab" * 32,
                jti=f"revoked-{i % (2 * REVOKED)}",  # half hit, half miss
                txn=None,
            )

        async def hit(i: int) -> object:
            return await state.limiter.hit(f"bench|{run}|{i % KEYS}", 1e6, 1_000_000)

        rows = []
        for name, call in (("first_use", first_use), ("check", check), ("hit", hit)):
            await _measure(call, min(ops, 1000), concurrency)  # warm-up (fills the pool)
            latencies, wall, failed = await _measure(call, ops, concurrency)
            rows.append(_row(state.backend, name, latencies, wall, failed))
        return rows
    finally:
        await state.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()

    python = sys.version.split()[0]
    print(f"{args.ops} ops per call, concurrency {args.concurrency}, python {python}")
    for row in await bench(build_state(StateSettings()), args.ops, args.concurrency):
        print(row)
    server = None
    url = args.redis_url
    if url is None:
        started = _start_redis()
        if started is None:
            print("redis   (skipped: no redis-server on PATH and no --redis-url)")
            return
        server, url = started
    try:
        settings = StateSettings(
            backend="redis", redis_url=Secret("arg:--redis-url", url.encode()), key_prefix="bench:"
        )
        for row in await bench(build_state(settings), args.ops, args.concurrency):
            print(row)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
