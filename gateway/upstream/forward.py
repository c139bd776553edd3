"""Forwarding to upstreams: one pooled client session, streaming both ways.

Contract:

* ``Forwarder.forward`` sends the request to ``url`` with exactly the headers
  it is given (the pipeline has already sanitised them and added the
  gateway's own), streams the request body without buffering it whole, and
  streams the response back. Bodies above ``max_body_bytes`` are refused with
  413 whether they are announced by ``Content-Length`` or arrive chunked.
* Redirects are returned to the caller, never followed.
* The request body is the client's to deliver: a body the HTTP parser finds
  malformed part-way is 400 (``bad_framing``), one that stalls past the
  listener's ``body_read_s`` is 408 (``body_timeout``); either way the
  upstream's connection is cut, never left holding half a request.
* A caller that stops reading the response for ``send_s`` has its connection
  aborted (``STREAM_CUT``: ``client_send_timeout``).
* Connection refused/reset -> :class:`BadGateway` (502); connect or
  response-head timeout -> :class:`GatewayTimeout` (504). No aiohttp client
  exception leaves this module.
* Time budget per route (:class:`Budget`): ``connect_s``; ``headers_s`` from
  sending to the response head; ``idle_s`` between body chunks; ``total_s``
  (non-stream routes) the whole exchange, body included; a stream route has no
  total, only ``idle_s`` and an optional ``max_s``. A body the gateway cuts on
  time carries ``STREAM_CUT``: ``upstream_idle_timeout``,
  ``upstream_total_timeout`` or ``stream_max_duration``.
* Once the response head has been sent, a failure can no longer become an
  error response: the connection to the caller is aborted instead, so a
  truncated body is never mistaken for a complete one, and the returned
  response carries ``STREAM_CUT``: ``upstream_cut`` (the upstream broke off)
  or ``client_gone`` (the caller did), for the audit record and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import BadGateway, BadRequest, GatewayError, GatewayTimeout, PayloadTooLarge
from gateway.net.listener import BodyReadTimeout
from gateway.settings.routes import Route
from gateway.settings.server import Timeouts
from gateway.upstream.headers import sanitize_response_headers
from gateway.upstream.paths import drop_query_params
from gateway.upstream.rewrite import Rewrite, RewriteFailed

log = logging.getLogger("agentgate.forward")

_CHUNK = 64 * 1024
# The reason code of a response whose body was cut after its head was sent (absent: complete).
STREAM_CUT = web.ResponseKey("agentgate.stream_cut", str)


@dataclass(frozen=True, slots=True)
class Budget:
    """One route's upstream time budget (seconds; ``None``: unbounded)."""

    connect_s: float
    headers_s: float
    idle_s: float
    total_s: float | None  # whole exchange; None on stream routes
    max_s: float | None = None  # stream routes: lifetime cap

    @property
    def head_s(self) -> float:
        return self.headers_s if self.total_s is None else min(self.headers_s, self.total_s)

    def deadline(self, started: float) -> tuple[float, str] | None:
        """The absolute end of the body and the reason code if it is reached."""
        if self.total_s is not None:
            return started + self.total_s, "upstream_total_timeout"
        if self.max_s is not None:
            return started + self.max_s, "stream_max_duration"
        return None


def route_budget(route: Route, server: Timeouts) -> Budget:
    """``route.timeouts`` over ``server.timeouts``; stream and websocket routes get no total."""
    t = route.timeouts
    long_lived = route.stream or route.websocket
    return Budget(
        connect_s=t.connect_s or server.upstream_connect_s,
        headers_s=t.headers_s or server.upstream_headers_s,
        idle_s=t.idle_s or server.upstream_idle_s,
        total_s=None if long_lived else (t.total_s or server.upstream_total_s),
        max_s=t.max_s if long_lived else None,
    )


