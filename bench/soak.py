"""Soak under faults: the full pipeline at a fixed rate while its dependencies fail and return.

    python bench/soak.py [--duration 180] [--rate 100] [--timeout 10] [--grace 3] [--smoke]
                         [--faults NAMES] [--sample-every 10] [--out DIR]

One gateway subprocess (never restarted) runs the whole pipeline -- TLS listener, ES256 bearer
tokens verified against a ``jwks_uri``, the real OPA server as PDP (``opa run --server``,
reached through a delaying TCP proxy), a Txn-Token minted per request, a per-subject rate
limit and the behaviour windows in a real ``redis-server`` (``state.backend: redis``), an audit
record per request -- and forwards to a counting upstream. An open-loop client sends
``--rate`` requests per second (request *i* leaves at ``i / rate`` s whatever the earlier ones
are doing; each bounded by ``--timeout``), while this schedule, scaled to ``--duration``
(offsets below are for the default 180 s), injects the faults of issue 12 item 6:

    20-30 s   OPA stopped, then started again on its port
    45-55 s   OPA slow: every answer delayed 1 s (> pdp_s 0.5 s)
    70-90 s   JWKS endpoint down; from 80 s the issuer signs with a new kid it cannot publish
    105-113 s Redis frozen (SIGSTOP), then thawed
    128-133 s Redis killed (SIGKILL), then restarted empty on its port
    always    1 request in 200 goes to an upstream that resets mid-response

Every request ends in exactly one way: a complete answer (by status class), an expected cut
(the head arrived, then the body broke -- only on the reset path), a client timeout, or
*lost*. **Lost** counts the requests that got none of the first three (a transport error
without a response, a cut on a normal path), plus every disagreement with the upstream's own
count by ``X-Fault-Id``: a request it served that the client did not get a 2xx for, or a 2xx
it never served. ``duplicates`` are requests the upstream saw more than once.

After each fault a recovery window follows (from ``--grace`` s after the dependency is back to
0.5 s before the next fault); the fault has *recovered* if the last 2 s of that window are all
200 (earlier in the window a load blip of the shared machine may still cost a 503: the gateway
failing closed on its own PDP/Redis budgets). Exit status 1 if lost > 0, any 500, any
duplicate, any client timeout, or a fault that did not recover; 2 on a setup error.

Also reports the gateway's RSS, open file descriptors and TCP connections (by peer) after the
warm-up, at the end of the load and once idle pooled connections have closed, a timeline of
them, and p50/p99 latency per window. Writes ``soak.json``, ``soak.md``, ``outcomes.csv`` (one
line per request), ``audit.jsonl`` and ``gateway.log`` to ``bench/out/soak-<timestamp>/``
(``--out``). Loopback only; bounded: ``--duration`` (at most 600 s) plus about 45 s of setup,
warm-up and the idle wait.
``--smoke`` is a 20 s run for development; ``--faults`` picks some of the faults by name.

100 req/s is the default: on the 2-core machine this was written on (shared with other work),
200 req/s of this pipeline (an OPA call, three Redis calls and an audit record per request) is
past capacity and the run measures overload rather than faults (``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402

from tests.faults import (  # noqa: E402
    FAULT_ID,
    CountingUpstream,
    FaultProxy,
    JWKSServer,
    Outcome,
    Signer,
    fetch,
    issuer_config,
    opa_paths,
    paced,
)
from tests.opa_server import OPAServer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.support import GatewayProcess  # noqa: E402

MAX_DURATION_S = 600.0
PDP_S = 0.5
SUBJECTS = 20  # distinct agents (rate-limit buckets, behaviour windows)
TOKEN_USES = 20  # an agent mints a fresh access token every TOKEN_USES requests
CUT_EVERY = 200
SETTLE_S = 0.5  # a request sent this close to the next fault may meet it: not a recovery sample
TAIL_S = 2.0  # the end of a recovery window that must be all 200
# The soak's subjects, as users the shipped RBAC data knows (policies/data.json: "alice").
AGENT_ROLES = {f"agent-{n}": ["traveller"] for n in range(SUBJECTS)}


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tool(name: str) -> str:
    pinned = ROOT / ".tools" / "bin" / name
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    found = subprocess.run(["which", name], capture_output=True, text=True).stdout.strip()
    if not found:
        raise SystemExit(f"soak: {name} not found (run: scripts/bootstrap.sh tools)")
    return found


def is_cut(i: int) -> bool:
    return i % CUT_EVERY == CUT_EVERY // 2


# ----------------------------------------------------------------------------- the rig


class ProxyProcess:
    """:class:`tests.faults.FaultProxy` in a process of its own, so relaying every PDP call
    does not share the load generator's event loop (a lagging generator would otherwise
    look like a slow OPA). SIGUSR1 turns the delay on, SIGUSR2 off."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        argv = [
            sys.executable,
            __file__,
            "--proxy-worker",
            str(self.target_port),
            str(self.delay_s),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().strip())
        return self

    def slow(self, on: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


async def proxy_worker(target_port: int, delay_s: float) -> None:
    proxy = FaultProxy(target_port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(proxy, "delay_s", delay_s))
    loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(proxy, "delay_s", 0.0))
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print(proxy.port, flush=True)
    await done.wait()
    await proxy.close()


