"""Forwarding end to end (DESIGN.md §2, §5, §6): streaming, upstream failures, redirects, header
hygiene both ways, path normalisation, routing.

Most tests run the gateway in-process on plain HTTP (``tls`` omitted) and speak raw HTTP/1.1 so
that exactly the bytes under test reach the gateway (a client library would rewrite
``Connection``, merge dot segments or drop odd headers). The two 50 MB tests run the gateway
as a subprocess so that its resident memory can be measured on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest

from gateway.app import Gateway
from tests.integration.conftest import GatewayFactory, echo_route
from tests.support import (
    LOCALHOST,
    GatewayProcess,
    MiB,
    RawResponse,
    Upstream,
    closed_port,
    http_request,
    raw_request,
    read_response,
)

pytestmark = pytest.mark.integration

ProcessFactory = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


@pytest.fixture
async def gw(gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await gateway(routes=[echo_route(upstream)])


async def send(
    gw: Gateway, method: str, target: str, headers: Any = (), body: bytes = b""
) -> RawResponse:
    assert gw.main_address is not None
    return await raw_request(gw.main_address, http_request(method, target, headers, body))


def seen_headers(resp: RawResponse) -> list[tuple[str, str]]:
    return [(k, v) for k, v in resp.json()["headers"]]


def names(pairs: list[tuple[str, str]]) -> set[str]:
    return {k.lower() for k, _ in pairs}


def assert_problem(resp: RawResponse, status: int) -> dict[str, Any]:
    assert resp.status == status
    assert resp.header("Content-Type") == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    request_id = resp.header("X-Request-Id")
    assert request_id is not None
    assert body["request_id"] == request_id
    uuid.UUID(request_id)
    return body


# --------------------------------------------------------------------------- streaming, memory


class RSSSampler:
    """Samples a process's RSS every few milliseconds on a thread (independent of the loop)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


BIG_MB = 50
MAX_RSS_GROWTH = 16 * MiB
_PATTERN = bytes(range(256)) * 1024  # 256 KiB


