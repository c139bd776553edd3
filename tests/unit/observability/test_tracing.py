"""gateway.observability.tracing: W3C Trace Context in/out and OTel HTTP span shape (SPECS §13)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.errors import GatewayTimeout, ServiceUnavailable, Unauthorized
from gateway.observability.tracing import Tracing, redact_url
from gateway.settings import TelemetrySettings
from tests.unit.observability.builders import make_facts

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"  # TV-TC-1
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
SECRET = "eyJhbGciOiJFUzI1NiJ9.secret-token-body.sig"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def recording(exporter: InMemorySpanExporter, **settings: Any) -> Tracing:
    telemetry = TelemetrySettings(**{"sample_ratio": 1.0, **settings})
    return Tracing.from_settings(telemetry, exporter=exporter, batch=False)


def parse_traceparent(value: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = value.split("-")
    return version, trace_id, span_id, flags


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


@pytest.fixture
def upstream_headers() -> CIMultiDict[str]:
    # What the sanitiser lets through: a client's own trace fields are still there.
    return CIMultiDict([("Accept", "*/*"), ("traceparent", TRACEPARENT), ("TraceState", "evil=1")])


# --------------------------------------------------------------------------- no exporter


def test_without_endpoint_nothing_is_recorded_but_a_fresh_trace_is_propagated(
    upstream_headers: CIMultiDict[str],
) -> None:
    tracing = Tracing.from_settings(TelemetrySettings())
    assert not tracing.enabled
    with tracing.server_span(make_facts(), carrier={}, trusted=False) as server:
        with tracing.stage_span("authenticate") as stage:
            stage.annotate(subject="alice")
        with tracing.client_span("GET", "http://up:9001/x", headers=upstream_headers):
            pass
    assert not server.recording
    version, trace_id, span_id, flags = parse_traceparent(upstream_headers["traceparent"])
    assert version == "00"
    assert not int(flags, 16) & 1  # not sampled: we recorded nothing
    assert trace_id == server.trace_id
    assert trace_id not in (CALLER_TRACE, "0" * 32)
    assert span_id != "0" * 16
    assert upstream_headers.getall("traceparent") == [upstream_headers["traceparent"]]
    assert "tracestate" not in upstream_headers  # the client's is gone, we have none


def test_without_endpoint_each_request_gets_its_own_trace() -> None:
    tracing = Tracing.from_settings(TelemetrySettings())
    ids = set()
    for _ in range(50):
        with tracing.server_span(make_facts(), carrier={}, trusted=False) as server:
            ids.add(server.trace_id)
    assert len(ids) == 50


def test_without_endpoint_a_trusted_caller_context_passes_through_unchanged() -> None:
    tracing = Tracing.from_settings(TelemetrySettings())
    carrier = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    headers: dict[str, str] = {}
    with (
        tracing.server_span(make_facts(), carrier=carrier, trusted=True),
        tracing.client_span("GET", "http://up/", headers=headers),
    ):
        pass
    assert headers == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}


def test_without_endpoint_an_untrusted_caller_cannot_choose_the_trace() -> None:
    tracing = Tracing.from_settings(TelemetrySettings())
    headers: dict[str, str] = {}
    with tracing.server_span(make_facts(), carrier={"traceparent": TRACEPARENT}, trusted=False):
        tracing.inject(headers)
    assert parse_traceparent(headers["traceparent"])[1] != CALLER_TRACE


# --------------------------------------------------------------------------- span tree


def test_request_span_tree_names_kinds_and_parents(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    headers: CIMultiDict[str] = CIMultiDict()
    with tracing.server_span(make_facts(), carrier={}, trusted=False, protocol_version="1.1") as s:
        s.set_route("flights", "/flights/")
        for stage in ("authenticate", "decide", "mint", "convert"):
            with tracing.stage_span(stage, route="flights"):
                pass
        with tracing.client_span(
            "GET", "http://127.0.0.1:9001/flights/42", route="flights", headers=headers
        ) as up:
            up.set_status(200)
        s.finish(200, reason="ok")
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"GET /flights/", "authenticate", "decide", "mint", "convert", "GET"}
    server, client = spans["GET /flights/"], spans["GET"]
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert client.kind is SpanKind.CLIENT
    for name in ("authenticate", "decide", "mint", "convert", "GET"):
        assert spans[name].parent is not None
        assert spans[name].parent.span_id == server.context.span_id
        assert spans[name].context.trace_id == server.context.trace_id
    _, trace_id, parent_id, flags = parse_traceparent(headers["traceparent"])
    assert trace_id == f"{server.context.trace_id:032x}"
    assert parent_id == f"{client.context.span_id:016x}"  # SPECS §13.3: our client span
    assert int(flags, 16) & 1  # sampled (0x02, "random trace-id", may be set too)


def test_server_span_attributes_follow_stable_http_semconv(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = recording(exporter)
    with tracing.server_span(make_facts(), carrier={}, trusted=False, protocol_version="1.1") as s:
        s.set_route("flights", "/flights/")
        s.finish(200, reason="ok")
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/flights/42",
        "url.scheme": "https",
        "server.address": "gw.test",
        "server.port": 8443,
        "client.address": "203.0.113.9",
        "network.protocol.version": "1.1",
        "http.route": "/flights/",
        "http.response.status_code": 200,
        "agentgate.route": "flights",
        "agentgate.agent": "spiffe://example.org/agent/travel",
        "agentgate.request_id": "7f1d2c3b-0000-4000-8000-000000000001",
        "agentgate.reason": "ok",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "agentgate"


def test_peer_address_is_recorded_when_it_differs_from_the_client(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = recording(exporter)
    facts = make_facts(client_address="198.51.100.7", peer_address="10.0.0.2")
    with tracing.server_span(facts, carrier={}, trusted=False):
        pass
    (span,) = exporter.get_finished_spans()
    attrs = span.attributes or {}
    assert attrs["client.address"] == "198.51.100.7"
    assert attrs["network.peer.address"] == "10.0.0.2"


def test_without_stage_spans_stages_are_timed_and_facts_reach_the_server_span(
    exporter: InMemorySpanExporter,
) -> None:
    seen: list[str] = []
    tracing = Tracing.from_settings(
        TelemetrySettings(),
        exporter=exporter,
        batch=False,
        stage_timer=lambda stage, _: seen.append(stage),
        stage_spans=False,
    )
    headers: dict[str, str] = {}
    with tracing.server_span(make_facts(), carrier={}, trusted=False) as server:
        with tracing.stage_span("decide") as stage:
            stage.annotate(decision_id="d-1", decision=True)
        with tracing.client_span("GET", "http://up/", headers=headers):
            pass
    spans = exporter.get_finished_spans()
    assert sorted(s.kind.name for s in spans) == ["CLIENT", "SERVER"]
    assert seen == ["decide"]
    (span,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert (span.attributes or {})["agentgate.decision_id"] == "d-1"
    assert parse_traceparent(headers["traceparent"])[1] == server.trace_id


@pytest.mark.parametrize(
    ("host", "scheme", "address", "port"),
    [
        pytest.param("gw.test:8443", "https", "gw.test", 8443, id="name-and-port"),
        pytest.param("GW.Test", "https", "gw.test", 443, id="https-default-port"),
        pytest.param("gw.test", "http", "gw.test", 80, id="http-default-port"),
        pytest.param("[::1]:9443", "https", "::1", 9443, id="ipv6-with-port"),
        pytest.param("[::1]", "http", "::1", 80, id="ipv6-without-port"),
    ],
)
def test_server_address_and_port_come_from_host(
    exporter: InMemorySpanExporter, host: str, scheme: str, address: str, port: int
) -> None:
    tracing = recording(exporter)
    with tracing.server_span(make_facts(host=host, scheme=scheme), carrier={}, trusted=False):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert (span.attributes["server.address"], span.attributes["server.port"]) == (address, port)


def test_unknown_method_is_other_and_named_http(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    with tracing.server_span(make_facts(method="PURGE"), carrier={}, trusted=False) as s:
        s.set_route("flights", "/flights/")
    (span,) = exporter.get_finished_spans()
    assert span.name == "HTTP /flights/"
    assert span.attributes is not None
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_unrouted_request_is_named_by_method_only(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    with tracing.server_span(make_facts(method="POST"), carrier={}, trusted=False) as s:
        s.finish(404, reason="no_route")
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST"
    assert span.attributes is not None
    assert "http.route" not in span.attributes


# --------------------------------------------------------------------------- trust


def test_trusted_caller_becomes_the_parent(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    carrier = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    headers: dict[str, str] = {}
    with tracing.server_span(make_facts(), carrier=carrier, trusted=True):
        tracing.inject(headers)
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert not span.links
    assert headers["tracestate"] == TRACESTATE  # propagated along with the trace


def test_untrusted_caller_is_only_linked(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    carrier = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    headers: dict[str, str] = {}
    with tracing.server_span(make_facts(), carrier=carrier, trusted=False):
        tracing.inject(headers)
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" != CALLER_TRACE
    assert span.parent is None
    (link,) = span.links
    assert f"{link.context.trace_id:032x}" == CALLER_TRACE
    assert "tracestate" not in headers  # the caller's vendor state does not ride our trace


@pytest.mark.parametrize(
    ("ratio", "flags", "trusted", "sampled"),
    [
        pytest.param(0.0, "01", True, True, id="trusted-sampled-parent-is-honoured"),
        pytest.param(1.0, "00", True, False, id="trusted-unsampled-parent-is-honoured"),
        pytest.param(0.0, "01", False, False, id="untrusted-cannot-force-sampling"),
        pytest.param(1.0, "00", False, True, id="untrusted-cannot-suppress-sampling"),
    ],
)
def test_sampling_is_parent_based_only_for_trusted_callers(
    exporter: InMemorySpanExporter, ratio: float, flags: str, trusted: bool, sampled: bool
) -> None:
    tracing = recording(exporter, sample_ratio=ratio)
    carrier = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}"}
    headers: dict[str, str] = {}
    with tracing.server_span(make_facts(), carrier=carrier, trusted=trusted) as server:
        tracing.inject(headers)
    assert server.recording is sampled
    assert len(exporter.get_finished_spans()) == (1 if sampled else 0)
    assert bool(int(parse_traceparent(headers["traceparent"])[3], 16) & 1) is sampled


def test_unsampled_requests_still_propagate(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter, sample_ratio=0.0)
    headers: dict[str, str] = {}
    with (
        tracing.server_span(make_facts(), carrier={}, trusted=False) as server,
        tracing.client_span("GET", "http://up/", headers=headers),
    ):
        pass
    assert exporter.get_finished_spans() == ()
    _, trace_id, _, flags = parse_traceparent(headers["traceparent"])
    assert trace_id == server.trace_id
    assert not int(flags, 16) & 1


# SPECS §13.1/§13.2 negative vectors: an invalid traceparent is ignored with its tracestate.
INVALID_TRACEPARENTS = [
    pytest.param(f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01", id="version-ff"),
    pytest.param(f"00-{'0' * 32}-{CALLER_SPAN}-01", id="zero-trace-id"),
    pytest.param(f"00-{CALLER_TRACE}-{'0' * 16}-01", id="zero-parent-id"),
    pytest.param(f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01", id="uppercase-hex"),
    pytest.param(TRACEPARENT[:-1], id="54-chars"),
    pytest.param(TRACEPARENT + "0", id="56-chars"),
    pytest.param(TRACEPARENT + "-extra", id="v00-with-trailing-data"),
    pytest.param(f"00-{CALLER_TRACE[:-1]}-{CALLER_SPAN}-01", id="short-trace-id"),
    pytest.param("garbage", id="garbage"),
]


@pytest.mark.parametrize("traceparent", INVALID_TRACEPARENTS)
def test_invalid_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, traceparent: str
) -> None:
    tracing = recording(exporter)
    headers: dict[str, str] = {}
    carrier = {"traceparent": traceparent, "tracestate": TRACESTATE}
    with tracing.server_span(make_facts(), carrier=carrier, trusted=True):
        tracing.inject(headers)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert not span.links
    assert parse_traceparent(headers["traceparent"])[1] != CALLER_TRACE
    assert "tracestate" not in headers


def test_several_traceparent_lines_are_invalid(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    carrier = CIMultiDict([("traceparent", TRACEPARENT), ("traceparent", other)])
    with tracing.server_span(make_facts(), carrier=carrier, trusted=True):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None


def test_future_version_with_trailing_data_is_accepted(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    carrier = {"traceparent": f"cc-{CALLER_TRACE}-{CALLER_SPAN}-01-what-comes-next"}
    with tracing.server_span(make_facts(), carrier=carrier, trusted=True):
        pass
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE


def test_tracestate_lines_are_joined_and_over_32_members_dropped(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = recording(exporter)
    joined: dict[str, str] = {}
    carrier = CIMultiDict(
        [("traceparent", TRACEPARENT), ("tracestate", "rojo=1"), ("tracestate", "congo=2")]
    )
    with tracing.server_span(make_facts(), carrier=carrier, trusted=True):
        tracing.inject(joined)
    assert joined["tracestate"] == "rojo=1,congo=2"
    too_many: dict[str, str] = {}
    members = ",".join(f"k{i}=v" for i in range(33))
    carrier = CIMultiDict([("traceparent", TRACEPARENT), ("tracestate", members)])
    with tracing.server_span(make_facts(), carrier=carrier, trusted=True):
        tracing.inject(too_many)
    assert parse_traceparent(too_many["traceparent"])[1] == CALLER_TRACE
    assert "tracestate" not in too_many


# --------------------------------------------------------------------------- status and errors


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(200, False, id="2xx-unset"),
        pytest.param(302, False, id="3xx-unset"),
        pytest.param(403, False, id="4xx-unset-on-server"),
        pytest.param(502, True, id="5xx-error"),
        pytest.param(503, True, id="503-error"),
    ],
)
def test_server_span_status(exporter: InMemorySpanExporter, status: int, error: bool) -> None:
    tracing = recording(exporter)
    with tracing.server_span(make_facts(), carrier={}, trusted=False) as s:
        s.finish(status)
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code is StatusCode.ERROR) is error
    assert span.attributes.get("error.type") == (str(status) if error else None)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(200, False, id="2xx-unset"),
        pytest.param(404, True, id="4xx-error-on-client"),
        pytest.param(500, True, id="5xx-error"),
    ],
)
def test_client_span_status(exporter: InMemorySpanExporter, status: int, error: bool) -> None:
    tracing = recording(exporter)
    with tracing.client_span("POST", "http://127.0.0.1:8181/v1/data", target="pdp") as c:
        c.set_status(status)
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST"
    assert span.kind is SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["agentgate.target"] == "pdp"
    assert span.attributes["server.port"] == 8181
    assert (span.status.status_code is StatusCode.ERROR) is error


@pytest.mark.parametrize(
    ("exc", "error_type", "error"),
    [
        pytest.param(Unauthorized(reason="authn_missing"), None, False, id="4xx-refusal-unset"),
        pytest.param(
            ServiceUnavailable(reason="pdp_unavailable"),
            "pdp_unavailable",
            True,
            id="5xx-dependency-error",
        ),
        pytest.param(RuntimeError("boom"), "RuntimeError", True, id="unexpected-exception"),
    ],
)
def test_stage_span_on_exception(
    exporter: InMemorySpanExporter, exc: Exception, error_type: str | None, error: bool
) -> None:
    tracing = recording(exporter)
    with pytest.raises(type(exc)), tracing.stage_span("decide"):
        raise exc
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes.get("error.type") == error_type
    assert (span.status.status_code is StatusCode.ERROR) is error
    assert not span.events  # exceptions are never recorded (their text may quote secrets)


def test_client_span_transport_failure(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    with pytest.raises(GatewayTimeout), tracing.client_span("GET", "http://up/"):
        raise GatewayTimeout("route x: upstream timed out")
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "upstream_timeout"
    assert span.status.status_code is StatusCode.ERROR


def test_cancelled_request_marks_the_server_span(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    with (
        pytest.raises(asyncio.CancelledError),
        tracing.server_span(make_facts(), carrier={}, trusted=False),
    ):
        raise asyncio.CancelledError
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "cancelled"


# --------------------------------------------------------------------------- facts and privacy


def test_stage_annotations_reach_the_server_span(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)
    with tracing.server_span(make_facts(), carrier={}, trusted=False):
        with tracing.stage_span("authenticate", route="flights") as stage:
            stage.annotate(subject="alice", agent="spiffe://example.org/agent/travel")
        with tracing.stage_span("decide", route="flights") as stage:
            stage.annotate(decision_id="d-1", decision=False, reason="policy_denied")
        with tracing.stage_span("mint", route="flights") as stage:
            stage.annotate(txn="97053963-771d-49cc-a4e3-20aad399c312")
    spans = by_name(exporter.get_finished_spans())
    server = spans["GET"].attributes or {}
    assert server["enduser.id"] == "alice"
    assert server["agentgate.decision_id"] == "d-1"
    assert server["agentgate.decision"] == "deny"
    assert server["agentgate.txn"] == "97053963-771d-49cc-a4e3-20aad399c312"
    assert (spans["decide"].attributes or {})["agentgate.decision_id"] == "d-1"
    assert (spans["authenticate"].attributes or {})["agentgate.route"] == "flights"


def test_no_span_carries_credentials_query_values_or_headers(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = recording(exporter)
    carrier = CIMultiDict(
        [("Authorization", f"Bearer {SECRET}"), ("Txn-Token", SECRET), ("Cookie", SECRET)]
    )
    facts = make_facts(raw_query=f"api_key={SECRET}")
    url = f"https://user:{SECRET}@up.test/x?api_key={SECRET}&a=1"
    with (
        tracing.server_span(facts, carrier=carrier, trusted=True),
        tracing.client_span("GET", url),
    ):
        pass
    for span in exporter.get_finished_spans():
        for key, value in (span.attributes or {}).items():
            assert SECRET not in str(value), key
            assert not key.startswith("http.request.header."), key
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert (client.attributes or {})["url.full"] == (
        "https://REDACTED:REDACTED@up.test/x?api_key=REDACTED&a=REDACTED"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://up:9001/a/b", "http://up:9001/a/b", id="plain"),
        pytest.param(
            "http://u:p@up/a?x=1&y=",
            "http://REDACTED:REDACTED@up/a?x=REDACTED&y=REDACTED",
            id="userinfo-and-query",
        ),
        pytest.param("http://up/a#frag", "http://up/a", id="fragment-dropped"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# --------------------------------------------------------------------------- plumbing


def test_inject_replaces_client_fields_in_any_case(upstream_headers: CIMultiDict[str]) -> None:
    tracing = Tracing.from_settings(TelemetrySettings())
    plain = {"TRACEPARENT": TRACEPARENT, "Tracestate": "evil=1", "Accept": "*/*"}
    with tracing.server_span(make_facts(), carrier={}, trusted=False):
        tracing.inject(upstream_headers)
        tracing.inject(plain)
    assert upstream_headers.getall("traceparent") != [TRACEPARENT]
    assert len(upstream_headers.getall("traceparent")) == 1
    assert "tracestate" not in upstream_headers
    assert sorted(plain) == ["Accept", "traceparent"]


@pytest.mark.parametrize("enabled", [True, False], ids=["recording", "no-op"])
def test_stage_timer_sees_every_stage(exporter: InMemorySpanExporter, enabled: bool) -> None:
    seen: list[tuple[str, float]] = []
    telemetry = TelemetrySettings()
    if enabled:
        tracing = Tracing.from_settings(
            telemetry, exporter=exporter, batch=False, stage_timer=lambda s, t: seen.append((s, t))
        )
    else:
        tracing = Tracing.from_settings(telemetry, stage_timer=lambda s, t: seen.append((s, t)))
    with tracing.server_span(make_facts(), carrier={}, trusted=False):
        with tracing.stage_span("authenticate"):
            pass
        with pytest.raises(Unauthorized), tracing.stage_span("decide"):
            raise Unauthorized()
    assert [s for s, _ in seen] == ["authenticate", "decide"]
    assert all(t >= 0 for _, t in seen)


async def test_concurrent_requests_keep_their_own_parents(exporter: InMemorySpanExporter) -> None:
    tracing = recording(exporter)

    async def one(i: int) -> str:
        with tracing.server_span(make_facts(path=f"/r/{i}"), carrier={}, trusted=False) as s:
            await asyncio.sleep(0.001 * (i % 3))
            with tracing.stage_span("decide"):
                await asyncio.sleep(0)
            return s.span_id

    await asyncio.gather(*(one(i) for i in range(20)))
    spans = exporter.get_finished_spans()
    servers = {s.context.span_id: s for s in spans if s.kind is SpanKind.SERVER}
    stages = [s for s in spans if s.name == "decide"]
    assert len(servers) == len(stages) == 20
    assert {s.parent.span_id for s in stages if s.parent} == set(servers)
    assert len({s.context.trace_id for s in servers.values()}) == 20


def test_shutdown_flushes_the_batch_processor(exporter: InMemorySpanExporter) -> None:
    tracing = Tracing.from_settings(TelemetrySettings(), exporter=exporter, batch=True)
    with tracing.server_span(make_facts(), carrier={}, trusted=False):
        pass
    tracing.shutdown()
    assert len(exporter.get_finished_spans()) == 1
    assert not tracing.enabled
    tracing.shutdown()  # idempotent


async def test_otlp_http_export_reaches_endpoint_v1_traces(tmp_path: Any) -> None:
    """A real OTLP/HTTP receiver (a tiny aiohttp app) gets protobuf at {endpoint}/v1/traces."""
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/{tail:.*}", collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        telemetry = TelemetrySettings(
            service_name="agentgate-test", otlp_endpoint=f"http://127.0.0.1:{port}/"
        )
        tracing = Tracing.from_settings(telemetry)
        assert tracing.enabled
        with tracing.server_span(make_facts(), carrier={}, trusted=False) as s:
            s.set_route("flights", "/flights/")
        await tracing.aclose()  # flushes from a worker thread; the loop keeps serving
    finally:
        await runner.cleanup()
    ((path, content_type, body),) = received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    (resource_spans,) = message.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "agentgate-test"
    names = [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert names == ["GET /flights/"]
