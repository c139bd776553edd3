"""The one place where errors become HTTP responses (DESIGN.md §5).

Bodies are small RFC 9457 ``application/problem+json`` documents holding only
the public text, the stable reason code, the request id and, for policy
outcomes, the decision id. Nothing private (detail, stack, host names, library
versions) is ever written here.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import GatewayError, JSONRPCRefused

REQUEST_ID = "X-Request-Id"
PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    reason: str,
    public: str,
    request_id: str,
    *,
    headers: dict[str, str] | None = None,
    decision_id: str | None = None,
) -> web.Response:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": public,
        "reason": reason,
        "request_id": request_id,
    }
    if decision_id is not None:
        body["decision_id"] = decision_id
    # SECURITY: header names are case-insensitive (RFC 9110 §5.1): a CIMultiDict, so that an
    # error's ``x-request-id`` or ``cache-control`` cannot sit beside (and before) ours.
    out = CIMultiDict(headers or {})
    out[REQUEST_ID] = request_id
    out["Cache-Control"] = "no-store"
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type=PROBLEM_JSON,
        headers=out,
    )


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    if isinstance(exc, JSONRPCRefused):
        # A JSON-RPC client reads the error from the body (MCP, A2A); its id fields match
        # the request's, so it is not a problem document.
        return web.Response(
            status=exc.status,
            body=exc.body,
            content_type="application/json",
            headers={REQUEST_ID: request_id, "Cache-Control": "no-store"},
        )
    return problem(
        exc.status,
        exc.reason,
        exc.public,
        request_id,
        headers=dict(exc.headers),
        decision_id=exc.decision_id,
    )
