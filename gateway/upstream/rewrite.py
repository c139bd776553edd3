"""The response-rewrite hook of :meth:`gateway.upstream.forward.Forwarder.forward`.

A :class:`Rewrite` sees the upstream's status and headers before anything is sent to the
client (:meth:`Rewrite.head`; it may raise a :class:`gateway.errors.GatewayError`, answered
as any refusal) and picks how the body is treated:

* ``None``: relayed untouched (the default for every response it does not understand);
* ``"body"``: read whole (bounded by :attr:`Rewrite.max_bytes`, else ``502``) and replaced by
  :meth:`Rewrite.body` before the head is sent, so a failure is still a clean error;
* ``"stream"``: relayed chunk by chunk through :meth:`Rewrite.feed` / :meth:`Rewrite.end`
  (Server-Sent Events), without ``Content-Length``. A failure there cuts the stream
  (``STREAM_CUT`` = :attr:`RewriteFailed.reason`): fail closed, never the unfiltered bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

Mode = Literal["body", "stream"] | None


class RewriteFailed(Exception):
    """A stream rewrite cannot go on; ``reason`` is the stream's cut reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Rewrite(Protocol):
    max_bytes: int

    async def head(self, status: int, headers: Mapping[str, str]) -> Mode: ...

    async def body(self, data: bytes) -> bytes: ...

    async def feed(self, chunk: bytes) -> bytes: ...

    async def end(self) -> bytes: ...
