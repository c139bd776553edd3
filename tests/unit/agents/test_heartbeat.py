"""The observed-action chain, heartbeat parsing, comparison and status (pure)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from gateway.agents.heartbeat import (
    GENESIS,
    MAX_WINDOW,
    Heartbeat,
    HeartbeatInvalid,
    canonical_action,
    chain,
    compare,
    parse_heartbeat,
    status,
)

ACTIONS = [
    (1, "5b6f0c3e-8d7e-4a53-9a8c-0d6b1f3e2a10", "GET", 200),
    (2, "r-2", "POST", 403),
    (3, 'r-\u00e9"\\\n', "DELETE", 502),
]


@pytest.mark.parametrize(
    ("seq", "request_id", "method", "status_code"), ACTIONS, ids=["uuid", "plain", "escapes"]
)
def test_canonical_action_is_sorted_compact_json(
    seq: int, request_id: str, method: str, status_code: int
) -> None:
    expected = json.dumps(
        {"seq": seq, "status": status_code, "request_id": request_id, "method": method},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    assert canonical_action(seq, request_id, method, status_code) == expected


def test_chain_is_iterated_sha256_from_32_zero_bytes() -> None:
    actions = [canonical_action(*a) for a in ACTIONS]
    h = b"\0" * 32
    for action in actions:
        h = hashlib.sha256(h + action).digest()
    assert GENESIS == b"\0" * 32
    assert chain(actions) == h
    assert chain([]) == GENESIS
    assert chain(actions[1:], start=chain(actions[:1])) == h  # windows chain on


def _body(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "agent": "spiffe://example.org/agent/travel",
        "count": 2,
        "digest": "ab" * 32,
        "window": {"from": 3, "to": 7},
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_parse_heartbeat_reads_every_member() -> None:
    beat = parse_heartbeat(_body())
    assert beat == Heartbeat("spiffe://example.org/agent/travel", 2, b"\xab" * 32, 3, 7)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="not-object"),
        pytest.param(b"{", id="malformed"),
        pytest.param(b'{"agent":"a","agent":"b"}', id="duplicate-member"),
        pytest.param(_body(extra=1), id="unknown-member"),
        pytest.param(
            json.dumps({"agent": "a", "count": 0, "digest": "0" * 64}).encode(), id="no-window"
        ),
        pytest.param(_body(agent=""), id="empty-agent"),
        pytest.param(_body(agent=7), id="agent-not-string"),
        pytest.param(_body(count=True), id="count-bool"),
        pytest.param(_body(count=-1), id="count-negative"),
        pytest.param(_body(count=1.0), id="count-float"),
        pytest.param(_body(count=5), id="count-exceeds-window"),
        pytest.param(_body(digest="AB" * 32), id="digest-uppercase"),
        pytest.param(_body(digest="ab" * 31), id="digest-short"),
        pytest.param(_body(digest=None), id="digest-null"),
        pytest.param(_body(window={"from": 8, "to": 7}), id="window-reversed"),
        pytest.param(_body(window={"from": 0, "to": MAX_WINDOW + 1}), id="window-too-wide"),
        pytest.param(_body(window={"from": 0}), id="window-no-to"),
        pytest.param(_body(window={"from": 0, "to": 4, "x": 1}), id="window-extra"),
        pytest.param(_body(window={"from": False, "to": 4}), id="window-bool"),
        pytest.param(_body(window=[0, 4]), id="window-array"),
    ],
)
def test_parse_heartbeat_refuses(body: bytes) -> None:
    with pytest.raises(HeartbeatInvalid):
        parse_heartbeat(body)


def test_parse_heartbeat_accepts_the_widest_window() -> None:
    beat = parse_heartbeat(_body(count=0, window={"from": 10, "to": 10 + MAX_WINDOW}))
    assert (beat.first, beat.last) == (10, 10 + MAX_WINDOW)


RECORDS = [(s, canonical_action(s, rid, m, st)) for s, rid, m, st in ACTIONS]


def _beat(records: list[tuple[int, bytes]], first: int = 0, last: int = 3) -> Heartbeat:
    return Heartbeat("a", len(records), chain(a for _, a in records), first, last)


@pytest.mark.parametrize(
    ("agent_records", "gateway_records", "missing", "expected_first", "head", "verdict"),
    [
        (RECORDS, RECORDS, 0, None, None, "healthy"),
        ([], [], 0, None, None, "healthy"),
        (RECORDS, RECORDS, 0, 0, 3, "healthy"),
        (RECORDS[:2], RECORDS, 0, None, None, "mismatch"),  # gateway saw more: hijack
        (RECORDS, RECORDS[:2], 0, None, None, "mismatch"),  # agent saw more: outside
        (
            RECORDS,
            [*RECORDS[:2], (3, canonical_action(3, "x", "GET", 200))],
            0,
            None,
            None,
            "mismatch",
        ),
        (RECORDS, RECORDS, 1, None, None, "mismatch"),  # a seq still in flight
        (RECORDS, RECORDS, 0, 2, None, "mismatch"),  # window does not start where it must
        (RECORDS, RECORDS, 0, None, 2, "mismatch"),  # window reaches past the last seq
    ],
    ids=[
        "equal",
        "empty",
        "expected-start-and-head",
        "hijack",
        "outside",
        "other-action",
        "missing",
        "skipped",
        "beyond-head",
    ],
)
def test_compare(
    agent_records: list[tuple[int, bytes]],
    gateway_records: list[tuple[int, bytes]],
    missing: int,
    expected_first: int | None,
    head: int | None,
    verdict: str,
) -> None:
    beat = _beat(agent_records)
    result = compare(beat, gateway_records, missing, expected_first=expected_first, head=head)
    assert result.verdict == verdict
    assert (result.gateway_count, result.agent_count, result.missing) == (
        len(gateway_records),
        len(agent_records),
        missing,
    )
    assert result.as_json()["verdict"] == verdict


def test_compare_same_count_other_digest_is_mismatch() -> None:
    beat = Heartbeat("a", 3, bytes(32), 0, 3)
    assert compare(beat, RECORDS).verdict == "mismatch"


@pytest.mark.parametrize(
    ("at", "verdict", "now", "expected"),
    [
        (None, None, 100.0, "unknown"),
        (None, "healthy", 100.0, "unknown"),
        (90.0, "healthy", 100.0, "healthy"),
        (80.0, "healthy", 100.0, "healthy"),  # exactly interval * grace
        (79.0, "healthy", 100.0, "stale"),
        (99.0, "mismatch", 100.0, "mismatch"),
        (0.0, "mismatch", 100.0, "mismatch"),  # sticky however old
    ],
    ids=["never", "no-verdict", "fresh", "edge", "stale", "mismatch", "mismatch-sticky"],
)
def test_status(at: float | None, verdict: str | None, now: float, expected: str) -> None:
    assert status(at, verdict, now, interval_s=10.0, grace=2.0) == expected
