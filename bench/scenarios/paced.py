"""Open-loop, evenly paced HTTP/1.1 load: request i is due at t0 + i/rate (run by bench/run.py).

    python paced.py URL --rate 1000 --duration 6 [--connections 32] [-H 'Name: value']...

Why not only h2load: ``h2load --rps`` paces each connection on its own timer and all timers
start together, so its "1,000 requests/s" arrive as bursts of one request per connection
(20 at once every 20 ms with 20 connections); a server with 0.7 ms of work per request then
spends 14 ms on every burst. This client sends one request every 1/rate seconds instead
(asyncio's timer resolution is 1 ms, so at 1,000/s requests may leave in pairs), over a pool
of keep-alive connections, and times each request from when it was *due*: a request that
waits for a free connection counts that wait (no coordinated omission). Output: one JSON
object with the latencies' percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from urllib.parse import urlsplit


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def main(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)
    context = None
    if url.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    headers = "".join(f"{h.strip()}\r\n" for h in args.header)
    request = (f"GET {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n{headers}\r\n").encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(args.connections):
        idle.put_nowait(await asyncio.open_connection(host, port, ssl=context))
    total = int(args.rate * args.duration)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        nonlocal errors
        reader, writer = await idle.get()
        try:
            writer.write(request)
            status = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            errors += 1
            writer.close()
            idle.put_nowait(await asyncio.open_connection(host, port, ssl=context))
            return
        latencies.append(loop.time() - due)
        statuses[status] = statuses.get(status, 0) + 1
        idle.put_nowait((reader, writer))

    t0 = loop.time() + 0.05
    for i in range(total):
        due = t0 + i / args.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    elapsed = loop.time() - t0
    warm = int(args.rate * 0.5)  # the first 0.5 s: connections and caches still warming
    steady = sorted(latencies[warm:] or latencies)

    def pct(q: float) -> float:
        return steady[max(0, min(len(steady) - 1, round(q / 100 * len(steady) + 0.5) - 1))] * 1000

    return {
        "requests": len(latencies),
        "achieved_rps": len(latencies) / elapsed if elapsed > 0 else None,
        "non2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "errors": errors,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p99.9_ms": pct(99.9),
        "max_ms": steady[-1] * 1000 if steady else None,
    }  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("-H", "--header", action="append", default=[])
    started = time.monotonic()
    result = asyncio.run(main(ap.parse_args()))
    json.dump(result, sys.stdout)
