"""Prometheus metrics for the admin listener's ``/metrics``.

Each :class:`Metrics` owns its own registry, so several gateways (tests, the
demo) can live in one process. Labels are bounded by configuration: route
names, HTTP status codes and the stable reason codes of ``gateway.errors``;
never a subject, path or address (unbounded cardinality).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agentgate_requests",
            "Requests handled by the main listener.",
            ("route", "status", "reason"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "agentgate_request_duration_seconds",
            "Time from request head to the end of the gateway's handling.",
            ("route", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, route: str, status: int, reason: str, seconds: float) -> None:
        code = str(status)
        self.requests.labels(route, code, reason).inc()
        self.latency.labels(route, code).observe(seconds)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
