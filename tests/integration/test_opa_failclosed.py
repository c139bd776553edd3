"""Fail closed against a real OPA: never an allow, and 503 whenever there is no usable answer.

- OPA stopped (real OPA, then stopped): 503, and ``ready()`` turns false.
- OPA slower than ``pdp_s`` (real OPA behind a delaying aiohttp proxy): 503 within the budget.
- OPA evaluation error (real OPA, a complete rule with conflicting values): 503.
- A decision path that does not exist (real OPA): deny, reason ``policy_undefined``.
- ``allow`` not a boolean, or a bare boolean decision (real OPA, temp-dir policy): deny,
  reason ``policy_malformed`` (a bare ``false``: ``policy_denied``).
- Malformed JSON, a non-200 status, JSON that is not an object (a small aiohttp fake PDP,
  because real OPA cannot be made to answer that way): 503.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.authz.cache import DecisionCache
from gateway.authz.engine import PolicyDecisionPoint
from gateway.authz.opa import OPAClient
from gateway.errors import ServiceUnavailable
from tests.opa_server import LOCALHOST, POLICIES, OPAServer, free_port, require_real

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
DECISION = "agentgate/authz/decision"
INPUT: dict[str, Any] = json.loads((GOLDEN / "input_mtls_agent.json").read_text())

PDPFactory = Callable[..., Awaitable[PolicyDecisionPoint]]


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPAServer]:
    require_real("opa")
    with OPAServer([POLICIES], tmp_path_factory.mktemp("opa")) as server:
        yield server


@pytest.fixture
async def make_pdp() -> AsyncIterator[PDPFactory]:
    made: list[PolicyDecisionPoint] = []

    async def make(
        url: str, decision: str = DECISION, timeout_s: float = 0.5
    ) -> PolicyDecisionPoint:
        client = OPAClient(url, decision, health_interval_s=0.1)
        pdp = PolicyDecisionPoint(client, timeout_s=timeout_s, cache=DecisionCache(0, 0))
        await pdp.start()
        made.append(pdp)
        return pdp

    yield make
    for pdp in made:
        await pdp.close()


async def decide(pdp: PolicyDecisionPoint) -> Any:
    return await pdp.decide(copy.deepcopy(INPUT), None)


async def expect_503(pdp: PolicyDecisionPoint, *, within: float = 2.0) -> ServiceUnavailable:
    started = time.perf_counter()
    with pytest.raises(ServiceUnavailable) as info:
        await decide(pdp)
    assert time.perf_counter() - started < within
    assert info.value.status == 503
    assert info.value.reason == "pdp_unavailable"
    return info.value


async def eventually(predicate: Callable[[], bool], limit_s: float = 3.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- real OPA


async def test_baseline_allow_and_ready(opa: OPAServer, make_pdp: PDPFactory) -> None:
    pdp = await make_pdp(opa.url)
    assert pdp.ready()
    decision = await decide(pdp)
    assert (decision.allow, decision.reason) == (True, "rbac:travel-agent")


async def test_stopped_opa_is_503_and_not_ready(tmp_path: Path, make_pdp: PDPFactory) -> None:
    server = OPAServer([POLICIES], tmp_path).start()
    try:
        pdp = await make_pdp(server.url)
        assert (await decide(pdp)).allow
        server.stop()
        error = await expect_503(pdp)
        assert "unreachable" in error.detail
        await eventually(lambda: not pdp.ready())
        server.start()  # same port: the pooled client reconnects by itself
        await eventually(pdp.ready)
        assert (await decide(pdp)).allow
    finally:
        server.stop()


async def test_never_started_opa_is_503(make_pdp: PDPFactory) -> None:
    pdp = await make_pdp(f"http://{LOCALHOST}:{free_port()}")
    assert not pdp.ready()
    await expect_503(pdp)


class DelayingProxy:
    """An aiohttp reverse proxy in front of OPA that holds every answer for ``delay`` s."""

    def __init__(self, target: str, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        async with self._session.request(
            request.method, self.target + request.path_qs, data=body, headers=request.headers
        ) as upstream:
            payload = await upstream.read()
            status, content_type = upstream.status, upstream.content_type
        if request.path != "/health":
            await asyncio.sleep(self.delay)
        return web.Response(status=status, body=payload, content_type=content_type)


async def test_slow_opa_is_503_within_the_budget(opa: OPAServer, make_pdp: PDPFactory) -> None:
    proxy = DelayingProxy(opa.url, delay=1.5)
    await proxy.start()
    try:
        fast_enough = await make_pdp(proxy.url, timeout_s=3.0)
        assert (await decide(fast_enough)).allow  # the proxy itself works
        slow = await make_pdp(proxy.url, timeout_s=0.2)
        started = time.perf_counter()
        error = await expect_503(slow, within=1.0)
        assert time.perf_counter() - started >= 0.2
        assert "within 0.2s" in error.detail
    finally:
        await proxy.close()


async def test_undefined_decision_path_denies(opa: OPAServer, make_pdp: PDPFactory) -> None:
    pdp = await make_pdp(opa.url, decision="agentgate/authz/does_not_exist")
    decision = await decide(pdp)
    assert decision.allow is False
    assert decision.reason == "policy_undefined"
    assert decision.status is None  # the pipeline renders a plain 403 policy deny


@pytest.fixture(scope="module")
def odd_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPAServer]:
    """A real OPA serving deliberately broken decision documents."""
    require_real("opa")
    folder = tmp_path_factory.mktemp("odd-policies")
    (folder / "odd.rego").write_text(
        """package odd

