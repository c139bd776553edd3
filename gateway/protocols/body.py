"""The bounded body-read step: the inbound body, read at most once, never past the limit.

:class:`RequestBody` implements :class:`gateway.context.Body` over an aiohttp request. The
pipeline builds one per request and hands it forward (``Inbound.body``); a stage that needs the
bytes awaits :meth:`RequestBody.read`, and the forwarder then sends :attr:`RequestBody.buffered`
instead of the stream. This replaces a request-key side channel that two stages wrote and the
forwarder read.

``read`` raises :class:`gateway.errors.PayloadTooLarge` (413) when ``Content-Length`` declares
more than ``max_body_bytes``, or when a chunked body grows past it while being read; nothing
read so far is kept then. A request without a body reads as ``b""`` and buffers nothing.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import PayloadTooLarge

_READ_CHUNK = 64 * 1024


class RequestBody:
    __slots__ = ("_buffered", "_max", "_request")

    def __init__(self, request: web.BaseRequest, max_bytes: int) -> None:
        self._request = request
        self._max = max_bytes
        self._buffered: bytes | None = None

    @property
    def exists(self) -> bool:
        return self._request.body_exists

    @property
    def declared_length(self) -> int | None:
        return self._request.content_length

    @property
    def buffered(self) -> bytes | None:
        """The bytes :meth:`read` returned, or None while nobody has read the body."""
        return self._buffered

    async def read(self) -> bytes:
        # Stages run one after another, never concurrently: no lock is needed per request.
        if self._buffered is not None:
            return self._buffered
        data = await self._read()
        if self._request.body_exists:
            self._buffered = data
        return data

    async def _read(self) -> bytes:
        length = self._request.content_length
        if length is not None and length > self._max:
            raise PayloadTooLarge()
        chunks: list[bytes] = []
        total = 0
        while chunk := await self._request.content.read(_READ_CHUNK):
            total += len(chunk)
            # SECURITY: bounded whether or not Content-Length was sent (chunked bodies).
            if total > self._max:
                raise PayloadTooLarge()
            chunks.append(chunk)
        return b"".join(chunks)
