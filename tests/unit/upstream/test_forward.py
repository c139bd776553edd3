"""gateway.upstream.forward.Forwarder on its own, between a real aiohttp front and upstream.

A small aiohttp "front" app calls ``Forwarder.forward`` exactly as the pipeline does (headers
already sanitised, the route's response headers, the query parameters to scrub) and renders a
:class:`GatewayError` with :mod:`gateway.render`; a scriptable aiohttp upstream stalls, resets,
redirects, trickles or cuts on cue. No gateway, no routing, no authn: the end-to-end versions
(hop-by-hop request headers, 50 MB bodies, slow clients, 100-continue, early 413 before authn)
are in ``tests/integration/test_forwarding.py``, ``test_slow_clients.py``, ``test_early_413.py``.

What is checked, from the module's contract:

- the upstream receives exactly the headers given: nothing invented (User-Agent, Accept,
  Accept-Encoding, Content-Type), no cookie replayed from an earlier answer;
- bytes pass untouched both ways (no decompression);
- a redirect comes back to the caller and is never followed; with ``scrub_query`` a
  ``Location``/``Content-Location`` loses the credential parameters the gateway added;
- the route's response headers override the upstream's; hop-by-hop ones never pass;
- refused/reset/closed -> 502 ``upstream_unavailable``; no head within ``headers_s`` -> 504
  ``upstream_timeout``; an https upstream is verified with the route's context;
- a body over ``max_body_bytes`` is 413 (declared: the upstream is never contacted;
  chunked: the upstream never receives it whole);
- once the head is sent, an idle, over-long or cut body aborts the caller's connection (a
  broken, never a short, body) and tags the response with ``STREAM_CUT``;
- :func:`route_budget` merges route and server timeouts (stream routes have no total).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import GatewayError
from gateway.net.tls import server_context
from gateway.render import error_response
from gateway.settings import Route, Timeouts, TLSSettings
from gateway.upstream.forward import STREAM_CUT, Budget, Forwarder, route_budget
from tests.support import TestPKI, closed_port, wait_until

MAX_BODY = 100_000
ROUTE = "r"


# --------------------------------------------------------------------------- the upstream


@dataclass
class Seen:
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool = True


@dataclass
class Upstream:
    """Scriptable upstream: one handler per path; ``seen`` records every request."""

    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        for path, handler in {
            "/echo": self.echo,
            "/stall-head": self.stall_head,
            "/reset-head": self.reset_head,
            "/redirect": self.redirect,
            "/gzip": self.gzipped,
            "/cookie": self.cookie,
            "/hop": self.hop,
            "/idle-body": self.idle_body,
            "/trickle": self.trickle,
            "/cut-body": self.cut_body,
        }.items():
            app.router.add_route("*", path, handler)
        app.router.add_route("*", "/attacker{tail:.*}", self.echo)
        return app

    async def _record(self, request: web.Request) -> Seen:
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        seen = Seen(request.path, raw)
        self.seen.append(seen)
        try:
            seen.body = await request.read()
        except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError):
            seen.complete = False
            raise
        return seen

    async def echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        return web.json_response({"method": request.method, "length": len(seen.body)})

    async def stall_head(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def reset_head(self, request: web.Request) -> web.Response:
        await self._record(request)
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        headers = CIMultiDict[str]()
        for value in request.query.getall("to", ()):
            headers.add("Location", value)
        if "content_location" in request.query:
            headers.add("Content-Location", request.query["content_location"])
        return web.Response(status=int(request.query.get("status", "302")), headers=headers)

    async def gzipped(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip"})

    async def cookie(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="ok", headers={"Set-Cookie": "sid=planted; Path=/"})

    async def hop(self, request: web.Request) -> web.Response:
        await self._record(request)
        headers = {
            "Connection": "X-Upstream-Private",
            "X-Upstream-Private": "internal",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": 'Basic realm="internal"',
            "X-Route": "from-upstream",
            "X-Kept": "yes",
        }
        return web.Response(text="ok", headers=headers)

    async def _head_then(
        self, request: web.Request, chunks: int, gap_s: float
    ) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(b"x" * 100)
            await asyncio.sleep(gap_s)
        await response.write_eof()
        return response

    async def idle_body(self, request: web.Request) -> web.StreamResponse:
        return await self._head_then(request, chunks=1, gap_s=5.0)  # one chunk, then silence

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        return await self._head_then(request, chunks=60, gap_s=0.05)  # never idle, 3 s in all

    async def cut_body(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"y" * 10)
        assert request.transport is not None
        request.transport.abort()
        return response


GZIPPED = gzip.compress(b"compressed payload " * 50)


# --------------------------------------------------------------------------- the front


@dataclass
class Call:
    """How the front calls ``forward`` for one test."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    response_headers: Mapping[str, str] = field(default_factory=dict)
    scrub_query: frozenset[str] = frozenset()
    ssl_context: ssl.SSLContext | None = None
    scheme: str = "http"