@dataclass
class Rig:
    work: Path
    opa: OPAServer
    proxy: ProxyProcess
    redis: RedisServer
    jwks: JWKSServer
    upstream: CountingUpstream
    gateway: GatewayProcess
    ssl_context: ssl.SSLContext
    k1: Signer
    k2: Signer


def materials(work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "gateway", *args], check=True, cwd=work, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    run("certs", "init", "--dir", "certs")
    run("keys", "generate", "--out", "keys/txn.pem")


def gateway_config(
    rig_work: Path, upstream: str, pdp_url: str, jwks_url: str, min_refresh_s: float
) -> dict[str, Any]:
    certs = rig_work / "certs"
    cache = {
        "min_refresh_s": min_refresh_s,  # below --grace: a new kid verifies within the grace
        "default_ttl_s": 10,
        "max_stale_s": 600,
        "fetch_timeout_s": 1,
    }
    issuer = issuer_config(jwks_uri=jwks_url, cache=cache)
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "trust_domain": "example.org",
            "tls": {
                "cert": str(certs / "server.pem"),
                "key": str(certs / "server.key"),
                "client_ca": str(certs / "ca.pem"),
                "client_cert": "off",
            },
            "timeouts": {
                "drain_s": 2,
                "pdp_s": PDP_S,
                "upstream_connect_s": 1,
                "upstream_total_s": 10,
            },
        },
        "issuers": [issuer],
        "authn": {"bearer": {"issuers": ["corp"], "require_typ": "at+jwt"}},
        "callers": {"agent_client_ids": ["travel-agent"]},
        "pdp": {"engine": "opa", "url": pdp_url},
        "txn_tokens": {
            "issuer": "https://gateway.example.org",
            "signing_key": str(rig_work / "keys" / "txn.pem"),
        },
        "state": {"backend": "redis", "redis_url": "env:SOAK_REDIS_URL", "timeout_s": 0.25},
        "telemetry": {"audit_log": str(rig_work / "audit.jsonl")},
        "routes": [
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/", "methods": ["GET", "POST"]},
                "authn": "bearer",
                "upstream": upstream,
                "segment": "booking",
                "rate_limits": [{"per": "subject", "rate": 100_000, "burst": 100_000}],
            }
        ],
    }


async def build(work: Path, min_refresh_s: float) -> Rig:
    """Start every part; on a failure, stop what was started and re-raise."""
    undo: list[Callable[[], Awaitable[object]]] = []
    try:
        await asyncio.to_thread(materials, work)
        opa = OPAServer(opa_paths(work, AGENT_ROLES), work / "opa", binary=tool("opa"))
        undo.append(lambda: asyncio.to_thread(opa.stop))
        await asyncio.to_thread(opa.start)
        proxy = ProxyProcess(opa.port, PDP_S + 0.5)
        undo.append(lambda: asyncio.to_thread(proxy.stop))
        await asyncio.to_thread(proxy.start)
        redis = RedisServer(work / "redis", binary=tool("redis-server"))
        undo.append(lambda: asyncio.to_thread(redis.stop))
        await asyncio.to_thread(redis.start)
        k1, k2 = Signer("k1"), Signer("k2")
        jwks = JWKSServer()
        jwks.publish(k1)
        await jwks.start()
        undo.append(jwks.stop)
        upstream = CountingUpstream()
        await upstream.start()
        undo.append(upstream.close)
        os.environ["SOAK_REDIS_URL"] = redis.url  # inherited by the gateway subprocess
        config = gateway_config(work, upstream.url, proxy.url, jwks.url, min_refresh_s)
        (work / "gw").mkdir(exist_ok=True)
        gateway = await GatewayProcess.start(config, work / "gw")
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                await step()
        raise
    ctx = ssl.create_default_context(cafile=str(work / "certs" / "ca.pem"))
    PEER_NAMES.update({proxy.port: "opa", redis.port: "redis", jwks.port: "jwks",
                       upstream.port: "upstream"})  # fmt: skip
    return Rig(work, opa, proxy, redis, jwks, upstream, gateway, ctx, k1, k2)


