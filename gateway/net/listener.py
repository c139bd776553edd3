"""The main listener's connection handling, on aiohttp's low-level server.

aiohttp runs one :class:`aiohttp.web_protocol.RequestHandler` per connection;
ours adds three things the stock one lacks:

* **Peer identity once per connection.** After the TLS handshake the verified
  client certificate becomes a :class:`gateway.context.Peer`. A certificate
  whose SPIFFE identity is malformed or ambiguous (several URI SANs) aborts the
  connection before any request is read (SPECS.md §11.2).
* **A header-read deadline.** Bytes of a new request head must complete within
  ``header_read_s``, or the connection gets ``408`` and is closed: a slow
  client cannot hold a connection open by trickling header bytes.
* **Parser errors rendered like every other error**: an oversized header
  block is ``431``, an oversized request line ``414``, anything else the parser
  refuses ``400``, each as problem+json with an ``X-Request-Id``.
* **One framing rule for both aiohttp parsers** (:mod:`gateway.net.framing`): every
  parsed head is checked before the pipeline runs; a refusal closes the
  connection. So does an ``Upgrade`` request (the gateway never upgrades, and
  the bytes behind it were meant for another protocol) and any error answer
  sent while the request body is still unread.
* **A body-read deadline.** While the gateway waits for request body bytes, a
  gap of ``body_read_s`` ends the request with ``408`` and closes the
  connection; an upstream that had begun receiving the body sees its
  connection cut, never a request left hanging.
* **A connection cap.** Past ``max_connections`` open connections, a new
  connection's first request is answered ``503`` with ``Connection: close``
  and ``Retry-After`` (nginx ``limit_conn``); past that plus
  :data:`REFUSAL_SLOTS` the connection is closed at once (Envoy's listener
  ``max_connections``). Both are counted with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

from aiohttp import http_parser, web
from aiohttp.helpers import BaseTimerContext
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from yarl import URL

from gateway.context import Peer
from gateway.net.framing import FramingError, check_head
from gateway.net.spiffe import InvalidSpiffeID, peer_from_der
from gateway.render import problem

log = logging.getLogger("agentgate.listener")

SERVER = "agentgate"

# Called once per request refused before the pipeline ran: (status, reason code).
OnRefused = Callable[[int, str], None]
# Called once per connection refused by the cap: (reason code).
OnConnectionRefused = Callable[[str], None]

# Connections past max_connections that still get a 503 answer; any further one is closed
# on accept. A 503 needs the client's request head, and reading it costs a socket for up
# to header_read_s: this bounds what a connection flood can hold on top of the cap.
REFUSAL_SLOTS = 32


def parser_kind() -> Literal["llhttp", "python"]:
    """Which aiohttp HTTP/1 parser this process runs (README "What the listener refuses")."""
    if http_parser.HttpRequestParser is http_parser.HttpRequestParserPy:
        return "python"
    return "llhttp"


class BodyReadTimeout(TimeoutError):
    """No request body byte arrived for ``body_read_s`` while the gateway waited for one."""


class BodyIdleTimer(BaseTimerContext):
    """A fresh ``idle_s`` deadline around every wait of a request body's reader.

    aiohttp's :class:`~aiohttp.streams.StreamReader` enters its timer around each wait for
    data (and only then), so this bounds the gap between two body reads whoever reads the
    body: the forwarder, an authenticator that buffers it, the Token Service. Time the
    gateway spends elsewhere (PDP, upstream connect) is not the client's and is not
    counted. When the deadline passes the waiting task is cancelled and the read raises
    :class:`BodyReadTimeout`; every later read raises it too.
    """

    __slots__ = ("_cancelling", "_handle", "_idle_s", "_loop", "_on_fire", "_task", "fired")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, idle_s: float, on_fire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._idle_s = idle_s
        self._on_fire = on_fire
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.fired = False

    def assert_timeout(self) -> None:
        if self.fired:
            raise BodyReadTimeout

    def __enter__(self) -> BaseTimerContext:
        if self.fired:
            raise BodyReadTimeout
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a request body is read outside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_later(self._idle_s, self._fire)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        if exc_type is asyncio.CancelledError and self.fired and task is not None:
            if task.uncancel() > self._cancelling:
                return None  # cancelled for another reason as well: let that propagate
            raise BodyReadTimeout
        return None

    def _fire(self) -> None:
        self._handle = None
        if self._task is None:
            return
        self.fired = True
        self._on_fire()
        self._task.cancel()


def _problem(status: int, reason: str, public: str, **headers: str) -> web.Response:
    """A refusal of the listener's own: problem+json, no library banner, connection closed."""
    resp = problem(status, reason, public, str(uuid.uuid4()), headers=headers or None)
    # SECURITY: aiohttp would add "Server: Python/3.x aiohttp/3.y" (DESIGN.md §5).
    resp.headers["Server"] = SERVER
    resp.force_close()
    return resp