@dataclass
class Front:
    client: aiohttp.ClientSession
    url: str
    upstream: Upstream
    cuts: list[str | None]
    call: Call


FrontMaker = Callable[..., Awaitable[Front]]


@pytest.fixture
async def make_front() -> AsyncIterator[FrontMaker]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(
        *,
        call: Call | None = None,
        budget: Budget | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
        upstream_port: int | None = None,
        max_body: int = MAX_BODY,
    ) -> Front:
        upstream = Upstream()
        call = call or Call()
        if upstream_port is None:
            server = TestServer(upstream.app(), host="127.0.0.1")
            await server.start_server(ssl=upstream_ssl)
            cleanups.append(server.close)
            upstream_port = server.port
        base = URL.build(scheme=call.scheme, host="localhost", port=upstream_port)
        forwarder = Forwarder(
            connect_timeout_s=1.0,
            total_timeout_s=2.0,
            headers_timeout_s=0.5,
            idle_timeout_s=0.5,
            max_body_bytes=max_body,
            ssl_contexts={},
            budgets={ROUTE: budget} if budget else None,
        )
        await forwarder.start()
        cleanups.append(forwarder.close)
        cuts: list[str | None] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                response = await forwarder.forward(
                    request,
                    base.with_path(request.path).with_query(request.query),
                    CIMultiDict(call.headers),
                    route=ROUTE,
                    response_headers=call.response_headers,
                    ssl_context=call.ssl_context,
                    scrub_query=call.scrub_query,
                )
            except GatewayError as exc:
                return error_response(exc, "rid-1")
            cuts.append(response.get(STREAM_CUT))
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        front = TestServer(app, host="127.0.0.1")
        await front.start_server()
        cleanups.append(front.close)
        client = aiohttp.ClientSession(auto_decompress=False)
        cleanups.append(client.close)
        return Front(client, f"http://127.0.0.1:{front.port}", upstream, cuts, call)

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