async def teardown(rig: Rig) -> None:
    if rig.redis.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            rig.redis.proc.send_signal(signal.SIGCONT)
    with contextlib.suppress(Exception):
        await rig.gateway.stop()
    await asyncio.to_thread(rig.proxy.stop)
    (rig.work / "gateway.log").write_text("\n".join(rig.gateway.lines) + "\n")
    await rig.jwks.stop()
    await rig.upstream.close()
    await asyncio.to_thread(rig.opa.stop)
    await asyncio.to_thread(rig.redis.stop)


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault:
    name: str
    start_s: float
    end_s: float
    begin: Callable[[Rig], Awaitable[None]]
    finish: Callable[[Rig], Awaitable[None]]
    allowed: frozenset[int]  # statuses a normal request may get while the fault lasts
    began: float | None = None
    ended: float | None = None  # when the dependency was back (stream seconds)


async def _opa_stop(rig: Rig) -> None:
    await asyncio.to_thread(rig.opa.stop)


async def _opa_start(rig: Rig) -> None:
    await asyncio.to_thread(rig.opa.start)


async def _opa_slow(rig: Rig) -> None:
    rig.proxy.slow(True)


async def _opa_fast(rig: Rig) -> None:
    rig.proxy.slow(False)


async def _jwks_down(rig: Rig) -> None:
    await rig.jwks.stop()


async def _jwks_up(rig: Rig) -> None:
    rig.jwks.publish(rig.k1, rig.k2)
    await rig.jwks.start()


async def _redis_freeze(rig: Rig) -> None:
    assert rig.redis.proc is not None
    rig.redis.proc.send_signal(signal.SIGSTOP)


async def _redis_thaw(rig: Rig) -> None:
    assert rig.redis.proc is not None
    rig.redis.proc.send_signal(signal.SIGCONT)


async def _redis_kill(rig: Rig) -> None:
    await asyncio.to_thread(rig.redis.kill)


async def _redis_restart(rig: Rig) -> None:
    await asyncio.to_thread(rig.redis.start)


async def _nothing(rig: Rig) -> None:
    return None


OK = frozenset({200})
OR_503 = frozenset({200, 503})


def faults(scale: float) -> list[Fault]:
    """The schedule of the module docstring, offsets scaled by ``scale`` (duration / 180)."""

    def at(seconds: float) -> float:
        return seconds * scale

    return [
        Fault("opa stopped", at(20), at(30), _opa_stop, _opa_start, OR_503),
        Fault("opa slow", at(45), at(55), _opa_slow, _opa_fast, OR_503),
        Fault("jwks down", at(70), at(80), _jwks_down, _nothing, OK),
        # Still down, and the issuer rotated to a kid the gateway cannot fetch: 401 for those.
        Fault("jwks down + new kid", at(80), at(90), _nothing, _jwks_up, frozenset({200, 401})),
        Fault("redis frozen", at(105), at(113), _redis_freeze, _redis_thaw, OR_503),
        Fault("redis killed", at(128), at(133), _redis_kill, _redis_restart, OR_503),
    ]


# ----------------------------------------------------------------------------- load