async def upload_body(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = _PATTERN[: total - sent]
        sent += len(chunk)
        yield chunk


def upload_sha256(total: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(total, len(_PATTERN))
    for _ in range(full):
        digest.update(_PATTERN)
    digest.update(_PATTERN[:rest])
    return digest.hexdigest()


async def _streaming_gateway(start: ProcessFactory, upstream: Upstream) -> GatewayProcess:
    return await start(
        {
            "server": {
                "listen": "127.0.0.1:0",
                "admin_listen": "127.0.0.1:0",
                "limits": {"max_body_bytes": 2 * BIG_MB * MiB},
                "timeouts": {"upstream_total_s": 60, "drain_s": 2},
            },
            "routes": [echo_route(upstream)],
        }
    )


async def _upload(session: aiohttp.ClientSession, url: str, total: int) -> dict[str, Any]:
    async with session.post(url + "/upload", data=upload_body(total)) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def _download(session: aiohttp.ClientSession, url: str, mb: int) -> int:
    received = 0
    async with session.get(f"{url}/big?mb={mb}") as resp:
        assert resp.status == 200
        assert resp.content_length == mb * MiB
        async for chunk in resp.content.iter_chunked(256 * 1024):
            received += len(chunk)
    return received


async def test_request_body_of_50mb_is_streamed_in_bounded_memory(
    gateway_process: ProcessFactory, upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    gw = await _streaming_gateway(gateway_process, upstream)
    await _upload(session, gw.url, 4 * MiB)  # warm-up: buffers, pools, lazy imports
    baseline = psutil.Process(gw.pid).memory_info().rss
    total = BIG_MB * MiB
    with RSSSampler(gw.pid) as rss:
        result = await _upload(session, gw.url, total)
    assert result["body_len"] == total
    assert result["body_sha256"] == upload_sha256(total)
    assert rss.samples >= 3  # the sampler really ran during the transfer
    growth = rss.peak - baseline
    assert growth < MAX_RSS_GROWTH, f"gateway RSS grew {growth / MiB:.1f} MiB during a 50 MB upload"


async def test_response_body_of_50mb_is_streamed_in_bounded_memory(
    gateway_process: ProcessFactory, upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    gw = await _streaming_gateway(gateway_process, upstream)
    assert await _download(session, gw.url, 4) == 4 * MiB  # warm-up
    baseline = psutil.Process(gw.pid).memory_info().rss
    with RSSSampler(gw.pid) as rss:
        received = await _download(session, gw.url, BIG_MB)
    assert received == BIG_MB * MiB
    assert rss.samples >= 3  # the sampler really ran during the transfer
    growth = rss.peak - baseline
    assert growth < MAX_RSS_GROWTH, (
        f"gateway RSS grew {growth / MiB:.1f} MiB during a 50 MB download"
    )


# --------------------------------------------------------------------------- upstream failures


def assert_no_internals(resp: RawResponse, *secrets: str) -> None:
    body = resp.json()
    body.pop("request_id")  # a random UUID could contain any digit run
    text = json.dumps(body)
    for needle in (LOCALHOST, "localhost", "aiohttp", "Python", "Traceback", *secrets):
        assert needle not in text, f"{needle!r} leaked into the error body: {text}"


async def test_upstream_refused_is_502_without_internal_details(gateway: GatewayFactory) -> None:
    port = closed_port()
    gw = await gateway(routes=[{"name": "dead", "upstream": f"http://{LOCALHOST}:{port}"}])
    resp = await send(gw, "GET", "/x")
    body = assert_problem(resp, 502)
    assert body["reason"] == "upstream_unavailable"
    assert_no_internals(resp, str(port), "dead", "ClientConnectorError")


async def test_upstream_reset_is_502(gw: Gateway, upstream: Upstream) -> None:
    resp = await send(gw, "GET", "/reset")
    assert_problem(resp, 502)
    assert_no_internals(resp, str(upstream.port))
    # aiohttp's client retries an idempotent request once after a reset (RFC 9110 §9.2.2
    # allows it), so the upstream may see the GET twice; never more.
    assert upstream.paths() in (["/reset"], ["/reset", "/reset"])


async def test_upstream_too_slow_is_504(gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await gateway(
        routes=[echo_route(upstream)], server={"timeouts": {"upstream_total_s": 0.5}}
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await send(gw, "GET", "/slow")
    elapsed = loop.time() - started
    body = assert_problem(resp, 504)
    assert body["reason"] == "upstream_timeout"
    assert_no_internals(resp, str(upstream.port))
    assert 0.4 < elapsed < 10


async def test_redirect_is_returned_not_followed(gw: Gateway, upstream: Upstream) -> None:
    resp = await send(gw, "GET", "/redirect")
    assert resp.status == 302
    assert resp.header("Location") == f"http://{LOCALHOST}:{upstream.attacker.port}/"
    assert resp.header("X-Request-Id")
    assert upstream.attacker.connections == 0
    assert upstream.paths() == ["/redirect"]


# --------------------------------------------------------------------------- request headers

HOP_BY_HOP_SENT = [
    ("Connection", "close, X-Secret"),
    ("X-Secret", "must-not-pass"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Upgrade", "websocket"),
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
    ("X-Kept", "yes"),
]


async def test_hop_by_hop_request_headers_never_reach_upstream(
    gw: Gateway, upstream: Upstream
) -> None:
    resp = await send(gw, "GET", "/h", HOP_BY_HOP_SENT)
    assert resp.status == 200
    seen = names(seen_headers(resp))
    for name in (
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in seen, f"{name} reached the upstream"
    assert "x-kept" in seen
    assert "must-not-pass" not in resp.body.decode()


SPOOFED = [
    ("Txn-Token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-For", "7.7.7.7, 8.8.8.8"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "admin.internal"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Forwarded-Client-Cert", "By=spiffe://example.org/admin;Hash=00"),
    ("X-Request-Id", "spoofed-request-id"),
    ("Authorization", "Bearer stolen-token"),
    ("DPoP", "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.sig"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Admin", "1"),
    ("X-Kept", "yes"),
]


async def test_client_identity_headers_never_reach_upstream(gw: Gateway) -> None:
    resp = await send(gw, "GET", "/id", SPOOFED)
    assert resp.status == 200
    seen = seen_headers(resp)
    seen_names = names(seen)
    for name in (
        "txn-token",
        "x-forwarded-client-cert",
        "authorization",
        "dpop",
        "forwarded",
        "x-real-ip",
    ):
        assert name not in seen_names, f"client-sent {name} reached the upstream"
    assert not [k for k, _ in seen if "_" in k], "a header with '_' reached the upstream"
    values = " ".join(v for _, v in seen)
    for spoof in ("6.6.6.6", "7.7.7.7", "stolen-token", "admin.internal", "spoofed-request-id"):
        assert spoof not in values
    assert [v for k, v in seen if k.lower() == "x-forwarded-for"] == [LOCALHOST]
    assert [v for k, v in seen if k.lower() == "x-forwarded-proto"] == ["http"]
    assert [v for k, v in seen if k.lower() == "x-forwarded-host"] == ["gw.test"]
    assert ("X-Kept", "yes") in seen


@pytest.mark.parametrize(
    ("trusted_hops", "client_xff", "expected"),
    [
        pytest.param(0, [], LOCALHOST, id="no-xff"),
        pytest.param(0, ["1.2.3.4", "5.6.7.8"], LOCALHOST, id="hops0-client-xff-ignored"),
        pytest.param(1, ["6.6.6.6, 1.2.3.4"], f"1.2.3.4, {LOCALHOST}", id="hops1-keeps-last"),
        pytest.param(1, ["6.6.6.6", "1.2.3.4"], f"1.2.3.4, {LOCALHOST}", id="hops1-two-lines"),
    ],
)
async def test_exactly_one_x_forwarded_for_ending_in_the_peer(
    gateway: GatewayFactory,
    upstream: Upstream,
    trusted_hops: int,
    client_xff: list[str],
    expected: str,
) -> None:
    gw = await gateway(
        routes=[echo_route(upstream)], server={"forwarded": {"trusted_hops": trusted_hops}}
    )
    resp = await send(gw, "GET", "/xff", [("X-Forwarded-For", v) for v in client_xff])
    xff = [v for k, v in seen_headers(resp) if k.lower() == "x-forwarded-for"]
    assert xff == [expected]
    assert xff[0].endswith(LOCALHOST)


async def test_request_id_is_the_one_upstream_saw(gw: Gateway) -> None:
    first = await send(gw, "GET", "/rid")
    second = await send(gw, "GET", "/rid")
    for resp in (first, second):
        assert resp.status == 200
        rid = resp.header("X-Request-Id")
        assert rid is not None
        uuid.UUID(rid)
        assert [v for k, v in seen_headers(resp) if k.lower() == "x-request-id"] == [rid]
    assert first.header("X-Request-Id") != second.header("X-Request-Id")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        pytest.param("/nothing-here", 404, id="no-route"),
        pytest.param("/svc/a%2Fb", 400, id="bad-path"),
        pytest.param("/dead/x", 502, id="upstream-down"),
    ],
)
async def test_every_error_response_has_a_request_id(
    gateway: GatewayFactory, upstream: Upstream, target: str, status: int
) -> None:
    gw = await gateway(
        routes=[
            {"name": "svc", "match": {"path_prefix": "/svc/"}, "upstream": upstream.url},
            {
                "name": "dead",
                "match": {"path_prefix": "/dead/"},
                "upstream": f"http://{LOCALHOST}:{closed_port()}",
            },
        ]
    )
    resp = await send(gw, "GET", target)
    assert_problem(resp, status)
    assert resp.header("Server") == "agentgate"
    assert upstream.hits == []


# --------------------------------------------------------------------------- response headers


async def test_upstream_hop_by_hop_response_headers_are_removed(gw: Gateway) -> None:
    resp = await send(gw, "GET", "/hop")
    assert resp.status == 200
    got = names(resp.headers)
    for name in (
        "x-internal-route",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ):
        assert name not in got, f"upstream {name} reached the client"
    assert all(v.lower() in ("keep-alive", "close") for v in resp.all("Connection"))
    assert resp.header("X-Kept") == "yes"
    assert resp.json() == {"hop": True}


async def test_server_header_is_agentgate_without_version(gw: Gateway) -> None:
    for target in ("/ok", "/hop"):
        resp = await send(gw, "GET", target)
        assert resp.status == 200
        assert resp.all("Server") == ["agentgate"]


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        pytest.param("/a/./b/../c", "/a/c", id="dot-segments"),
        pytest.param("/a/%2e%2e/c", "/c", id="encoded-dotdot"),
        pytest.param("/a/%2E%2e/%2e/c", "/c", id="encoded-dotdot-mixed-case"),
        pytest.param("/../../etc/passwd", "/etc/passwd", id="never-above-root"),
        pytest.param("//a///b", "/a/b", id="merged-slashes"),
        pytest.param("/%41%7e%2D", "/A~-", id="unreserved-decoded"),
        pytest.param("/x%3ay%c3%a9", "/x%3Ay%C3%A9", id="reserved-uppercased"),
        pytest.param("/Case/Kept", "/Case/Kept", id="case-kept"),
        pytest.param("/q?b=%2F&a=1+2&&c", "/q?b=%2F&a=1+2&&c", id="query-byte-for-byte"),
        pytest.param("/p/..?x=../y", "/?x=../y", id="query-not-normalised"),
    ],
)
async def test_path_is_normalised_once_end_to_end(
    gw: Gateway, upstream: Upstream, target: str, upstream_path: str
) -> None:
    resp = await send(gw, "GET", target)
    assert resp.status == 200
    assert resp.json()["path"] == upstream_path
    assert upstream.paths() == [upstream_path]


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/a%2Fb", id="encoded-slash"),
        pytest.param("/a%2fb", id="encoded-slash-lower"),
        pytest.param("/a%5Cb", id="encoded-backslash"),
        pytest.param("/a%00b", id="encoded-nul"),
        pytest.param("/public/..;/admin", id="path-parameter"),
        pytest.param("/a%zz", id="bad-escape"),
        pytest.param("*", id="asterisk-form"),
    ],
)
async def test_bad_path_is_400_before_upstream(
    gw: Gateway, upstream: Upstream, target: str
) -> None:
    resp = await send(gw, "GET", target)
    assert_problem(resp, 400)
    assert upstream.hits == []


# --------------------------------------------------------------------------- routing


async def test_strip_prefix_route(gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await gateway(
        routes=[
            {
                "name": "svc",
                "match": {"path_prefix": "/svc/"},
                "strip_prefix": True,
                "upstream": upstream.url + "/base",
            },
            {
                "name": "keep",
                "match": {"path_prefix": "/keep/"},
                "upstream": upstream.url + "/base/",
            },
        ]
    )
    for target, expected in [
        ("/svc/x/y?q=1", "/base/x/y?q=1"),
        ("/svc/", "/base/"),
        ("/svc/./x/../../svc/z", "/base/z"),
        ("/keep/x", "/base/keep/x"),
    ]:
        resp = await send(gw, "GET", target)
        assert resp.status == 200, target
        assert resp.json()["path"] == expected, target


ROUTES_IN_ORDER: list[dict[str, Any]] = [
    {"name": "post-only", "match": {"path_prefix": "/r/", "methods": ["post"]}, "suffix": "/one"},
    {
        "name": "api-host",
        "match": {"path_prefix": "/r/", "hosts": ["*.api.test", "api.test"]},
        "suffix": "/two",
    },
    {"name": "fallback", "match": {"path_prefix": "/r/"}, "suffix": "/three"},
    {"name": "get-only", "match": {"path_prefix": "/g/", "methods": ["GET"]}, "suffix": "/four"},
]


@pytest.mark.parametrize(
    ("method", "host", "target", "expected"),
    [
        pytest.param("POST", "gw.test", "/r/a", "/one/r/a", id="method-match-first"),
        pytest.param("POST", "v1.api.test", "/r/a", "/one/r/a", id="first-match-wins"),
        pytest.param("GET", "v1.api.test:8443", "/r/a", "/two/r/a", id="wildcard-host-port"),
        pytest.param("GET", "API.test", "/r/a", "/two/r/a", id="host-case-insensitive"),
        pytest.param("GET", "evil-api.test", "/r/a", "/three/r/a", id="wildcard-needs-dot"),
        pytest.param("GET", "gw.test", "/r/a", "/three/r/a", id="fallback"),
        pytest.param("GET", "gw.test", "/g/x", "/four/g/x", id="get-only"),
        pytest.param("HEAD", "gw.test", "/g/x", "405 GET", id="method-mismatch-405"),
        pytest.param("GET", "gw.test", "/rr", None, id="prefix-mismatch-404"),
        pytest.param("GET", "gw.test", "/", None, id="root-404"),
    ],
)
async def test_routes_are_tried_in_order(
    gateway: GatewayFactory,
    upstream: Upstream,
    method: str,
    host: str,
    target: str,
    expected: str | None,
) -> None:
    routes = [
        {"name": r["name"], "match": r["match"], "upstream": upstream.url + r["suffix"]}
        for r in ROUTES_IN_ORDER
    ]
    gw = await gateway(routes=routes)
    body = b"{}" if method == "POST" else b""
    resp = await send(gw, method, target, [("Host", host)], body)
    if expected is None:
        assert resp.status == 404
        assert upstream.hits == []
        if method != "HEAD":
            assert_problem(resp, 404)
    elif expected.startswith("405 "):
        assert resp.status == 405  # RFC 9110 §15.5.6, with the methods the path supports
        assert resp.all("Allow") == [expected.removeprefix("405 ")]
        assert upstream.hits == []
    else:
        assert resp.status == 200
        assert resp.json()["path"] == expected
        assert resp.json()["method"] == method


# --------------------------------------------------------------------------- framing

SMUGGLING = [
    pytest.param(
        b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        id="content-length-and-chunked",
    ),
    pytest.param(
        b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        id="two-content-lengths",
    ),
    pytest.param(
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nx",
        id="transfer-encoding-identity",
    ),
    pytest.param(
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
        id="unknown-transfer-coding",
    ),
    pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET /s HTTP/1.1\r\n\r\n", id="no-host"),
    pytest.param(b"GET /s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET http://evil.test/s HTTP/1.1\r\nHost: x\r\n\r\n", id="absolute-form"),
    pytest.param(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", id="connect"),
]


@pytest.mark.parametrize("data", SMUGGLING)
async def test_ambiguous_framing_is_refused_before_upstream(
    gw: Gateway, upstream: Upstream, data: bytes
) -> None:
    assert gw.main_address is not None
    resp = await raw_request(gw.main_address, data)
    assert resp.status in (400, 501), resp
    assert resp.header("X-Request-Id")
    assert upstream.hits == []


async def test_no_content_type_is_invented_for_the_upstream(gw: Gateway) -> None:
    resp = await send(gw, "POST", "/ct", body=b"opaque bytes")
    assert resp.status == 200
    assert resp.json()["body_len"] == len(b"opaque bytes")
    assert "content-type" not in names(seen_headers(resp))
    resp = await send(gw, "POST", "/ct", [("Content-Type", "text/csv")], b"a,b")
    assert [v for k, v in seen_headers(resp) if k.lower() == "content-type"] == ["text/csv"]


async def test_expect_100_continue_gets_an_interim_response(
    gw: Gateway, upstream: Upstream
) -> None:
    # RFC 9110 §10.1.1: answer 100 (or a final status) before the client sends the body;
    # clients otherwise stall (curl for 1 s, others until their own timeout).
    assert gw.main_address is not None
    reader, writer = await asyncio.open_connection(*gw.main_address)
    try:
        writer.write(
            http_request("POST", "/upload", [("Expect", "100-continue"), ("Content-Length", "5")])
        )
        async with asyncio.timeout(3):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        writer.write(b"hello")
        async with asyncio.timeout(10):
            resp = await read_response(reader)
        assert resp.status == 200
        assert resp.json()["body_len"] == 5
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_head_response_keeps_the_connection_usable(gw: Gateway) -> None:
    assert gw.main_address is not None
    reader, writer = await asyncio.open_connection(*gw.main_address)
    try:
        writer.write(http_request("HEAD", "/h1") + http_request("GET", "/h2"))
        async with asyncio.timeout(10):
            head = await read_response(reader, head=True)
            after = await read_response(reader)
        assert head.status == 200
        assert head.header("X-Request-Id")
        assert after.json()["path"] == "/h2"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
