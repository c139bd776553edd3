"""The composition root: the only module that wires every part together.

``Gateway(settings)`` builds everything once (SSL contexts, the pooled upstream session, the
route table, metrics, the gateway's own endpoints) and hands the parts to its
:class:`gateway.lifecycle.Lifecycle`, which owns the start/stop order, the drain and the
reload: ``start()`` binds the main and admin listeners; ``stop()`` stops accepting, lets
in-flight requests finish for up to ``timeouts.drain_s`` and releases everything;
``reload()`` swaps in a new :class:`Runtime`. ``run()`` does all of that around
SIGTERM/SIGINT/SIGHUP for the CLI.

The gateway's own endpoints are tables built next to their code: the main listener's
(``GET /.well-known/jwks.json``, ``POST /token``) by
:func:`gateway.tokens.endpoint.token_endpoints`, the admin listener's (``/healthz``,
``/readyz``, ``/metrics``, ``/admin/*``) by :func:`gateway.admin.admin_app`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin import PROBES, Readiness, admin_app
from gateway.agents.baseline import BaselineStore
from gateway.agents.continuous import ContinuousAuth
from gateway.agents.genesis import Genesis
from gateway.authn.compose import AuthnService
from gateway.authn.jwks import DevKeys
from gateway.authn.jwt_bearer import JWTBearerAuthenticator
from gateway.authz.engine import PolicyDecisionPoint, build_pdp
from gateway.authz.exchange import exchange_input
from gateway.credentials.manager import CredentialManager
from gateway.lifecycle import (
    Fingerprint,
    Lifecycle,
    Listener,
    fingerprint,
    install_reload,
    serve,
    watched_files,
)
from gateway.net import tls
from gateway.net.listener import GatewayServer
from gateway.observability.access_log import AccessLog
from gateway.observability.audit import AuditSink
from gateway.observability.behavior import BehaviorStore, MemoryBehaviorStore
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import Tracing
from gateway.pipeline import FACTS_KEY, Handler, Limits, Pipeline
from gateway.protocols.a2a import sign_card
from gateway.resource_metadata import metadata_endpoints
from gateway.routing import RouteTable
from gateway.settings.root import Settings
from gateway.settings.server import TLSSettings
from gateway.state.actions import ActionLog, MemoryActionLog
from gateway.state.factory import build_state
from gateway.state.redis import RedisBehaviorStore, RedisState
from gateway.state.redis.actions import RedisActionLog
from gateway.tokens.endpoint import token_endpoints
from gateway.tokens.issuer import TxnTokenIssuer
from gateway.tokens.keys import KeyRing
from gateway.tokens.kit import TokenKit
from gateway.upstream.forward import Forwarder, route_budget

log = logging.getLogger("agentgate")

# install_reload is re-exported: gateway.net.workers imports it from here with Gateway.
__all__ = ["Gateway", "Runtime", "install_reload", "run"]


def _dev_keys(settings: Settings) -> DevKeys | None:
    """The dev issuer's key loader, for a configuration with a development issuer only: a
    production configuration never loads the dev tools."""
    if not any(iss.dev_signing_key is not None for iss in settings.issuers):
        return None
    from gateway.devtools.devissuer import public_jwks

    return public_jwks


def _card_signer(keys: KeyRing) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Signs a served A2A agent card with the gateway's active token key (its JWKS)."""

    def sign(card: Mapping[str, Any]) -> dict[str, Any]:
        key = keys.active
        return sign_card(card, key.private_key, key.kid, alg=key.alg)

    return sign


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
        self.authn = (
            AuthnService(settings, replay, verifier, dev_keys=_dev_keys(settings))
            if settings.authn
            else None
        )
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
        self.loaded_files: Fingerprint = (
            fingerprint(watched_files(settings, config_path)) if config_path else ()
        )
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
        self.actions, self.baselines = self._continuous_stores(settings)
        self.runtime = Runtime(settings, self)
        # Values the process was started with that a reloaded file must not change
        # (a worker's listen/admin_listen assigned by the supervisor) stay with the lifecycle.
        self.lifecycle: Lifecycle[Runtime] = Lifecycle(self, overrides=server_overrides)
        self._checks()

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

    def _continuous_stores(
        self, settings: Settings
    ) -> tuple[ActionLog | None, BaselineStore | None]:
        """The observed-action log (shared like the rest of the state) and the baselines."""
        section = settings.continuous_auth
        if section is None:
            return None, None
        log: ActionLog
        if isinstance(self.state, RedisState):
            log = RedisActionLog(
                self.state.link, settings.state.key_prefix, max_actions=section.max_actions
            )
        else:
            log = MemoryActionLog(max_actions=section.max_actions)
        drift = section.drift
        baselines = BaselineStore(
            window_s=drift.window_s,
            min_calls=drift.min_calls,
            min_age_s=drift.min_age_s,
            max_agents=drift.max_agents,
        )
        return log, baselines

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

    # What the lifecycle reports.
    @property
    def reloads(self) -> int:
        return self.lifecycle.reloads

    @property
    def main_address(self) -> tuple[str, int] | None:
        return self.lifecycle.addresses.get("main")

    @property
    def admin_address(self) -> tuple[str, int] | None:
        return self.lifecycle.addresses.get("admin")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # Read the runtime once: the whole request runs on the one it started on.
        return await self.runtime.pipeline.handle(request)

    def build_runtime(self, settings: Settings) -> Runtime:
        """A new runtime for ``settings`` (the lifecycle starts it, then swaps it in)."""
        return Runtime(settings, self)

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
                replay=self.state.replay if tt.replay_check else None,
                ttl_s=tt.ttl_s,
            )
            # The PDP and access-token calls of POST /token read this Gateway's current runtime.
            endpoints = token_endpoints(runtime.tokens, self, FACTS_KEY, exchange_input)
        for path, handler in metadata_endpoints(settings.routes, FACTS_KEY).items():
            endpoints.setdefault(path, handler)
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
            genesis=Genesis(settings.agent_credentials) if settings.agent_credentials else None,
            bearer_methods=frozenset(
                name for name, method in settings.authn.items() if method.type == "bearer"
            ),
            card_signer=_card_signer(runtime.tokens.keys) if runtime.tokens else None,
            continuous=self._continuous(settings),
        )

    def _continuous(self, settings: Settings) -> ContinuousAuth | None:
        section = settings.continuous_auth
        if section is None or self.actions is None or self.baselines is None:
            return None  # (a reload that adds the section needs a restart for its stores)
        return ContinuousAuth(section, self.actions, self.state.revocations, self.baselines)

    def listeners(self) -> Sequence[Listener]:
        """The main listener (the pipeline) and the admin listener, in binding order."""
        server = self.settings.server
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
        admin_application = admin_app(
            self.metrics, self.readiness, self.state.revocations, self.settings.admin.token
        )
        admin = web.AppRunner(admin_application, access_log=None)
        return (
            Listener(
                "main",
                main,
                server.listen,
                self.ssl_context,
                reuse_port=self._reuse_port,
                handshake_s=server.timeouts.header_read_s,
                on_refused=self.metrics.tls_refused,
            ),
            Listener("admin", admin, server.admin_listen),
        )

    async def start(self) -> None:
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def reload(self) -> bool:
        """Reload the configuration file, policies, keys and secrets; keep serving on error.

        See :meth:`gateway.lifecycle.Lifecycle.reload`.
        """
        return await self.lifecycle.reload()

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
        checks["config"] = lambda: self.lifecycle.started
        checks["state"] = self.state.ready
        not_after = self.server_cert_not_after
        if not_after is not None:  # an expired server certificate: no client can connect
            checks["server_certificate"] = lambda: time.time() < not_after
        for name in self.runtime.ready():
            checks[name] = partial(self._runtime_ready, name)

    def _runtime_ready(self, name: str) -> bool:
        return self.runtime.ready().get(name, False)

    def describe(self) -> str:
        main, admin = self.main_address, self.admin_address
        if main is None or admin is None:
            raise RuntimeError("the gateway is not listening")
        tls_cfg = self.settings.server.tls
        scheme = "https" if tls_cfg else "http"
        mode = f"mTLS {tls_cfg.client_cert}" if tls_cfg else "plain HTTP, no TLS"
        host, port = main
        ahost, aport = admin
        return (
            f"agentgate listening: main {scheme}://{_fmt(host)}:{port} ({mode}), "
            f"admin http://{_fmt(ahost)}:{aport} ({' '.join(PROBES)}), "
            f"{len(self.settings.routes)} route(s)"
        )


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    config_path: Path | None = None,
    watch: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain and return.

    SIGHUP, or a change to a watched file, reloads the configuration in place
    (:func:`gateway.lifecycle.serve`).
    """
    await serve(
        lambda: Gateway(settings, config_path=config_path),
        stop,
        drain_s=settings.server.timeouts.drain_s,
        watch=watch,
    )