class _Cut(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BodyTooLarge(Exception):
    """Raised inside the body generator; mapped to 413 by ``forward``."""


class _BodyInvalid(Exception):
    """The HTTP parser refused the request body part-way; mapped to 400 by ``forward``."""


async def _limited(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    try:
        async for chunk in content.iter_chunked(_CHUNK):
            seen += len(chunk)
            if seen > limit:
                raise _BodyTooLarge
            yield chunk
    except (RequestPayloadError, HttpProcessingError):
        raise _BodyInvalid from None


def _client_fault(exc: BaseException) -> GatewayError | None:
    """The client's share of a failed upstream call: its body was too large, bad or slow."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _BodyTooLarge):
            return PayloadTooLarge()
        if isinstance(seen, _BodyInvalid):
            return BadRequest(
                "request body malformed", reason="bad_framing", public="malformed request body"
            )
        if isinstance(seen, BodyReadTimeout):
            return GatewayError(
                "request body stalled",
                reason="body_timeout",
                public="request body too slow",
                status=408,
            )
        seen = seen.__cause__ or seen.__context__
    return None


class Forwarder:
    def __init__(
        self,
        *,
        connect_timeout_s: float,
        total_timeout_s: float,
        max_body_bytes: int,
        ssl_contexts: Mapping[str, ssl.SSLContext],
        headers_timeout_s: float | None = None,
        idle_timeout_s: float = 30.0,
        budgets: Mapping[str, Budget] | None = None,
        send_timeout_s: float = 30.0,
    ) -> None:
        self._send_s = send_timeout_s
        self._default = Budget(
            connect_s=connect_timeout_s,
            headers_s=headers_timeout_s if headers_timeout_s is not None else total_timeout_s,
            idle_s=idle_timeout_s,
            total_s=total_timeout_s,
        )
        self._budgets = dict(budgets or {})
        self._max_body = max_body_bytes
        self._ssl = dict(ssl_contexts)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=256, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through untouched
            cookie_jar=aiohttp.DummyCookieJar(),
            # Only what the client sent: aiohttp would otherwise invent a User-Agent, Accept,
            # Accept-Encoding and, for streamed bodies, Content-Type: application/octet-stream.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        request: web.BaseRequest,
        url: URL,
        headers: CIMultiDict[str],
        *,
        route: str,
        response_headers: Mapping[str, str],
        ssl_context: ssl.SSLContext | None = None,
        scrub_query: frozenset[str] = frozenset(),
        buffered: bytes | None = None,
        rewrite: Rewrite | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream: ``buffered`` (the body a stage already read, see
        :mod:`gateway.protocols.body`) or else the inbound stream, bounded. ``rewrite`` may
        replace the response body (:mod:`gateway.upstream.rewrite`)."""
        if self._session is None:
            raise RuntimeError("Forwarder.start() was not awaited")
        length = request.content_length
        if length is not None and length > self._max_body:
            raise PayloadTooLarge()
        if _expects_continue(request):
            # RFC 9110 §10.1.1: every check has passed (the size one just above), so ask
            # the client for its body now instead of letting it wait for a 100 that never comes.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body: bytes | AsyncIterator[bytes] | None
        if buffered is not None:
            body = buffered
        elif request.body_exists:
            body = _limited(request.content, self._max_body)
        else:
            body = None
        if length is not None:
            headers["Content-Length"] = str(length)
        budget = self.budget(route)
        started = time.monotonic()
        # The connect phase is aiohttp's; the head (and total) deadline is ours, so that the
        # body, read below, is bounded by idle_s and the route's deadline only.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=budget.connect_s, sock_connect=budget.connect_s
        )
        try:
            async with asyncio.timeout(budget.head_s):
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,  # SECURITY: redirects go back to the caller
                    timeout=timeout,
                    ssl=_ssl_for(url, ssl_context or self._ssl.get(route)),
                )
        except (_BodyTooLarge, _BodyInvalid, BodyReadTimeout) as exc:
            raise (_client_fault(exc) or PayloadTooLarge()) from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            fault = _client_fault(exc)
            if fault is not None:
                raise fault from None
            raise GatewayTimeout(f"route {route}: upstream timed out") from None
        except aiohttp.ClientError as exc:
            fault = _client_fault(exc)
            if fault is not None:
                raise fault from None
            raise BadGateway(f"route {route}: {type(exc).__name__}") from None
        async with upstream:
            mode = (
                None if rewrite is None else await rewrite.head(upstream.status, upstream.headers)
            )
            if mode == "body" and rewrite is not None:
                data = await self._read_whole(upstream, budget, started, rewrite.max_bytes)
                return await self._send_whole(
                    request, upstream, response_headers, await rewrite.body(data)
                )
            return await self._relay(
                request,
                upstream,
                response_headers,
                scrub_query,
                budget,
                started,
                rewrite if mode == "stream" else None,
            )

    async def websocket(
        self,
        request: web.BaseRequest,
        url: URL,
        headers: CIMultiDict[str],
        *,
        route: str,
        max_message_bytes: int,
        response_headers: Mapping[str, str],
        ssl_context: ssl.SSLContext | None = None,
    ) -> web.StreamResponse:
        """Proxy a WebSocket upgrade (see :func:`relay_websocket`)."""
        if self._session is None:
            raise RuntimeError("Forwarder.start() was not awaited")
        return await relay_websocket(
            self._session,
            request,
            url,
            headers,
            route=route,
            budget=self.budget(route),
            max_message_bytes=max_message_bytes,
            response_headers=response_headers,
            ssl=_ssl_for(url, ssl_context or self._ssl.get(route)),
        )

    def budget(self, route: str) -> Budget:
        """The route's time budget (the server defaults for a route without one)."""
        return self._budgets.get(route, self._default)

    async def _send(self, response: web.StreamResponse, chunk: bytes) -> None:
        if not chunk:
            return
        try:
            async with asyncio.timeout(self._send_s):
                await response.write(chunk)
        except TimeoutError:
            # SECURITY: a caller that stops reading holds an upstream connection
            # and its buffers; nginx's send_timeout.
            raise _Cut("client_send_timeout") from None

    async def _read_whole(
        self, upstream: aiohttp.ClientResponse, budget: Budget, started: float, limit: int
    ) -> bytes:
        """The whole response body for a ``"body"`` rewrite, within the route's clock."""
        chunks: list[bytes] = []
        size = 0
        deadline = budget.deadline(started)
        try:
            while True:
                wait = budget.idle_s
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline[0] - time.monotonic()))
                async with asyncio.timeout(wait):
                    chunk = await upstream.content.readany()
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    # SECURITY: a body we must filter but cannot hold is not sent unfiltered.
                    raise BadGateway(f"response body over {limit} bytes to rewrite")
                chunks.append(chunk)
        except TimeoutError:
            raise GatewayTimeout("upstream timed out sending the body") from None
        except aiohttp.ClientError as exc:
            raise BadGateway(f"upstream body: {type(exc).__name__}") from None

    async def _send_whole(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        extra: Mapping[str, str],
        body: bytes,
    ) -> web.StreamResponse:
        headers = CIMultiDict(sanitize_response_headers(upstream.headers))
        headers.popall("Content-Length", None)
        headers.update(extra)
        return web.Response(
            status=upstream.status, reason=upstream.reason, body=body, headers=headers
        )

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        extra: Mapping[str, str],
        scrub_query: frozenset[str],
        budget: Budget,
        started: float,
        rewrite: Rewrite | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(sanitize_response_headers(upstream.headers))
        if rewrite is not None:
            response.headers.popall("Content-Length", None)  # the rewritten length differs
        for name in ("Location", "Content-Location") if scrub_query else ():
            values = response.headers.getall(name, ())
            if values:
                # SECURITY: a redirect that repeats our URL must not hand the client the
                # credential the gateway put in the query.
                response.headers.popall(name)
                for value in values:
                    response.headers.add(name, _scrub_query(value, scrub_query))
        response.headers.update(extra)
        try:
            await response.prepare(request)
            deadline = budget.deadline(started)
            while True:
                wait, reason = budget.idle_s, "upstream_idle_timeout"
                if deadline is not None and deadline[0] - time.monotonic() < wait:
                    wait, reason = max(0.0, deadline[0] - time.monotonic()), deadline[1]
                try:
                    async with asyncio.timeout(wait):
                        chunk = await upstream.content.readany()
                except TimeoutError:
                    raise _Cut(reason) from None
                if not chunk:
                    break
                if rewrite is not None:
                    chunk = await _rewritten(rewrite.feed(chunk))
                await self._send(response, chunk)
            if rewrite is not None:
                await self._send(response, await _rewritten(rewrite.end()))
            await response.write_eof()
        except _Cut as cut:
            # The gateway's own clock ended it: abort, so the caller sees a broken body.
            log.info("response stream cut: %s", cut.reason)
            response[STREAM_CUT] = cut.reason
            if request.transport is not None:
                request.transport.abort()
        except (TimeoutError, aiohttp.ClientError, ConnectionError, asyncio.CancelledError) as exc:
            # The head is on the wire: abort so the caller sees a broken, not a short, body.
            log.info("response stream aborted: %s", type(exc).__name__)
            gone = request.transport is None or request.transport.is_closing()
            response[STREAM_CUT] = "client_gone" if gone else "upstream_cut"
            if request.transport is not None:
                request.transport.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
        return response