# HTTP/2 prior knowledge (RFC 9113 §3.3) on this HTTP/1.1 listener: answer with the server
# preface (an empty SETTINGS frame) and GOAWAY(last stream 0, HTTP_1_1_REQUIRED = 0xd,
# RFC 9113 §7), so the client reports a clear error instead of an empty reply.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_DEBUG = b"agentgate speaks HTTP/1.1 only"
H2_REFUSAL = (
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, length 0, stream 0
    + (8 + len(_H2_DEBUG)).to_bytes(3, "big")
    + b"\x07\x00\x00\x00\x00\x00"  # GOAWAY, no flags, stream 0
    + b"\x00\x00\x00\x00\x00\x00\x00\x0d"  # last-stream-id 0, HTTP_1_1_REQUIRED
    + _H2_DEBUG
)


def _timeout_408(request_id: str) -> bytes:
    return (
        "HTTP/1.1 408 Request Timeout\r\n"
        f"Server: {SERVER}\r\nX-Request-Id: {request_id}\r\n"
        "Connection: close\r\nContent-Length: 0\r\n\r\n"
    ).encode("ascii")


class PeerCache:
    """A small LRU of parsed peer certificates keyed by their DER bytes."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Peer] = OrderedDict()

    def get(self, der: bytes) -> Peer:
        peer = self._items.get(der)
        if peer is not None:
            self._items.move_to_end(der)
            return peer
        peer = peer_from_der(der)  # raises InvalidSpiffeID
        self._items[der] = peer
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return peer


class GatewayRequestHandler(RequestHandler):
    __slots__ = (
        "_body",
        "_body_read_s",
        "_body_timer",
        "_counted",
        "_deadline",
        "_fresh",
        "_header_read_s",
        "_in_request",
        "_line_bytes",
        "_line_done",
        "_on_refused",
        "_peer_cache",
        "_server",
        "over_capacity",
        "peer",
    )

    def __init__(
        self,
        manager: GatewayServer,
        *,
        header_read_s: float,
        body_read_s: float,
        peer_cache: PeerCache,
        on_refused: OnRefused | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(manager, **kw)
        self.peer: Peer | None = None
        self.over_capacity = False
        self._server = manager
        self._counted = False
        self._header_read_s = header_read_s
        self._body_read_s = body_read_s
        self._body_timer: BodyIdleTimer | None = None
        self._body: StreamReader | None = None  # the body of the request being served
        self._peer_cache = peer_cache
        self._on_refused = on_refused
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        # Length of the request line of the head being read: the parser's LineTooLong does not
        # say whether the request-target (414) or a header field (431) overflowed.
        self._line_bytes = 0
        self._line_done = False
        self._fresh = True  # no byte received yet on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self._server.admit()
        if admission == "drop":
            # SECURITY: past the cap and its refusal slots a connection costs nothing more
            # than the accept: no parser, no task, no answer (Envoy's listener overflow).
            self.transport = cast(asyncio.Transport, transport)
            self.force_close()
            cast(asyncio.Transport, transport).abort()
            return
        self._counted = True
        self.over_capacity = admission == "refuse"
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        super().connection_made(transport)
        if der:
            try:
                self.peer = self._peer_cache.get(der)
            except InvalidSpiffeID as exc:
                # SECURITY: SPECS §11.2 — an X509-SVID with several URI SANs or a malformed
                # SPIFFE ID is refused outright; no request on this connection is served.
                log.warning("client certificate refused: %s from %s", exc, _address(transport))
                self._server.certificate_refused("bad_svid")
                self.force_close()
                cast(asyncio.Transport, transport).abort()
                return
            if self.peer.not_after <= time.time():
                # SECURITY: a resumed TLS session (1.3 ticket, 1.2 session id) skips certificate
                # verification; never serve a certificate past its notAfter (RFC 5280 §6.1.3).
                log.warning(
                    "client certificate refused: expired (resumed TLS session) from %s",
                    _address(transport),
                )
                self._server.certificate_refused("expired")
                self.peer = None
                self.force_close()
                cast(asyncio.Transport, transport).abort()
                return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            if data[:14] == H2_PREFACE[:14] and self.transport is not None:
                self._refused(505, "http2_unsupported")
                self.transport.write(H2_REFUSAL)
                self.transport.close()
                return
        if not self._in_request:
            if self._deadline is None:
                self._arm()
            if not self._line_done:
                end = data.find(b"\n")
                self._line_bytes += len(data) if end < 0 else end
                self._line_done = end >= 0
        queued = len(self._messages)
        super().data_received(data)
        body = self._body
        if body is not None and len(self._messages) > queued and not body.is_eof():
            # A message queued while the current body is unfinished can only be aiohttp's
            # record of a parse error (llhttp gives up on a bad chunk without telling the
            # body's reader, which would wait for bytes that never come): fail the body now,
            # so that the forwarder answers 400 and cuts the upstream's half-sent request.
            body.set_exception(RequestPayloadError("malformed request body"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self._server.release(self.over_capacity)
        super().connection_lost(exc)

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False
        self._body = None
        self._line_bytes = 0
        self._line_done = False

    def watch_body(self, payload: StreamReader) -> None:
        """Bound every wait for ``payload``'s bytes by ``body_read_s`` (see BodyIdleTimer),
        and fail it at once if the parser refuses what follows (see data_received)."""
        self._body = None
        if payload.is_eof():
            return  # no body, or all of it is here already
        self._body = payload
        self._body_timer = BodyIdleTimer(self._loop, self._body_read_s, self._body_timeout)
        # aiohttp builds each payload with the parser's timer (none, on a server); the
        # attribute is a slot of StreamReader, checked by tests/unit/net/test_listener.py.
        payload._timer = self._body_timer

    def _body_timeout(self) -> None:
        log.info("request body stalled for %.1fs: 408", self._body_read_s)

    @property
    def body_timed_out(self) -> bool:
        return self._body_timer is not None and self._body_timer.fired

    def _arm(self) -> None:
        # Behind start_tls the first bytes can arrive before connection_made (which arms
        # again): a second timer must replace the first, never orphan it (an orphan fired a
        # 408 into a kept-alive connection mid-request; found by bench/soak.py).
        self._disarm()
        self._deadline = self._loop.call_later(self._header_read_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        if self._in_request or self.transport is None:
            return
        self._refused(408, "header_timeout")
        self.transport.write(_timeout_408(str(uuid.uuid4())))
        self.transport.close()

    def _refused(self, status: int, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(status, reason)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        if self.body_timed_out or isinstance(exc, BodyReadTimeout):
            # A body reader other than the forwarder let the timeout escape the pipeline.
            answer = (408, "body_timeout", "request body too slow")
        elif isinstance(exc, RequestPayloadError):
            # A body reader other than the forwarder met a body the parser refused.
            answer = (400, "bad_framing", "malformed request body")
        elif isinstance(exc, LineTooLong) and self._line_bytes > _limit(exc):
            answer = (414, "uri_too_long", "request target too long")
        elif isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()
        ):
            answer = (431, "headers_too_large", "request header fields too large")
        elif status == 400:
            answer = (400, "bad_request", "malformed HTTP request")
        else:
            log.error("unhandled error (request_id=%s)", request_id, exc_info=exc)
            answer = (500, "internal_error", "internal error")
        resp = problem(*answer, request_id)
        # SECURITY: aiohttp would add "Server: Python/3.x aiohttp/3.y" (DESIGN.md §5).
        resp.headers["Server"] = SERVER
        resp.force_close()
        self._refused(answer[0], answer[1])
        return resp


def _limit(exc: LineTooLong) -> int:
    limit = exc.args[1] if len(exc.args) > 1 else None
    return limit if isinstance(limit, int) else sys.maxsize  # unknown: not the line


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Admission = Literal["serve", "refuse", "drop"]


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class GatewayServer(web.Server):
    """aiohttp's low-level server, making :class:`GatewayRequestHandler` connections.

    ``handler`` (the pipeline) only sees requests that passed :func:`check_head` on a
    connection under the cap; :meth:`_serve` answers the others itself.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        header_read_s: float,
        body_read_s: float = 30.0,
        max_connections: int = 1024,
        scheme: Literal["http", "https"] = "http",
        on_refused: OnRefused | None = None,
        on_connection_refused: OnConnectionRefused | None = None,
        on_certificate_refused: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(self._serve, **kwargs)
        self._on_certificate_refused = on_certificate_refused
        self._handler = handler
        self._header_read_s = header_read_s
        self._body_read_s = body_read_s
        self._max_connections = max_connections
        self._scheme = scheme
        self._on_refused = on_refused
        self._on_connection_refused = on_connection_refused
        self._peer_cache = PeerCache()
        self.open_connections = 0  # served connections: what the cap counts
        self.refusing = 0  # connections over the cap waiting for their 503
        if parser_kind() == "python":
            log.warning(
                "HTTP parser: aiohttp's pure-Python fallback (AIOHTTP_NO_EXTENSIONS is set or "
                "the C extension is missing); it is slower and laxer than llhttp in chunk "
                "extensions, see README 'What the listener refuses'"
            )
        else:
            log.info("HTTP parser: llhttp (aiohttp's C extension)")

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(
            self,
            loop=self._loop,
            header_read_s=self._header_read_s,
            body_read_s=self._body_read_s,
            peer_cache=self._peer_cache,
            on_refused=self._on_refused,
            **self._kwargs,
        )

    # ------------------------------------------------------------------ the cap

    def admit(self) -> Admission:
        """Serve a new connection, refuse it with a 503, or drop it (and count a refusal)."""
        if self.open_connections < self._max_connections:
            self.open_connections += 1
            return "serve"
        if self.refusing < REFUSAL_SLOTS:
            self.refusing += 1
            return "refuse"
        self._connection_refused("max_connections_overflow")
        return "drop"

    def release(self, refused: bool) -> None:
        if refused:
            self.refusing -= 1
        else:
            self.open_connections -= 1

    def certificate_refused(self, reason: str) -> None:
        """A handshake-valid client certificate refused after it (a bad X509-SVID)."""
        if self._on_certificate_refused is not None:
            self._on_certificate_refused(reason)

    def _connection_refused(self, reason: str) -> None:
        if self._on_connection_refused is not None:
            self._on_connection_refused(reason)

    # ------------------------------------------------------------------ every request

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if not isinstance(protocol, GatewayRequestHandler):  # pragma: no cover - by construction
            raise TypeError("GatewayServer serves GatewayRequestHandler connections only")
        protocol.request_started()
        try:
            if protocol.over_capacity:
                self._connection_refused("max_connections")
                return self._refuse(
                    503, "max_connections", "too many connections, retry later", retry=True
                )
            try:
                target = check_head(
                    request.method,
                    request.raw_path,
                    (request.version.major, request.version.minor),
                    request.raw_headers,
                    scheme=self._scheme,
                )
            except FramingError as exc:
                log.info("request refused: %s (%s)", exc.reason, exc.public)
                return self._refuse(exc.status, exc.reason, exc.public)
            if target is not None:  # an accepted absolute-form target, as origin-form
                request = request.clone(rel_url=URL(target, encoded=True))
            protocol.watch_body(request.content)
            response = await self._handler(request)
            if request.headers.get("Upgrade") is not None and response.status != 101:
                # SECURITY: an Upgrade the gateway declined: whatever follows it on this
                # connection was meant for another protocol, never as a request of its own.
                response.force_close()
            elif response.status >= 400 and not request.content.is_eof():
                # An answer before the body was read: the connection is not reused. aiohttp
                # still reads and drops the rest for up to 10 s (lingering close, as nginx
                # does) so that the client gets the answer rather than a reset.
                response.force_close()
            return response
        finally:
            protocol.request_finished()

    def _refuse(
        self, status: int, reason: str, public: str, *, retry: bool = False
    ) -> web.Response:
        if self._on_refused is not None:
            self._on_refused(status, reason)
        return _problem(status, reason, public, **({"Retry-After": "1"} if retry else {}))
