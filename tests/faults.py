"""Fault injection for the dependency-fault tests (``tests/integration/test_faults_*.py``) and
the soak (``bench/soak.py``).

Real components are stopped, killed, frozen (SIGSTOP) and restarted by the tests themselves;
what follows covers only what a real server cannot be told to do on cue:

* :class:`FaultProxy` -- a TCP proxy in front of a real server (OPA) that delays every answer
  by ``delay_s``: a slow dependency without touching the dependency.
* :class:`JWKSServer` -- an issuer's ``jwks_uri``: publishes the keys of some
  :class:`Signer` objects, counts fetches, and on cue goes down (connection refused), answers
  slowly or answers garbage.
* :class:`CountingUpstream` -- a backend that counts every request by its ``X-Fault-Id``
  (so a test can prove nothing was lost or sent twice) and, under ``/cut/<mode>``, sends a
  response head and part of a body and then resets (``rst``), closes (``fin``), cuts a chunked
  body (``chunked``) or resets right after the head (``head``).
* :func:`paced` -- an open-loop request stream: request *i* starts at ``t0 + i / rate``
  whatever happened to the earlier ones, each bounded by a client timeout, each ending in
  exactly one :class:`Outcome` (a status, or ``timeout`` / ``cut`` / ``error``).

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
LOCALHOST = "127.0.0.1"
ISSUER = "https://idp.example.org"
AUDIENCE = "https://gateway.example.org"
FAULT_ID = "X-Fault-Id"  # the per-request id the upstream counts by


# --------------------------------------------------------------------------- tokens


class Signer:
    """An issuer signing key (ES256) with its ``kid``; mints RFC 9068 access tokens."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {**public, "kid": self.kid, "alg": "ES256", "use": "sig"}

    def token(self, *, sub: str = "alice", kid: str | None = None, ttl_s: int = 600) -> str:
        """A fresh token (new ``jti``: never answered from the verified-token cache)."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": sub,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl_s,
            "jti": str(uuid.uuid4()),
            "client_id": "travel-agent",
            "scope": "flights.read flights.book",
        }
        headers = {"kid": kid or self.kid, "typ": "at+jwt"}
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)


def issuer_config(
    *,
    jwks_uri: str | None = None,
    jwks_file: str | None = None,
    cache: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The ``corp`` issuer block (ES256); ``cache`` becomes its ``jwks_cache``."""
    block: dict[str, Any] = {
        "name": "corp",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["ES256"],
    }
    if jwks_uri is not None:
        block["jwks_uri"] = jwks_uri
    if jwks_file is not None:
        block["jwks_file"] = jwks_file
    if cache:
        block["jwks_cache"] = dict(cache)
    return block


# --------------------------------------------------------------------------- JWKS server

JWKSMode = Literal["ok", "slow", "garbage"]
GARBAGE = b'<html><body>502 Bad Gateway</body></html>\n{"keys": ['


