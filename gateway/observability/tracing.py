"""Distributed tracing: W3C Trace Context in and out, OpenTelemetry spans (SPECS.md §13).

Contract
--------
``Tracing.from_settings(telemetry)`` is built once per gateway. With
``telemetry.otlp_endpoint`` set it owns an SDK ``TracerProvider`` (resource
``service.name``, sampler ``ParentBased(TraceIdRatioBased(sample_ratio))``) that
exports over OTLP/HTTP to ``{otlp_endpoint}/v1/traces`` through a
``BatchSpanProcessor`` (a worker thread: the event loop never waits for the
collector). Without an endpoint it records nothing and uses the OpenTelemetry
API's no-op tracer; it still *propagates*: every upstream receives a
``traceparent`` (DESIGN.md §5), continuing a trusted caller's trace unchanged or
starting a fresh, unsampled one.

Per request, inside the pipeline's task::

    with tracing.server_span(facts, carrier=request.headers, trusted=...) as server:
        server.set_route(route.name, route.settings.match.path_prefix)
        with tracing.stage_span("authenticate", route=route.name) as stage:
            identity = ...
            stage.annotate(subject=..., agent=...)
        with tracing.client_span(method, url, route=route.name, headers=upstream_headers) as up:
            response = ...
            up.set_status(response.status)
        server.finish(status, reason=reason)

Rules this module enforces:

* **Trust.** A caller's ``traceparent``/``tracestate`` become our parent only when
  ``trusted`` (``telemetry.trust_inbound_trace``, or an internal caller). An
  untrusted caller's valid context is kept as a span *link* only, so it can be
  correlated but can neither choose our trace id nor force (or suppress) our
  sampling. (SPECS.md §13.3 sketches "keep their trace-id, own sampling decision";
  a caller-chosen trace id would still let it steer ``TraceIdRatioBased``, so we
  start a new trace instead.)
  A malformed ``traceparent`` (bad version, all-zero ids, upper-case hex, wrong
  length, several header lines) is ignored together with ``tracestate`` (W3C
  Trace Context §3.2, §3.3).
* **Naming (stable OTel HTTP semconv).** Server span ``{method} {http.route}`` where
  ``http.route`` is the matched route's ``path_prefix`` (low cardinality), ``{method}``
  alone before/without a route, ``HTTP`` for an unknown method (``_OTHER``). Client
  span ``{method}``. Stage spans are named after the stage verb.
* **Status.** Server span: 5xx is Error (``error.type`` = the status code), 4xx is
  left Unset. Client span: 4xx and 5xx are Error. A transport failure is Error with
  ``error.type`` = the gateway reason code (``upstream_timeout``...).
* **Privacy.** Attributes are the fixed set below. Never a token, a secret, a query
  value or a header dump: ``url.full`` on client spans carries the query's *names*
  only (values ``REDACTED``) and never userinfo. Exceptions are not recorded as span
  events (their text may quote credentials); only their reason code or class name.

Cost (bench/bench_tracing.py): with no endpoint every helper is a no-op apart from
propagation (about 11 us CPU a request). An unsampled request pays for its server span
only: stage and client spans are skipped when the server span is not recording, since
``ParentBased`` would drop them anyway. A sampled request pays the SDK per span (about
20 us each) plus the OTLP encoder on the export thread (25-70 us a span); construct with
``stage_spans=False`` to keep only the server and client spans.

Attributes (besides the semconv ones): ``agentgate.route``, ``enduser.id`` (subject),
``agentgate.agent`` (SPIFFE ID), ``agentgate.decision_id``, ``agentgate.txn``,
``agentgate.decision`` (``allow``/``deny``), ``agentgate.reason`` (stable reason code),
``agentgate.target`` (client spans: ``upstream``, ``pdp``...).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.context import RequestFacts
from gateway.errors import GatewayError
from gateway.settings.telemetry import TelemetrySettings

if TYPE_CHECKING:
    import requests

__all__ = [
    "STAGES",
    "ClientSpan",
    "ServerSpan",
    "StageSpan",
    "StageTimer",
    "Tracing",
    "redact_url",
]

INSTRUMENTATION = "agentgate"
STAGES = ("authenticate", "enrich", "decide", "mint", "convert")

# Stable OTel semconv names (HTTP spans, v1.23+).
HTTP_METHOD = "http.request.method"
HTTP_METHOD_ORIGINAL = "http.request.method_original"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
URL_FULL = "url.full"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
PEER_ADDRESS = "network.peer.address"
PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"
ENDUSER_ID = "enduser.id"
# Ours (SPECS.md §13.5 sketches them as pep.*; the project name is agentgate).
ROUTE = "agentgate.route"
AGENT = "agentgate.agent"
DECISION_ID = "agentgate.decision_id"
TXN = "agentgate.txn"
DECISION = "agentgate.decision"
REASON = "agentgate.reason"
TARGET = "agentgate.target"
REQUEST_ID = "agentgate.request_id"

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
# W3C Trace Context Level 2 flag 0x02: the trace id is random (as the SDK's are).
_RANDOM_UNSAMPLED = trace.TraceFlags(trace.TraceFlags.RANDOM_TRACE_ID)
_TRACEPARENT = "traceparent"
_TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
_SERVER: contextvars.ContextVar[ServerSpan | None] = contextvars.ContextVar(
    "agentgate_server_span", default=None
)


class StageTimer(Protocol):
    """Called with (stage, seconds) when a stage span ends, e.g. ``Metrics.observe_stage``."""

    def __call__(self, stage: str, seconds: float) -> None: ...


# --------------------------------------------------------------------------- carriers


class _HeaderGetter(Getter[Any]):
    """Reads W3C fields from aiohttp's multidicts (or any mapping).

    Several ``traceparent`` lines make the field invalid (W3C §3.2: ambiguous parent);
    several ``tracestate`` lines are concatenated in order (W3C §3.3.1.1).
    """

    def get(self, carrier: Any, key: str) -> list[str] | None:
        getall = getattr(carrier, "getall", None)
        values: list[str]
        if getall is not None:
            values = list(getall(key, ()))
        else:
            value = carrier.get(key)
            values = [] if value is None else [value]
        if not values:
            return None
        if key == _TRACEPARENT and len(values) != 1:
            return None
        return values

    def keys(self, carrier: Any) -> list[str]:
        return list(carrier.keys())


_GETTER = _HeaderGetter()


def _drop(headers: MutableMapping[str, str], name: str) -> None:
    popall = getattr(headers, "popall", None)
    if popall is not None:
        popall(name, None)
        return
    for key in [k for k in headers if k.lower() == name]:
        del headers[key]


def redact_url(url: str) -> str:
    """``url.full`` without userinfo and with every query value replaced (semconv §url)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username is not None or parts.password is not None:
        netloc = "REDACTED:REDACTED@" + netloc
    query = "&".join(
        f"{name}=REDACTED" for name, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _method(raw: str) -> tuple[str, str | None]:
    return (raw, None) if raw in _KNOWN_METHODS else ("_OTHER", raw)


def _host_port(host: str, scheme: str) -> tuple[str, int]:
    default = 443 if scheme == "https" else 80
    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            name, port = host, ""
    return name.lower(), int(port) if port.isdigit() else default


def _hex_ids(ctx: SpanContext) -> tuple[str, str]:
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


# --------------------------------------------------------------------------- span handles


class ServerSpan:
    """The SERVER span of one inbound request."""

    __slots__ = ("_method", "_span", "recording", "span_id", "trace_id")

    def __init__(self, span: trace.Span, method: str) -> None:
        self._span = span
        self._method = method
        ctx = span.get_span_context()
        self.trace_id, self.span_id = _hex_ids(ctx)
        self.recording = span.is_recording()

    def set_route(self, name: str, http_route: str) -> None:
        """Once the route matched: span name ``{method} {http_route}``."""
        if self.recording:
            self._span.update_name(f"{self._method} {http_route}")
            self._span.set_attribute(HTTP_ROUTE, http_route)
            self._span.set_attribute(ROUTE, name)

    def annotate(
        self,
        *,
        subject: str | None = None,
        agent: str | None = None,
        decision_id: str | None = None,
        txn: str | None = None,
        decision: bool | None = None,
        reason: str | None = None,
    ) -> None:
        if self.recording:
            _annotate(self._span, subject, agent, decision_id, txn, decision, reason)

    def event(self, name: str, attributes: Mapping[str, str | int | float | bool]) -> None:
        if self.recording:
            self._span.add_event(name, dict(attributes))

    def set_rpc(self, protocol: str, method: str, target: str | None) -> None:
        """A JSON-RPC route's method and tool (MCP) or skill (A2A), as OTel names them."""
        if not self.recording:
            return
        self._span.set_attribute("rpc.system", "jsonrpc")
        self._span.set_attribute("rpc.method", method)
        if protocol == "mcp":
            self._span.set_attribute("mcp.method.name", method)
            if target is not None:
                self._span.set_attribute("gen_ai.tool.name", target)
        elif target is not None:
            self._span.set_attribute("a2a.skill", target)

    def finish(self, status: int, *, reason: str | None = None) -> None:
        """Record the response status sent to the caller (call once, before the span ends)."""
        if not self.recording:
            return
        self._span.set_attribute(HTTP_STATUS, status)
        if reason is not None:
            self._span.set_attribute(REASON, reason)
        if status >= 500:
            self._span.set_attribute(ERROR_TYPE, str(status))
            self._span.set_status(Status(StatusCode.ERROR))


class StageSpan:
    """An INTERNAL span around one pipeline stage."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def annotate(
        self,
        *,
        subject: str | None = None,
        agent: str | None = None,
        decision_id: str | None = None,
        txn: str | None = None,
        decision: bool | None = None,
        reason: str | None = None,
    ) -> None:
        """Set verified facts on this stage span *and* the request's server span."""
        if self._span.is_recording():
            _annotate(self._span, subject, agent, decision_id, txn, decision, reason)
        server = _SERVER.get()
        if server is not None:
            server.annotate(
                subject=subject,
                agent=agent,
                decision_id=decision_id,
                txn=txn,
                decision=decision,
                reason=reason,
            )


class ClientSpan:
    """A CLIENT span around one outbound HTTP call."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_status(self, status: int) -> None:
        if not self._span.is_recording():
            return
        self._span.set_attribute(HTTP_STATUS, status)
        if status >= 400:  # client spans: 4xx is an error too (semconv)
            self._span.set_attribute(ERROR_TYPE, str(status))
            self._span.set_status(Status(StatusCode.ERROR))


def _annotate(
    span: trace.Span,
    subject: str | None,
    agent: str | None,
    decision_id: str | None,
    txn: str | None,
    decision: bool | None,
    reason: str | None,
) -> None:
    if subject is not None:
        span.set_attribute(ENDUSER_ID, subject)
    if agent is not None:
        span.set_attribute(AGENT, agent)
    if decision_id is not None:
        span.set_attribute(DECISION_ID, decision_id)
    if txn is not None:
        span.set_attribute(TXN, txn)
    if decision is not None:
        span.set_attribute(DECISION, "allow" if decision else "deny")
    if reason is not None:
        span.set_attribute(REASON, reason)


def _fail(span: trace.Span, exc: BaseException, *, client: bool) -> None:
    """Mark ``span`` for an exception leaving it; 4xx gateway errors stay Unset on non-clients."""
    if not span.is_recording():
        return
    if isinstance(exc, GatewayError):
        span.set_attribute(REASON, exc.reason)
        if exc.status < 500 and not client:
            return
        span.set_attribute(ERROR_TYPE, exc.reason)
    elif isinstance(exc, asyncio.CancelledError):
        span.set_attribute(ERROR_TYPE, "cancelled")
    else:
        span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR))


# Shared handles when nothing is recorded: no per-request allocation.
_NOOP_SPAN = NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
_NOOP_STAGE = StageSpan(_NOOP_SPAN)
_NOOP_CLIENT = ClientSpan(_NOOP_SPAN)


class _TimedStage:
    """The unrecorded stage: a plain context manager (cheaper than a generator one)."""

    __slots__ = ("_name", "_started", "_timer")

    def __init__(self, timer: StageTimer | None, name: str) -> None:
        self._timer = timer
        self._name = name
        self._started = 0.0

    def __enter__(self) -> StageSpan:
        self._started = time.perf_counter()
        return _NOOP_STAGE

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer(self._name, time.perf_counter() - self._started)


class _NoopClient:
    __slots__ = ()

    def __enter__(self) -> ClientSpan:
        return _NOOP_CLIENT

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_CLIENT_CM = _NoopClient()


# --------------------------------------------------------------------------- tracing


def _otlp_session() -> requests.Session:
    """The ``requests`` session of the OTLP exporter: it never follows a redirect.

    ``requests`` follows redirects by default, and on 307/308 it re-POSTs the body: a collector
    answering one would hand every exported span (routes, paths, subjects) to its Location.
    Like every other outbound client of the gateway (:mod:`gateway.net.outbound`), a 3xx is
    a failed export instead, and nothing is read from the environment (proxies, netrc).
    """
    import requests  # comes with the OTLP exporter; imported as late as the exporter

    class NoRedirects(requests.Session):
        def get_redirect_target(self, resp: requests.Response) -> None:
            return None  # SECURITY: the 3xx is the answer; the export counts as failed

    session = NoRedirects()
    session.trust_env = False
    return session


class Tracing:
    """Span helpers for the pipeline. One per gateway; never touches OTel globals."""

    def __init__(
        self,
        *,
        provider: TracerProvider | None,
        stage_timer: StageTimer | None = None,
        stage_spans: bool = True,
    ) -> None:
        self._provider = provider
        self._stage_spans = stage_spans
        self.enabled = provider is not None
        self._tracer: trace.Tracer = (
            provider.get_tracer(INSTRUMENTATION) if provider is not None else trace.NoOpTracer()
        )
        self._stage_timer = stage_timer

    @classmethod
    def from_settings(
        cls,
        settings: TelemetrySettings,
        *,
        exporter: SpanExporter | None = None,
        batch: bool = True,
        stage_timer: StageTimer | None = None,
        stage_spans: bool = True,
    ) -> Tracing:
        """Build from ``telemetry``; ``exporter`` overrides OTLP (tests, benchmarks).

        ``stage_spans=False`` keeps one server and one client span per request (stage
        timings still reach ``stage_timer``, stage facts the server span): about a third
        of the CPU of full stage spans at 100 % sampling (see bench/bench_tracing.py).
        """
        if exporter is None:
            if settings.otlp_endpoint is None:
                return cls(provider=None, stage_timer=stage_timer, stage_spans=stage_spans)
            # Imported here: the exporter pulls in protobuf and requests, which a gateway
            # without an endpoint never needs.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces",
                timeout=5.0,
                session=_otlp_session(),
            )
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            shutdown_on_exit=False,  # Gateway.stop() flushes; several gateways may share a process
        )
        processor = (
            BatchSpanProcessor(exporter, max_queue_size=8192, schedule_delay_millis=1000)
            if batch
            else SimpleSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
        return cls(provider=provider, stage_timer=stage_timer, stage_spans=stage_spans)

    # ------------------------------------------------------------------ inbound

    def extract(self, carrier: Mapping[str, str] | Any) -> SpanContext | None:
        """The caller's valid span context, or None (absent or malformed)."""
        ctx = _PROPAGATOR.extract(carrier, getter=_GETTER)
        span_context = trace.get_current_span(ctx).get_span_context()
        return span_context if span_context.is_valid else None

    @contextmanager
    def server_span(
        self,
        facts: RequestFacts,
        *,
        carrier: Mapping[str, str] | Any,
        trusted: bool,
        protocol_version: str | None = None,
    ) -> Iterator[ServerSpan]:
        """The SERVER span of a request; current (for child spans) inside the block."""
        caller = self.extract(carrier)
        method, original = _method(facts.method)
        parent: otel_context.Context | None = None
        links: list[Link] = []
        if caller is not None and trusted:
            parent = trace.set_span_in_context(NonRecordingSpan(caller))
        elif caller is not None:
            # SECURITY: an untrusted caller may not pick our trace id or sampling decision.
            links.append(Link(caller, {"agentgate.link": "untrusted_parent"}))
        if self.enabled:
            span = self._tracer.start_span(
                method if original is None else "HTTP",
                context=parent or otel_context.Context(),
                kind=SpanKind.SERVER,
                links=links,
                record_exception=False,
                set_status_on_exception=False,
            )
            if span.is_recording():  # built only for sampled requests
                span.set_attributes(
                    self._server_attributes(facts, method, original, protocol_version)
                )
        elif caller is not None and trusted:
            span = NonRecordingSpan(caller)  # pass the caller's context through unchanged
        else:
            # A fresh, unsampled trace so the upstream still gets a traceparent (DESIGN §5).
            # The module-level generator, as the SDK's RandomIdGenerator: Python reseeds it
            # in a forked worker, so two workers never hand out the same ids.
            span = NonRecordingSpan(
                SpanContext(
                    random.getrandbits(128) or 1,
                    random.getrandbits(64) or 1,
                    is_remote=False,
                    trace_flags=_RANDOM_UNSAMPLED,
                )
            )
        handle = ServerSpan(span, method if original is None else "HTTP")
        token = otel_context.attach(trace.set_span_in_context(span))
        server_token = _SERVER.set(handle)
        try:
            yield handle
        except BaseException as exc:
            _fail(span, exc, client=False)
            raise
        finally:
            _SERVER.reset(server_token)
            otel_context.detach(token)
            span.end()

    @staticmethod
    def _server_attributes(
        facts: RequestFacts, method: str, original: str | None, protocol_version: str | None
    ) -> dict[str, Any]:
        address, port = _host_port(facts.host, facts.scheme)
        attrs: dict[str, Any] = {
            HTTP_METHOD: method,
            URL_PATH: facts.path,
            URL_SCHEME: facts.scheme,
            SERVER_ADDRESS: address,
            SERVER_PORT: port,
            CLIENT_ADDRESS: facts.client_address,
            REQUEST_ID: facts.request_id,
        }
        if facts.peer_address != facts.client_address:  # behind trusted proxies only
            attrs[PEER_ADDRESS] = facts.peer_address
        if original is not None:
            attrs[HTTP_METHOD_ORIGINAL] = original
        if protocol_version is not None:
            attrs[PROTOCOL_VERSION] = protocol_version
        if facts.peer is not None and facts.peer.spiffe_id is not None:
            attrs[AGENT] = facts.peer.spiffe_id
        return attrs

    # ------------------------------------------------------------------ stages

    def _records_children(self) -> bool:
        """False when no child span could be sampled: tracing is off, or the request's
        server span was not sampled (ParentBased would drop every child anyway), so the
        SDK is skipped entirely. Outside a server span the sampler decides as usual."""
        if not self.enabled:
            return False
        server = _SERVER.get()
        return server is None or server.recording

    def stage_span(
        self, name: str, *, route: str | None = None
    ) -> AbstractContextManager[StageSpan]:
        """An INTERNAL child span named after the stage; times the stage for metrics too.

        Facts passed to ``annotate`` land on this span and on the server span. With
        ``stage_spans=False``, or when the request is not sampled, no span is made: the
        stage is only timed and its facts go to the server span.
        """
        if self._stage_spans and self._records_children():
            return self._recorded_stage(name, route)
        return _TimedStage(self._stage_timer, name)

    @contextmanager
    def _recorded_stage(self, name: str, route: str | None) -> Iterator[StageSpan]:
        started = time.perf_counter()
        attrs = {ROUTE: route} if route is not None else None
        span = self._tracer.start_span(
            name, attributes=attrs, record_exception=False, set_status_on_exception=False
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield StageSpan(span)
        except BaseException as exc:
            _fail(span, exc, client=False)
            raise
        finally:
            otel_context.detach(token)
            span.end()
            if self._stage_timer is not None:
                self._stage_timer(name, time.perf_counter() - started)

    # ------------------------------------------------------------------ outbound

    def client_span(
        self,
        method: str,
        url: str | Any,
        *,
        route: str | None = None,
        target: str = "upstream",
        headers: MutableMapping[str, str] | None = None,
    ) -> AbstractContextManager[ClientSpan]:
        """A CLIENT span for one outbound call; writes ``traceparent`` into ``headers``."""
        if self._records_children():
            return self._recorded_client(method, str(url), route, target, headers)
        if headers is not None:
            self.inject(headers)  # unsampled: the server span's context goes out as is
        return _NOOP_CLIENT_CM

    @contextmanager
    def _recorded_client(
        self,
        method: str,
        url: str,
        route: str | None,
        target: str,
        headers: MutableMapping[str, str] | None,
    ) -> Iterator[ClientSpan]:
        parts = urlsplit(url)
        known, original = _method(method)
        attrs: dict[str, Any] = {
            HTTP_METHOD: known,
            SERVER_ADDRESS: parts.hostname or "",
            SERVER_PORT: parts.port or (443 if parts.scheme == "https" else 80),
            URL_FULL: redact_url(url),
            TARGET: target,
        }
        if original is not None:
            attrs[HTTP_METHOD_ORIGINAL] = original
        if route is not None:
            attrs[ROUTE] = route
        span = self._tracer.start_span(
            known if original is None else "HTTP",
            kind=SpanKind.CLIENT,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            if headers is not None:
                self.inject(headers)
            yield ClientSpan(span)
        except BaseException as exc:
            _fail(span, exc, client=True)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    @staticmethod
    def event(name: str, **attributes: str | int | float | bool | None) -> None:
        """An event on the current request's server span (heartbeats, quarantines)."""
        handle = _SERVER.get(None)
        if handle is not None:
            handle.event(name, {k: v for k, v in attributes.items() if v is not None})

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Replace any ``traceparent``/``tracestate`` in ``headers`` with the current context's.

        Inbound values are removed first: a client's fields must never reach the
        upstream next to (or instead of) ours.
        """
        _drop(headers, _TRACEPARENT)
        _drop(headers, _TRACESTATE)
        _PROPAGATOR.inject(headers)

    def current_ids(self) -> tuple[str, str] | None:
        """(trace_id, span_id) of the current span as lowercase hex, if any."""
        ctx = trace.get_current_span().get_span_context()
        return _hex_ids(ctx) if ctx.is_valid else None

    # ------------------------------------------------------------------ lifecycle

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Blocking: export everything queued (tests, shutdown)."""
        if self._provider is None:
            return True
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Blocking: flush and stop the exporter. Idempotent."""
        if self._provider is not None:
            provider, self._provider = self._provider, None
            provider.shutdown()
            self.enabled = False
            self._tracer = trace.NoOpTracer()

    async def aclose(self) -> None:
        """``shutdown`` off the event loop (the final export may take a network round trip)."""
        await asyncio.to_thread(self.shutdown)
