"""Requests signed by agent credentials, as the pipeline hands them to ``agent_credential``.

Shared by the authn method's, the SDK's property and the CLI's tests: an aiohttp mocked
request with a body read once, and its :class:`RequestFacts` on the real clock (signatures
made by the SDK carry the real ``created``).
"""

from __future__ import annotations

import time

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.context import Inbound, RequestFacts
from tests.support import inbound

HOST = "gw.example.org"


class _Payload:
    """The body of a mocked request, read once."""

    def __init__(self, body: bytes | None) -> None:
        self._body = body or b""

    async def readany(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def read(self, n: int = -1) -> bytes:
        return await self.readany()

    def at_eof(self) -> bool:
        return not self._body


def request(
    headers: dict[str, str] | list[tuple[str, str]],
    method: str = "GET",
    path: str = "/flights/1",
    body: bytes | None = None,
) -> Inbound:
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    items.append(("Host", HOST))
    if body is not None:
        items.append(("Content-Length", str(len(body))))
    mocked = make_mocked_request(method, path, headers=CIMultiDict(items), payload=_Payload(body))
    return inbound(mocked)


def facts(method: str = "GET", path: str = "/flights/1", now: float | None = None) -> RequestFacts:
    return RequestFacts(
        request_id="r1",
        method=method,
        scheme="https",
        host=HOST,
        path=path,
        raw_query="",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto="https",
        forwarded_host=HOST,
        peer=None,
        time_ns=int((time.time() if now is None else now) * 1e9),
    )