class JWKSServer:
    """``GET /jwks.json`` on loopback; ``stop()`` is "down" (refused), ``start()`` brings it
    back on the same port. ``mode``: ``ok``; ``slow`` (answers after ``delay_s``);
    ``garbage`` (200, JWKS media type, a body that is not JSON)."""

    def __init__(self) -> None:
        self.signers: list[Signer] = []
        self.mode: JWKSMode = "ok"
        self.delay_s = 0.0
        self.fetches = 0  # requests received, whatever was answered
        self.last_ok = 0.0  # time.monotonic() of the last good JWKS served
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/jwks.json"

    @property
    def up(self) -> bool:
        return self._runner is not None

    def publish(self, *signers: Signer) -> None:
        self.signers = list(signers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if self.mode == "garbage":
            return web.Response(body=GARBAGE, content_type="application/jwk-set+json")
        body = {"keys": [s.jwk() for s in self.signers]}
        self.last_ok = time.monotonic()
        return web.json_response(body, content_type="application/jwk-set+json")


# --------------------------------------------------------------------------- TCP proxy


class FaultProxy:
    """A loopback TCP proxy to ``target_port`` that delays every chunk the target sends back
    by ``delay_s`` (0: transparent). Changing ``delay_s`` affects pooled connections too."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, LOCALHOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(LOCALHOST, self.target_port)
            except OSError:
                writer.close()  # target down: the client sees a closed connection
                return
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, delayed=False)),
                asyncio.create_task(self._pump(up_reader, writer, delayed=True)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                for w in (writer, up_writer):
                    w.close()
        finally:
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                if delayed and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()


# --------------------------------------------------------------------------- upstream

CUT_BODY_BYTES = 64 * 1024  # what a cut response announces
CUT_SENT_BYTES = 1024  # what it sends before the cut


@dataclass
class CountingUpstream:
    """A backend that counts requests by ``X-Fault-Id`` (``hits``) and cuts on demand.

    ``[/prefix]/cut/<mode>/...``: ``rst``, ``fin``, ``chunked``, ``head``: a 200 head and (except
    ``head``) ``CUT_SENT_BYTES`` of a ``CUT_BODY_BYTES`` body, then a TCP reset (``rst``,
    ``chunked``, ``head``) or a plain close (``fin``); ``early``: a reset before any byte of
    a response. Anything else: 200, a small JSON body.
    ``txn_tokens`` counts requests that arrived with a ``Txn-Token`` header.
    """

    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    cuts: collections.Counter[str] = field(default_factory=collections.Counter)
    txn_tokens: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def duplicates(self) -> dict[str, int]:
        return {key: n for key, n in self.hits.items() if n > 1}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{prefix:(?:[^/]+/)*}cut/{mode}/{tail:.*}", self._cut)
        app.router.add_route("*", "/{tail:.*}", self._ok)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _count(self, request: web.Request) -> None:
        self.hits[request.headers.get(FAULT_ID, "-")] += 1
        if "Txn-Token" in request.headers:
            self.txn_tokens += 1
        await request.read()

    async def _ok(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.json_response({"ok": True, "path": request.path})

    async def _cut(self, request: web.Request) -> web.StreamResponse:
        await self._count(request)
        mode = request.match_info["mode"]
        self.cuts[mode] += 1
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if mode != "chunked":
            response.content_length = CUT_BODY_BYTES
        if mode != "early":
            await response.prepare(request)
        if mode not in ("head", "early"):
            await response.write(b"\xa5" * CUT_SENT_BYTES)
        await asyncio.sleep(0.05)  # let the head and the first bytes reach the gateway
        transport = request.transport
        assert transport is not None
        if mode == "fin":
            transport.close()
        else:
            sock = transport.get_extra_info("socket")
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError  # nothing more to say on this connection


# --------------------------------------------------------------------------- request streams

OutcomeKind = Literal["status", "timeout", "cut", "error"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request of a stream ended. ``status`` is set for ``status`` and ``cut`` (a head
    arrived, then the body broke); ``t`` is when it was sent, seconds from the stream's start."""

    index: int
    t: float
    kind: OutcomeKind
    status: int | None = None
    latency_s: float = 0.0
    detail: str = ""
    tag: str = ""

    @property
    def klass(self) -> str:
        """``2xx`` ... ``5xx`` for a complete answer, else the kind (``timeout``, ``cut``...)."""
        if self.kind == "status" and self.status is not None:
            return f"{self.status // 100}xx"
        return self.kind


def tally(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Outcomes by class, plus the exact statuses (``"503": n``)."""
    counts: collections.Counter[str] = collections.Counter()
    for o in outcomes:
        counts[o.klass] += 1
        if o.kind == "status":
            counts[str(o.status)] += 1
    return dict(sorted(counts.items()))


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    index: int,
    t: float,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    tag: str = "",
    **kwargs: Any,
) -> Outcome:
    """One request to its end: a complete answer, a timeout, a cut body or a transport error.

    Never raises for a network outcome: the caller counts every request exactly once.
    """
    started = time.monotonic()
    status: int | None = None

    def done(kind: OutcomeKind, detail: str = "") -> Outcome:
        latency = time.monotonic() - started
        return Outcome(index, t, kind, status, latency, detail, tag)

    try:
        async with asyncio.timeout(timeout_s):
            async with session.request(method, url, headers=headers, **kwargs) as resp:
                status = resp.status
                await resp.read()
        return done("status")
    except TimeoutError:
        return done("timeout")
    except aiohttp.ClientPayloadError as exc:
        return done("cut", type(exc).__name__)
    except (aiohttp.ClientError, OSError) as exc:
        # A head that arrived before the connection broke is a cut, not a refusal.
        return done("cut" if status is not None else "error", type(exc).__name__)


async def paced(
    send: Callable[[int, float], Coroutine[Any, Any, Outcome]],
    *,
    rate: float,
    duration_s: float,
    on_tick: Callable[[float], Awaitable[None]] | None = None,
) -> list[Outcome]:
    """Open loop: request ``i`` starts at ``i / rate`` s whatever the earlier ones are doing.

    ``send(i, t)`` must bound itself (see :func:`fetch`); ``on_tick(t)`` runs between sends
    (a fault schedule). Returns every outcome, in index order.
    """
    count = max(1, int(rate * duration_s))
    t0 = time.monotonic()
    tasks: list[asyncio.Task[Outcome]] = []
    for i in range(count):
        due = i / rate
        delay = t0 + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic() - t0
        if on_tick is not None:
            await on_tick(now)
        tasks.append(asyncio.create_task(send(i, now)))
    return list(await asyncio.gather(*tasks))


Action = Callable[[], Awaitable[object]]


@dataclass
class Step:
    at_s: float
    name: str
    action: Action
    started: float | None = None  # seconds from the stream's start
    ended: float | None = None

    @property
    def t_start(self) -> float:
        """When the action began (stream seconds); fails if it never ran."""
        assert self.started is not None, f"step {self.name} never started"
        return self.started

    @property
    def t_end(self) -> float:
        """When the action was done (stream seconds); fails if it never finished."""
        assert self.ended is not None, f"step {self.name} never finished"
        return self.ended


class Schedule:
    """Faults injected at fixed offsets of a :func:`paced` stream (pass ``tick`` as
    ``on_tick``). Each action runs as its own task so a slow one (OPA starting) never stalls
    the pacing; ``started``/``ended`` of each step say when the fault really took effect."""

    def __init__(self, *steps: tuple[float, str, Action]) -> None:
        self.steps = [Step(at, name, action) for at, name, action in steps]
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    def __getitem__(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    async def tick(self, now: float) -> None:
        if not self._tasks and not any(s.started is not None for s in self.steps):
            self._t0 = time.monotonic() - now
        for step in self.steps:
            if step.started is None and now >= step.at_s:
                step.started = now
                self._tasks.append(asyncio.create_task(self._run(step)))

    async def _run(self, step: Step) -> None:
        await step.action()
        step.ended = time.monotonic() - self._t0

    async def finish(self) -> None:
        """Wait for every action (and fail if one raised or never ran)."""
        await asyncio.gather(*self._tasks)
        missing = [s.name for s in self.steps if s.ended is None]
        assert not missing, f"fault steps that never ran: {missing}"


def between(outcomes: Iterable[Outcome], start: float, end: float = float("inf")) -> list[Outcome]:
    """The outcomes of requests sent in ``[start, end)`` (seconds from the stream's start)."""
    return [o for o in outcomes if start <= o.t < end]


async def stream(
    base_url: str,
    *,
    rate: float,
    duration_s: float,
    headers: Callable[[int], dict[str, str]],
    path: Callable[[int], str] = lambda i: f"/flights/{i}",
    method: str = "GET",
    timeout_s: float = 5.0,
    schedule: Schedule | None = None,
    ssl_context: Any = None,
) -> list[Outcome]:
    """A :func:`paced` stream of ``method`` requests; request ``i`` carries
    ``X-Fault-Id: i`` and ``headers(i)``. Keep-alive pool of up to 64 connections."""
    connector = aiohttp.TCPConnector(limit=64, ssl=ssl_context if ssl_context else False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(i: int, t: float) -> Outcome:
            hdrs = {FAULT_ID: str(i), **headers(i)}
            return await fetch(
                session, method, base_url + path(i), index=i, t=t, timeout_s=timeout_s,
                headers=hdrs,
            )  # fmt: skip

        try:
            return await paced(
                send,
                rate=rate,
                duration_s=duration_s,
                on_tick=schedule.tick if schedule is not None else None,
            )
        finally:
            if schedule is not None:
                await schedule.finish()


def expect(outcomes: list[Outcome], statuses: set[int], *, at_least: int = 1) -> None:
    """At least ``at_least`` requests, and exactly these statuses among them."""
    assert len(outcomes) >= at_least, f"only {len(outcomes)} requests in the window"
    assert {o.status for o in outcomes} == statuses, tally(outcomes)


def assert_accounted(outcomes: list[Outcome], upstream: CountingUpstream) -> None:
    """Nothing lost, nothing duplicated: every request has one outcome, the upstream saw each
    2xx exactly once and nothing else, and no request timed out or broke."""
    assert [o.index for o in outcomes] == list(range(len(outcomes)))
    broken = [o for o in outcomes if o.kind != "status"]
    assert not broken, f"{len(broken)} requests without a complete answer: {broken[:5]}"
    ok = {str(o.index) for o in outcomes if o.status is not None and 200 <= o.status < 300}
    assert upstream.duplicates() == {}, "the upstream saw a request twice"
    assert set(upstream.hits) == ok, (
        f"upstream saw {len(upstream.hits)} requests, the client got {len(ok)} 2xx; "
        f"forwarded but not 2xx: {sorted(set(upstream.hits) - ok)[:5]}, "
        f"2xx never forwarded: {sorted(ok - set(upstream.hits))[:5]}"
    )


# --------------------------------------------------------------------------- processes


def freeze(pid: int) -> None:
    """SIGSTOP: the process keeps its sockets open but answers nothing (a hung dependency)."""
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


async def metric_lines(admin_url: str, prefix: str) -> list[str]:
    """The Prometheus sample lines of the gateway's ``/metrics`` starting with ``prefix``."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(admin_url + "/metrics") as resp,
    ):
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith(prefix)]


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    what: str = "condition",
) -> float:
    """Poll ``check`` until true; the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(interval_s)
    return time.monotonic() - started


# --------------------------------------------------------------------------- gateway config


def policy_data(directory: Path, subjects: Mapping[str, list[str]] | None = None) -> Path:
    """``policies/data.json`` with the behaviour thresholds out of reach, as an operator does
    for a known high-rate client: a fault test sends one subject's requests by the hundred,
    and its 503s would otherwise read as an error burst (``behavior:error_burst``)."""
    data = json.loads((ROOT / "policies" / "data.json").read_text())
    data.setdefault("behavior", {})["thresholds"] = {
        "max_requests": 10**9,
        "error_burst": 10**9,
        "deny_burst": 10**9,
    }
    data["rbac"]["subjects"].update(subjects or {})  # more users, e.g. the soak's agents
    path = directory / "policy-data.json"
    path.write_text(json.dumps(data))
    return path


def opa_paths(directory: Path, subjects: Mapping[str, list[str]] | None = None) -> list[Path]:
    """What ``opa run --server`` loads: the shipped Rego and :func:`policy_data`."""
    return [ROOT / "policies" / "agentgate", policy_data(directory, subjects)]


def gateway_config(upstream: str, *, issuer: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A plain-HTTP gateway on loopback: bearer (``corp``) on ``/flights/`` to ``upstream``.

    ``sections`` are added at the top level (``pdp``, ``state``, ``telemetry``...); a
    ``route`` keyword merges into the route.
    """
    route = {
        "name": "flights",
        "match": {"path_prefix": "/flights/", "methods": ["GET", "POST"]},
        "authn": "bearer",
        "upstream": upstream,
        "segment": "booking",
        **sections.pop("route", {}),
    }
    config: dict[str, Any] = {
        "server": {
            "listen": f"{LOCALHOST}:0",
            "admin_listen": f"{LOCALHOST}:0",
            "timeouts": {"drain_s": 1, "upstream_connect_s": 1, "upstream_total_s": 10},
        },
        "issuers": [issuer],
        "authn": {"bearer": {"issuers": ["corp"], "require_typ": "at+jwt"}},
        "callers": {"agent_client_ids": ["travel-agent"]},
        "telemetry": {"audit_log": "off"},
        "routes": [route],
    }
    config.update(sections)
    return config