class Agents:
    """SUBJECTS agents, each reusing its access token for TOKEN_USES requests."""

    def __init__(self, rig: Rig) -> None:
        self.signer = rig.k1
        self._tokens: dict[int, tuple[str, str, int]] = {}

    def token(self, i: int) -> str:
        subject = i % SUBJECTS
        kid, token, uses = self._tokens.get(subject, ("", "", TOKEN_USES))
        if uses >= TOKEN_USES or kid != self.signer.kid:
            kid, token, uses = self.signer.kid, self.signer.token(sub=f"agent-{subject}"), 0
        self._tokens[subject] = (kid, token, uses + 1)
        return token


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    connections: int
    peers: dict[str, int] = field(default_factory=dict)  # TCP connections by far end
    cpu_s: float = 0.0  # the gateway's user + system CPU seconds so far


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    duration_s: float = 0.0


PEER_NAMES: dict[int, str] = {}  # remote port -> component, filled in by build()


def sample(proc: psutil.Process, t: float) -> Sample:
    peers: collections.Counter[str] = collections.Counter()
    try:
        conns = proc.net_connections(kind="tcp")
    except (psutil.Error, AttributeError):
        conns = []
    for c in conns:
        if c.raddr:
            peers[PEER_NAMES.get(c.raddr.port, "clients")] += 1
        else:
            peers["listening"] += 1
    mib = proc.memory_info().rss / 2**20
    cpu = proc.cpu_times()
    return Sample(
        round(t, 1), mib, proc.num_fds(), len(conns), dict(sorted(peers.items())),
        round(cpu.user + cpu.system, 2),
    )  # fmt: skip


async def drive(
    rig: Rig,
    *,
    rate: float,
    duration_s: float,
    timeout_s: float,
    schedule: list[Fault],
    first_index: int = 0,
    proc: psutil.Process | None = None,
    sample_every_s: float = 10.0,
) -> Run:
    agents = Agents(rig)
    run = Run()
    gw = rig.gateway
    url = f"https://localhost:{gw.main_address[1]}"
    connector = aiohttp.TCPConnector(limit=512, ssl=rig.ssl_context)
    tasks: list[asyncio.Task[None]] = []
    next_sample = 0.0

    async def apply(fault: Fault, t0: float) -> None:
        await fault.begin(rig)
        await asyncio.sleep(max(0.0, fault.end_s - (time.monotonic() - t0)))
        await fault.finish(rig)
        fault.ended = time.monotonic() - t0

    started = time.monotonic()

    async def tick(now: float) -> None:
        nonlocal next_sample
        for fault in schedule:
            if fault.began is None and now >= fault.start_s:
                fault.began = now
                if fault.name == "jwks down + new kid":
                    agents.signer = rig.k2
                log(f"fault: {fault.name} (t={now:.1f}s)")
                tasks.append(asyncio.create_task(apply(fault, started)))
        if proc is not None and now >= next_sample:
            run.samples.append(sample(proc, now))
            next_sample += sample_every_s

    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(i: int, t: float) -> Outcome:
            n = first_index + i
            headers = {
                FAULT_ID: str(n),
                "Authorization": f"Bearer {agents.token(n)}",
                "Host": f"localhost:{gw.main_address[1]}",
            }
            path = f"/flights/cut/rst/{n}" if is_cut(n) else f"/flights/{n % 97}?n={n}"
            return await fetch(
                session, "GET", url + path, index=n, t=t, timeout_s=timeout_s, headers=headers
            )

        run.outcomes = await paced(send, rate=rate, duration_s=duration_s, on_tick=tick)
        run.duration_s = time.monotonic() - started
        await asyncio.gather(*tasks)
    return run


# ----------------------------------------------------------------------------- analysis


def klass(status: int | None) -> str:
    return f"{status // 100}xx" if status is not None else "none"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in outcomes if start <= o.t < end and not is_cut(o.index)]


