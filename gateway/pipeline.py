"""THE ORDER of the ingress pipeline (DESIGN.md §2), in one function.

``Pipeline.handle`` is the aiohttp handler of the main listener. Each stage
either returns the value the next stage needs or raises a
:class:`gateway.errors.GatewayError`, which is rendered once, here, by
:func:`gateway.render.error_response`. Stages never call each other.

    observe      sanitise + normalise the path once + enforce header limits
    route        first matching route, or 404 (nothing else runs)
    authenticate the route's AND/OR tree of methods        (gateway.authn)
    decide       the PDP, fail closed                      (gateway.authz)
    forward      stream to the upstream, no redirects followed

Every response carries ``X-Request-Id`` and is counted in the metrics.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.context import Decision, Identity, RequestFacts
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, Unauthorized
from gateway.listener import GatewayRequestHandler
from gateway.observability.metrics import Metrics
from gateway.render import REQUEST_ID, error_response
from gateway.upstream.forward import Forwarder
from gateway.upstream.headers import forwarded_for, header_block_size, sanitize_request_headers
from gateway.upstream.paths import normalize_path
from gateway.upstream.routes import CompiledRoute, RouteTable

log = logging.getLogger("agentgate.pipeline")

SERVER_HEADER = {"Server": "agentgate"}


class Authenticator(Protocol):
    async def authenticate(
        self, route: CompiledRoute, request: web.BaseRequest, facts: RequestFacts
    ) -> Identity: ...


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    trusted_hops: int
    scheme: str
    strip_headers: frozenset[str]


class Pipeline:
    def __init__(
        self,
        *,
        routes: RouteTable,
        forwarder: Forwarder,
        metrics: Metrics,
        limits: Limits,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.routes = routes
        self.forwarder = forwarder
        self.metrics = metrics
        self.limits = limits
        self.authenticator = authenticator

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, GatewayRequestHandler):
            protocol.request_started()
        request_id = str(uuid.uuid4())
        started = time.perf_counter()
        route_name, status, reason = "-", 500, "internal_error"
        try:
            facts = self.observe(request, request_id)
            route = self.routes.match(facts.method, facts.host, facts.path)
            route_name = route.name
            identity = await self.authenticate(route, request, facts)
            decision = await self.decide(route, facts, identity)
            response = await self.forward(request, facts, route, decision)
            status, reason = response.status, "ok"
            return response
        except GatewayError as exc:
            status, reason = exc.status, exc.reason
            if exc.detail:
                log.info("request %s refused: %s (%s)", request_id, exc.reason, exc.detail)
            response = error_response(exc, request_id)
            response.headers.update(SERVER_HEADER)
            return response
        finally:
            if isinstance(protocol, GatewayRequestHandler):
                protocol.request_finished()
            self.metrics.observe_request(route_name, status, reason, time.perf_counter() - started)

    # ------------------------------------------------------------------ stages

    def observe(self, request: web.BaseRequest, request_id: str) -> RequestFacts:
        if header_block_size(request.raw_headers) > self.limits.max_header_bytes:
            raise HeadersTooLarge()
        raw_path, _, raw_query = request.raw_path.partition("?")
        path = normalize_path(raw_path)
        hosts = request.headers.getall("Host", ())
        if len(hosts) != 1 or not hosts[0]:
            raise BadRequest("missing or repeated Host header", public="exactly one Host header")
        peer_address = request.remote or ""
        xff, client_address = forwarded_for(
            request.headers.getall("X-Forwarded-For", []), peer_address, self.limits.trusted_hops
        )
        proto, fwd_host = self.limits.scheme, hosts[0]
        if self.limits.trusted_hops > 0:
            # Only behind trusted proxies may the client-side scheme and host be believed.
            proto = _single(request, "X-Forwarded-Proto", ("http", "https")) or proto
            fwd_host = _single(request, "X-Forwarded-Host", None) or fwd_host
        protocol = request.protocol
        peer = protocol.peer if isinstance(protocol, GatewayRequestHandler) else None
        return RequestFacts(
            request_id=request_id,
            method=request.method,
            scheme=self.limits.scheme,
            host=hosts[0],
            path=path,
            raw_query=raw_query,
            client_address=client_address,
            peer_address=peer_address,
            forwarded_for=xff,
            forwarded_proto=proto,
            forwarded_host=fwd_host,
            peer=peer,
            time_ns=time.time_ns(),
        )

    async def authenticate(
        self, route: CompiledRoute, request: web.BaseRequest, facts: RequestFacts
    ) -> Identity | None:
        if route.settings.authn is None:
            return None  # a public route: no credential is asked for or looked at
        if self.authenticator is None:
            # SECURITY: a route that demands authentication never forwards unauthenticated.
            raise Unauthorized("no authenticator configured", reason="authn_missing")
        return await self.authenticator.authenticate(route, request, facts)

    async def decide(
        self, route: CompiledRoute, facts: RequestFacts, identity: Identity | None
    ) -> Decision | None:
        # The PDP seam (gateway.authz). Until a PDP is configured no route is decided,
        # and only routes without ``authn`` exist to reach this point unauthenticated.
        return None

    async def forward(
        self,
        request: web.BaseRequest,
        facts: RequestFacts,
        route: CompiledRoute,
        decision: Decision | None,
    ) -> web.StreamResponse:
        headers = self.upstream_headers(request, facts)
        url = route.upstream_url(facts.path, facts.raw_query)
        return await self.forwarder.forward(
            request,
            url,
            headers,
            route=route.name,
            response_headers={REQUEST_ID: facts.request_id, **SERVER_HEADER},
        )

    def upstream_headers(self, request: web.BaseRequest, facts: RequestFacts) -> CIMultiDict[str]:
        headers = sanitize_request_headers(request.headers, extra_strip=self.limits.strip_headers)
        headers["X-Forwarded-For"] = facts.forwarded_for
        headers["X-Forwarded-Proto"] = facts.forwarded_proto
        headers["X-Forwarded-Host"] = facts.forwarded_host
        headers[REQUEST_ID] = facts.request_id
        return headers


def _single(request: web.BaseRequest, name: str, allowed: tuple[str, ...] | None) -> str | None:
    values = request.headers.getall(name, ())
    if len(values) != 1:
        return None
    value = values[0].strip()
    if allowed is not None and value.lower() not in allowed:
        return None
    return value or None