allow_yes := {"allow": "yes", "reason": "looks like a yes"}

allow_one := {"allow": 1}

bare_true := true

bare_false := false

no_allow := {"reason": "forgot allow"}

allow_with_bad_scopes := {"allow": true, "scopes": "flights.read"}

conflict := 1 if input.request

conflict := 2 if input.route
"""
    )
    with OPAServer([folder], tmp_path_factory.mktemp("odd-opa")) as server:
        yield server


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("allow_yes", "policy_malformed"),
        ("allow_one", "policy_malformed"),
        ("bare_true", "policy_malformed"),
        ("no_allow", "policy_malformed"),
        ("allow_with_bad_scopes", "policy_malformed"),
        ("bare_false", "policy_denied"),
    ],
)
async def test_non_boolean_allow_denies(
    odd_opa: OPAServer, make_pdp: PDPFactory, rule: str, reason: str
) -> None:
    decision = await decide(await make_pdp(odd_opa.url, decision=f"odd/{rule}"))
    assert (decision.allow, decision.reason) == (False, reason)


async def test_opa_evaluation_error_is_503(odd_opa: OPAServer, make_pdp: PDPFactory) -> None:
    error = await expect_503(await make_pdp(odd_opa.url, decision="odd/conflict"))
    assert "HTTP 500" in error.detail


# --------------------------------------------------------------------------- fake PDP


class FakePDP:
    """Answers every data request with a fixed status and raw body (and /health with 200)."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/data/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        pytest.param(200, b'{"result": {"allow": tr', "application/json", id="truncated-json"),
        pytest.param(200, b"<html>allow</html>", "text/html", id="html"),
        pytest.param(200, b"", "application/json", id="empty-body"),
        pytest.param(200, b'[{"result": {"allow": true}}]', "application/json", id="json-array"),
        pytest.param(200, b'"allow"', "application/json", id="json-string"),
        pytest.param(200, b'{"result": {"allow": true}', "application/json", id="unbalanced"),
        pytest.param(
            500, b'{"result": {"allow": true}}', "application/json", id="http-500-with-allow"
        ),
        pytest.param(400, b'{"code": "invalid_parameter"}', "application/json", id="http-400"),
        pytest.param(404, b"{}", "application/json", id="http-404"),
    ],
)
async def test_garbage_answers_are_503(
    make_pdp: PDPFactory, status: int, body: bytes, content_type: str
) -> None:
    fake = FakePDP(status, body, content_type)
    await fake.start()
    try:
        await expect_503(await make_pdp(fake.url))
    finally:
        await fake.close()


async def test_fake_pdp_well_formed_answer_allows(make_pdp: PDPFactory) -> None:
    # Control case: the fake itself is understood when it answers properly.
    body = json.dumps({"result": {"allow": True, "reason": "fake"}}).encode()
    fake = FakePDP(200, body)
    await fake.start()
    try:
        decision = await decide(await make_pdp(fake.url))
        assert (decision.allow, decision.reason) == (True, "fake")
    finally:
        await fake.close()
