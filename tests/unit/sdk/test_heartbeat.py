"""The SDK recorder against the gateway's chain and a real memory action log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.agents import heartbeat as gw
from gateway.sdk import heartbeat as sdk
from gateway.sdk.heartbeat import ActionRecorder, action_seq, heartbeat_loop
from gateway.state.actions import MemoryActionLog

AGENT = "spiffe://example.org/agent/travel"
CALLS = [("GET", 200), ("POST", 201), ("GET", 404), ("DELETE", 403), ("GET", 200)]


class Gateway:
    """What the pipeline and the heartbeat endpoint do, over a real MemoryActionLog."""

    def __init__(self) -> None:
        self.log = MemoryActionLog()
        self.n = 0

    async def call(self, method: str, status: int) -> dict[str, str]:
        seq = await self.log.reserve(AGENT)
        self.n += 1
        request_id = f"req-{self.n}"
        await self.log.record(AGENT, seq, gw.canonical_action(seq, request_id, method, status))
        return {"X-Request-Id": request_id, "Agentgate-Action": f"seq={seq}"}

    async def answer(self, body: bytes) -> dict[str, Any]:
        beat = gw.parse_heartbeat(body)
        last = await self.log.last_beat(AGENT)
        records, missing = await self.log.window(AGENT, beat.first, beat.last)
        head = await self.log.head(AGENT)
        start = last[2] if last else 0
        result = gw.compare(beat, records, missing, expected_first=start, head=head)
        await self.log.beat(AGENT, 0.0, result.verdict, beat.last)
        return {**result.as_json(), "window": {"from": beat.first, "to": beat.last}}


def _body(recorder: ActionRecorder) -> bytes:
    return json.dumps(recorder.heartbeat()).encode()


@pytest.mark.parametrize(
    ("method", "request_id", "status"),
    [("GET", "r-1", 200), ("POST", 'é"\\', 500)],
    ids=["ascii", "escapes"],
)
def test_sdk_canonical_form_is_the_gateways(method: str, request_id: str, status: int) -> None:
    assert sdk.canonical_action(7, request_id, method, status) == gw.canonical_action(
        7, request_id, method, status
    )
    assert (sdk.GENESIS, sdk.MAX_WINDOW) == (gw.GENESIS, gw.MAX_WINDOW)


@pytest.mark.parametrize(
    ("value", "seq"),
    [
        ("seq=12", 12),
        (" seq=3 ", 3),
        ("seq=4;v=1", 4),
        ("x=1, seq=5", 5),
        ("seq=0", None),
        ("seq=-1", None),
        ("seq=12a", None),
        ("subseq=3", None),
        ("", None),
        (None, None),
    ],
    ids=[
        "plain",
        "spaces",
        "param",
        "member",
        "zero",
        "negative",
        "junk",
        "prefix",
        "empty",
        "none",
    ],
)
def test_action_seq(value: str | None, seq: int | None) -> None:
    assert action_seq(value) == seq


async def test_same_actions_give_the_same_digest_healthy() -> None:
    gateway, recorder = Gateway(), ActionRecorder(AGENT)
    for method, status in CALLS:
        recorder.observe(method, status, await gateway.call(method, status))
    body = recorder.heartbeat()
    assert (body["count"], body["window"]) == (5, {"from": 0, "to": 5})
    answer = await gateway.answer(json.dumps(body).encode())
    assert answer["verdict"] == "healthy"
    recorder.acknowledge(answer)
    # The next window starts where the healthy one ended, and stays healthy.
    recorder.observe("GET", 200, await gateway.call("GET", 200))
    nxt = recorder.heartbeat()
    assert (nxt["count"], nxt["window"]) == (1, {"from": 5, "to": 6})
    assert (await gateway.answer(json.dumps(nxt).encode()))["verdict"] == "healthy"


async def test_hijack_extra_gateway_action_is_mismatch() -> None:
    gateway, recorder = Gateway(), ActionRecorder(AGENT)
    for method, status in CALLS[:2]:
        recorder.observe(method, status, await gateway.call(method, status))
    await gateway.call("DELETE", 200)  # someone else, same identity: the agent never sees it
    recorder.observe("GET", 200, await gateway.call("GET", 200))
    answer = await gateway.answer(_body(recorder))
    assert (answer["verdict"], answer["gateway_count"], answer["agent_count"]) == ("mismatch", 4, 3)
    recorder.acknowledge(answer)
    # The judged window is behind both sides: the next one can be healthy again.
    recorder.observe("GET", 200, await gateway.call("GET", 200))
    nxt = recorder.heartbeat()
    assert (nxt["count"], nxt["window"]) == (1, {"from": 4, "to": 5})
    assert (await gateway.answer(json.dumps(nxt).encode()))["verdict"] == "healthy"


async def test_out_of_order_observes_give_the_same_digest() -> None:
    gateway = Gateway()
    responses = [(m, s, await gateway.call(m, s)) for m, s in CALLS]
    in_order, shuffled = ActionRecorder(AGENT), ActionRecorder(AGENT)
    for method, status, headers in responses:
        in_order.observe(method, status, headers)
    for i in (3, 0, 4, 2, 1):
        shuffled.observe(*responses[i])
    assert shuffled.heartbeat() == in_order.heartbeat()
    assert (await gateway.answer(_body(shuffled)))["verdict"] == "healthy"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Request-Id": "r"},
        {"Agentgate-Action": "seq=1"},
        {"X-Request-Id": "", "Agentgate-Action": "seq=1"},
        {"X-Request-Id": "r", "Agentgate-Action": "nope"},
    ],
    ids=["no-seq", "no-request-id", "empty-request-id", "bad-seq"],
)
def test_responses_without_both_headers_are_ignored(headers: Mapping[str, str]) -> None:
    recorder = ActionRecorder(AGENT)
    assert recorder.observe("GET", 200, headers) is None
    assert recorder.heartbeat()["count"] == 0


def test_headers_are_matched_without_regard_to_case() -> None:
    recorder = ActionRecorder(AGENT)
    assert recorder.observe("get", 200, {"x-request-id": "r", "agentgate-action": "seq=2"}) == 2
    expected = gw.chain([gw.canonical_action(2, "r", "GET", 200)]).hex()
    assert recorder.heartbeat()["digest"] == expected


def test_acknowledge_ignores_other_answers() -> None:
    recorder = ActionRecorder(AGENT)
    recorder.observe("GET", 200, {"X-Request-Id": "r", "Agentgate-Action": "seq=1"})
    recorder.acknowledge({"verdict": "healthy"})  # no heartbeat sent yet
    recorder.heartbeat()
    recorder.acknowledge({"verdict": "healthy", "window": {"from": 0, "to": 9}})  # not ours
    recorder.heartbeat()
    recorder.acknowledge({"error": "state_unavailable"})  # no verdict: nothing judged
    assert recorder.heartbeat()["window"] == {"from": 0, "to": 1}
    recorder.acknowledge({"verdict": "healthy", "window": {"from": 0, "to": 1}})
    assert recorder.heartbeat() == {
        "agent": AGENT,
        "count": 0,
        "digest": "0" * 64,
        "window": {"from": 1, "to": 1},
    }


def test_a_restarted_gateway_log_starts_the_window_again() -> None:
    recorder = ActionRecorder(AGENT)
    recorder.observe("GET", 200, {"X-Request-Id": "a", "Agentgate-Action": "seq=3"})
    recorder.heartbeat()
    recorder.acknowledge({"verdict": "healthy"})
    recorder.observe("GET", 200, {"X-Request-Id": "b", "Agentgate-Action": "seq=1"})
    body = recorder.heartbeat()
    assert (body["count"], body["window"]) == (1, {"from": 0, "to": 1})


def test_recorder_is_bounded() -> None:
    recorder = ActionRecorder(AGENT, max_actions=2)
    for seq in (1, 2, 3):
        recorder.observe("GET", 200, {"X-Request-Id": f"r{seq}", "Agentgate-Action": f"seq={seq}"})
    body = recorder.heartbeat()
    assert (body["count"], body["window"]) == (2, {"from": 0, "to": 3})


async def test_heartbeat_loop_sends_acknowledges_and_survives_failures() -> None:
    gateway, recorder = Gateway(), ActionRecorder(AGENT)
    recorder.observe("GET", 200, await gateway.call("GET", 200))
    stop = asyncio.Event()
    answers: list[str] = []
    sends = 0

    async def send(body: bytes) -> Mapping[str, Any]:
        nonlocal sends
        sends += 1
        if sends == 1:
            raise ConnectionError("network down")
        answer = await gateway.answer(body)
        answers.append(answer["verdict"])
        if len(answers) == 2:
            stop.set()
        return answer

    await asyncio.wait_for(heartbeat_loop(send, recorder, 0.001, stop), 5.0)
    assert (sends, answers) == (3, ["healthy", "healthy"])
    assert recorder.heartbeat()["window"] == {"from": 1, "to": 1}
