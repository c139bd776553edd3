"""gateway.render: the one place where errors become HTTP responses (DESIGN.md §5, RFC 9457).

What the module promises, case by case, and checked on the wire through a real aiohttp
server (what a caller actually receives, after aiohttp serialised the response):

- status and RFC 9457 §3.1 members: ``type`` ``about:blank``, ``title`` the status phrase,
  ``status``, ``detail`` the *public* text, plus ``reason`` and ``request_id``;
  ``decision_id`` only for policy outcomes;
- ``Content-Type: application/problem+json`` (RFC 9457 §3), ``Cache-Control: no-store``,
  ``X-Request-Id``;
- the error's own headers (RFC 6750 §3 ``WWW-Authenticate`` challenges, ``Retry-After``)
  pass unchanged, but can never replace the request id or ``no-store``;
- the private ``detail`` (internal hosts, tokens, secrets) reaches neither body nor headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    HeadersTooLarge,
    InvalidPath,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    URITooLong,
)
from gateway.render import PROBLEM_JSON, REQUEST_ID, error_response, problem

RID = "0f8e6c1d2b3a49f0a1b2c3d4e5f60718"
# What an error's private detail may hold: none of it may reach the caller.
SECRETS = (
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
    "opa.internal:8181",
    "redis://:hunter2@10.0.0.7:6379/0",
    "Traceback (most recent call last)",
)
PRIVATE = "upstream said: " + " | ".join(SECRETS)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Response], Any]]:
    """GET / on a real aiohttp server answers with the given response object."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def fetch(response: web.Response) -> tuple[aiohttp.ClientResponse, bytes]:
        async def handler(request: web.Request) -> web.Response:
            return response

        app = web.Application()
        app.router.add_get("/", handler)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        answer = await client.get("/")
        return answer, await answer.read()

    yield fetch
    for client in clients:
        await client.close()


ERRORS = [
    pytest.param(BadRequest(PRIVATE), 400, "bad_request", id="400-bad-request"),
    pytest.param(InvalidPath(PRIVATE), 400, "invalid_path", id="400-invalid-path"),
    pytest.param(Unauthorized(PRIVATE), 401, "authn_invalid", id="401-unauthorized"),
    pytest.param(Forbidden(PRIVATE), 403, "policy_denied", id="403-policy"),
    pytest.param(NotFound(PRIVATE), 404, "no_route", id="404-no-route"),
    pytest.param(
        MethodNotAllowed(PRIVATE),
        405,
        "method_not_allowed",
        id="405-method",
    ),
    pytest.param(
        GatewayError(PRIVATE, reason="body_timeout", public="request body too slow", status=408),
        408,
        "body_timeout",
        id="408-overridden-status",
    ),
    pytest.param(PayloadTooLarge(PRIVATE), 413, "body_too_large", id="413"),
    pytest.param(URITooLong(PRIVATE), 414, "uri_too_long", id="414"),
    pytest.param(
        HeadersTooLarge(PRIVATE),
        431,
        "headers_too_large",
        id="431",
    ),
    pytest.param(GatewayError(PRIVATE), 500, "internal_error", id="500"),
    pytest.param(BadGateway(PRIVATE), 502, "upstream_unavailable", id="502"),
    pytest.param(
        ServiceUnavailable(PRIVATE, reason="pdp_unavailable"),
        503,
        "pdp_unavailable",
        id="503-pdp",
    ),
    pytest.param(GatewayTimeout(PRIVATE), 504, "upstream_timeout", id="504"),
]


@pytest.mark.parametrize(("error", "status", "reason"), ERRORS)
async def test_error_becomes_a_problem_document_without_its_detail(
    serve: Callable[[web.Response], Any],
    error: GatewayError,
    status: int,
    reason: str,
) -> None:
    answer, raw = await serve(error_response(error, RID))
    assert answer.status == status
    assert answer.headers["Content-Type"] == PROBLEM_JSON  # RFC 9457 §3, no charset parameter
    assert answer.headers[REQUEST_ID] == RID
    assert answer.headers["Cache-Control"] == "no-store"
    assert json.loads(raw) == {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": error.public,
        "reason": reason,
        "request_id": RID,
    }
    # SECURITY: the private detail (hosts, tokens, URLs with passwords) stays in the audit log.
    wire = raw.decode() + "".join(f"{k}: {v}\n" for k, v in answer.headers.items())
    for secret in SECRETS:
        assert secret not in wire


