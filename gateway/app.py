"""The composition root: the only module that wires every part together.

``Gateway(settings)`` builds everything once (SSL contexts, the pooled
upstream session, the route table, metrics); ``start()`` binds the main and
admin listeners; ``stop()`` stops accepting, lets in-flight requests finish for
up to ``timeouts.drain_s`` and releases everything. ``run()`` does all of that
around SIGTERM/SIGINT for the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway import tls
from gateway.listener import GatewayServer
from gateway.observability.metrics import Metrics
from gateway.pipeline import Limits, Pipeline
from gateway.settings import Settings, split_listen
from gateway.upstream.forward import Forwarder
from gateway.upstream.routes import RouteTable

log = logging.getLogger("agentgate")

METRICS_KEY = web.AppKey("metrics", Metrics)


@dataclass
class Readiness:
    """Named checks; ``/readyz`` is 200 only while every check passes."""

    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def report(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                out[name] = bool(check())
            except Exception:  # a failing check means "not ready", never a 500
                out[name] = False
        return out


READINESS_KEY = web.AppKey("readiness", Readiness)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    report = request.app[READINESS_KEY].report()
    ready = all(report.values())
    return web.json_response({"ready": ready, "checks": report}, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = metrics.content_type
    return resp


def admin_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app[READINESS_KEY] = readiness
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        server = settings.server
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.ssl_context = tls.server_context(server.tls) if server.tls else None
        self.forwarder = Forwarder(
            connect_timeout_s=server.timeouts.upstream_connect_s,
            total_timeout_s=server.timeouts.upstream_total_s,
            max_body_bytes=server.limits.max_body_bytes,
            ssl_contexts={
                r.name: tls.upstream_context(r.upstream_tls)
                for r in settings.routes
                if r.upstream.startswith("https:")
            },
        )
        self.pipeline = Pipeline(
            routes=RouteTable(settings.routes),
            forwarder=self.forwarder,
            metrics=self.metrics,
            limits=Limits(
                max_header_bytes=server.limits.max_header_bytes,
                trusted_hops=server.forwarded.trusted_hops,
                scheme="https" if self.ssl_context else "http",
                strip_headers=frozenset(server.strip_headers),
            ),
        )
        self._started = False
        self.readiness.checks["config"] = lambda: self._started
        self._runners: list[web.BaseRunner] = []
        self.main_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    async def start(self) -> None:
        server = self.settings.server
        await self.forwarder.start()
        web_server = GatewayServer(
            self.pipeline.handle,
            header_read_s=server.timeouts.header_read_s,
            handler_cancellation=True,
            keepalive_timeout=server.timeouts.idle_s,
            max_line_size=server.limits.max_header_bytes,
            max_field_size=server.limits.max_header_bytes,
            max_headers=server.limits.max_headers,
            access_log=None,
        )
        main = web.ServerRunner(web_server, shutdown_timeout=server.timeouts.drain_s)
        admin = web.AppRunner(admin_app(self.metrics, self.readiness), access_log=None)
        self.main_address = await _bind(main, server.listen, self.ssl_context)
        self.admin_address = await _bind(admin, server.admin_listen, None)
        self._runners = [main, admin]
        self._started = True

    async def stop(self) -> None:
        self._started = False
        # The main runner first: its cleanup closes the listening socket, then waits up to
        # drain_s for in-flight requests, then cancels what is left.
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        await self.forwarder.close()

    def describe(self) -> str:
        assert self.main_address is not None
        assert self.admin_address is not None
        tls_cfg = self.settings.server.tls
        scheme = "https" if tls_cfg else "http"
        mode = f"mTLS {tls_cfg.client_cert}" if tls_cfg else "plain HTTP, no TLS"
        host, port = self.main_address
        ahost, aport = self.admin_address
        return (
            f"agentgate listening: main {scheme}://{_fmt(host)}:{port} ({mode}), "
            f"admin http://{_fmt(ahost)}:{aport} (/healthz /readyz /metrics), "
            f"{len(self.settings.routes)} route(s)"
        )


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _bind(runner: web.BaseRunner, listen: str, ssl_context: object | None) -> tuple[str, int]:
    host, port = split_listen(listen)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)  # type: ignore[arg-type]
    await site.start()
    server = site._server  # aiohttp keeps the asyncio.Server here; it holds the bound port
    assert isinstance(server, asyncio.base_events.Server)
    sock: socket.socket = server.sockets[0]
    bound = sock.getsockname()
    return str(bound[0]), int(bound[1])


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    log.info(gateway.describe())
    try:
        await stop.wait()
        log.info(
            "shutting down: draining in-flight requests for up to %.1fs",
            settings.server.timeouts.drain_s,
        )
    finally:
        await gateway.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("agentgate stopped")
