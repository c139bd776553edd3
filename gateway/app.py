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
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin_api import admin_routes
from gateway.authn.base import invalid_token
from gateway.authn.compose import AuthnService
from gateway.authn.jwt_bearer import JWTBearerAuthenticator
from gateway.authz.engine import PolicyDecisionPoint, build_pdp
from gateway.authz.exchange import exchange_input
from gateway.authz.pdp import PolicyLoadError
from gateway.context import Decision, Identity
from gateway.credentials.manager import CredentialManager
from gateway.errors import ConfigError, ServiceUnavailable
from gateway.net import tls
from gateway.net.listener import GatewayServer
from gateway.net.tls_acceptor import TLSAcceptor
from gateway.observability.access_log import AccessLog
from gateway.observability.audit import AuditSink
from gateway.observability.behavior import BehaviorStore, MemoryBehaviorStore
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import Tracing
from gateway.pipeline import FACTS_KEY, Handler, Limits, Pipeline
from gateway.routing import RouteTable
from gateway.settings import Settings, TLSSettings, load_settings, split_listen
from gateway.state.factory import build_state
from gateway.state.redis import RedisBehaviorStore, RedisState
from gateway.tokens.issuer import TxnTokenIssuer
from gateway.tokens.keys import JWKS_PATH, make_jwks_handler
from gateway.tokens.kit import TokenKit
from gateway.tokens.service import TOKEN_PATH, ExchangeRequest, make_token_handler
from gateway.upstream.forward import Forwarder, route_budget

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