def summarise(
    run: Run, rig: Rig, schedule: list[Fault], grace_s: float, timeout_s: float
) -> dict[str, Any]:
    outcomes = run.outcomes
    hits = rig.upstream.hits
    by_class: collections.Counter[str] = collections.Counter()
    by_status: collections.Counter[str] = collections.Counter()
    lost: list[dict[str, Any]] = []
    expected_cuts = timeouts = 0
    ok_ids: set[str] = set()
    for o in outcomes:
        if o.kind == "status":
            by_class[klass(o.status)] += 1
            by_status[str(o.status)] += 1
            if o.status is not None and 200 <= o.status < 300:
                ok_ids.add(str(o.index))
        elif o.kind == "cut" and is_cut(o.index):
            expected_cuts += 1
        elif o.kind == "timeout":
            timeouts += 1
        else:
            lost.append({"index": o.index, "t": round(o.t, 2), "kind": o.kind, "detail": o.detail})
    served = {key for key in hits if not is_cut(int(key))} if hits else set()
    unanswered = sorted(served - ok_ids, key=int)
    phantom = sorted(ok_ids - served, key=int)
    for key in unanswered:
        lost.append({"index": int(key), "kind": "served upstream, no 2xx at the client"})
    for key in phantom:
        lost.append({"index": int(key), "kind": "2xx never served upstream"})
    duplicates = {k: n for k, n in hits.items() if n > 1}
    cut_sent = sum(1 for o in outcomes if is_cut(o.index))

    # Windows: baseline, each fault, each recovery (after grace, up to the next fault).
    windows: list[dict[str, Any]] = []
    bounds = [(f.began or f.start_s, f.ended or f.end_s) for f in schedule]
    first = bounds[0][0] if bounds else run.duration_s

    def recovery(name: str, start: float, end: float) -> dict[str, Any]:
        """Stats of ``[start, end)``; recovered iff its last TAIL_S (at most half of it) are
        all 200: a shared machine's load blip may cost a sporadic 503 earlier in a window
        (fail closed on the gateway's own budgets), a fault that did not heal cannot pass."""
        w = _window(name, window(outcomes, start, end), OK)
        tail = window(outcomes, max(start, end - min(TAIL_S, (end - start) / 2)), end)
        w["tail_requests"] = len(tail)
        w["recovered"] = bool(tail) and all(o.status == 200 for o in tail)
        return w

    windows.append(recovery("baseline", 0, first - SETTLE_S))
    for k, fault in enumerate(schedule):
        began, ended = bounds[k]
        nxt = bounds[k + 1][0] if k + 1 < len(bounds) else run.duration_s
        windows.append(_window(fault.name, window(outcomes, began, min(ended, nxt)), fault.allowed))
        if nxt - SETTLE_S - (ended + grace_s) < 0.5:
            continue  # the next fault follows at once (JWKS down -> new kid)
        windows.append(recovery(f"after {fault.name}", ended + grace_s, nxt - SETTLE_S))
    recovered_all = all(w.get("recovered", True) for w in windows)
    statuses_500 = by_status.get("500", 0)
    sent = len(outcomes)
    return {
        "sent": sent,
        "rate_achieved": round(sent / run.duration_s, 1) if run.duration_s else 0.0,
        "duration_s": round(run.duration_s, 1),
        "answered_by_class": dict(sorted(by_class.items())),
        "answered_by_status": dict(sorted(by_status.items())),
        "cut_requests_sent": cut_sent,
        "expected_cuts": expected_cuts,
        "client_timeouts": timeouts,
        "client_timeout_s": timeout_s,
        "lost": len(lost),
        "lost_detail": lost[:20],
        "status_500": statuses_500,
        "duplicates": len(duplicates),
        "upstream_served": sum(hits.values()),
        "upstream_txn_tokens": rig.upstream.txn_tokens,
        "recovered": recovered_all,
        "windows": windows,
    }


