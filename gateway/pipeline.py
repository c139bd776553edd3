"""THE ORDER of the ingress pipeline (DESIGN.md §2), in one function.

``Pipeline.handle`` is the aiohttp handler of the main listener. Each stage
either returns the value the next stage needs or raises a
:class:`gateway.errors.GatewayError`, which is rendered once, here, by
:func:`gateway.render.error_response`. Stages never call each other.

    observe      sanitise + normalise the path once + enforce header limits and a
                 declared body size (413 on Content-Length alone)
    route        first matching route, or 404 (nothing else runs)  (gateway.routing)
    limits       client/route rate limits                  (gateway.limits)
    authenticate the route's AND/OR tree of methods        (gateway.authn)
    screen       revocation, an agent credential's route/segment/tool restrictions,
                 then subject/agent rate limits          (gateway.agents.caveats)
    jsonrpc      on ``kind: mcp`` / ``a2a`` routes: the token's audience (RFC 8707), the
                 JSON-RPC body -> ``input.mcp`` / ``input.a2a``, the MCP session's owner
                                                           (gateway.enrich.jsonrpc)
    enrich       behaviour (later registry, workflow facts)  (gateway.enrich)
    decide       the PDP, fail closed; once per JSON-RPC message (gateway.authz)
    obligations  the decision's rate limit                 (gateway.limits)
    (a route of ``kind: agent_credentials`` ends here: genesis of a root agent credential,
     the decision asked for ``action: credential.issue``  (gateway.agents.genesis))
    mint         the downscoped Txn-Token                  (gateway.tokens)
    forward      convert the credential, stream to the upstream, no redirects followed;
                 JSON-RPC routes filter listings and bind sessions on the way back
                                                           (gateway.credentials, gateway.upstream)

Stages see an :class:`gateway.context.Inbound` (headers, query, the bounded body of
:mod:`gateway.protocols.body`), never the aiohttp request; only the forwarder streams it.

Every response carries ``X-Request-Id`` and is counted in the metrics.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.agents import caveats
from gateway.agents.continuous import ACTION_HEADER, ContinuousAuth
from gateway.agents.genesis import Genesis
from gateway.agents.heartbeat import HeartbeatInvalid
from gateway.authz.decision import obligation_limit
from gateway.authz.engine import PolicyDecisionPoint
from gateway.authz.input import build_input, policy_headers, query_params
from gateway.context import NO_ENRICHMENT, Decision, Enrichment, Identity, Inbound, RequestFacts
from gateway.credentials import ConvertContext, Outbound
from gateway.credentials.manager import CredentialManager
from gateway.enrich.behavior import BehaviorEnricher
from gateway.enrich.jsonrpc import (
    JSONRPCStage,
    RPCCall,
    check_audience,
    listing_fact,
    metadata_url,
    resource_for,
)
from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthorized,
)
from gateway.limits.stage import LimitsStage
from gateway.net.listener import GatewayRequestHandler
from gateway.observability.access_log import AccessLog
from gateway.observability.audit import AuditInput, AuditRecord, AuditSink
from gateway.observability.behavior import BehaviorStore, agent_key
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import ServerSpan, Tracing
from gateway.protocols.body import RequestBody
from gateway.render import REQUEST_ID, error_response
from gateway.routing import CompiledRoute, RouteTable
from gateway.settings.routes import Route
from gateway.settings.telemetry import TelemetrySettings
from gateway.state import State
from gateway.state.revocation import Revoked, identifiers
from gateway.upstream.forward import STREAM_CUT, Forwarder, is_websocket_upgrade
from gateway.upstream.headers import forwarded_for, header_block_size, sanitize_request_headers
from gateway.upstream.listing import AgentCardResponse, MCPResponse
from gateway.upstream.paths import drop_query_params, normalize_path
from gateway.upstream.rewrite import Rewrite

log = logging.getLogger("agentgate.pipeline")

SERVER_HEADER = {"Server": "agentgate"}
QUARANTINE = "quarantine"  # the segment (and revocation kind) of a quarantined agent


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# The facts ``observe`` built, for the gateway's own endpoints: POST /token asks the PDP,
# whose input and decision log must carry this request's id (DESIGN.md §7).
FACTS_KEY = web.RequestKey("agentgate.facts", RequestFacts)


class Minter(Protocol):
    header: str

    async def mint(
        self, identity: Identity, facts: RequestFacts, route: str, scopes: Sequence[str]
    ) -> tuple[str, str]:
        """The signed token and its ``txn``."""
        ...


class Authenticator(Protocol):
    async def authenticate(
        self, route: CompiledRoute, request: Inbound, facts: RequestFacts
    ) -> Identity: ...


@dataclass(slots=True)
class Trail:
    """What one request leaves behind for the audit record, metrics and behaviour."""

    request_id: str
    started: float
    time_ns: int
    method: str
    facts: RequestFacts | None = None
    route: str = "-"
    identity: Identity | None = None
    decision: Decision | None = None
    agent: str | None = None
    txn: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    forwarded: bool = False
    rpc: RPCCall | None = None
    jsonrpc_route: Route | None = None  # a kind mcp / a2a route: 401s name its metadata
    seq: int | None = None  # continuous_auth: the request's place in its agent's chain
    quarantined: str | None = None  # the policy reason, when this request quarantined its agent
    tool: str | None = None
    status: int = 500
    reason: str = "internal_error"

    def access_fields(self, seconds: float) -> dict[str, object]:
        """The access log's fields (gateway.observability.access_log)."""
        facts, identity, decision = self.facts, self.identity, self.decision
        return {
            "method": self.method,
            "status": self.status,
            "reason": self.reason,
            "duration_ms": f"{seconds * 1000:.1f}",
            "route": None if self.route == "-" else self.route,
            "request_id": self.request_id,
            "client": facts.client_address if facts else None,
            "peer": facts.peer_address if facts else None,
            "path": facts.path if facts else None,
            "host": facts.host if facts else None,
            "subject": identity.principal.subject if identity else None,
            "agent": self.agent,
            "decision_id": decision.decision_id if decision else None,
            "trace_id": self.trace_id,
            "txn": self.txn,
        }

    def audit_input(self, seconds: float) -> AuditInput:
        event: AuditInput = {
            "request_id": self.request_id,
            "method": self.method,
            "time_ns": self.time_ns,
            "status": self.status,
            "reason": self.reason,
            "latency_s": seconds,
            "forwarded": self.forwarded,
        }
        if self.facts is not None:
            event["facts"] = self.facts
            event["path"] = self.facts.path
        if self.route != "-":
            event["route"] = self.route
        if self.identity is not None:
            event["identity"] = self.identity
        if self.decision is not None:
            event["decision"] = self.decision
        if self.agent is not None:
            event["agent"] = self.agent
        if self.txn is not None:
            event["txn"] = self.txn
        if self.trace_id is not None:
            event["trace_id"] = self.trace_id
        if self.span_id is not None:
            event["span_id"] = self.span_id
        if self.rpc is not None:
            method, target = self.rpc.labels
            event["rpc"] = {"protocol": self.rpc.protocol, "method": method, "target": target}
        if self.quarantined is not None and self.agent is not None:
            event["quarantine"] = {"agent": self.agent, "reason": self.quarantined}
        return event


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    max_body_bytes: int
    trusted_hops: int
    scheme: str
    strip_headers: frozenset[str]  # identity and credential headers never forwarded
    strip_query: frozenset[str] = frozenset()  # credential query parameters


