"""The revocation admin API, mounted on the admin listener.

    POST   /admin/revocations                 {kind, value, ttl_s?, reason?} -> 201
    GET    /admin/revocations[?kind=K]        -> 200 {"revocations": [...]}
    DELETE /admin/revocations/{kind}/{value}  -> 204, or 404 when nothing was revoked

``value`` in a DELETE path is percent-decoded once (a SPIFFE ID may be sent as is or
with ``/`` encoded as ``%2F``). Every request needs ``Authorization: Bearer <token>``
(``admin.token``), compared in constant time over SHA-256 digests so neither content
nor length leaks. With no token configured the API is disabled: every ``/admin``
path answers 404, exactly as if it did not exist -- never open.

Answers are JSON (``{"error": code, "detail": text}`` on failure); the token is never
echoed, logged or put in an error. Each change is logged on ``agentgate.admin`` with
the caller's address. The admin listener is plain HTTP: keep it on loopback or a
pod-private network (DESIGN.md §4), since the bearer token crosses it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from gateway.errors import GatewayError
from gateway.secret import Secret
from gateway.state import REVOCATION_KINDS, RevocationStore
from gateway.state.revocation import validate, validate_reason, validate_ttl

log = logging.getLogger("agentgate.admin")

PREFIX = "/admin/revocations"
MAX_BODY_BYTES = 8192
_REALM = 'Bearer realm="agentgate-admin"'


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": code, "detail": detail},
        status=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _not_found() -> web.Response:
    return _error(404, "not_found", "no such resource")


class AdminAPI:
    def __init__(self, store: RevocationStore, token: Secret) -> None:
        self._store = store
        self._digest = hashlib.sha256(token.reveal()).digest()

    # -------------------------------------------------------------- entry

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        refusal = self._authenticate(request)
        if refusal is not None:
            return refusal
        raw = request.rel_url.raw_path
        try:
            if raw == PREFIX:
                if request.method == "GET":
                    return await self.list(request)
                if request.method == "POST":
                    return await self.create(request)
                return _error(405, "method_not_allowed", "use GET or POST", {"Allow": "GET, POST"})
            if raw.startswith(PREFIX + "/"):
                kind, sep, value = raw[len(PREFIX) + 1 :].partition("/")
                if not sep or not value:
                    return _not_found()
                if request.method != "DELETE":
                    return _error(405, "method_not_allowed", "use DELETE", {"Allow": "DELETE"})
                return await self.delete(request, unquote(kind), unquote(value, errors="strict"))
        except GatewayError as exc:
            # StateUnavailable (503), InvalidRevocation (400), RevocationListFull (409).
            if exc.status >= 500:
                log.warning("admin %s %s failed: %s", request.method, raw, exc.detail)
            return _error(exc.status, exc.reason, exc.public)
        except UnicodeDecodeError:
            return _error(400, "invalid_revocation", "value is not valid percent-encoded UTF-8")
        return _not_found()

    def _authenticate(self, request: web.Request) -> web.Response | None:
        values = request.headers.getall("Authorization", [])
        if not values:
            challenge = {"WWW-Authenticate": _REALM}
            return _error(401, "unauthorized", "bearer token required", challenge)
        scheme, _, presented = values[0].partition(" ")
        ok = len(values) == 1 and scheme.lower() == "bearer" and presented.strip() != ""
        digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        # SECURITY: constant-time comparison of fixed-length digests (no length oracle).
        if not hmac.compare_digest(digest, self._digest) or not ok:
            log.warning("admin: rejected credential from %s", request.remote)
            return _error(
                401,
                "unauthorized",
                "invalid bearer token",
                {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        return None

    # -------------------------------------------------------------- handlers

    async def list(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        if kind is not None and kind not in REVOCATION_KINDS:
            return _error(400, "invalid_revocation", f"kind must be one of {REVOCATION_KINDS}")
        items = await self._store.list()
        return web.json_response(
            {"revocations": [r.as_json() for r in items if kind is None or r.kind == kind]},
            headers={"Cache-Control": "no-store"},
        )

    async def create(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - {"kind", "value", "ttl_s", "reason"})
        if unknown:
            return _error(400, "invalid_revocation", f"unknown field(s): {', '.join(unknown)}")
        kind, value = validate(body.get("kind"), body.get("value"))
        ttl_s = validate_ttl(body.get("ttl_s"))
        reason = validate_reason(body.get("reason"))
        rev = await self._store.revoke(kind, value, ttl_s=ttl_s, reason=reason)
        log.info(
            "admin: revoked %s %r for %.0fs (reason %r) by %s",
            kind,
            value,
            ttl_s,
            reason,
            request.remote,
        )
        location = f"{PREFIX}/{kind}/{quote(value, safe='')}"
        return web.json_response(
            rev.as_json(), status=201, headers={"Location": location, "Cache-Control": "no-store"}
        )

    async def delete(self, request: web.Request, kind: str, value: str) -> web.Response:
        kind, value = validate(kind, value)
        if not await self._store.delete(kind, value):
            return _error(404, "not_found", "no such revocation")
        log.info("admin: un-revoked %s %r by %s", kind, value, request.remote)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(413, "body_too_large", f"at most {MAX_BODY_BYTES} bytes")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, "body_too_large", f"at most {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return _error(400, "invalid_json", "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "invalid_json", "the body must be a JSON object")
        return body


async def _disabled(request: web.Request) -> web.Response:
    return _not_found()


def admin_routes(app: web.Application, store: RevocationStore, token: Secret | None) -> None:
    """Mount ``/admin/*`` on ``app`` (the admin listener's application).

    ``token`` None disables the API: every ``/admin`` path is 404 for every method.
    """
    handler = _disabled if token is None or not token.reveal() else AdminAPI(store, token).dispatch
    app.router.add_route("*", "/admin", handler)
    app.router.add_route("*", "/admin/{tail:.*}", handler)
