"""gateway.upstream.listing: filtered MCP listings (JSON and SSE) and the signed agent card."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import BadGateway, ServiceUnavailable
from gateway.protocols import a2a, sse
from gateway.upstream.listing import AgentCardResponse, MCPResponse
from gateway.upstream.rewrite import RewriteFailed

TOOLS = ["get_balance", "transfer_funds", "delete_account"]


class Policy:
    """The PDP's part, as the pipeline passes it in: which names may be seen."""

    def __init__(self, allowed: Collection[str]) -> None:
        self.allowed = set(allowed)
        self.asked: list[list[str]] = []

    async def __call__(self, names: Sequence[str]) -> list[str]:
        self.asked.append(list(names))
        return [n for n in names if n in self.allowed]


def listing(id_: Any = 1, names: Sequence[str] = TOOLS) -> dict[str, Any]:
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in names]
    return {"jsonrpc": "2.0", "id": id_, "result": {"tools": tools, "nextCursor": "c2"}}


def names_in(value: Any) -> list[str]:
    return [t["name"] for t in value["result"]["tools"]]


JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream"}


async def test_json_listing_filtered_and_cursor_kept() -> None:
    policy = Policy({"get_balance"})
    rewrite = MCPResponse({1: "tools/list"}, policy, on_session=None, max_bytes=1 << 20)
    assert await rewrite.head(200, JSON) == "body"
    out = json.loads(await rewrite.body(json.dumps(listing()).encode()))
    assert names_in(out) == ["get_balance"]
    assert out["result"]["nextCursor"] == "c2"
    assert policy.asked == [TOOLS]


async def test_response_to_another_id_untouched() -> None:
    rewrite = MCPResponse({1: "tools/list"}, Policy(set()), on_session=None, max_bytes=1 << 20)
    data = json.dumps(listing(id_=2)).encode()
    assert await rewrite.head(200, JSON) == "body"
    assert await rewrite.body(data) is data


async def test_sse_listing_filtered_event_by_event_other_events_byte_identical() -> None:
    rewrite = MCPResponse(
        {"x": "tools/list"}, Policy({"transfer_funds"}), on_session=None, max_bytes=1 << 20
    )
    assert await rewrite.head(200, {"Content-Type": "text/event-stream; charset=utf-8"}) == (
        "stream"
    )
    progress = (
        b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\r\n\r\n'
    )
    answer = sse.render(json.dumps(listing(id_="x")), "message", "ev-7")
    stream = progress + answer
    out = b""
    for i in range(0, len(stream), 7):  # split anywhere, even inside CRLF
        out += await rewrite.feed(stream[i : i + 7])
    out += await rewrite.end()
    events = sse.SSEParser().feed(out)
    assert out.startswith(progress)  # not a listing: relayed as it came
    assert [e.id for e in events] == [None, "ev-7"]  # the event id survives the rewrite
    assert names_in(json.loads(events[1].data or "")) == ["transfer_funds"]


async def test_unfilterable_listing_media_type_is_refused() -> None:
    rewrite = MCPResponse({1: "tools/list"}, Policy(TOOLS), on_session=None, max_bytes=1 << 20)
    with pytest.raises(BadGateway):
        await rewrite.head(200, {"Content-Type": "text/plain"})


async def test_listing_body_that_is_not_json_is_refused() -> None:
    rewrite = MCPResponse({1: "tools/list"}, Policy(TOOLS), on_session=None, max_bytes=1 << 20)
    await rewrite.head(200, JSON)
    with pytest.raises(BadGateway):
        await rewrite.body(b"<html>")


async def test_sse_event_over_the_bound_cuts_the_stream() -> None:
    rewrite = MCPResponse({1: "tools/list"}, Policy(TOOLS), on_session=None, max_bytes=64)
    await rewrite.head(200, SSE)
    with pytest.raises(RewriteFailed) as info:
        await rewrite.feed(b"data: " + b"x" * 200)
    assert info.value.reason == "response_unfilterable"


async def test_error_status_and_no_listing_pass_untouched() -> None:
    rewrite = MCPResponse({1: "tools/list"}, Policy(TOOLS), on_session=None, max_bytes=1 << 20)
    assert await rewrite.head(500, JSON) is None
    plain = MCPResponse({}, Policy(TOOLS), on_session=None, max_bytes=1 << 20)
    assert await plain.head(200, {"Content-Type": "text/plain"}) is None


async def test_session_handed_over_at_the_head() -> None:
    seen: list[str] = []

    async def on_session(session: str) -> None:
        seen.append(session)

    rewrite = MCPResponse({}, Policy(TOOLS), on_session=on_session, max_bytes=1 << 20)
    assert await rewrite.head(200, {**JSON, "Mcp-Session-Id": "s-42"}) is None
    assert seen == ["s-42"]


CARD = {
    "name": "researcher",
    "url": "http://127.0.0.1:9001/",
    "supportedInterfaces": [{"url": "http://127.0.0.1:9001/", "protocolBinding": "JSONRPC"}],
    "skills": [{"id": "search", "name": "Search"}, {"id": "delete", "name": "Delete"}],
    "signatures": [{"protected": "e30", "signature": "AA"}],
}


async def test_agent_card_filtered_pointed_at_the_gateway_and_signed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    def sign(card: Any) -> dict[str, Any]:
        return a2a.sign_card(card, key, "k1")

    rewrite = AgentCardResponse(
        Policy({"search"}), url="https://gw.example/a2a", sign=sign, max_bytes=1 << 20
    )
    assert await rewrite.head(200, JSON) == "body"
    card = json.loads(await rewrite.body(json.dumps(CARD).encode()))
    assert [s["id"] for s in card["skills"]] == ["search"]
    assert card["url"] == "https://gw.example/a2a"
    assert card["supportedInterfaces"][0]["url"] == "https://gw.example/a2a"
    assert len(card["signatures"]) == 1  # the upstream's signature no longer covers it
    a2a.verify_card(card, {"k1": key.public_key()})
    tampered = {**card, "skills": CARD["skills"]}
    with pytest.raises(ValueError, match=r".+"):
        a2a.verify_card(tampered, {"k1": key.public_key()})


async def test_agent_card_that_is_not_json_is_refused() -> None:
    rewrite = AgentCardResponse(Policy(set()), url="https://gw", sign=None, max_bytes=1024)
    with pytest.raises(BadGateway):
        await rewrite.head(200, {"Content-Type": "text/html"})
    await rewrite.head(200, JSON)
    with pytest.raises(BadGateway):
        await rewrite.body(b"[1, 2]")


class DownPolicy:
    """The PDP behind the filter is unreachable (the pipeline's callable raises)."""

    async def __call__(self, names: Sequence[str]) -> list[str]:
        raise ServiceUnavailable("pdp down", reason="pdp_unavailable")


async def test_pdp_failure_never_passes_a_listing_unfiltered() -> None:
    # JSON: the error propagates before the head is sent (answered as a 503).
    rewrite = MCPResponse({1: "tools/list"}, DownPolicy(), on_session=None, max_bytes=1 << 20)
    await rewrite.head(200, JSON)
    with pytest.raises(ServiceUnavailable):
        await rewrite.body(json.dumps(listing()).encode())
    # SSE: the error leaves feed(); the forwarder turns it into a cut stream, never the event.
    stream = MCPResponse({1: "tools/list"}, DownPolicy(), on_session=None, max_bytes=1 << 20)
    await stream.head(200, SSE)
    with pytest.raises(ServiceUnavailable):
        await stream.feed(sse.render(json.dumps(listing()), "message"))
