"""gateway.authz.opa.OPAClient: the OPA REST Data API client, on its own (SPECS.md §15.1-15.2).

The contract of the module docstring, checked against a real ``opa run --server`` wherever
OPA can be made to answer that way (allow, deny, undefined, evaluation error, stopped), and
against a small scriptable aiohttp fake only for what OPA never does (a garbage body, a
5xx/4xx/204 without a decision, a redirect, a stall, a reset, a cookie, a missing
``decision_id``). Every failure must be a :class:`PDPError` (the PDP wrapper turns it into
503 ``pdp_unavailable``): no aiohttp exception, never a result. The fail-closed mapping
through ``PolicyDecisionPoint`` is ``tests/integration/test_opa_failclosed.py``'s; this file
is about the client itself: what it sends, what it accepts, what it refuses.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.authz.opa import OPAClient
from gateway.authz.pdp import UNDEFINED, PDPError
from tests.opa_server import LOCALHOST, OPAServer, free_port
from tests.support import require_real

POLICY = """package t

import rego.v1

decision := {"allow": input.user == "alice", "reason": "rbac"}

only_alice := {"allow": true} if input.user == "alice"

conflict := 1 if input.user

conflict := 2 if input.user
"""

ALICE: dict[str, Any] = {"user": "alice", "token": "not-a-real-token"}
BOB: dict[str, Any] = {"user": "bob"}

ClientMaker = Callable[..., Awaitable[OPAClient]]


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPAServer]:
    require_real("opa")
    folder = tmp_path_factory.mktemp("opa-client-policy")
    (folder / "t.rego").write_text(POLICY)
    with OPAServer([folder], tmp_path_factory.mktemp("opa-client")) as server:
        yield server


@pytest.fixture
async def make_client() -> AsyncIterator[ClientMaker]:
    made: list[OPAClient] = []

    async def make(url: str, decision: str = "t/decision", **kwargs: Any) -> OPAClient:
        client = OPAClient(url, decision, **kwargs)
        made.append(client)
        await client.start()
        return client

    yield make
    for client in made:
        await client.close()


# --------------------------------------------------------------------------- real OPA

REAL = [
    pytest.param("t/decision", ALICE, {"allow": True, "reason": "rbac"}, id="allow"),
    pytest.param("t/decision", BOB, {"allow": False, "reason": "rbac"}, id="deny"),
    pytest.param("t.decision", ALICE, {"allow": True, "reason": "rbac"}, id="dotted-path"),
    pytest.param("t/only_alice", ALICE, {"allow": True}, id="partial-rule-defined"),
    pytest.param("t/only_alice", BOB, UNDEFINED, id="partial-rule-undefined"),
    pytest.param("t/nothing_here", ALICE, UNDEFINED, id="unknown-rule-undefined"),
    pytest.param("no/such/package", ALICE, UNDEFINED, id="unknown-package-undefined"),
]


@pytest.mark.parametrize(("decision", "input", "expected"), REAL)
async def test_real_opa_answers(
    opa: OPAServer,
    make_client: ClientMaker,
    decision: str,
    input: dict[str, Any],
    expected: object,
) -> None:
    client = await make_client(opa.url, decision)
    assert client.ready()
    result, decision_id = await client.evaluate(dict(input))
    assert result == expected
    if expected is UNDEFINED:
        assert result is UNDEFINED  # the sentinel itself, never None or {}
    uuid.UUID(decision_id)  # OPA's own id (decision logging is on, as in production)


async def test_real_opa_evaluation_error_is_pdp_error(
    opa: OPAServer, make_client: ClientMaker
) -> None:
    client = await make_client(opa.url, "t/conflict")
    with pytest.raises(PDPError, match="HTTP 500"):
        await client.evaluate(dict(ALICE))


async def test_real_opa_stopped_is_pdp_error_and_not_ready_at_once(
    tmp_path: Path, make_client: ClientMaker
) -> None:
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "t.rego").write_text(POLICY)
    server = OPAServer([folder], tmp_path / "opa").start()
    try:
        # A health poll far in the future: only the failed decision can flip ready().
        client = await make_client(server.url, health_interval_s=60.0)
        assert client.ready()
        server.stop()
        with pytest.raises(PDPError, match="unreachable"):
            await client.evaluate(dict(ALICE))
        assert not client.ready()
    finally:
        server.stop()


# --------------------------------------------------------------------------- before any I/O

NOT_JSON = [
    pytest.param({"x": float("nan")}, id="nan"),
    pytest.param({"x": float("inf")}, id="infinity"),
    pytest.param({"x": {1, 2}}, id="set"),
    pytest.param({"x": b"bytes"}, id="bytes"),
]


@pytest.mark.parametrize("input", NOT_JSON)
async def test_input_that_is_not_json_is_refused_before_sending(
    make_client: ClientMaker, input: dict[str, Any]
) -> None:
    fake = FakeOPA()
    async with fake.running():
        client = await make_client(fake.url)
        with pytest.raises(PDPError, match="not JSON"):
            await client.evaluate(input)
    assert fake.data_hits == []


async def test_not_started_is_pdp_error() -> None:
    client = OPAClient(f"http://{LOCALHOST}:{free_port()}", "t/decision")
    with pytest.raises(PDPError, match="not started"):
        await client.evaluate(dict(ALICE))
    assert not client.ready()


@pytest.mark.parametrize(
    "decision", ["t/../admin", "t/dec ision", "t/décision", "", "t?x=1", "t/%2e%2e"]
)
def test_decision_path_outside_the_data_api_grammar_is_refused(decision: str) -> None:
    # The decision path is configuration, but a bad one must not build an odd URL.
    with pytest.raises(ValueError, match="invalid decision path"):
        OPAClient("http://opa.invalid", decision)


# --------------------------------------------------------------------------- scriptable fake


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeOPA:
    """Answers ``/v1/data/...`` and ``/health`` as scripted; records what it was sent."""

    status: int = 200
    body: bytes = b'{"result": {"allow": true}, "decision_id": "fake-1"}'
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0
    reset: bool = False
    health_status: int = 200
    health_headers: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    data_hits: list[Hit] = field(default_factory=list)
    elsewhere_hits: list[Hit] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def running(self) -> _Running:
        return _Running(self)

    async def data(self, request: web.Request) -> web.StreamResponse:
        self.data_hits.append(Hit(request.path, dict(request.headers), await request.read()))
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.reset and request.transport is not None:
            request.transport.abort()  # mid-exchange: no status line ever arrives
            return web.Response()
        return web.Response(status=self.status, body=self.body, headers=self.headers)

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere_hits.append(Hit(request.path, dict(request.headers), await request.read()))
        return web.json_response({"result": {"allow": True}})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health_status, headers=self.health_headers, body=b"{}")


class _Running:
    def __init__(self, fake: FakeOPA) -> None:
        self.fake = fake
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeOPA:
        app = web.Application()
        app.router.add_post("/v1/data/{tail:.*}", self.fake.data)
        app.router.add_route("*", "/elsewhere", self.fake.elsewhere)
        app.router.add_get("/health", self.fake.health)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOCALHOST, self.fake.port).start()
        return self.fake

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_request_shape(make_client: ClientMaker) -> None:
    fake = FakeOPA()
    async with fake.running():
        client = await make_client(fake.url + "/", "a.b/c")  # trailing slash, mixed separators
        assert await client.evaluate({"user": "alice", "n": [1, 2]}) == (
            {"allow": True},
            "fake-1",
        )
    (hit,) = fake.data_hits
    assert hit.path == "/v1/data/a/b/c"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.body == b'{"input":{"user":"alice","n":[1,2]}}'  # compact, exactly {"input": ...}


GARBAGE = [
    pytest.param(200, b'{"result": {"allow": tr', "malformed JSON", id="truncated-json"),
    pytest.param(200, b"<html>allow</html>", "malformed JSON", id="html"),
    pytest.param(200, b"", "malformed JSON", id="empty-200"),
    pytest.param(200, b"\xff\xfe{}", "malformed JSON", id="not-utf8"),
    pytest.param(200, b'[{"result": {"allow": true}}]', "not an object", id="json-array"),
    pytest.param(200, b"true", "not an object", id="json-true"),
    pytest.param(200, b"null", "not an object", id="json-null"),
    pytest.param(204, b"", "HTTP 204", id="204-no-content"),
    pytest.param(400, b'{"code": "invalid_parameter"}', "HTTP 400", id="400"),
    pytest.param(404, b'{"result": {"allow": true}}', "HTTP 404", id="404-with-allow"),
    pytest.param(500, b'{"result": {"allow": true}}', "HTTP 500", id="500-with-allow"),
    pytest.param(502, b"bad gateway", "HTTP 502", id="502"),
    pytest.param(503, b"", "HTTP 503", id="503"),
]


@pytest.mark.parametrize(("status", "body", "message"), GARBAGE)
async def test_anything_but_a_200_json_object_is_pdp_error(
    make_client: ClientMaker, status: int, body: bytes, message: str
) -> None:
    fake = FakeOPA(status=status, body=body)
    async with fake.running():
        client = await make_client(fake.url)
        with pytest.raises(PDPError, match=message) as info:
            await client.evaluate(dict(ALICE))
    # The message is for logs: it never echoes what the PDP sent, nor the input.
    assert "allow" not in str(info.value)
    assert ALICE["token"] not in str(info.value)
    assert client.ready()  # a bad answer is not a transport failure: /health decides


DECISION_IDS = [
    pytest.param(b'{"result": true}', id="absent"),
    pytest.param(b'{"result": true, "decision_id": ""}', id="empty"),
    pytest.param(b'{"result": true, "decision_id": 42}', id="number"),
    pytest.param(b'{"result": true, "decision_id": null}', id="null"),
    pytest.param(b'{"result": true, "decision_id": ["a"]}', id="list"),
]


@pytest.mark.parametrize("body", DECISION_IDS)
async def test_missing_decision_id_is_replaced_by_our_own_uuid4(
    make_client: ClientMaker, body: bytes
) -> None:
    fake = FakeOPA(body=body)
    async with fake.running():
        client = await make_client(fake.url)
        first = await client.evaluate(dict(ALICE))
        second = await client.evaluate(dict(ALICE))
    assert first[0] is True
    assert second[0] is True
    assert uuid.UUID(first[1]).version == 4
    assert first[1] != second[1]  # fresh per decision, never a constant


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_pdp_error_and_input_never_goes_elsewhere(
    make_client: ClientMaker, status: int
) -> None:
    fake = FakeOPA(status=status, body=b"", headers={"Location": "/elsewhere"})
    async with fake.running():
        client = await make_client(fake.url)
        with pytest.raises(PDPError, match=f"HTTP {status}"):
            await client.evaluate(dict(ALICE))
    assert len(fake.data_hits) == 1
    # SECURITY: a 307/308 would re-POST the policy input (issue 12).
    assert fake.elsewhere_hits == []


async def test_stall_is_bounded_by_the_callers_timeout_and_leaves_the_client_usable(
    make_client: ClientMaker,
) -> None:
    fake = FakeOPA(stall_s=5.0)
    async with fake.running():
        client = await make_client(fake.url)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.evaluate(dict(ALICE))
        assert time.monotonic() - started < 1.0
        fake.stall_s = 0.0
        assert await client.evaluate(dict(ALICE)) == ({"allow": True}, "fake-1")


async def test_reset_mid_exchange_is_pdp_error_and_not_ready(make_client: ClientMaker) -> None:
    fake = FakeOPA(reset=True)
    async with fake.running():
        client = await make_client(fake.url, health_interval_s=60.0)
        assert client.ready()
        with pytest.raises(PDPError, match="unreachable"):
            await client.evaluate(dict(ALICE))
        assert not client.ready()


async def test_no_cookie_is_kept_between_decisions(make_client: ClientMaker) -> None:
    fake = FakeOPA(headers={"Set-Cookie": "pdp=planted; Path=/"})
    async with fake.running():
        client = await make_client(fake.url)
        await client.evaluate(dict(ALICE))
        await client.evaluate(dict(BOB))
    assert [hit.headers.get("Cookie") for hit in fake.data_hits] == [None, None]


async def test_environment_proxy_is_ignored(
    make_client: ClientMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SECURITY: policy input must not be routed through a proxy the operator did not configure.
    closed = f"http://{LOCALHOST}:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fake = FakeOPA()
    async with fake.running():
        client = await make_client(fake.url)
        assert (await client.evaluate(dict(ALICE)))[0] == {"allow": True}


HEALTH = [
    pytest.param(200, {}, True, id="200-ready"),
    pytest.param(500, {}, False, id="500-not-ready"),
    pytest.param(503, {}, False, id="503-not-ready"),
    pytest.param(307, {"Location": "/elsewhere"}, False, id="redirect-not-followed"),
]


@pytest.mark.parametrize(("status", "headers", "ready"), HEALTH)
async def test_ready_follows_health(
    make_client: ClientMaker, status: int, headers: dict[str, str], ready: bool
) -> None:
    fake = FakeOPA(health_status=status, health_headers=headers)
    async with fake.running():
        client = await make_client(fake.url)
        assert client.ready() is ready
    assert fake.elsewhere_hits == []


async def test_ready_turns_and_returns_with_the_health_poll(make_client: ClientMaker) -> None:
    fake = FakeOPA()
    async with fake.running():
        client = await make_client(fake.url, health_interval_s=0.05)
        assert client.ready()
        fake.health_status = 503
        await _eventually(lambda: not client.ready())
        fake.health_status = 200
        await _eventually(client.ready)
        await client.close()
        assert not client.ready()


async def test_never_reachable_is_not_ready_and_pdp_error(make_client: ClientMaker) -> None:
    client = await make_client(f"http://{LOCALHOST}:{free_port()}")
    assert not client.ready()
    with pytest.raises(PDPError, match="unreachable"):
        await client.evaluate(dict(ALICE))


async def _eventually(predicate: Callable[[], bool], limit_s: float = 3.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
