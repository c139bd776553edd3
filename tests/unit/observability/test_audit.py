"""gateway.observability.audit: the record schema (pure) and the non-blocking JSON-lines sink."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.context import Actor
from gateway.observability.audit import AuditInput, AuditRecord, AuditSink
from gateway.settings import TelemetrySettings
from tests.unit.observability.builders import make_decision, make_facts, make_identity

SECRET = "eyJhbGciOiJFUzI1NiJ9.secret-token-body.sig"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def full_event(**overrides: Any) -> AuditInput:
    event: AuditInput = {
        "request_id": "7f1d2c3b-0000-4000-8000-000000000001",
        "facts": make_facts(),
        "route": "flights",
        "identity": make_identity(),
        "decision": make_decision(reason="rbac:traveller"),
        "forwarded": True,
        "txn": "97053963-771d-49cc-a4e3-20aad399c312",
        "trace_id": TRACE,
        "span_id": SPAN,
        "agent": "spiffe://example.org/agent/travel",
        "status": 200,
        "reason": "ok",
        "latency_s": 0.0123456,
    }
    event.update(overrides)  # type: ignore[typeddict-item]
    return event


# --------------------------------------------------------------------------- the builder


def test_allowed_request_record_is_complete_and_ordered() -> None:
    record = AuditRecord.build(full_event())
    assert list(record) == list(AuditRecord.FIELDS)
    assert record == {
        "v": 1,
        "ts": "2026-05-01T12:00:00.123Z",
        "request_id": "7f1d2c3b-0000-4000-8000-000000000001",
        "decision_id": "4ac1d7e2-3f0b-4b8e-9d61-0f3c2b1a9e77",
        "txn": "97053963-771d-49cc-a4e3-20aad399c312",
        "trace_id": TRACE,
        "span_id": SPAN,
        "method": "GET",
        "path": "/flights/42",
        "route": "flights",
        "status": 200,
        "latency_ms": 12.346,
        "decision": "allow",
        "reason": "ok",
        "policy_reason": "rbac:traveller",
        "principal": {
            "id": "alice",
            "type": "user",
            "issuer": "https://idp.example.org",
            "client_id": "travel-agent",
        },
        "actors": [{"sub": "spiffe://example.org/agent/travel", "iss": "https://idp.example.org"}],
        "caller": "agent",
        "mode": "obo_user",
        "authn": ["bearer"],
        "agent": "spiffe://example.org/agent/travel",
        "peer_spiffe_id": "spiffe://example.org/agent/travel",
        "client_address": "203.0.113.9",
        "peer_address": "203.0.113.9",
    }


CASES = [
    pytest.param(
        full_event(
            decision=make_decision(False, reason="rbac:no_permission"),
            forwarded=False,
            status=403,
            reason="policy_denied",
            txn=None,
        ),
        {
            "decision": "deny",
            "reason": "policy_denied",
            "status": 403,
            "policy_reason": "rbac:no_permission",
            "txn": None,
        },
        id="policy-deny",
    ),
    pytest.param(
        {
            "request_id": "r1",
            "facts": make_facts(),
            "route": "flights",
            "status": 401,
            "reason": "authn_missing",
            "latency_s": 0.001,
        },
        {
            "decision": "deny",
            "principal": None,
            "actors": [],
            "authn": [],
            "caller": None,
            "decision_id": None,
            "route": "flights",
        },
        id="authn-refusal-before-pdp",
    ),
    pytest.param(
        {
            "request_id": "r2",
            "facts": make_facts(path="/nope"),
            "status": 404,
            "reason": "no_route",
            "latency_s": 0.0001,
        },
        {"decision": "deny", "route": None, "path": "/nope"},
        id="no-route",
    ),
    pytest.param(
        {
            "request_id": "r3",
            "facts": make_facts(),
            "route": "public",
            "forwarded": True,
            "status": 200,
            "reason": "ok",
            "latency_s": 0.002,
        },
        {"decision": "allow", "decision_id": None, "principal": None},
        id="public-route-without-pdp",
    ),
    pytest.param(
        full_event(status=502, reason="upstream_unavailable"),
        {"decision": "allow", "status": 502, "reason": "upstream_unavailable"},
        id="allowed-but-upstream-failed",
    ),
    pytest.param(
        {
            "request_id": "r4",
            "method": "GET",
            "path": "/a/%2f/" + "x" * 5000,
            "time_ns": 1_777_636_800_000_000_000,
            "status": 400,
            "reason": "invalid_path",
            "latency_s": 0.0,
        },
        {
            "method": "GET",
            "ts": "2026-05-01T12:00:00.000Z",
            "peer_spiffe_id": None,
            "client_address": None,
        },
        id="refused-before-facts-uses-fallbacks",
    ),
    pytest.param(
        full_event(facts=make_facts(peer=None)),
        {"peer_spiffe_id": None},
        id="no-client-certificate",
    ),
    pytest.param(
        full_event(identity=make_identity(actors=(Actor("a1"), Actor("a2", "https://i")))),
        {"actors": [{"sub": "a1"}, {"sub": "a2", "iss": "https://i"}]},
        id="actor-chain-outermost-first",
    ),
]


@pytest.mark.parametrize(("event", "expected"), CASES)
def test_record_fields(event: AuditInput, expected: dict[str, Any]) -> None:
    record = AuditRecord.build(event)
    assert list(record) == list(AuditRecord.FIELDS)
    for key, value in expected.items():
        assert record[key] == value, key


def test_refused_raw_path_is_bounded() -> None:
    record = AuditRecord.build({"request_id": "r", "path": "/" + "a" * 10_000, "status": 400})
    assert len(record["path"]) == 2048


def test_builder_is_pure() -> None:
    event = full_event()
    snapshot = dict(event)
    first, second = AuditRecord.build(event), AuditRecord.build(event)
    assert first == second
    assert first is not second
    assert dict(event) == snapshot


def test_no_query_token_or_claim_ever_reaches_the_record() -> None:
    identity = make_identity(claims={"raw": SECRET}, token_id="jti-1")
    event = full_event(facts=make_facts(raw_query=f"api_key={SECRET}"), identity=identity)
    line = json.dumps(AuditRecord.build(event))
    assert SECRET not in line
    assert "api_key" not in line


# --------------------------------------------------------------------------- the sink


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_file_sink_appends_one_json_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"old": true}\n')
    sink = AuditSink(path)
    await sink.start()
    for i in range(3):
        sink.emit(AuditRecord.build(full_event(request_id=f"r{i}")))
    await sink.close()
    got = lines(path)
    assert got[0] == {"old": True}
    assert [r["request_id"] for r in got[1:]] == ["r0", "r1", "r2"]
    assert sink.written == 3
    assert sink.dropped == 0


async def test_new_audit_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = AuditSink(path)
    await sink.start()
    await sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    sink = AuditSink.from_settings(TelemetrySettings(audit_log="stdout"))
    await sink.start()
    sink.emit({"request_id": "r1", "text": "é"})
    await sink.close()
    assert capsys.readouterr().out == '{"request_id":"r1","text":"é"}\n'


async def test_off_sink_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    sink = AuditSink.from_settings(TelemetrySettings(audit_log="off"))
    assert not sink.enabled
    await sink.start()
    sink.emit({"request_id": "r1"})
    await sink.close()
    assert capsys.readouterr().out == ""


async def test_settings_path_becomes_a_file_sink(tmp_path: Path) -> None:
    sink = AuditSink.from_settings(TelemetrySettings(audit_log=tmp_path / "a.log"))
    assert sink.target == tmp_path / "a.log"


async def test_records_emitted_before_close_are_all_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = AuditSink(path, max_queue=100_000)
    await sink.start()
    for i in range(5000):
        sink.emit({"request_id": f"r{i}"})
    await sink.close()
    assert len(lines(path)) == 5000


class StalledStdout:
    """A stdout nobody reads any more: ``write`` blocks until released, as on a full pipe."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.data: list[str] = []

    def write(self, text: str) -> int:
        self.release.wait(10)
        self.data.append(text)
        return len(text)

    def flush(self) -> None:
        pass