async def _rewritten(step: Awaitable[bytes]) -> bytes:
    try:
        return await step
    except RewriteFailed as exc:
        raise _Cut(exc.reason) from None
    except GatewayError as exc:  # the PDP behind a filter failed: cut, never pass unfiltered
        raise _Cut(exc.reason) from None


def _scrub_query(target: str, names: frozenset[str]) -> str:
    rest, hash_, fragment = target.partition("#")
    base, mark, query = rest.partition("?")
    if not mark:
        return target
    query = drop_query_params(query, names)
    return base + ("?" + query if query else "") + hash_ + fragment


def _ssl_for(url: URL, context: ssl.SSLContext | None) -> ssl.SSLContext | bool:
    if url.scheme != "https":
        return False
    return context if context is not None else True  # True: system trust store


def _expects_continue(request: web.BaseRequest) -> bool:
    return request.version >= (1, 1) and any(
        v.strip().lower() == "100-continue" for v in request.headers.getall("Expect", ())
    )


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """A GET asking to switch to WebSocket (RFC 6455 §4.1: Upgrade + Connection: upgrade)."""
    connection = {
        t.strip().lower() for v in request.headers.getall("Connection", ()) for t in v.split(",")
    }
    upgrade = {
        t.strip().lower() for v in request.headers.getall("Upgrade", ()) for t in v.split(",")
    }
    return "upgrade" in connection and "websocket" in upgrade


