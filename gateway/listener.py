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
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.context import Peer
from gateway.render import problem
from gateway.spiffe import InvalidSpiffeID, peer_from_der

log = logging.getLogger("agentgate.listener")

SERVER = "agentgate"

# Called once per request refused before the pipeline ran: (status, reason code).
OnRefused = Callable[[int, str], None]


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
        "_deadline",
        "_fresh",
        "_header_read_s",
        "_in_request",
        "_line_bytes",
        "_line_done",
        "_on_refused",
        "_peer_cache",
        "peer",
    )

    def __init__(
        self,
        manager: GatewayServer,
        *,
        header_read_s: float,
        peer_cache: PeerCache,
        on_refused: OnRefused | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(manager, **kw)
        self.peer: Peer | None = None
        self._header_read_s = header_read_s
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
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        super().connection_made(transport)
        if der:
            try:
                self.peer = self._peer_cache.get(der)
            except InvalidSpiffeID as exc:
                # SECURITY: SPECS §11.2 — an X509-SVID with several URI SANs or a malformed
                # SPIFFE ID is refused outright; no request on this connection is served.
                log.warning("client certificate refused: %s", exc)
                self.force_close()
                cast(asyncio.Transport, transport).abort()
                return
            if self.peer.not_after <= time.time():
                # SECURITY: a resumed TLS session (1.3 ticket, 1.2 session id) skips certificate
                # verification; never serve a certificate past its notAfter (RFC 5280 §6.1.3).
                log.warning("client certificate refused: expired (resumed TLS session)")
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
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False
        self._line_bytes = 0
        self._line_done = False

    def _arm(self) -> None:
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
        if isinstance(exc, LineTooLong) and self._line_bytes > _limit(exc):
            resp = problem(414, "uri_too_long", "request target too long", request_id)
        elif isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()
        ):
            resp = problem(431, "headers_too_large", "request header fields too large", request_id)
        elif status == 400:
            resp = problem(400, "bad_request", "malformed HTTP request", request_id)
        else:
            log.error("unhandled error (request_id=%s)", request_id, exc_info=exc)
            resp = problem(500, "internal_error", "internal error", request_id)
        # SECURITY: aiohttp would add "Server: Python/3.x aiohttp/3.y" (DESIGN.md §5).
        resp.headers["Server"] = SERVER
        resp.force_close()
        self._refused(resp.status, _reason(resp))
        return resp


def _limit(exc: LineTooLong) -> int:
    limit = exc.args[1] if len(exc.args) > 1 else None
    return limit if isinstance(limit, int) else sys.maxsize  # unknown: not the line


def _reason(resp: web.Response) -> str:
    return {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large"}.get(
        resp.status, "internal_error"
    )


class GatewayServer(web.Server):
    """aiohttp's low-level server, making :class:`GatewayRequestHandler` connections."""

    def __init__(
        self,
        handler: Any,
        *,
        header_read_s: float,
        on_refused: OnRefused | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._header_read_s = header_read_s
        self._on_refused = on_refused
        self._peer_cache = PeerCache()

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(
            self,
            loop=self._loop,
            header_read_s=self._header_read_s,
            peer_cache=self._peer_cache,
            on_refused=self._on_refused,
            **self._kwargs,
        )