async def test_stalled_writer_never_blocks_the_loop_and_overflow_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stalled = StalledStdout()
    monkeypatch.setattr(sys, "stdout", stalled)
    drops: list[int] = []
    sink = AuditSink("stdout", max_queue=10, max_batch=4, on_drop=lambda: drops.append(1))
    await sink.start()
    try:
        started = time.perf_counter()
        for i in range(200):
            sink.emit({"i": i})
            if i % 20 == 0:
                await asyncio.sleep(0)  # let the drain task take a batch to the (stuck) thread
        slept = time.perf_counter()
        await asyncio.sleep(0.05)
        assert time.perf_counter() - slept < 1.0  # the loop is not held by the writer
        assert time.perf_counter() - started < 2.0
        assert sink.dropped > 0
        assert len(drops) == sink.dropped
    finally:
        stalled.release.set()
        await sink.close()
    written = "".join(stalled.data).splitlines()
    assert len(written) + sink.dropped == 200
    assert sink.written == len(written)


async def test_write_errors_count_as_drops(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    drops: list[int] = []
    sink = AuditSink(path, on_drop=lambda: drops.append(1))
    await sink.start()
    assert sink._file is not None
    sink._file.close()  # the file goes away under the sink (ValueError on write)
    sink.emit({"a": 1})
    sink.emit({"a": 2})
    for _ in range(100):
        if sink.dropped == 2:
            break
        await asyncio.sleep(0.01)
    assert sink.dropped == 2
    assert len(drops) == 2
    assert sink.write_errors >= 1
    sink._file = None
    await sink.close()


async def test_unwritable_audit_path_fails_at_start(tmp_path: Path) -> None:
    sink = AuditSink(tmp_path / "missing-dir" / "audit.log")
    with pytest.raises(FileNotFoundError):
        await sink.start()
