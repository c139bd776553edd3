"""Prometheus metrics for the admin listener's ``/metrics``.

Each :class:`Metrics` owns its own registry, so several gateways (tests, the
demo) can live in one process. Labels are bounded by configuration: route
names, issuer names, HTTP status codes, pipeline stage names and the stable
reason codes of :class:`gateway.errors.Reason`; never a subject, agent, path,
address or token (unbounded cardinality, and private).

| metric                                | type      | labels                | recorded by         |
|---------------------------------------|-----------|-----------------------|---------------------|
| `agentgate_requests_total`            | counter   | route, status, reason | `observe_request`   |
| `agentgate_request_duration_seconds`  | histogram | route, status         | `observe_request`   |
| `agentgate_stage_duration_seconds`    | histogram | stage                 | `observe_stage` (1) |
| `agentgate_pdp_duration_seconds`      | histogram | engine                | `observe_pdp`       |
| `agentgate_pdp_decisions_total`       | counter   | engine, outcome (2)   | `observe_pdp`       |
| `agentgate_pdp_errors_total`          | counter   | engine, kind (3)      | `pdp_error`         |
| `agentgate_jwks_refreshes_total`      | counter   | issuer, outcome (4)   | `jwks_refresh`      |
| `agentgate_upstream_errors_total`     | counter   | route, kind (5)       | `upstream_error`    |
| `agentgate_txn_tokens_minted_total`   | counter   | route                 | `txn_token_minted`  |
| `agentgate_rate_limited_total`        | counter   | route                 | `rate_limited`      |
| `agentgate_audit_dropped_total`       | counter   |                       | `audit_dropped` (6) |
| `agentgate_behavior_agents`           | gauge     |                       | `watch_behavior`    |
| `agentgate_connections_open`          | gauge     |                       | `watch_connections` |
| `agentgate_connections_refused_total` | counter   | reason (7)            | `connection_refused`|

(1) called by ``Tracing.stage_span`` when built with ``stage_timer=metrics.observe_stage``.
(2) ``allow``, ``deny``, ``error``. (3) e.g. ``timeout``, ``unavailable``, ``malformed``.
(4) ``ok``, ``error``. (5) the reason code: ``upstream_timeout``, ``upstream_unavailable``,
``upstream_cut`` (the body broke off after the response head was relayed).
(6) ``AuditSink(on_drop=metrics.audit_dropped)``.
(7) ``max_connections`` (answered 503), ``max_connections_overflow`` (closed on accept).
``agentgate_tls_handshake_failures``: :data:`TLS_HANDSHAKE_REASONS`, and ``bad_svid`` /
``expired`` for a certificate refused after the handshake.

A stage name outside :data:`STAGE_LABELS` is recorded as ``other`` so a typo can
never create a new series per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import Reason

# The *_created series double every counter's output for no use to a scraper.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Stages are sub-millisecond when warm; the low buckets matter there.
_STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

STAGE_LABELS = frozenset(
    {"observe", "route", "authenticate", "enrich", "decide", "mint", "convert", "forward"}
)
PDP_OUTCOMES = frozenset({"allow", "deny", "error"})
# What gateway.net.tls_acceptor.refusal_reason answers for a failed handshake, in the order
# the help text of agentgate_tls_handshake_failures lists them.
TLS_HANDSHAKE_REASONS = (
    Reason.NO_CLIENT_CERT,
    Reason.UNKNOWN_CA,
    Reason.EXPIRED,
    Reason.NOT_YET_VALID,
    Reason.REVOKED,
    Reason.BAD_CERTIFICATE,
    Reason.PROTOCOL,
    Reason.NOT_TLS,
    Reason.TIMEOUT,
    Reason.CLOSED,
    Reason.OTHER,
)


# Distinct method and tool/skill label values per JSON-RPC route (they come from clients).
MAX_RPC_TARGETS = 128


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "agentgate_requests",
            "Requests handled by the main listener.",
            ("route", "status", "reason"),
            registry=r,
        )
        self.latency = Histogram(
            "agentgate_request_duration_seconds",
            "Time from request head to the end of the gateway's handling.",
            ("route", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "agentgate_stage_duration_seconds",
            "Time spent in one pipeline stage (authenticate, decide, mint, convert...).",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.pdp_latency = Histogram(
            "agentgate_pdp_duration_seconds",
            "Time to obtain one decision from the PDP (cache misses only).",
            ("engine",),
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.pdp_decisions = Counter(
            "agentgate_pdp_decisions",
            "PDP evaluations by outcome (allow, deny, error).",
            ("engine", "outcome"),
            registry=r,
        )
        self.pdp_errors = Counter(
            "agentgate_pdp_errors",
            "PDP failures by kind (timeout, unavailable, malformed...); each one fails closed.",
            ("engine", "kind"),
            registry=r,
        )
        self.tls_refusals = Counter(
            "agentgate_tls_handshake_failures",
            f"TLS handshakes the main listener refused, by reason"
            f" ({', '.join(TLS_HANDSHAKE_REASONS)}).",
            ("reason",),
            registry=r,
        )
        self.server_cert_expiry = Gauge(
            "agentgate_server_certificate_expiry_seconds",
            "Seconds until the main listener's certificate expires (negative: expired).",
            registry=r,
        )
        self.server_cert_expiring = Gauge(
            "agentgate_server_certificate_expiring",
            "1 while the main listener's certificate expires within"
            " server.tls.expiry_warning_days (or has expired), else 0.",
            registry=r,
        )
        self.jwks_refreshes = Counter(
            "agentgate_jwks_refreshes",
            "JWKS fetches by issuer and outcome (ok, error).",
            ("issuer", "outcome"),
            registry=r,
        )
        self.upstream_errors = Counter(
            "agentgate_upstream_errors",
            "Upstream calls that failed before a response, by kind (reason code).",
            ("route", "kind"),
            registry=r,
        )
        self.txn_tokens = Counter(
            "agentgate_txn_tokens_minted",
            "Transaction Tokens minted for upstream calls.",
            ("route",),
            registry=r,
        )
        self.jsonrpc_requests = Counter(
            "agentgate_jsonrpc_requests",
            "JSON-RPC messages on kind mcp / a2a routes, by method, tool (or skill) and outcome.",
            ("route", "protocol", "method", "target", "outcome"),
            registry=r,
        )
        self._rpc_targets: dict[str, set[str]] = {}
        self.heartbeats = Counter(
            "agentgate_heartbeats",
            "Agent heartbeats by verdict (healthy, mismatch).",
            ("verdict",),
            registry=r,
        )
        self.drift = Histogram(
            "agentgate_drift_score",
            "Drift score of agents' calls against their baselines (0: usual, 1: unlike it).",
            ("route",),
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.quarantines = Counter(
            "agentgate_quarantines",
            "Agents quarantined by a decision's quarantine obligation.",
            ("route",),
            registry=r,
        )
        self.rate_limited_requests = Counter(
            "agentgate_rate_limited",
            "Requests refused with 429 by a route's rate limit.",
            ("route",),
            registry=r,
        )
        self.audit_dropped_records = Counter(
            "agentgate_audit_dropped",
            "Audit records dropped because the audit queue was full.",
            registry=r,
        )
        self._stages: dict[str, Any] = {}
        self._request_children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self.connections_refused = Counter(
            "agentgate_connections_refused",
            "Main-listener connections refused by server.limits.max_connections, by reason.",
            ("reason",),
            registry=r,
        )
        self._connections_open = Gauge(
            "agentgate_connections_open",
            "Open main-listener connections counted by server.limits.max_connections.",
            registry=r,
        )
        self._behavior_agents = Gauge(
            "agentgate_behavior_agents",
            "Agents currently tracked by the behaviour store.",
            registry=r,
        )

    # ------------------------------------------------------------------ pipeline

    def observe_request(self, route: str, status: int, reason: str, seconds: float) -> None:
        # Labelled children cached like observe_stage's: labels() validates and hashes its
        # arguments under a lock on every call. The key space is bounded by configuration
        # (route names, reason codes) and HTTP status codes.
        key = (route, status, reason)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = (self.requests.labels(route, code, reason), self.latency.labels(route, code))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Matches :class:`gateway.observability.tracing.StageTimer` (several calls a request:
        the labelled children are cached, which halves the cost of an observation)."""
        child = self._stages.get(stage)
        if child is None:
            label = stage if stage in STAGE_LABELS else "other"
            child = self.stage_latency.labels(label)
            if label != "other":
                self._stages[stage] = child
        child.observe(seconds)

    def upstream_error(self, route: str, kind: str) -> None:
        self.upstream_errors.labels(route, kind).inc()

    def rate_limited(self, route: str) -> None:
        self.rate_limited_requests.labels(route).inc()

    # ------------------------------------------------------------------ stages' own

    def observe_pdp(self, engine: str, seconds: float, outcome: str) -> None:
        """One PDP evaluation: ``outcome`` is allow, deny or error."""
        self.pdp_latency.labels(engine).observe(seconds)
        self.pdp_decisions.labels(engine, outcome if outcome in PDP_OUTCOMES else "error").inc()

    def pdp_error(self, engine: str, kind: str) -> None:
        self.pdp_errors.labels(engine, kind).inc()

    def tls_refused(self, reason: str) -> None:
        self.tls_refusals.labels(reason).inc()

    def watch_server_certificate(self, not_after: float, warning_s: float) -> None:
        """Expiry gauges, computed at each scrape from the certificate's ``notAfter``."""
        self.server_cert_expiry.set_function(lambda: not_after - time.time())
        self.server_cert_expiring.set_function(lambda: float(not_after - time.time() < warning_s))

    def jwks_refresh(self, issuer: str, ok: bool) -> None:
        self.jwks_refreshes.labels(issuer, "ok" if ok else "error").inc()

    def jsonrpc_message(
        self, route: str, protocol: str, method: str | None, target: str | None, outcome: str
    ) -> None:
        """One decided JSON-RPC message. ``method`` and ``target`` come from clients: each
        route keeps its first :data:`MAX_RPC_TARGETS` values, the rest count as ``other``."""
        seen = self._rpc_targets.setdefault(route, set())
        labels = []
        for value in (method or "-", target or "-"):
            if value not in seen:
                if len(seen) >= MAX_RPC_TARGETS:
                    value = "other"
                else:
                    seen.add(value)
            labels.append(value)
        self.jsonrpc_requests.labels(route, protocol, labels[0], labels[1], outcome).inc()

    def heartbeat(self, verdict: str) -> None:
        self.heartbeats.labels(verdict).inc()

    def drift_observed(self, route: str, score: float) -> None:
        self.drift.labels(route).observe(score)

    def quarantined(self, route: str) -> None:
        self.quarantines.labels(route).inc()

    def txn_token_minted(self, route: str) -> None:
        self.txn_tokens.labels(route).inc()

    def audit_dropped(self) -> None:
        """Matches ``AuditSink(on_drop=...)``."""
        self.audit_dropped_records.inc()

    def connection_refused(self, reason: str) -> None:
        """Matches ``GatewayServer(on_connection_refused=...)``."""
        self.connections_refused.labels(reason).inc()

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Report ``count()`` (open main-listener connections under the cap) at every scrape."""
        self._connections_open.set_function(lambda: float(count()))

    def watch_behavior(self, size: Callable[[], int]) -> None:
        """Report ``size()`` (tracked agents) at every scrape."""
        self._behavior_agents.set_function(lambda: float(size()))

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
