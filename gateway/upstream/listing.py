"""Response rewrites of JSON-RPC routes: filtered listings, a signed agent card, sessions.

:class:`MCPResponse` (a :class:`gateway.upstream.rewrite.Rewrite`) runs for every proxied
request of a ``kind: mcp`` route. At the head it hands the response's ``Mcp-Session-Id`` to
``on_session`` (the pipeline binds it to the subject before the client can use it). When the
request listed tools (``tools/list``), a JSON body is filtered whole and an event stream event
by event: each listed tool stays only if ``allowed`` (the PDP, asked per tool by the pipeline)
keeps it. A listing answered with any other content type is refused (502): what the gateway
cannot filter it does not pass.

:class:`AgentCardResponse` rewrites the A2A agent card the upstream serves: skills filtered
the same way, the card's ``url`` (and each interface's) pointed at the gateway, and the result
signed by ``sign`` (A2A v1.0 ``signatures``, :func:`gateway.protocols.a2a.sign_card`).

Neither imports the PDP: the pipeline passes the callables in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from gateway.errors import BadGateway
from gateway.protocols import a2a, mcp, sse
from gateway.protocols.jsonrpc import Id
from gateway.upstream.rewrite import Mode, RewriteFailed

Allowed = Callable[[Sequence[str]], Awaitable[Collection[str]]]
OnSession = Callable[[str], Awaitable[None]]
SESSION_HEADER = "Mcp-Session-Id"


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class MCPResponse:
    def __init__(
        self,
        listings: Mapping[Id, str],
        allowed: Allowed,
        *,
        on_session: OnSession | None,
        max_bytes: int,
    ) -> None:
        self.max_bytes = max_bytes
        self._listings = listings
        self._allowed = allowed
        self._on_session = on_session
        self._parser: sse.SSEParser | None = None

    async def head(self, status: int, headers: Mapping[str, str]) -> Mode:
        session = headers.get(SESSION_HEADER)
        if session is not None and self._on_session is not None:
            await self._on_session(session)
        if not self._listings or not 200 <= status < 300:
            return None
        media = _media_type(headers)
        if media == "application/json":
            return "body"
        if media == "text/event-stream":
            self._parser = sse.SSEParser(self.max_bytes)
            return "stream"
        # SECURITY: a listing the gateway cannot read could name tools the caller may not see.
        raise BadGateway(f"tools/list answered as {media or 'no content type'}: cannot filter")

    async def body(self, data: bytes) -> bytes:
        try:
            return await self._filtered(data)
        except mcp.UnfilterableResponse:
            raise BadGateway("a tools/list response that cannot be read") from None

    async def _filtered(self, data: bytes) -> bytes:
        scanned = mcp.scan(data, self._listings)
        if not scanned.names:
            return data
        allowed = {mid: await self._allowed(names) for mid, names in scanned.names.items()}
        return mcp.rewrite(scanned, allowed)

    async def feed(self, chunk: bytes) -> bytes:
        if self._parser is None:  # pragma: no cover - head chose "stream"
            return chunk
        try:
            return await self._events(self._parser.feed(chunk))
        except sse.EventTooLarge:
            raise RewriteFailed("response_unfilterable") from None

    async def end(self) -> bytes:
        if self._parser is None:
            return b""
        events, _rest = self._parser.close()
        # An unterminated remainder is no event (a client drops it): it cannot be filtered
        # and is not needed, so it is not relayed.
        return await self._events(events)

    async def _events(self, events: Sequence[sse.Event]) -> bytes:
        out = []
        for event in events:
            if event.data is None:
                out.append(event.raw)
                continue
            data = event.data.encode()
            try:
                new = await self._filtered(data)
            except mcp.UnfilterableResponse:
                # An event that is not JSON answers no listing; pass it as it came.
                out.append(event.raw)
                continue
            if new is data:
                out.append(event.raw)
            else:
                out.append(sse.render(new.decode(), event.event, event.id))
        return b"".join(out)


class AgentCardResponse:
    def __init__(
        self,
        allowed: Allowed,
        *,
        url: str,
        sign: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
        max_bytes: int,
    ) -> None:
        self.max_bytes = max_bytes
        self._allowed = allowed
        self._url = url
        self._sign = sign

    async def head(self, status: int, headers: Mapping[str, str]) -> Mode:
        if status != 200:
            return None
        if _media_type(headers) != "application/json":
            raise BadGateway("agent card is not application/json")
        return "body"

    async def body(self, data: bytes) -> bytes:
        try:
            card = json.loads(data)
        except ValueError:
            raise BadGateway("agent card is not JSON") from None
        if not isinstance(card, dict):
            raise BadGateway("agent card is not a JSON object")
        card = a2a.filter_card(card, await self._allowed(a2a.card_skills(card)))
        _point_at_gateway(card, self._url)
        if self._sign is not None:
            card = self._sign(card)
        return json.dumps(card, separators=(",", ":"), ensure_ascii=False).encode()

    async def feed(self, chunk: bytes) -> bytes:  # pragma: no cover - "body" mode only
        return chunk

    async def end(self) -> bytes:  # pragma: no cover - "body" mode only
        return b""


def _point_at_gateway(card: dict[str, Any], url: str) -> None:
    """Clients must call the agent through the gateway, never at the upstream's address."""
    if "url" in card:
        card["url"] = url
    for name in ("supportedInterfaces", "additionalInterfaces"):
        interfaces = card.get(name)
        if isinstance(interfaces, list):
            for interface in interfaces:
                if isinstance(interface, dict) and "url" in interface:
                    interface["url"] = url