async def _fetch(front: Front, path: str, **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    async with front.client.request(
        kwargs.pop("method", "GET"), front.url + path, allow_redirects=False, **kwargs
    ) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def _reason(body: bytes) -> str:
    return str(json.loads(body)["reason"])


# --------------------------------------------------------------------------- request side


async def test_upstream_receives_exactly_the_given_headers(make_front: FrontMaker) -> None:
    given = [("X-Request-Id", "rid-1"), ("Authorization", "Bearer converted"), ("X-A", "1")]
    front = await make_front(call=Call(headers=given))
    status, _, _ = await _fetch(
        front, "/echo", headers={"User-Agent": "caller", "Cookie": "c=1", "X-Not-Given": "1"}
    )
    assert status == 200
    (seen,) = front.upstream.seen
    names = [name.lower() for name, _ in seen.headers]
    # SECURITY: only what the pipeline put in; the client's own headers are not added here,
    # and aiohttp invents nothing (no User-Agent, Accept, Accept-Encoding, Content-Type).
    assert sorted(names) == sorted(["x-request-id", "authorization", "x-a", "host"])
    assert ("Authorization", "Bearer converted") in seen.headers


@pytest.mark.parametrize(
    ("body", "framing"),
    [
        pytest.param(b"a" * 1000, "content-length", id="declared"),
        pytest.param(None, "transfer-encoding", id="chunked"),
    ],
)
async def test_request_body_is_streamed_with_its_framing(
    make_front: FrontMaker, body: bytes | None, framing: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"b" * 250

    front = await make_front()
    status, _, raw = await _fetch(
        front, "/echo", method="POST", data=body if body is not None else chunks()
    )
    assert (status, json.loads(raw)["length"]) == (200, 1000)
    (seen,) = front.upstream.seen
    assert framing in {name.lower() for name, _ in seen.headers}
    assert "content-type" not in {name.lower() for name, _ in seen.headers}


async def test_no_cookie_is_kept_between_requests(make_front: FrontMaker) -> None:
    front = await make_front()
    status, headers, _ = await _fetch(front, "/cookie")
    assert status == 200
    assert headers["Set-Cookie"] == "sid=planted; Path=/"  # relayed to its owner, the caller
    await _fetch(front, "/echo")
    # SECURITY: one caller's upstream cookie never rides on another caller's request.
    assert "cookie" not in {name.lower() for name, _ in front.upstream.seen[1].headers}


async def test_declared_body_over_the_limit_is_413_before_connecting(
    make_front: FrontMaker,
) -> None:
    front = await make_front()
    status, _, raw = await _fetch(front, "/echo", method="POST", data=b"z" * (MAX_BODY + 1))
    assert (status, _reason(raw)) == (413, "body_too_large")
    assert front.upstream.seen == []


async def test_chunked_body_over_the_limit_is_413_and_never_delivered_whole(
    make_front: FrontMaker,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"c" * 32_768  # 256 KiB in all, over the 100 kB limit

    front = await make_front()
    status, _, raw = await _fetch(front, "/echo", method="POST", data=chunks())
    assert (status, _reason(raw)) == (413, "body_too_large")
    await asyncio.sleep(0.3)  # let the upstream notice the cut connection
    await wait_until(lambda: all(not s.complete for s in front.upstream.seen), timeout=5)
    assert all(len(s.body) <= MAX_BODY for s in front.upstream.seen)


async def test_body_at_the_limit_passes(make_front: FrontMaker) -> None:
    front = await make_front()
    status, _, raw = await _fetch(front, "/echo", method="POST", data=b"z" * MAX_BODY)
    assert (status, json.loads(raw)["length"]) == (200, MAX_BODY)


# --------------------------------------------------------------------------- response side


async def test_bytes_pass_untouched(make_front: FrontMaker) -> None:
    front = await make_front()
    status, headers, raw = await _fetch(front, "/gzip")
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert raw == GZIPPED  # not decompressed, not re-encoded


async def test_route_response_headers_override_and_hop_by_hop_never_pass(
    make_front: FrontMaker,
) -> None:
    front = await make_front(call=Call(response_headers={"X-Route": "from-route"}))
    status, headers, _ = await _fetch(front, "/hop")
    assert status == 200
    assert headers.getall("X-Route") == ["from-route"]
    assert headers["X-Kept"] == "yes"
    for name in ("X-Upstream-Private", "Keep-Alive", "Proxy-Authenticate"):
        assert name not in headers


REDIRECTS = [
    # (status, Location values, scrub, Location values the caller sees)
    pytest.param(302, ["/attacker"], frozenset(), ["/attacker"], id="302-relayed"),
    pytest.param(307, ["/attacker"], frozenset(), ["/attacker"], id="307-relayed"),
    pytest.param(
        302,
        ["https://up.example/next?api_key=s3cr3t&page=2#top"],
        frozenset({"api_key"}),
        ["https://up.example/next?page=2#top"],
        id="credential-param-scrubbed-fragment-kept",
    ),
    pytest.param(
        302,
        ["/next?api%5Fkey=s3cr3t&b=%2F+x"],
        frozenset({"api_key"}),
        ["/next?b=%2F+x"],
        id="percent-encoded-name-scrubbed-rest-byte-for-byte",
    ),
    pytest.param(
        303,
        ["/a?api_key=1", "/b?x=1&api_key=2"],
        frozenset({"api_key"}),
        ["/a", "/b?x=1"],
        id="every-location-scrubbed",
    ),
    pytest.param(
        302,
        ["/next?api_key=s3cr3t"],
        frozenset(),
        ["/next?api_key=s3cr3t"],
        id="no-scrub-configured",
    ),
    pytest.param(302, ["/plain#frag"], frozenset({"api_key"}), ["/plain#frag"], id="no-query"),
]


@pytest.mark.parametrize(("status", "locations", "scrub", "expected"), REDIRECTS)
async def test_redirect_is_returned_never_followed_and_scrubbed(
    make_front: FrontMaker,
    status: int,
    locations: list[str],
    scrub: frozenset[str],
    expected: list[str],
) -> None:
    front = await make_front(call=Call(scrub_query=scrub))
    query = [("status", str(status)), *(("to", value) for value in locations)]
    got, headers, _ = await _fetch(front, "/redirect", params=query, method="POST", data=b"x")
    assert got == status
    assert headers.getall("Location") == expected
    # SECURITY: the upstream chooses no second destination (a 307 would re-POST the body).
    assert [s.path for s in front.upstream.seen] == ["/redirect"]


async def test_content_location_is_scrubbed_too(make_front: FrontMaker) -> None:
    front = await make_front(call=Call(scrub_query=frozenset({"sig"})))
    _, headers, _ = await _fetch(
        front,
        "/redirect",
        params=[("status", "200"), ("content_location", "/doc?sig=abc&v=1")],
    )
    assert headers["Content-Location"] == "/doc?v=1"


# --------------------------------------------------------------------------- failures


async def test_connection_refused_is_502(make_front: FrontMaker) -> None:
    front = await make_front(upstream_port=closed_port())
    status, _, raw = await _fetch(front, "/echo")
    assert (status, _reason(raw)) == (502, "upstream_unavailable")
    assert b"127.0.0.1" not in raw
    assert b"Connect" not in raw  # no aiohttp exception name or address reaches the caller


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        pytest.param("/reset-head", 502, "upstream_unavailable", id="reset-before-head"),
        pytest.param("/stall-head", 504, "upstream_timeout", id="no-head-within-headers-s"),
    ],
)
async def test_failure_before_the_head(
    make_front: FrontMaker, path: str, status: int, reason: str
) -> None:
    front = await make_front()
    loop = asyncio.get_running_loop()
    started = loop.time()
    got, headers, raw = await _fetch(front, path)
    assert (got, _reason(raw)) == (status, reason)
    assert headers["Content-Type"] == "application/problem+json"
    assert loop.time() - started < 2.0  # headers_s is 0.5 s: never the upstream's 5 s


CUTS = [
    # (path, route budget, STREAM_CUT reason)
    pytest.param("/idle-body", None, "upstream_idle_timeout", id="idle-between-chunks"),
    pytest.param(
        "/trickle",
        Budget(connect_s=1.0, headers_s=1.0, idle_s=1.0, total_s=0.6),
        "upstream_total_timeout",
        id="total-budget",
    ),
    pytest.param(
        "/trickle",
        Budget(connect_s=1.0, headers_s=1.0, idle_s=1.0, total_s=None, max_s=0.6),
        "stream_max_duration",
        id="stream-max-duration",
    ),
    pytest.param("/cut-body", None, "upstream_cut", id="upstream-broke-off"),
]


@pytest.mark.parametrize(("path", "budget", "reason"), CUTS)
async def test_a_body_cut_after_the_head_breaks_the_callers_connection(
    make_front: FrontMaker, path: str, budget: Budget | None, reason: str
) -> None:
    front = await make_front(budget=budget)
    async with front.client.get(front.url + path) as response:
        assert response.status == 200  # the head was already on the wire
        # Never a short body mistaken for a complete one: the read fails.
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    await wait_until(lambda: bool(front.cuts), timeout=5)
    assert front.cuts == [reason]


async def test_a_complete_stream_carries_no_cut(make_front: FrontMaker) -> None:
    budget = Budget(connect_s=1.0, headers_s=1.0, idle_s=1.0, total_s=None, max_s=None)
    front = await make_front(budget=budget)
    status, _, raw = await _fetch(front, "/trickle")
    assert (status, len(raw)) == (200, 6000)
    assert front.cuts == [None]


# --------------------------------------------------------------------------- https upstream


def _upstream_tls(pki: TestPKI) -> ssl.SSLContext:
    return server_context(TLSSettings(cert=pki.server.cert, key=pki.server.key, client_cert="off"))


@pytest.mark.parametrize(
    ("trust", "status"),
    [
        pytest.param("route-ca", 200, id="route-context-trusts-dev-ca"),
        pytest.param("system", 502, id="system-store-refuses-dev-ca"),
        pytest.param("foreign-ca", 502, id="wrong-route-ca"),
    ],
)
async def test_https_upstream_is_verified(
    make_front: FrontMaker, pki: TestPKI, trust: str, status: int
) -> None:
    context = {
        "route-ca": ssl.create_default_context(cafile=str(pki.ca)),
        "system": None,
        "foreign-ca": ssl.create_default_context(cafile=str(pki.foreign_ca)),
    }[trust]
    front = await make_front(
        call=Call(scheme="https", ssl_context=context), upstream_ssl=_upstream_tls(pki)
    )
    got, _, raw = await _fetch(front, "/echo")
    assert got == status
    if status != 200:
        assert _reason(raw) == "upstream_unavailable"
        assert front.upstream.seen == []


# --------------------------------------------------------------------------- budgets

SERVER = Timeouts()


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        pytest.param(
            {},
            Budget(
                connect_s=SERVER.upstream_connect_s,
                headers_s=SERVER.upstream_headers_s,
                idle_s=SERVER.upstream_idle_s,
                total_s=SERVER.upstream_total_s,
            ),
            id="server-defaults",
        ),
        pytest.param(
            {"timeouts": {"connect_s": 0.5, "headers_s": 2, "idle_s": 3, "total_s": 4}},
            Budget(connect_s=0.5, headers_s=2, idle_s=3, total_s=4),
            id="route-overrides",
        ),
        pytest.param(
            {"stream": True, "timeouts": {"total_s": 4, "max_s": 600}},
            Budget(
                connect_s=SERVER.upstream_connect_s,
                headers_s=SERVER.upstream_headers_s,
                idle_s=SERVER.upstream_idle_s,
                total_s=None,
                max_s=600,
            ),
            id="stream-no-total-keeps-max",
        ),
        pytest.param(
            {"timeouts": {"max_s": 600}},
            Budget(
                connect_s=SERVER.upstream_connect_s,
                headers_s=SERVER.upstream_headers_s,
                idle_s=SERVER.upstream_idle_s,
                total_s=SERVER.upstream_total_s,
                max_s=None,
            ),
            id="max-ignored-off-stream",
        ),
    ],
)
def test_route_budget(route: dict[str, Any], expected: Budget) -> None:
    base = {"name": "r", "match": {"path_prefix": "/"}, "upstream": "http://u.example"}
    assert route_budget(Route.model_validate({**base, **route}), SERVER) == expected


@pytest.mark.parametrize(
    ("budget", "head_s", "deadline"),
    [
        pytest.param(Budget(1, 5, 1, 3), 3, (13, "upstream_total_timeout"), id="total-caps-head"),
        pytest.param(Budget(1, 2, 1, 3), 2, (13, "upstream_total_timeout"), id="headers-first"),
        pytest.param(Budget(1, 5, 1, None, 60), 5, (70, "stream_max_duration"), id="stream-max"),
        pytest.param(Budget(1, 5, 1, None, None), 5, None, id="stream-unbounded"),
    ],
)
def test_budget_head_and_deadline(
    budget: Budget, head_s: float, deadline: tuple[float, str] | None
) -> None:
    assert budget.head_s == head_s
    assert budget.deadline(10) == deadline