class Runtime:
    """Everything built from one configuration that serves requests.

    A reload builds and starts a new Runtime, swaps it in, and retires the old one
    once its in-flight requests have finished: each request runs entirely on the
    Runtime it started on.
    """

    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        self.settings = settings
        server = settings.server
        self.forwarder = Forwarder(
            connect_timeout_s=server.timeouts.upstream_connect_s,
            total_timeout_s=server.timeouts.upstream_total_s,
            headers_timeout_s=server.timeouts.upstream_headers_s,
            idle_timeout_s=server.timeouts.upstream_idle_s,
            budgets={r.name: route_budget(r, server.timeouts) for r in settings.routes},
            max_body_bytes=server.limits.max_body_bytes,
            send_timeout_s=server.timeouts.send_s,
            ssl_contexts={
                r.name: tls.upstream_context(r.upstream_tls)
                for r in settings.routes
                if r.upstream.startswith("https:")
            },
        )
        self.tokens = TokenKit.build(settings) if settings.txn_tokens else None
        verifier = self.tokens.verifier if self.tokens else None
        replay = gateway.state.replay
        self.authn = AuthnService(settings, replay, verifier) if settings.authn else None
        self.pdp = (
            build_pdp(
                settings.pdp,
                timeout_s=server.timeouts.pdp_s,
                decision_log=settings.telemetry.decision_log,
            )
            if settings.pdp is not None
            else None
        )
        self.credentials = CredentialManager(
            settings.routes,
            txn_header=settings.txn_tokens.header if settings.txn_tokens else None,
        )
        self.tracing = Tracing.from_settings(
            settings.telemetry, stage_timer=gateway.metrics.observe_stage
        )
        telemetry = settings.telemetry
        self.access_log = AccessLog(telemetry.access_log, telemetry.access_log_format)
        if self.authn is not None:
            for method in self.authn.methods.values():
                if isinstance(method, JWTBearerAuthenticator):
                    for client in method.jwks_clients():
                        client.on_refresh = gateway.metrics.jwks_refresh
        self.pipeline = gateway._pipeline(self)

    async def start(self) -> None:
        try:
            self.access_log.start()
            await self.forwarder.start()
            await self.credentials.start()
            if self.authn is not None:
                await self.authn.start()
            if self.pdp is not None:
                await self.pdp.start()
        except BaseException:
            # A half-started runtime (a refused reload, a failed start) leaves no client
            # session or connector open behind it.
            await self.close()
            raise

    async def close(self) -> None:
        await self.forwarder.close()
        await self.credentials.close()
        await self.tracing.aclose()
        self.access_log.close()
        if self.authn is not None:
            await self.authn.close()
        if self.pdp is not None:
            await self.pdp.close()

    def ready(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        if self.authn is not None:
            checks["authn"] = self.authn.ready()
        if self.pdp is not None:
            checks["pdp"] = self.pdp.ready()
        if self.tokens is not None:
            checks["keys"] = bool(self.tokens.keys.verification_keys())
        return checks


# Settings a running process cannot change: the sockets and the shared state.
_RESTART_ONLY = ("server.listen", "server.admin_listen", "server.tls", "state")


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        reuse_port: bool = False,
        config_path: Path | None = None,
        server_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        # What the files looked like when this configuration was built: the file watcher
        # starts from here, so an edit made while the gateway starts is not missed.
        self.loaded_files = (
            _fingerprint(watched_files(settings, config_path)) if config_path else ()
        )
        # Values the process was started with that a reloaded file must not change
        # (a worker's listen/admin_listen assigned by the supervisor).
        self._overrides = dict(server_overrides or {})
        self._reuse_port = reuse_port
        server = settings.server
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.ssl_context = tls.server_context(server.tls) if server.tls else None
        self.server_cert_not_after: float | None = None
        if server.tls is not None:
            self._watch_certificate(server.tls)
        self.state = build_state(settings.state)
        # The audit sink and the behaviour windows outlive reloads (a reload is not a reset).
        self.audit = AuditSink.from_settings(settings.telemetry, on_drop=self.metrics.audit_dropped)
        self.behavior = self._behavior_store(settings)
        self.runtime = Runtime(settings, self)
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._started = False
        self._checks()
        self._runners: list[web.BaseRunner] = []
        self.main_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    def _behavior_store(self, settings: Settings) -> BehaviorStore | None:
        behavior = settings.telemetry.behavior
        if not behavior.enabled:
            return None
        if isinstance(self.state, RedisState):  # shared by every worker and node
            return RedisBehaviorStore(
                self.state.link, settings.state.key_prefix, window_s=behavior.window_s
            )
        store = MemoryBehaviorStore.from_settings(behavior)
        self.metrics.watch_behavior(store.__len__)
        return store

    # The current runtime's parts, for callers that hold the Gateway.
    @property
    def pipeline(self) -> Pipeline:
        return self.runtime.pipeline

    @property
    def forwarder(self) -> Forwarder:
        return self.runtime.forwarder

    @property
    def authn(self) -> AuthnService | None:
        return self.runtime.authn

    @property
    def pdp(self) -> PolicyDecisionPoint | None:
        return self.runtime.pdp

    @property
    def tokens(self) -> TokenKit | None:
        return self.runtime.tokens

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # Read the runtime once: the whole request runs on the one it started on.
        return await self.runtime.pipeline.handle(request)

    def _pipeline(self, runtime: Runtime) -> Pipeline:
        settings = runtime.settings
        server, authn = settings.server, runtime.authn
        issuer = None
        endpoints: dict[str, Handler] = {}
        if runtime.tokens is not None:
            tt = runtime.tokens.settings
            issuer = TxnTokenIssuer(
                runtime.tokens.minter,
                header=tt.header,
                txn_methods=authn.txn_methods if authn else (),
                replay=self.state.replay if tt.replay_check else None,
                ttl_s=tt.ttl_s,
            )
            endpoints = self._token_endpoints(runtime.tokens)
        return Pipeline(
            routes=RouteTable(settings.routes),
            forwarder=runtime.forwarder,
            metrics=self.metrics,
            limits=Limits(
                max_header_bytes=server.limits.max_header_bytes,
                max_body_bytes=server.limits.max_body_bytes,
                trusted_hops=server.forwarded.trusted_hops,
                scheme="https" if self.ssl_context else "http",
                strip_headers=frozenset(server.strip_headers)
                | (authn.credential_headers() if authn else frozenset()),
                strip_query=authn.credential_query_params() if authn else frozenset(),
            ),
            state=self.state,
            credentials=runtime.credentials,
            authenticator=authn,
            pdp=runtime.pdp,
            minter=issuer,
            endpoints=endpoints,
            tracing=runtime.tracing,
            audit=self.audit,
            access_log=runtime.access_log,
            behavior=self.behavior,
            telemetry=settings.telemetry,
            trust_domain=server.trust_domain,
        )

    async def reload(self) -> bool:
        """Reload the configuration file, policies, keys and secrets; keep serving on error.

        The new configuration is validated and every part is built and started before
        the swap; if anything fails the old runtime keeps serving and the error is logged.
        """
        if self.config_path is None:
            log.warning("reload requested, but the gateway was not started from a file")
            return False
        async with self._reload_lock:
            try:
                settings = await asyncio.to_thread(load_settings, self.config_path)
                if self._overrides:
                    server = settings.server.model_copy(update=self._overrides)
                    settings = settings.model_copy(update={"server": server})
                _check_restart_only(self.settings, settings)
                runtime = Runtime(settings, self)
                await runtime.start()
            except (ConfigError, PolicyLoadError) as exc:
                for line in exc.lines():
                    log.error("reload refused: %s", line)
                log.error("reload refused: still serving the previous configuration")
                return False
            except (ValueError, OSError) as exc:
                log.error("reload refused: %s", exc)
                log.error("reload refused: still serving the previous configuration")
                return False
            except Exception as exc:  # a reload must never stop the gateway
                log.exception("reload refused: internal error (%s)", type(exc).__name__)
                return False
            old, self.runtime, self.settings = self.runtime, runtime, settings
            self.reloads += 1
            log.info("configuration reloaded (%d route(s))", len(settings.routes))
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    async def _retire(self, old: Runtime) -> None:
        # In-flight requests of the old runtime finish first (bounded by drain_s).
        deadline = time.monotonic() + self.settings.server.timeouts.drain_s
        try:
            while old.pipeline.inflight and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling a counter is cheaper than an Event per request
        finally:
            await old.close()

    def _token_endpoints(self, kit: TokenKit) -> dict[str, Handler]:
        tt = kit.settings
        endpoints: dict[str, Handler] = {
            JWKS_PATH: make_jwks_handler(kit.keys, max_age_s=tt.jwks_max_age_s)
        }
        if tt.token_service_clients:
            endpoints[TOKEN_PATH] = make_token_handler(
                minter=kit.minter,
                verifier=kit.verifier,
                keys=kit.keys,
                authorize=self._authorize_exchange,
                clients=tt.token_service_clients,
                access_token_validator=self._validate_access_token,
            )
        return endpoints

    async def _authorize_exchange(
        self, request: web.BaseRequest, exchange: ExchangeRequest
    ) -> Decision:
        """Ask the PDP about ``POST /token`` (action ``token.exchange``)."""
        if self.pdp is None:  # settings validation requires a PDP for the Token Service
            raise ServiceUnavailable("no PDP for token exchange", reason="pdp_unavailable")
        facts = request.get(FACTS_KEY) or self.pipeline.observe(request, str(uuid.uuid4()))
        document = exchange_input(
            facts,
            kind=exchange.kind,
            client=exchange.client,
            identity=exchange.identity,
            scopes=exchange.scopes,
            current_scopes=exchange.current_scopes,
            txn=exchange.txn,
            claims=exchange.claims,
        )
        return await self.pdp.decide(document, exchange.current_scopes)

    async def _validate_access_token(self, token: str, request: web.BaseRequest) -> Identity:
        if self.authn is None:
            raise invalid_token("no access-token method configured")
        return await self.authn.validate_access_token(token)

    def _watch_certificate(self, cfg: TLSSettings) -> None:
        """Expiry metrics and a readiness check for the listener's certificate."""
        not_after = tls.certificate_not_after(cfg.cert)
        self.server_cert_not_after = not_after
        warning_s = cfg.expiry_warning_days * 86400
        self.metrics.watch_server_certificate(not_after, warning_s)
        left = not_after - time.time()
        if left <= 0:
            log.error("server certificate %s has expired", cfg.cert)
        elif left < warning_s:
            log.warning("server certificate %s expires in %.1f days", cfg.cert, left / 86400)

    def _checks(self) -> None:
        checks = self.readiness.checks
        checks["config"] = lambda: self._started
        checks["state"] = self.state.ready
        not_after = self.server_cert_not_after
        if not_after is not None:  # an expired server certificate: no client can connect
            checks["server_certificate"] = lambda: time.time() < not_after
        for name in self.runtime.ready():
            checks[name] = partial(self._runtime_ready, name)

    def _runtime_ready(self, name: str) -> bool:
        return self.runtime.ready().get(name, False)

    async def start(self) -> None:
        server = self.settings.server
        await self.state.start()
        await self.audit.start()
        await self.runtime.start()
        web_server = GatewayServer(
            self._handle,
            header_read_s=server.timeouts.header_read_s,
            body_read_s=server.timeouts.body_read_s,
            max_connections=server.limits.max_connections,
            scheme="https" if self.ssl_context else "http",
            # Requests the HTTP parser refuses never reach the pipeline; count them anyway.
            on_refused=lambda status, reason: self.metrics.observe_request(
                "-", status, reason, 0.0
            ),
            on_connection_refused=self.metrics.connection_refused,
            on_certificate_refused=self.metrics.tls_refused,
            handler_cancellation=True,
            keepalive_timeout=server.timeouts.idle_s,
            max_line_size=server.limits.max_header_bytes,
            max_field_size=server.limits.max_header_bytes,
            max_headers=server.limits.max_headers,
            access_log=None,
        )
        self.metrics.watch_connections(lambda: web_server.open_connections)
        main = web.ServerRunner(web_server, shutdown_timeout=server.timeouts.drain_s)
        admin_application = admin_app(self.metrics, self.readiness)
        admin_routes(admin_application, self.state.revocations, self.settings.admin.token)
        admin = web.AppRunner(admin_application, access_log=None)
        self.main_address = await _bind(
            main,
            server.listen,
            self.ssl_context,
            reuse_port=self._reuse_port,
            handshake_s=server.timeouts.header_read_s,
            on_refused=self.metrics.tls_refused,
        )
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
        # Runtimes retired by a reload are closed now if their requests outlived the drain.
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.runtime.close()
        await self.audit.close()
        await self.state.close()

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


def _check_restart_only(old: Settings, new: Settings) -> None:
    before_all, after_all = old.model_dump(), new.model_dump()
    for dotted in _RESTART_ONLY:
        before: Any = before_all
        after: Any = after_all
        for key in dotted.split("."):
            before, after = before.get(key), after.get(key)
        if before != after:
            raise ConfigError([(dotted, "changing this needs a restart, not a reload")])


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _TCPSite(web.TCPSite):
    """aiohttp's TCPSite plus a TLS handshake deadline (asyncio's default is 60 s) and
    handshakes the gateway sees (:mod:`gateway.net.tls_acceptor`: a refusal is logged and counted,
    where asyncio would drop it silently)."""

    __slots__ = ("_handshake_s", "_handshakes", "_on_refused")

    def __init__(
        self,
        *args: Any,
        handshake_s: float | None,
        on_refused: Callable[[str], None] = lambda reason: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_s = handshake_s
        self._on_refused = on_refused
        self._handshakes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner has no server")
        context = self._ssl_context
        factory: Callable[[], asyncio.BaseProtocol] = server
        if context is not None:

            def factory() -> asyncio.BaseProtocol:
                # SECURITY: a client that never finishes its handshake holds a socket; bound
                # it like a client that never finishes its request head.
                return TLSAcceptor(
                    server,
                    context,
                    handshake_s=self._handshake_s,
                    on_refused=self._on_refused,
                    pending=self._handshakes,
                )

        self._server = await asyncio.get_running_loop().create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        for task in list(self._handshakes):  # handshakes still under way end with the site
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        await super().stop()


async def _bind(
    runner: web.BaseRunner,
    listen: str,
    ssl_context: ssl.SSLContext | None,
    *,
    reuse_port: bool = False,
    handshake_s: float | None = None,
    on_refused: Callable[[str], None] = lambda reason: None,
) -> tuple[str, int]:
    host, port = split_listen(listen)
    await runner.setup()
    site = _TCPSite(
        runner,
        host,
        port,
        ssl_context=ssl_context,
        backlog=1024,
        reuse_port=reuse_port or None,
        handshake_s=handshake_s,
        on_refused=on_refused,
    )
    await site.start()
    server = site._server  # aiohttp keeps the asyncio.Server here; it holds the bound port
    assert isinstance(server, asyncio.base_events.Server)
    sock: socket.socket = server.sockets[0]
    bound = sock.getsockname()
    return str(bound[0]), int(bound[1])


def watched_files(settings: Settings, config_path: Path) -> list[Path]:
    """The files whose change triggers a reload: config, policies, data, keys, credentials."""
    files = [config_path]
    if settings.pdp is not None and settings.pdp.policies is not None:
        files.extend(sorted(settings.pdp.policies.rglob("*.rego")))
        if settings.pdp.data is not None:
            files.append(settings.pdp.data)
    if settings.txn_tokens is not None:
        files.extend(settings.txn_tokens.key_files)
    for method in settings.authn.values():
        for attr in ("keys_file", "users_file", "agents_file"):
            path = getattr(method, attr, None)
            if isinstance(path, Path):
                files.append(path)
    return files


Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(files: list[Path]) -> Fingerprint:
    out = []
    for path in files:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


async def watch_files(gateway: Gateway, interval_s: float = 1.0) -> None:
    """Reload when a watched file changes (polling: portable, no extra dependency)."""
    if gateway.config_path is None:
        raise ValueError("the gateway was not started from a file")
    seen = gateway.loaded_files
    while True:
        await asyncio.sleep(interval_s)
        now = _fingerprint(watched_files(gateway.settings, gateway.config_path))
        if now != seen:
            log.info("a watched file changed: reloading")
            await gateway.reload()  # never raises: a refused reload is logged
            # Compare later rounds with what this reload read, so a save made while it ran
            # is reloaded next round; a new watch list (e.g. a new policy file) starts afresh.
            files = watched_files(gateway.settings, gateway.config_path)
            same = [entry[0] for entry in now] == [str(path) for path in files]
            seen = now if same else _fingerprint(files)


def install_reload(gateway: Gateway, *, watch: bool = True) -> list[asyncio.Task[Any]]:
    """SIGHUP and (optionally) file changes reload ``gateway``; returns tasks to cancel."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []

    def on_hup() -> None:
        log.info("SIGHUP: reloading")
        tasks.append(loop.create_task(gateway.reload()))

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if watch and gateway.config_path is not None:
        tasks.append(loop.create_task(watch_files(gateway)))
    return tasks


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    config_path: Path | None = None,
    watch: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain and return.

    SIGHUP, or a change to a watched file, reloads the configuration in place.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings, config_path=config_path)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()  # nothing half-started outlives a failed start
        raise
    reloading = install_reload(gateway, watch=watch)
    log.info(gateway.describe())
    try:
        await stop.wait()
        log.info(
            "shutting down: draining in-flight requests for up to %.1fs",
            settings.server.timeouts.drain_s,
        )
    finally:
        for task in reloading:
            task.cancel()
        await gateway.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("agentgate stopped")