class Pipeline:
    def __init__(
        self,
        *,
        routes: RouteTable,
        forwarder: Forwarder,
        metrics: Metrics,
        limits: Limits,
        state: State,
        credentials: CredentialManager,
        authenticator: Authenticator | None = None,
        pdp: PolicyDecisionPoint | None = None,
        minter: Minter | None = None,
        endpoints: Mapping[str, Handler] | None = None,
        tracing: Tracing,
        audit: AuditSink,
        access_log: AccessLog | None = None,
        behavior: BehaviorStore | None = None,
        telemetry: TelemetrySettings,
        trust_domain: str,
        genesis: Genesis | None = None,
        bearer_methods: frozenset[str] = frozenset(),
        card_signer: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
        continuous: ContinuousAuth | None = None,
    ) -> None:
        self.routes = routes
        self.forwarder = forwarder
        self.metrics = metrics
        self.limits = limits
        self.state = state
        self.credentials = credentials
        self.authenticator = authenticator
        self.pdp = pdp
        self.minter = minter
        self.endpoints = dict(endpoints or {})
        self.inflight = 0  # requests running on this pipeline (a reload waits for zero)
        self.tracing = tracing
        self.audit = audit
        self.access_log = access_log if access_log is not None and access_log.enabled else None
        self.behavior = behavior
        self.telemetry = telemetry
        self.trust_domain = trust_domain
        self.genesis = genesis
        self.limiter = LimitsStage(state.limiter, routes)
        self.enricher = BehaviorEnricher(behavior) if behavior is not None else None
        self.jsonrpc = JSONRPCStage(state.sessions)
        self.bearer_methods = bearer_methods  # authn methods of type bearer (audience binding)
        self.card_signer = card_signer
        self.continuous = continuous

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Bookkeeping around :meth:`serve`: request id, span, metrics, audit, behaviour."""
        protocol = request.protocol
        if isinstance(protocol, GatewayRequestHandler):
            protocol.request_started()
        self.inflight += 1
        trail = Trail(str(uuid.uuid4()), time.perf_counter(), time.time_ns(), request.method)
        try:
            try:
                facts = trail.facts = self.observe(request, trail.request_id)
            except GatewayError as exc:
                return self.refuse(exc, trail)
            version = f"{request.version.major}.{request.version.minor}"
            with self.tracing.server_span(
                facts,
                carrier=request.headers,
                trusted=self.trusted(facts),
                protocol_version=version,
            ) as span:
                trail.trace_id = span.trace_id
                trail.span_id = span.span_id if span.recording else None
                try:
                    response = await self.serve(request, facts, trail, span)
                    # A body cut after its head was sent is not "ok", whatever the status said.
                    trail.status, trail.reason = response.status, response.get(STREAM_CUT, "ok")
                except GatewayError as exc:
                    response = self.refuse(exc, trail)
                span.finish(trail.status, reason=trail.reason)
                return response
        finally:
            self.inflight -= 1
            if isinstance(protocol, GatewayRequestHandler):
                protocol.request_finished()
            await self.account(trail)

    async def serve(
        self, request: web.BaseRequest, facts: RequestFacts, trail: Trail, span: ServerSpan
    ) -> web.StreamResponse:
        """THE ORDER. Each stage returns what the next needs or raises a GatewayError."""
        endpoint = self.endpoints.get(facts.path)
        if endpoint is not None:  # the gateway's own: JWKS, the Token Service
            trail.route = facts.path
            span.set_route("gateway", facts.path)
            request[FACTS_KEY] = facts
            response = await endpoint(request)
            response.headers.update({REQUEST_ID: facts.request_id, **SERVER_HEADER})
            return response
        route = self.routes.match(facts.method, facts.host, facts.path)
        trail.route = route.name
        span.set_route(route.name, route.settings.match.path_prefix)
        if route.settings.jsonrpc is not None:
            trail.jsonrpc_route = route.settings
        if not route.settings.websocket and is_websocket_upgrade(request):
            # SECURITY: an upgrade reaches only routes built for it (Envoy answers 403 too).
            raise Forbidden(
                f"route {route.name}: websocket upgrade not allowed",
                reason="upgrade_not_allowed",
                public="websocket upgrade not allowed on this route",
            )
        inbound = self.inbound(request, route)
        await self.limiter.before_authn(route, facts)
        public_card = self.public_card(route, facts)
        try:
            identity = trail.identity = await self.authenticate(route, inbound, facts)
        except Unauthorized as exc:
            # A public A2A agent card is served to a caller who presents no credential,
            # with the skills an anonymous caller may use; a bad credential is still a 401.
            if not public_card or exc.reason != "authn_missing":
                raise
            identity = None
        rpc = trail.rpc = await self.read_jsonrpc(route, inbound, facts, identity, span)
        await self.screen(route, facts, identity, rpc)
        if route.settings.kind == "agent_heartbeat":
            return await self.take_heartbeat(inbound, facts, identity, trail)
        enrichment = await self.enrich(facts, identity, trail)
        enrichment = await self.observe_agent(route, facts, enrichment, rpc, trail)
        if route.settings.kind == "agent_credentials":
            return await self.issue_credential(route, inbound, facts, identity, enrichment, trail)
        if rpc is None:
            decision = await self.decide(route, inbound, facts, identity, enrichment, trail)
        elif public_card and identity is None:
            decision = None  # the gateway's own document; each skill is decided below
        else:
            decision = await self.decide_rpc(
                route, inbound, facts, identity, enrichment, trail, rpc
            )
        await self.limiter.obligations(route, facts, identity, obligation_limit(decision))
        txn_token = await self.mint(route, facts, identity, decision, trail)
        rewrite = self.rewrite(route, inbound, facts, identity, enrichment, rpc)
        response = await self.forward(
            request, inbound, facts, route, identity, decision, txn_token, rewrite, trail.seq
        )
        trail.forwarded = True
        ended = request.method == "DELETE" and 200 <= response.status < 300
        if ended and rpc is not None and rpc.session is not None:  # the client ended it
            await self.jsonrpc.release(route.settings, rpc.session, identity)
        return response

    def refuse(self, exc: GatewayError, trail: Trail) -> web.Response:
        trail.status, trail.reason = exc.status, exc.reason
        if exc.status == 401 and trail.jsonrpc_route is not None and trail.facts is not None:
            url = metadata_url(resource_for(trail.jsonrpc_route, trail.facts))
            exc.headers = self.resource_challenge(url, exc.headers)
        if exc.detail:
            log.info("request %s refused: %s (%s)", trail.request_id, exc.reason, exc.detail)
        if exc.status == 429:
            self.metrics.rate_limited(trail.route)
        response = error_response(exc, trail.request_id)
        response.headers.update(SERVER_HEADER)
        if trail.seq is not None:
            response.headers[ACTION_HEADER] = f"seq={trail.seq}"
        return response

    def trusted(self, facts: RequestFacts) -> bool:
        """May this caller's traceparent start our trace? Internal workloads always may."""
        if self.telemetry.trust_inbound_trace:
            return True
        peer = facts.peer
        return peer is not None and peer.trust_domain == self.trust_domain

    async def account(self, trail: Trail) -> None:
        seconds = time.perf_counter() - trail.started
        self.metrics.observe_request(trail.route, trail.status, trail.reason, seconds)
        decision = trail.decision
        if self.behavior is not None and trail.agent is not None:
            try:
                await self.behavior.record(
                    trail.agent,
                    route=trail.route,
                    status=trail.status,
                    denied=decision is not None and not decision.allow,
                )
            except GatewayError as exc:  # a shared store that is down: the request is done
                log.warning("behaviour not recorded: %s", exc.reason)
        if self.continuous is not None and trail.seq is not None and trail.agent is not None:
            try:
                await self.continuous.finish(
                    trail.agent,
                    trail.seq,
                    request_id=trail.request_id,
                    method=trail.method,
                    status=trail.status,
                    route=trail.route,
                    tool=trail.tool,
                    denied=decision is not None and not decision.allow,
                )
            except GatewayError as exc:  # the shared log is down: the next heartbeat mismatches
                log.warning("action not recorded: %s", exc.reason)
        if self.audit.enabled:  # AuditRecord.build formats a timestamp: not for nothing
            self.audit.emit(AuditRecord.build(trail.audit_input(seconds)))
        if self.access_log is not None:
            self.access_log.write(trail.access_fields(seconds))

    # ------------------------------------------------------------------ stages

    def observe(self, request: web.BaseRequest, request_id: str) -> RequestFacts:
        if header_block_size(request.raw_headers) > self.limits.max_header_bytes:
            raise HeadersTooLarge()
        # SECURITY: RFC 9112 §6.1: only "chunked" is decoded; another transfer coding would
        # reach the upstream as if it were the body itself.
        codings = [
            c.strip().lower()
            for v in request.headers.getall("Transfer-Encoding", ())
            for c in v.split(",")
        ]
        if codings and codings != ["chunked"]:
            raise BadRequest(
                "unsupported transfer coding", public="unsupported transfer coding", status=501
            )
        # SECURITY: a body declared too large is refused on the header, as nginx and Envoy
        # do: before routing, authentication and the PDP, which it would otherwise cost for a
        # request refused anyway (issue 12). A chunked body declares nothing; the forwarder
        # cuts it at the same limit while streaming.
        declared = request.content_length
        if declared is not None and declared > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"Content-Length {declared} > {self.limits.max_body_bytes}")
        raw_path, _, raw_query = request.raw_path.partition("?")
        path = normalize_path(raw_path)
        # SECURITY: a credential sent in the query reaches neither the policy nor the upstream.
        raw_query = drop_query_params(raw_query, self.limits.strip_query)
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

    def inbound(self, request: web.BaseRequest, route: CompiledRoute) -> Inbound:
        """The stages' view of the request; the body is read only if a stage asks for it."""
        limit = self.limits.max_body_bytes
        section = route.settings.jsonrpc
        if section is not None:  # a JSON-RPC body is read whole: its own, smaller bound
            limit = min(limit, section.max_body_bytes)
        body = RequestBody(request, limit)
        return Inbound(request.method, request.raw_path, request.headers, request.query, body)

    async def authenticate(
        self, route: CompiledRoute, request: Inbound, facts: RequestFacts
    ) -> Identity | None:
        with self.tracing.stage_span("authenticate", route=route.name) as stage:
            if route.settings.authn is None:
                return None  # a public route: no credential is asked for or looked at
            if self.authenticator is None:
                # SECURITY: a route that demands authentication never forwards unauthenticated.
                raise Unauthorized("no authenticator configured", reason="authn_missing")
            identity = await self.authenticator.authenticate(route, request, facts)
            stage.annotate(subject=identity.principal.subject)
        return identity

    async def screen(
        self,
        route: CompiledRoute,
        facts: RequestFacts,
        identity: Identity | None,
        rpc: RPCCall | None = None,
    ) -> None:
        """Revocation (every route, so a revoked certificate is refused even on public
        routes), an agent credential's restrictions, the MCP session's owner, then the
        per-subject/per-agent rate limits. None of it reaches the PDP."""
        kind = await self.state.revocations.check(**identifiers(facts, identity))
        if kind is not None:
            raise Revoked(kind)
        tools = rpc.tools if rpc is not None and rpc.protocol == "mcp" else None
        caveats.check(identity, route.name, route.settings.segment, tools)
        if rpc is not None:
            await self.jsonrpc.check_session(route.settings, rpc, identity)
        await self.limiter.after_authn(route, facts, identity)

    async def read_jsonrpc(
        self,
        route: CompiledRoute,
        inbound: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        span: ServerSpan,
    ) -> RPCCall | None:
        """``kind: mcp`` / ``a2a``: the token names this resource, then the body's facts."""
        if route.settings.jsonrpc is None:
            return None
        check_audience(route.settings, facts, identity, self.bearer_methods)
        with self.tracing.stage_span("jsonrpc", route=route.name):
            rpc = await self.jsonrpc.read(route.settings, inbound)
        method, target = rpc.labels
        span.set_rpc(rpc.protocol, method, target)
        return rpc

    async def observe_agent(
        self,
        route: CompiledRoute,
        facts: RequestFacts,
        enrichment: Enrichment,
        rpc: RPCCall | None,
        trail: Trail,
    ) -> Enrichment:
        """``continuous_auth``: this request's place in its agent's chain, and the agent's
        heartbeat status and drift in ``input.behavior`` (gateway.agents.continuous)."""
        agent = enrichment.agent
        if self.continuous is None or agent is None:
            return enrichment
        tool = rpc.tools[0] if rpc is not None and rpc.tools else None
        started = await self.continuous.begin(agent, route.name, tool, facts.method)
        trail.seq = started.seq
        trail.tool = tool
        behavior = {**(enrichment.behavior or {}), **started.behavior}
        drift = started.behavior.get("drift")
        if isinstance(drift, Mapping):
            self.metrics.drift_observed(route.name, float(drift.get("score", 0.0)))
        return replace(enrichment, behavior=behavior)

    async def take_heartbeat(
        self,
        request: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        trail: Trail,
    ) -> web.StreamResponse:
        """``POST /agents/heartbeat`` (``kind: agent_heartbeat``): the agent's record of its
        recent calls against the gateway's chain; the verdict feeds ``input.behavior``."""
        agent = agent_key(identity, facts.peer)
        if self.continuous is None or agent is None:
            # SECURITY: settings requires continuous_auth and authn for this route.
            raise Unauthorized("no agent identity for a heartbeat", reason="authn_missing")
        trail.agent = agent
        if request.method != "POST":
            raise MethodNotAllowed("heartbeat is POST", headers={"Allow": "POST"})
        body = await request.body.read()
        try:
            beat, result = await self.continuous.heartbeat(agent, body)
        except HeartbeatInvalid as exc:
            raise BadRequest(f"heartbeat: {exc}", public=f"invalid heartbeat: {exc}") from None
        except PermissionError:
            raise Forbidden(
                "heartbeat names another agent",
                reason="heartbeat_agent_mismatch",
                public="heartbeat for another agent",
            ) from None
        self.metrics.heartbeat(result.verdict)
        self.tracing.event(
            "agentgate.heartbeat",
            verdict=result.verdict,
            gateway_count=result.gateway_count,
            agent_count=result.agent_count,
        )
        if result.verdict != "healthy":
            log.warning(
                "heartbeat %s for agent %s: gateway saw %d calls in (%d, %d], the agent %d",
                result.verdict, agent, result.gateway_count, beat.first, beat.last,
                result.agent_count,
            )  # fmt: skip
        answer = {**result.as_json(), "window": {"from": beat.first, "to": beat.last}}
        response = web.json_response(answer, headers={"Cache-Control": "no-store"})
        response.headers.update({REQUEST_ID: facts.request_id, **SERVER_HEADER})
        return response

    async def quarantine(self, trail: Trail, decision: Decision) -> None:
        """A decision's ``quarantine`` obligation: the agent is moved to the quarantine
        segment on every node (a revocation of kind ``quarantine``) until an operator
        lifts it (``DELETE /admin/revocations/quarantine/<agent>``) or it expires."""
        agent = trail.agent
        if self.continuous is None or agent is None:
            return
        if await self.state.revocations.quarantined(agent):
            return  # already there: the first decision's reason and expiry stand
        await self.continuous.quarantine(agent, why=decision.reason or "policy decision")
        trail.quarantined = decision.reason or "policy decision"
        self.metrics.quarantined(trail.route)
        self.tracing.event("agentgate.quarantine", agent=agent, reason=decision.reason)
        log.warning("agent %s quarantined by decision %s (%s)",
                    agent, decision.decision_id, decision.reason)  # fmt: skip

    async def issue_credential(
        self,
        route: CompiledRoute,
        request: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        enrichment: Enrichment,
        trail: Trail,
    ) -> web.StreamResponse:
        """Genesis (``kind: agent_credentials``): the PDP decides ``credential.issue``."""
        if self.genesis is None or identity is None:
            # SECURITY: settings requires the section, a PDP and authn; never mint without.
            raise Unauthorized("agent credentials are not configured", reason="authn_missing")
        asked = await self.genesis.read(request, facts, identity)
        extra = {"action": "credential.issue", "credential": asked.as_input()}
        decision = await self.decide(route, request, facts, identity, enrichment, trail, extra)
        if decision is None:  # no PDP: settings refuses this route without one
            raise Forbidden("credential.issue needs a PDP", reason="policy_undefined")
        response = self.genesis.issue(asked, identity, decision.scopes)
        response.headers.update({REQUEST_ID: facts.request_id, **SERVER_HEADER})
        return response

    async def enrich(
        self, facts: RequestFacts, identity: Identity | None, trail: Trail
    ) -> Enrichment:
        """Policy input beyond the request (behaviour); only when a PDP will read it."""
        if self.pdp is None:
            return NO_ENRICHMENT
        if self.enricher is not None:
            enrichment = await self.enricher.enrich(facts, identity)
        else:
            enrichment = Enrichment(agent=agent_key(identity, facts.peer))
        trail.agent = enrichment.agent
        if enrichment.agent is not None and await self.state.revocations.quarantined(
            enrichment.agent
        ):
            # SECURITY: microsegmentation driven by telemetry: a quarantined agent speaks
            # from the quarantine segment, which agentgate.segments isolates.
            enrichment = replace(enrichment, segment=QUARANTINE)
        return enrichment

    @staticmethod
    def policy_input(
        route: CompiledRoute,
        request: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        enrichment: Enrichment,
    ) -> tuple[dict[str, Any], tuple[str, ...] | None]:
        """The DESIGN.md §7 input of this request, and the scopes a decision may narrow."""
        document = build_input(
            facts,
            route,
            identity,
            policy_headers(request.headers, route.settings.policy_headers),
            query_params(facts.raw_query),
            behavior=enrichment.behavior,
            source_segment=enrichment.segment,
        )
        scopes = identity.principal.scopes if identity is not None and identity.scoped else None
        return document, scopes

    async def decide(
        self,
        route: CompiledRoute,
        request: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        enrichment: Enrichment,
        trail: Trail,
        extra: Mapping[str, object] | None = None,
    ) -> Decision | None:
        if self.pdp is None:
            # No PDP configured: the operator runs the gateway as an authenticating proxy.
            return None
        document, scopes = self.policy_input(route, request, facts, identity, enrichment)
        if extra:
            document.update(extra)  # a gateway action (credential.issue) and its facts
        engine = self.pdp.engine.name
        with self.tracing.stage_span("decide", route=route.name) as stage:
            started = time.perf_counter()
            try:
                decision = trail.decision = await self.pdp.decide(document, scopes)
            except GatewayError as exc:
                self.metrics.observe_pdp(engine, time.perf_counter() - started, "error")
                self.metrics.pdp_error(engine, exc.reason)
                raise
            outcome = "allow" if decision.allow else "deny"
            self.metrics.observe_pdp(engine, time.perf_counter() - started, outcome)
            stage.annotate(decision_id=decision.decision_id, decision=decision.allow)
        if not decision.allow:
            if decision.obligations.get("quarantine") is True:
                await self.quarantine(trail, decision)
            raise denial(decision)
        return decision

    async def decide_rpc(
        self,
        route: CompiledRoute,
        request: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        enrichment: Enrichment,
        trail: Trail,
        rpc: RPCCall,
    ) -> Decision | None:
        """One decision per JSON-RPC message (a batch is all or nothing: it is forwarded
        byte for byte). A denied request is answered with a JSON-RPC error carrying its
        decision id; ``insufficient_scope`` and a denied notification stay HTTP 403."""
        decisions: list[Decision] = []
        denied: dict[int, tuple[str, str]] = {}
        for index, fact in enumerate(rpc.facts):
            extra: dict[str, object] = {rpc.protocol: fact}
            target = fact.get("tool") or fact.get("skill")
            try:
                decision = await self.decide(
                    route, request, facts, identity, enrichment, trail, extra
                )
            except GatewayError as exc:
                if exc.decision_id is None:  # the PDP failed: fail closed, HTTP 503
                    raise
                self.metrics.jsonrpc_message(
                    route.name, rpc.protocol, fact.get("method"), target, exc.reason
                )
                if exc.reason == "insufficient_scope" or (rpc.ids[index] is None and not rpc.batch):
                    raise
                denied[index] = (exc.decision_id, exc.reason)
                continue
            self.metrics.jsonrpc_message(
                route.name, rpc.protocol, fact.get("method"), target, "allow"
            )
            if decision is not None:
                decisions.append(decision)
        if denied:
            raise rpc.refusal(denied)
        merged = _merge(decisions)
        if merged is not None:
            trail.decision = merged
        return merged

    def rewrite(
        self,
        route: CompiledRoute,
        inbound: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        enrichment: Enrichment,
        rpc: RPCCall | None,
    ) -> Rewrite | None:
        """The response rewrite of a JSON-RPC route: listings filtered, sessions bound, the
        agent card filtered and signed (gateway.upstream.listing)."""
        settings = route.settings
        section = settings.jsonrpc
        if rpc is None or section is None:
            return None
        filtering = section.filter_lists and self.pdp is not None
        allowed = self._visible(route, inbound, facts, identity, enrichment, rpc)
        if rpc.protocol == "a2a":
            card = settings.a2a.agent_card if settings.a2a is not None else None
            prefix = settings.match.path_prefix.rstrip("/")
            if card is None or inbound.method != "GET" or facts.path != prefix + card.path:
                return None
            return AgentCardResponse(
                allowed if filtering else _everything,
                url=resource_for(settings, facts),
                sign=self.card_signer if card.sign else None,
                max_bytes=section.max_body_bytes,
            )
        listings = rpc.listings if filtering else {}
        on_session: Callable[[str], Awaitable[None]] | None = None
        if settings.mcp is not None and settings.mcp.session_binding:

            async def on_session(session: str) -> None:
                if session != rpc.session and not await self.jsonrpc.bind(
                    settings, session, identity
                ):
                    # SECURITY: never hand a client a session another subject owns.
                    raise BadGateway("upstream issued a session bound to another subject")

        if not listings and on_session is None:
            return None
        return MCPResponse(
            listings, allowed, on_session=on_session, max_bytes=section.max_body_bytes
        )

    def _visible(
        self,
        route: CompiledRoute,
        request: Inbound,
        facts: RequestFacts,
        identity: Identity | None,
        enrichment: Enrichment,
        rpc: RPCCall,
    ) -> Callable[[Sequence[str]], Awaitable[list[str]]]:
        """Which of the listed tools (skills) this caller may call: the PDP, asked per name
        with that call's facts (``listing: true``), and an agent credential's tools."""

        async def allowed(names: Sequence[str]) -> list[str]:
            pdp, section = self.pdp, route.settings.jsonrpc
            if pdp is None or section is None:
                return list(names)
            document, scopes = self.policy_input(route, request, facts, identity, enrichment)
            kept = []
            # SECURITY: past the bound, names are dropped, never shown unchecked.
            for name in names[: section.max_list_entries]:
                if rpc.protocol == "mcp" and not caveats.tool_allowed(identity, name):
                    continue
                document[rpc.protocol] = listing_fact(rpc, name)
                decision = await pdp.decide(document, scopes)
                if decision.allow:
                    kept.append(name)
            return kept

        return allowed

    @staticmethod
    def public_card(route: CompiledRoute, facts: RequestFacts) -> bool:
        """Is this a GET of an A2A route's public agent card (``a2a.agent_card.public``)?"""
        section = route.settings.a2a
        card = section.agent_card if section is not None else None
        if card is None or not card.public or facts.method not in ("GET", "HEAD"):
            return False
        return facts.path == route.settings.match.path_prefix.rstrip("/") + card.path

    @staticmethod
    def resource_challenge(url: str, headers: Mapping[str, str]) -> Mapping[str, str]:
        """RFC 9728 §5.1: a 401 of a JSON-RPC route names its protected-resource metadata."""
        challenge = headers.get("WWW-Authenticate")
        if challenge is None:
            value = f'Bearer resource_metadata="{url}"'
        elif challenge.startswith("Bearer"):
            sep = ", " if challenge != "Bearer" else " "
            value = f'{challenge}{sep}resource_metadata="{url}"'
        else:  # another scheme's challenge (AgentCredential, Basic): add a Bearer one too
            value = f'{challenge}, Bearer resource_metadata="{url}"'
        return {**headers, "WWW-Authenticate": value}

    async def mint(
        self,
        route: CompiledRoute,
        facts: RequestFacts,
        identity: Identity | None,
        decision: Decision | None,
        trail: Trail,
    ) -> str | None:
        """The downscoped Txn-Token of this transaction (none for anonymous requests)."""
        if self.minter is None or identity is None:
            return None
        scopes = identity.principal.scopes
        if decision is not None and decision.scopes is not None:
            scopes = decision.scopes  # already intersected with the subject's by the PDP
        with self.tracing.stage_span("mint", route=route.name) as stage:
            token, trail.txn = await self.minter.mint(identity, facts, route.name, scopes)
            stage.annotate(txn=trail.txn)
        self.metrics.txn_token_minted(route.name)
        return token

    async def forward(
        self,
        request: web.BaseRequest,
        inbound: Inbound,
        facts: RequestFacts,
        route: CompiledRoute,
        identity: Identity | None,
        decision: Decision | None,
        txn_token: str | None,
        rewrite: Rewrite | None = None,
        seq: int | None = None,
    ) -> web.StreamResponse:
        headers = self.upstream_headers(request, facts)
        answer_headers = {REQUEST_ID: facts.request_id, **SERVER_HEADER}
        if seq is not None:
            answer_headers[ACTION_HEADER] = f"seq={seq}"
        if decision is not None:
            for name, value in decision.headers.items():
                # A decision may add headers, never replace what the gateway set.
                if name not in headers:
                    headers[name] = value
        if txn_token is not None and route.settings.send_txn_token and self.minter is not None:
            headers[self.minter.header] = txn_token
        out = Outbound(request.method, route.upstream_url(facts.path, facts.raw_query), headers)
        converter = self.credentials.select(route.name, decision.credential if decision else None)
        exchange = identity.exchange_token if identity is not None else None
        token = exchange.reveal() if exchange is not None else None
        context = ConvertContext(facts, identity, txn_token, token)
        with self.tracing.stage_span("convert", route=route.name):
            await converter.apply(out, context)
        with self.tracing.client_span(
            request.method, out.url, route=route.name, headers=out.headers
        ) as client:
            try:
                if route.settings.websocket and is_websocket_upgrade(request):
                    response = await self.forwarder.websocket(
                        request,
                        out.url,
                        out.headers,
                        route=route.name,
                        ssl_context=out.ssl_context,
                        max_message_bytes=route.settings.websocket_max_message_bytes,
                        response_headers=answer_headers,
                    )
                    client.set_status(response.status)
                    return self._cut_counted(route, response)
                response = await self.forwarder.forward(
                    request,
                    out.url,
                    out.headers,
                    route=route.name,
                    ssl_context=out.ssl_context,
                    response_headers=answer_headers,
                    scrub_query=out.scrub_query,
                    buffered=inbound.body.buffered,
                    rewrite=rewrite,
                )
            except GatewayError as exc:
                if exc.status in (502, 504):
                    self.metrics.upstream_error(route.name, exc.reason)
                raise
            client.set_status(response.status)
        return self._cut_counted(route, response)

    def _cut_counted(
        self, route: CompiledRoute, response: web.StreamResponse
    ) -> web.StreamResponse:
        cut = response.get(STREAM_CUT)
        if cut is not None and cut != "client_gone":  # the upstream's or the gateway's clock
            self.metrics.upstream_error(route.name, cut)
        return response

    def upstream_headers(self, request: web.BaseRequest, facts: RequestFacts) -> CIMultiDict[str]:
        headers = sanitize_request_headers(request.headers, extra_strip=self.limits.strip_headers)
        # The forwarder answers "Expect: 100-continue" itself (RFC 9110 §10.1.1).
        headers.popall("Expect", None)
        headers["X-Forwarded-For"] = facts.forwarded_for
        headers["X-Forwarded-Proto"] = facts.forwarded_proto
        headers["X-Forwarded-Host"] = facts.forwarded_host
        headers[REQUEST_ID] = facts.request_id
        return headers