CHALLENGES = [
    pytest.param(
        'Bearer realm="agentgate"',
        id="rfc6750-3-no-credential",  # §3.1: no error code when the request had no token
    ),
    pytest.param(
        'Bearer realm="agentgate", error="invalid_token", '
        'error_description="The access token expired"',
        id="rfc6750-3.1-invalid-token",
    ),
    pytest.param(
        'Bearer realm="agentgate", error="insufficient_scope", scope="flights.read"',
        id="rfc6750-3.1-insufficient-scope",
    ),
    pytest.param(
        'DPoP algs="ES256 EdDSA", error="use_dpop_nonce"',
        id="rfc9449-7.1-dpop-nonce",
    ),
]


@pytest.mark.parametrize("challenge", CHALLENGES)
async def test_www_authenticate_challenge_passes_verbatim_once(
    serve: Callable[[web.Response], Any], challenge: str
) -> None:
    error = Unauthorized(PRIVATE, headers={"WWW-Authenticate": challenge})
    answer, _ = await serve(error_response(error, RID))
    assert answer.status == 401
    assert answer.headers.getall("WWW-Authenticate") == [challenge]


async def test_retry_after_and_other_error_headers_pass(
    serve: Callable[[web.Response], Any],
) -> None:
    error = GatewayError(
        PRIVATE,
        reason="rate_limited",
        public="too many requests",
        status=429,
        headers={"Retry-After": "2", "RateLimit": '"burst";r=0;t=2'},
    )
    answer, raw = await serve(error_response(error, RID))
    assert (answer.status, answer.headers["Retry-After"]) == (429, "2")
    assert answer.headers["RateLimit"] == '"burst";r=0;t=2'
    assert json.loads(raw)["title"] == "Too Many Requests"


# problem() merges into a case-sensitive dict, so a differently-cased name slips past the
# override and goes out beside ours (reported to the lead: gateway/render.py is not T's).
SPOOFS = [
    pytest.param({REQUEST_ID: "attacker-chosen"}, id="request-id"),
    pytest.param({"Cache-Control": "public, max-age=86400"}, id="cache-control"),
    pytest.param({"x-request-id": "attacker-chosen"}, id="request-id-lowercase"),
    pytest.param({"cache-control": "public"}, id="cache-control-lowercase"),
]


@pytest.mark.parametrize("headers", SPOOFS)
async def test_error_headers_cannot_replace_request_id_or_no_store(
    serve: Callable[[web.Response], Any], headers: dict[str, str]
) -> None:
    # A 401 cached by a shared proxy, or an audit trail keyed by a foreign id, would be a leak.
    answer, raw = await serve(error_response(Unauthorized(headers=headers), RID))
    assert answer.headers.getall(REQUEST_ID) == [RID]
    assert answer.headers.getall("Cache-Control") == ["no-store"]
    assert json.loads(raw)["request_id"] == RID


DECISIONS = [
    pytest.param(Forbidden(PRIVATE, decision_id="dec-42"), "dec-42", id="policy-deny-carries-it"),
    pytest.param(Forbidden(PRIVATE), None, id="absent-when-none"),
    pytest.param(Unauthorized(PRIVATE), None, id="authn-has-none"),
]


@pytest.mark.parametrize(("error", "decision_id"), DECISIONS)
async def test_decision_id_only_when_the_pdp_gave_one(
    serve: Callable[[web.Response], Any], error: GatewayError, decision_id: str | None
) -> None:
    _, raw = await serve(error_response(error, RID))
    body = json.loads(raw)
    assert body.get("decision_id") == decision_id
    assert ("decision_id" in body) is (decision_id is not None)


async def test_problem_body_is_compact_ascii_json(serve: Callable[[web.Response], Any]) -> None:
    # Non-ASCII public text is escaped: the body is ASCII whatever the caller's decoder.
    answer, raw = await serve(problem(403, "policy_denied", 'refusé "ici"\n', RID))
    assert raw.isascii()
    assert b": " not in raw  # separators=(",", ":"): no padding
    assert b", " not in raw
    assert json.loads(raw)["detail"] == 'refusé "ici"\n'
    assert int(answer.headers["Content-Length"]) == len(raw)


async def test_given_headers_are_not_mutated() -> None:
    # problem() copies: a shared header map (a class constant) must not collect request ids.
    shared = {"WWW-Authenticate": 'Bearer realm="agentgate"'}
    problem(401, "authn_missing", "authentication required", RID, headers=shared)
    assert shared == {"WWW-Authenticate": 'Bearer realm="agentgate"'}
