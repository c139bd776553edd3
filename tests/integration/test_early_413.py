"""A body declared too large is refused on the header (issue 12, item 2).

``Content-Length`` above ``server.limits.max_body_bytes`` gets 413 ``body_too_large`` in the
``observe`` stage, as nginx and Envoy refuse on the header: before routing, before
authentication and before the PDP. Counted at three real or recording servers:

- the PDP is a real OPA (``opa run --server``); its console decision log has one line per
  decision it made, so "zero new lines" means the policy never ran;
- authentication is a bearer route whose opaque tokens are introspected (RFC 7662) at a
  recording authorization server, each request with a new token and no cache, so "zero
  introspections" means authentication never ran;
- the upstream is the recording echo backend.

Every test then sends one request within the limit on the same gateway and sees each counter
move by exactly one: the counters work, so zero is a finding, not an accident. A chunked body
announces no length, so it still costs an authentication and a decision; it is cut at the limit
while streaming (413, the upstream sees a truncated body on an aborted connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.settings import parse_settings
from tests.integration.conftest import BASE_SERVER, merge
from tests.opa_server import OPAServer, require_real
from tests.support import (
    LOCALHOST,
    RawResponse,
    Upstream,
    http_request,
    raw_request,
    read_response,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
ISSUER = "https://as.test"
ALLOW_ALL = 'package agentgate.authz\n\ndecision := {"allow": true, "reason": "test:allow"}\n'


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPAServer]:
    require_real("opa")
    policy_dir = tmp_path_factory.mktemp("policy")
    (policy_dir / "allow.rego").write_text(ALLOW_ALL, encoding="utf-8")
    with OPAServer([policy_dir], tmp_path_factory.mktemp("opa")) as server:
        yield server


def decisions(opa: OPAServer) -> int:
    """Decisions OPA made so far: lines of its console decision log."""
    count = 0
    for line in (opa.workdir / "opa.log").read_text(errors="replace").splitlines():
        if line.startswith("{") and '"decision_id"' in line:
            count += int(json.loads(line).get("msg") == "Decision Log")
    return count


@dataclass
class AuthorizationServer:
    """RFC 7662 introspection that records every call and calls every token active."""

    tokens: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def introspect(request: web.Request) -> web.Response:
            form = await request.post()
            self.tokens.append(str(form.get("token")))
            now = int(time.time())
            return web.json_response(
                {"active": True, "iss": ISSUER, "sub": "agent-7", "exp": now + 300, "iat": now}
            )

        app = web.Application()
        app.router.add_post("/introspect", introspect)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, 0)
        await site.start()
        self.url = f"http://{LOCALHOST}:{self._runner.addresses[0][1]}/introspect"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthorizationServer]:
    server = AuthorizationServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Counters:
    opa: OPAServer
    auth: AuthorizationServer
    upstream: Upstream

    def now(self) -> tuple[int, int, int]:
        return decisions(self.opa), len(self.auth.tokens), len(self.upstream.hits)


@pytest.fixture
async def gw(
    tmp_path: Path,
    opa: OPAServer,
    auth_server: AuthorizationServer,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("EARLY413_INTROSPECT_SECRET", "introspection-client-secret")
    introspection = {
        "endpoint": auth_server.url,
        "client_id": "agentgate",
        "client_secret": "env:EARLY413_INTROSPECT_SECRET",
        "max_cache_s": 0,
    }
    config = {
        "server": merge(BASE_SERVER, {"limits": {"max_body_bytes": MAX_BODY}}),
        "issuers": [
            {
                "name": "as",
                "issuer": ISSUER,
                "audience": "agentgate",
                "introspection": introspection,
            }
        ],
        "authn": {"bearer": {"issuers": ["as"]}},
        "pdp": {"engine": "opa", "url": opa.url, "cache": {"ttl_s": 0, "max_entries": 0}},
        "routes": [{"name": "api", "authn": "bearer", "upstream": upstream.url}],
    }
    gateway = Gateway(parse_settings(config, tmp_path))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@pytest.fixture
def counters(opa: OPAServer, auth_server: AuthorizationServer, upstream: Upstream) -> Counters:
    return Counters(opa, auth_server, upstream)


def bearer() -> tuple[str, str]:
    return ("Authorization", "Bearer opaque-" + uuid.uuid4().hex)


async def send(gw: Gateway, data: bytes) -> RawResponse:
    assert gw.main_address is not None
    return await raw_request(gw.main_address, data)


def assert_413(resp: RawResponse) -> None:
    assert resp.status == 413, resp
    assert resp.header("Content-Type") == "application/problem+json"
    body = resp.json()
    assert (body["status"], body["reason"]) == (413, "body_too_large")
    assert body["request_id"] == resp.header("X-Request-Id")


async def assert_pipeline_counts(gw: Gateway, counters: Counters) -> None:
    """One request within the limit moves every counter by exactly one."""
    before = counters.now()
    body = b"x" * MAX_BODY  # exactly the limit is allowed
    resp = await send(gw, http_request("POST", "/ok", [bearer()], body))
    assert resp.status == 200, resp
    assert resp.json()["body_len"] == MAX_BODY
    expected = (before[0] + 1, before[1] + 1, before[2] + 1)
    await wait_until(lambda: counters.now() == expected, timeout=10)


# --------------------------------------------------------------------------- declared too large


@pytest.mark.parametrize(
    ("target", "declared", "extra"),
    [
        pytest.param("/upload", MAX_BODY + 1, [], id="one-byte-over"),
        pytest.param("/upload", 1 << 40, [], id="a-terabyte"),
        pytest.param("/upload", MAX_BODY + 1, [("Expect", "100-continue")], id="expect-100"),
    ],
)
async def test_declared_length_over_the_limit_is_413_before_authn_and_pdp(
    gw: Gateway,
    counters: Counters,
    target: str,
    declared: int,
    extra: list[tuple[str, str]],
) -> None:
    before = counters.now()
    # The head only: the gateway must answer without waiting for (or reading) the body.
    head = http_request("POST", target, [bearer(), ("Content-Length", str(declared)), *extra])
    resp = await send(gw, head)
    assert_413(resp)
    assert counters.now() == before  # no decision, no introspection, no upstream hit
    await assert_pipeline_counts(gw, counters)
    assert counters.upstream.paths() == ["/ok"]


async def test_declared_length_over_the_limit_with_the_body_sent_is_413(
    gw: Gateway, counters: Counters
) -> None:
    before = counters.now()
    resp = await send(gw, http_request("PUT", "/upload", [bearer()], b"y" * (MAX_BODY + 1)))
    assert_413(resp)
    assert counters.now() == before
    await assert_pipeline_counts(gw, counters)


async def test_the_unread_body_is_never_parsed_as_the_next_request(
    gw: Gateway, counters: Counters
) -> None:
    """The 413 is sent before the body is read; the body must then be discarded as a body
    (or the connection closed), never parsed as a request of its own (request smuggling)."""
    smuggled = http_request("GET", "/smuggled", [bearer()])
    body = smuggled + b"p" * (MAX_BODY + 1 - len(smuggled))
    after = http_request("GET", "/after", [bearer()])
    assert gw.main_address is not None
    reader, writer = await asyncio.open_connection(*gw.main_address)
    try:
        writer.write(http_request("POST", "/upload", [bearer()], body) + after)
        await writer.drain()
        async with asyncio.timeout(15):
            assert_413(await read_response(reader))
            try:
                second: RawResponse | None = await read_response(reader)
            except (EOFError, ConnectionError):
                second = None  # closing the connection is a correct answer too
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if second is not None:  # kept alive: the next request is the one the client sent next
        assert second.status == 200, second
        assert second.json()["path"] == "/after"
    assert "/smuggled" not in counters.upstream.paths()


async def test_declared_length_over_the_limit_is_413_even_without_a_credential(
    gw: Gateway, counters: Counters
) -> None:
    """The size is judged on the header, first: even a request that would be a 401 is a 413
    (no credential is looked at), and nothing is counted anywhere."""
    before = counters.now()
    head = http_request("POST", "/upload", [("Content-Length", str(MAX_BODY + 1))])
    assert_413(await send(gw, head))
    assert counters.now() == before
    resp = await send(gw, http_request("POST", "/upload", [], b"z"))
    assert resp.status == 401  # the same request within the limit: authentication runs


# --------------------------------------------------------------------------- chunked


def chunked(total: int, chunk: int = 16 * 1024) -> bytes:
    out, sent = bytearray(), 0
    while sent < total:
        size = min(chunk, total - sent)
        out += f"{size:x}\r\n".encode() + b"c" * size + b"\r\n"
        sent += size
    return bytes(out + b"0\r\n\r\n")


async def test_chunked_body_over_the_limit_is_cut_while_streaming(
    gw: Gateway, counters: Counters
) -> None:
    """No length is declared, so authentication and the PDP run; the body is cut at the limit
    on its way to the upstream, which never receives a complete request."""
    before = counters.now()
    head = http_request("POST", "/stream", [bearer(), ("Transfer-Encoding", "chunked")])
    resp = await send(gw, head + chunked(4 * MAX_BODY))
    assert_413(resp)
    assert counters.now()[:2] == (before[0] + 1, before[1] + 1)  # authn and PDP did run
    hits = [h for h in counters.upstream.hits if h.path == "/stream"]
    if hits:  # forwarding may have begun before the limit was crossed
        (hit,) = hits
        await wait_until(lambda: hit.finished)
        assert not hit.complete
        assert hit.body_len <= MAX_BODY
    await assert_pipeline_counts(gw, counters)


async def test_chunked_body_at_the_limit_is_forwarded(gw: Gateway, counters: Counters) -> None:
    head = http_request("POST", "/stream", [bearer(), ("Transfer-Encoding", "chunked")])
    resp = await send(gw, head + chunked(MAX_BODY))
    assert resp.status == 200, resp
    assert resp.json()["body_len"] == MAX_BODY