def denial(decision: Decision) -> GatewayError:
    """The error for a deny decision: 403 (or the policy's 4xx/5xx), with its decision_id."""
    if decision.reason.endswith("insufficient_scope"):
        params = 'Bearer realm="agentgate", error="insufficient_scope"'
        required = decision.obligations.get("required_scopes")
        if isinstance(required, list) and all(_scope_token(x) for x in required) and required:
            params += f', scope="{" ".join(required)}"'
        return Forbidden(
            "insufficient scope",
            reason="insufficient_scope",
            public="insufficient scope",
            headers={"WWW-Authenticate": params},
            decision_id=decision.decision_id,
        )
    return Forbidden(
        f"policy denied: {decision.reason or 'no reason'}",
        reason=_deny_reason(decision.reason),
        status=decision.status or 403,
        decision_id=decision.decision_id,
    )


def _merge(decisions: Sequence[Decision]) -> Decision | None:
    """The decisions of a batch's messages as one: scopes narrowed to what all allow."""
    if len(decisions) <= 1:
        return decisions[0] if decisions else None
    first = decisions[0]
    scopes = first.scopes
    for decision in decisions[1:]:
        if decision.scopes is not None:
            scopes = (
                decision.scopes
                if scopes is None
                else tuple(s for s in scopes if s in decision.scopes)
            )
    return replace(first, scopes=scopes)


async def _everything(names: Sequence[str]) -> list[str]:
    return list(names)


def _scope_token(value: object) -> bool:
    # RFC 6749 §3.3 scope-token: printable ASCII except space, quote and backslash.
    return (
        isinstance(value, str)
        and bool(value)
        and all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in value)
    )


def _deny_reason(reason: str) -> str:
    # Reason codes label metrics: keep the policy's own text out of them (bounded set).
    return reason if reason in ("policy_undefined", "policy_malformed") else "policy_denied"


def _single(request: web.BaseRequest, name: str, allowed: tuple[str, ...] | None) -> str | None:
    values = request.headers.getall(name, ())
    if len(values) != 1:
        return None
    value = values[0].strip()
    if allowed is not None and value.lower() not in allowed:
        return None
    return value or None
