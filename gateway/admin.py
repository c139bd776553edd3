"""The admin listener's application: probes, metrics and the revocation admin API.

``server.admin_listen`` serves, and only it (never the main listener):

* ``GET /healthz`` -> 200 ``{"status": "ok"}`` while the process serves;
* ``GET /readyz`` -> 200 ``{"ready": true, "checks": {...}}`` only while every named
  :class:`Readiness` check passes, else 503 with the same body (a failing check is "not
  ready", never a 500), so a load balancer stops sending traffic during a drain;
* ``GET /metrics`` -> the Prometheus exposition (:class:`gateway.observability.metrics.Metrics`);
* ``/admin/*`` -> the revocation API, authenticated by ``admin.token``
  (:mod:`gateway.admin_api`; 404 on every path when no token is configured).

The three probes are the table :data:`PROBES` (``path -> handler``); the CLI's listening line
names them from it. The admin listener is plain HTTP: keep it on loopback or a pod-private
network (DESIGN.md §4).

Why :mod:`gateway.admin_api` stays its own module: it is the one authenticated surface here
(constant-time bearer check, body limits, JSON errors, audit log lines) and has its own
contract and tests; this module is the unauthenticated, read-only rest and the mounting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from gateway.admin_api import admin_routes
from gateway.observability.metrics import Metrics
from gateway.secret import Secret
from gateway.state import RevocationStore

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


PROBES: Final[Mapping[str, Callable[[web.Request], Awaitable[web.Response]]]] = {
    "/healthz": _healthz,
    "/readyz": _readyz,
    "/metrics": _metrics,
}
"""The admin listener's ``GET`` endpoints, ``path -> handler``, in the order they are mounted."""


def admin_app(
    metrics: Metrics,
    readiness: Readiness,
    revocations: RevocationStore,
    token: Secret | None,
) -> web.Application:
    """The admin listener's application: :data:`PROBES`, then ``/admin/*``."""
    app = web.Application()
    app[METRICS_KEY] = metrics
    app[READINESS_KEY] = readiness
    for path, handler in PROBES.items():
        app.router.add_get(path, handler)
    admin_routes(app, revocations, token)
    return app