def _window(name: str, outs: list[Outcome], allowed: frozenset[int]) -> dict[str, Any]:
    statuses = collections.Counter(o.status if o.kind == "status" else o.kind for o in outs)
    lat = [o.latency_s * 1000 for o in outs if o.kind == "status"]
    return {
        "name": name,
        "requests": len(outs),
        "statuses": {str(k): n for k, n in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "p50_ms": round(pct(lat, 0.5), 1) if lat else None,
        "p99_ms": round(pct(lat, 0.99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "unexpected": {str(k): n for k, n in statuses.items() if k not in allowed},
    }


def audit_summary(path: Path, skip: int = 0) -> dict[str, Any]:
    """Audit records by reason, after the first ``skip`` lines (the warm-up's)."""
    reasons: collections.Counter[str] = collections.Counter()
    count = 0
    with contextlib.suppress(OSError), path.open() as fh:
        for n, line in enumerate(fh):
            if n < skip:
                continue
            with contextlib.suppress(ValueError):
                reasons[json.loads(line).get("reason", "?")] += 1
                count += 1
    return {"records": count, "reasons": dict(reasons.most_common())}


def write_outcomes(path: Path, outcomes: list[Outcome]) -> None:
    with path.open("w") as fh:
        fh.write("index,t_s,kind,status,latency_ms,detail\n")
        for o in outcomes:
            fh.write(f"{o.index},{o.t:.4f},{o.kind},{o.status or ''},"
                     f"{o.latency_s * 1000:.2f},{o.detail}\n")  # fmt: skip


async def settled_fds(proc: psutil.Process, baseline: int, limit_s: float = 25.0) -> Sample:
    """A sample once the open fds are back to ``baseline`` or stop falling (idle pools
    expire: aiohttp's client keep-alive is 15 s), within ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last, since = proc.num_fds(), time.monotonic()
    while time.monotonic() < deadline and last > baseline:
        await asyncio.sleep(0.5)
        now = proc.num_fds()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 17.0:
            break
    return sample(proc, -1.0)


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    r = result["resources"]
    lines = [
        f"{s['sent']:,} requests in {s['duration_s']} s at {result['args']['rate']:.0f} req/s "
        f"(achieved {s['rate_achieved']}/s), client timeout {s['client_timeout_s']} s; "
        f"{result['machine']}.",
        "",
        "| sent | 2xx | 4xx | 5xx | expected cuts | client timeouts | **lost** | **500s** | "
        "duplicates | recovered |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        f"| {s['sent']:,} | {s['answered_by_class'].get('2xx', 0):,} | "
        f"{s['answered_by_class'].get('4xx', 0):,} | {s['answered_by_class'].get('5xx', 0):,} | "
        f"{s['expected_cuts']} of {s['cut_requests_sent']} | {s['client_timeouts']} | "
        f"**{s['lost']}** | **{s['status_500']}** | {s['duplicates']} | "
        f"{'yes' if s['recovered'] else 'NO'} |",
        "",
        f"Statuses: {', '.join(f'{k}: {v:,}' for k, v in s['answered_by_status'].items())}. "
        f"Of the {s['cut_requests_sent']} requests to the resetting upstream path, "
        f"{s['expected_cuts']} were cut mid-body; the others were refused before forwarding "
        "(counted in the statuses). "
        f"Upstream served {s['upstream_served']:,} (each once; "
        f"{s['upstream_txn_tokens']:,} with a Txn-Token). "
        f"Audit records: {result['audit']['records']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in result['audit']['reasons'].items())}).",
        "",
        "| window | requests | answers | p50 ms | p99 ms | max ms |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for w in s["windows"]:
        answers = ", ".join(f"{k}: {v}" for k, v in w["statuses"].items())
        flag = " **(not recovered)**" if w.get("recovered") is False else ""
        lines.append(
            f"| {w['name']}{flag} | {w['requests']:,} | {answers} | {w['p50_ms']} | "
            f"{w['p99_ms']} | {w['max_ms']} |"
        )
    lines += [
        "",
        f"Gateway process (pid {r['pid']}, never restarted): RSS {r['start']['rss_mib']:.1f} MiB "
        f"after warm-up -> {r['end']['rss_mib']:.1f} MiB at the end (peak sampled "
        f"{r['peak_rss_mib']:.1f} MiB; {r['settled']['rss_mib']:.1f} MiB once idle); open fds "
        f"{r['start']['fds']} -> {r['end']['fds']} at the end of the load -> "
        f"{r['settled']['fds']} once idle connections closed (TCP connections "
        f"{r['start']['connections']} -> {r['end']['connections']} -> "
        f"{r['settled']['connections']}: "
        f"{', '.join(f'{k} {v}' for k, v in r['settled']['peers'].items())}).",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


async def soak(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(args.out) if args.out else ROOT / "bench" / "out" / f"soak-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder {work}")
    rig = await build(work, args.jwks_min_refresh)
    try:
        proc = psutil.Process(rig.gateway.pid)
        log(f"gateway pid {rig.gateway.pid} at {rig.gateway.url}; warm-up {args.warmup:.0f} s")
        # Half rate: fills the connection pools and caches without a cold-start pile-up.
        warm = await drive(rig, rate=args.rate / 2, duration_s=args.warmup,
                           timeout_s=args.timeout, schedule=[], first_index=10**7)  # fmt: skip
        warm_counts = collections.Counter(
            str(o.status) if o.kind == "status" else o.kind for o in warm.outcomes
        )
        log(f"warm-up: {dict(warm_counts)}")
        if set(warm_counts) - {"200", "503", "cut"}:
            log("warm-up failed: the rig is not working")
            return 2
        rig.upstream.hits.clear()
        rig.upstream.txn_tokens = 0
        await asyncio.sleep(1.0)
        start = sample(proc, 0.0)
        audit_before = audit_summary(work / "audit.jsonl")["records"]
        schedule = faults(args.duration / 180.0)
        if args.faults:
            wanted = {name.strip() for name in args.faults.split(",")}
            schedule = [f for f in schedule if f.name in wanted]
        log(f"soak: {args.rate:.0f} req/s for {args.duration:.0f} s, {len(schedule)} faults")
        run = await drive(rig, rate=args.rate, duration_s=args.duration, timeout_s=args.timeout,
                          schedule=schedule, proc=proc,
                          sample_every_s=args.sample_every)  # fmt: skip
        end = sample(proc, run.duration_s)
        log("load done; waiting for idle connections to close")
        settled = await settled_fds(proc, start.fds)
        summary = summarise(run, rig, schedule, args.grace, args.timeout)
        audit = audit_summary(work / "audit.jsonl", skip=audit_before)
        write_outcomes(work / "outcomes.csv", run.outcomes)
        alive = rig.gateway.proc.returncode is None and psutil.pid_exists(rig.gateway.pid)
    finally:
        await teardown(rig)
    resources = {
        "pid": rig.gateway.pid,
        "alive_at_end": alive,
        "start": start.__dict__,
        "end": end.__dict__,
        "settled": settled.__dict__,
        "peak_rss_mib": max([s.rss_mib for s in run.samples] + [end.rss_mib]),
        "timeline": [s.__dict__ for s in run.samples],
    }
    result = {
        "args": vars(args),
        "warmup": dict(warm_counts),
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
        "summary": summary,
        "resources": resources,
        "audit": audit,
        "faults": [{"name": f.name, "began_s": f.began, "back_s": f.ended} for f in schedule],
    }
    (work / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    (work / "soak.md").write_text(md)
    print(md)
    failures = []
    if summary["lost"]:
        failures.append(f"lost {summary['lost']}: {summary['lost_detail'][:5]}")
    if summary["status_500"]:
        failures.append(f"{summary['status_500']} answers were 500")
    if summary["duplicates"]:
        failures.append(f"{summary['duplicates']} requests reached the upstream twice")
    if summary["client_timeouts"]:
        failures.append(f"{summary['client_timeouts']} client timeouts")
    if not summary["recovered"]:
        failures.append("a fault did not recover: " + ", ".join(
            w["name"] for w in summary["windows"] if w.get("recovered") is False))  # fmt: skip
    if not alive:
        failures.append("the gateway process died")
    for failure in failures:
        log(f"FAIL: {failure}")
    log(f"results in {work} -- {'FAILED' if failures else 'passed'}")
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds (max 600)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout, s")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--grace", type=float, default=3.0,
                        help="seconds after a fault ends before answers must be 2xx again")  # fmt: skip
    parser.add_argument("--jwks-min-refresh", type=float, default=2.0,
                        help="issuer jwks_cache.min_refresh_s (keep it below --grace)")  # fmt: skip
    parser.add_argument("--faults", help="only these faults (comma-separated names)")
    parser.add_argument("--sample-every", type=float, default=10.0,
                        help="seconds between RSS/fd/CPU samples of the gateway")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="20 s at 100 req/s")
    parser.add_argument("--out", help="work/results folder (default bench/out/soak-<ts>)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.rate, args.warmup, args.grace = 20.0, 100.0, 2.0, 1.0
        args.jwks_min_refresh = 0.5
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be in (0, {MAX_DURATION_S:.0f}]")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--proxy-worker"]:
        asyncio.run(proxy_worker(int(argv[1]), float(argv[2])))
        return 0
    args = parse_args(argv)
    try:
        return asyncio.run(soak(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