_WS_DROP = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept",
    "Sec-WebSocket-Protocol",
)


def _sendable(code: int | None) -> int:
    # 1005/1006/1015 are never sent on the wire (RFC 6455 §7.4.1).
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code < 5000):
        return 1000
    return code


async def relay_websocket(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    url: URL,
    headers: CIMultiDict[str],
    *,
    route: str,
    budget: Budget,
    max_message_bytes: int,
    response_headers: Mapping[str, str],
    ssl: ssl.SSLContext | bool,
) -> web.StreamResponse:
    """Connect to the upstream first (a refusal is still a 502/504), then relay frames.

    The session ends when either side closes (its close code goes to the other side), after
    ``idle_s`` without a data message either way (1001, ``websocket_idle_timeout``), after
    ``max_s`` (1001, ``stream_max_duration``), or on a message over ``max_message_bytes``
    (1009 both ways, ``websocket_message_too_big``).
    """
    protocols = tuple(
        p.strip()
        for v in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in v.split(",")
        if p.strip()
    )
    for name in _WS_DROP:
        headers.popall(name, None)
    try:
        async with asyncio.timeout(budget.head_s):
            upstream = await session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                max_msg_size=max_message_bytes,
                autoclose=False,
                compress=0,
                ssl=ssl,
            )
    except TimeoutError:
        raise GatewayTimeout(f"route {route}: websocket upstream timed out") from None
    except aiohttp.ClientError as exc:
        raise BadGateway(f"route {route}: websocket {type(exc).__name__}") from None
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        max_msg_size=max_message_bytes,
        autoclose=False,
        compress=False,
    )
    client.headers.update(response_headers)
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close()
        raise
    last = [time.monotonic()]

    async def pump(
        src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> tuple[str, int]:
        while True:
            msg = await src.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                return "ok", _sendable(msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                too_big = src.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                if too_big:
                    return "websocket_message_too_big", 1009
                return "upstream_cut" if src is upstream else "client_gone", 1011
            else:  # CLOSING / CLOSED
                return "upstream_cut" if src is upstream else "client_gone", 1001
            last[0] = time.monotonic()

    started = time.monotonic()
    tasks = {
        asyncio.create_task(pump(client, upstream)),
        asyncio.create_task(pump(upstream, client)),
    }
    reason, code = "ok", 1000
    try:
        while True:
            now = time.monotonic()
            wait, why = last[0] + budget.idle_s - now, "websocket_idle_timeout"
            if budget.max_s is not None and started + budget.max_s - now < wait:
                wait, why = started + budget.max_s - now, "stream_max_duration"
            done, _ = await asyncio.wait(
                tasks, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                reason, code = next(iter(done)).result()
                break
            now = time.monotonic()
            if now >= last[0] + budget.idle_s or (
                budget.max_s is not None and now >= started + budget.max_s
            ):
                reason, code = why, 1001
                break
    except (aiohttp.ClientError, ConnectionError) as exc:
        log.info("websocket relay aborted: %s", type(exc).__name__)
        reason, code = "upstream_cut", 1011
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with asyncio.timeout(5):
            for ws in (client, upstream):
                if not ws.closed:
                    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                        await ws.close(
                            code=code, message=b"" if reason == "ok" else reason.encode()
                        )
    if reason != "ok":
        client[STREAM_CUT] = reason
    return client
