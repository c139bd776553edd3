"""The Transaction Token Service: ``POST /token`` (txn-tokens-10 §11; RFC 8693; SPECS §1.5, §1.8).

Contract of the handler built by :func:`make_token_handler`:

* **Client authentication** (§11.5): the caller is the mTLS workload whose verified SPIFFE
  ID (``request.protocol.peer``, set by :class:`gateway.net.listener.GatewayRequestHandler`)
  is on the ``clients`` allowlist: an exact ID, or a prefix ending in ``/``. Otherwise
  401 ``invalid_client``. Nothing else about the request is looked at before that.
* **Request**: ``application/x-www-form-urlencoded``, at most 64 KiB, each parameter at
  most once; ``grant_type`` = token-exchange (else ``unsupported_grant_type``),
  ``requested_token_type`` = txn_token, ``subject_token`` + ``subject_token_type``
  (``...:txn_token`` for a replacement; ``...:access_token`` or ``...:jwt`` for a new
  transaction from an inbound access token), optional ``scope``, ``audience`` (must be the
  trust domain, else ``invalid_target``), ``request_context`` / ``request_details``
  (JSON objects of at most 4 KiB, added to ``rctx`` / ``tctx``). ``actor_token`` and
  ``resource`` are not supported.
* **Subject token**: a Txn-Token is verified with the gateway's own keys, and its ``exp``
  is enforced with *no* leeway (an expired one is never revived); an access token goes to
  the injected validator. Any failure is ``invalid_grant`` (RFC 8693 §2.2.2 would say
  ``invalid_request``; we follow SPECS.md A.4, which keeps ``invalid_request`` for
  malformed requests). A requested scope outside the subject's is ``invalid_scope``.
* **Authorization**: the injected ``authorize`` asks the PDP (action ``token.exchange``)
  and returns a :class:`gateway.context.Decision`; anything but ``allow`` is
  ``unauthorized_client``; its ``scopes`` narrow the result further.
* **Response**: ``{"access_token", "issued_token_type", "token_type": "N_A", "expires_in",
  "scope"}``; every answer carries ``Cache-Control: no-store``. Errors are RFC 6749 §5.2
  JSON: 400, or 401 for ``invalid_client``; 503 ``temporarily_unavailable`` when the PDP,
  the keys or the access-token validator's dependencies are unavailable (fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.context import Decision, Identity, Peer
from gateway.errors import Forbidden, GatewayError, ServiceUnavailable
from gateway.sdk.txn import KeysUnavailable, TxnTokenError, TxnTokenVerifier, strict_json_loads
from gateway.tokens.keys import KeyRing
from gateway.tokens.txn_token import ExchangeError, TxnTokenMinter, parse_scope

log = logging.getLogger("agentgate.tokens.service")

TOKEN_PATH: Final = "/token"  # noqa: S105
GRANT_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
TT_TXN_TOKEN: Final = "urn:ietf:params:oauth:token-type:txn_token"  # noqa: S105
TT_ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TT_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_CONTEXT_BYTES: Final = 4096
_KNOWN_PARAMS: Final = frozenset(
    {
        "grant_type",
        "requested_token_type",
        "subject_token",
        "subject_token_type",
        "scope",
        "audience",
        "resource",
        "actor_token",
        "actor_token_type",
        "request_context",
        "request_details",
    }
)
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """What the PDP is asked about (action ``token.exchange``); only verified facts."""

    client: str  # the requesting workload's SPIFFE ID (mTLS-verified, allowlisted)
    peer: Peer
    kind: Literal["new", "replacement"]
    subject: str
    current_scopes: tuple[str, ...]  # the subject's scopes / the subject token's scope
    scopes: tuple[str, ...]  # what the token would carry before the decision narrows it
    txn: str | None  # replacement: the transaction being continued
    identity: Identity | None  # new: the validated inbound access token's identity
    claims: Mapping[str, Any] | None  # replacement: the verified subject Txn-Token's claims
    request_context: Mapping[str, Any] = field(default_factory=dict)
    request_details: Mapping[str, Any] = field(default_factory=dict)
    action: str = "token.exchange"


Authorize: TypeAlias = Callable[[web.BaseRequest, ExchangeRequest], Awaitable[Decision]]
AccessTokenValidator: TypeAlias = Callable[[str, web.BaseRequest], Awaitable[Identity]]
Handler: TypeAlias = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Refusal(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _oauth_error(error: str, description: str, status: int) -> web.Response:
    headers = dict(_NO_STORE)
    if status == 401:
        # RFC 9110 §15.5.2: a 401 carries a challenge.
        headers["WWW-Authenticate"] = 'Bearer realm="agentgate"'
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )


def client_allowed(spiffe_id: str, clients: Sequence[str]) -> bool:
    """Exact match, or a prefix ending in "/" (``spiffe://td/agent/`` covers its children)."""
    for entry in clients:
        if entry.endswith("/"):
            if spiffe_id.startswith(entry) and len(spiffe_id) > len(entry):
                return True
        elif spiffe_id == entry:
            return True
    return False


def _peer(request: web.BaseRequest) -> Peer | None:
    peer = getattr(request.protocol, "peer", None)
    return peer if isinstance(peer, Peer) else None


async def _read_form(request: web.BaseRequest, limit: int) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise _Refusal("invalid_request", "body must be application/x-www-form-urlencoded")
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal("invalid_request", "request body too large", 413)
    body = bytearray()
    while True:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
        if len(body) > limit:
            raise _Refusal("invalid_request", "request body too large", 413)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=len(_KNOWN_PARAMS) + 4,
        )
    except (ValueError, UnicodeDecodeError):
        raise _Refusal("invalid_request", "malformed form body") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            # RFC 6749 §3.2: request parameters MUST NOT be included more than once.
            raise _Refusal("invalid_request", f"parameter {name} repeated")
        form[name] = value
    return form


def _json_object(form: Mapping[str, str], name: str) -> dict[str, Any]:
    text = form.get(name)
    if text is None or text == "":
        return {}
    if len(text.encode("utf-8")) > MAX_CONTEXT_BYTES:
        raise _Refusal("invalid_request", f"{name} too large")
    try:
        value = strict_json_loads(text)
    except (ValueError, RecursionError):
        raise _Refusal("invalid_request", f"{name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _Refusal("invalid_request", f"{name} must be a JSON object")
    return value


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise _Refusal("invalid_request", f"{name} is required")
    return value


def make_token_handler(
    *,
    minter: TxnTokenMinter,
    verifier: TxnTokenVerifier,
    keys: KeyRing,
    authorize: Authorize,
    clients: Sequence[str],
    access_token_validator: AccessTokenValidator,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Handler:
    """The ``POST /token`` handler; see the module docstring for the contract."""
    allowlist = tuple(clients)

    async def token_handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST", **_NO_STORE})
        try:
            return await _exchange(request)
        except _Refusal as exc:
            return _oauth_error(exc.error, exc.description, exc.status)
        except ExchangeError as exc:
            return _oauth_error(exc.error, exc.description, 400)
        except Forbidden:
            return _oauth_error("invalid_grant", "delegation chain too deep", 400)
        except (ServiceUnavailable, KeysUnavailable) as exc:
            log.warning("token exchange unavailable: %r", exc)
            return _oauth_error("temporarily_unavailable", "try again later", 503)

    async def _exchange(request: web.BaseRequest) -> web.Response:
        peer = _peer(request)
        # SECURITY: §11.5 — only allowlisted mTLS workloads may ask for Txn-Tokens.
        if peer is None or not peer.spiffe_id or not client_allowed(peer.spiffe_id, allowlist):
            raise _Refusal("invalid_client", "client authentication failed", 401)
        form = await _read_form(request, max_body_bytes)
        grant_type = _required(form, "grant_type")
        if grant_type != GRANT_TOKEN_EXCHANGE:
            raise _Refusal("unsupported_grant_type", "only token-exchange is supported")
        if _required(form, "requested_token_type") != TT_TXN_TOKEN:
            raise _Refusal("invalid_request", "requested_token_type must be txn_token")
        if "actor_token" in form or "actor_token_type" in form:
            raise _Refusal("invalid_request", "actor_token is not supported")
        if "resource" in form or form.get("audience", minter.audience) != minter.audience:
            raise _Refusal("invalid_target", "the only audience is this trust domain")
        subject_token = _required(form, "subject_token")
        subject_type = _required(form, "subject_token_type")
        requested = parse_scope(form["scope"]) if form.get("scope") else None
        context = _json_object(form, "request_context")
        details = _json_object(form, "request_details")
        keys.maybe_reload()
        if subject_type == TT_TXN_TOKEN:
            return await _replacement(request, peer, subject_token, requested, context, details)
        if subject_type in (TT_ACCESS_TOKEN, TT_JWT):
            return await _new(request, peer, subject_token, requested, context, details)
        raise _Refusal("invalid_request", "unsupported subject_token_type")

    async def _replacement(
        request: web.BaseRequest,
        peer: Peer,
        token: str,
        requested: list[str] | None,
        context: dict[str, Any],
        details: dict[str, Any],
    ) -> web.Response:
        try:
            claims = await verifier.verify(token)
        except KeysUnavailable:
            raise
        except TxnTokenError as exc:
            log.info("token exchange: subject Txn-Token refused (%s)", exc.code)
            raise _Refusal("invalid_grant", "subject token is invalid or expired") from None
        if minter.now() >= claims["exp"]:
            # SECURITY: §13.15 — an expired Txn-Token is never replaced, not even within
            # the verifier's clock-skew leeway (which stays in force for iat/nbf).
            raise _Refusal("invalid_grant", "subject token is invalid or expired")
        held = tuple(str(claims.get("scope", "")).split())
        _check_subset(requested, held)
        ask = ExchangeRequest(
            client=str(peer.spiffe_id),
            peer=peer,
            kind="replacement",
            subject=claims["sub"],
            current_scopes=held,
            scopes=tuple(requested if requested is not None else held),
            txn=claims["txn"],
            identity=None,
            claims=claims,
            request_context=context,
            request_details=details,
        )
        # Built (and so validated) before the PDP is asked; the decision only narrows scope.
        out = minter.replace_claims(
            claims, requester=ask.client, scope=ask.scopes, tctx_add=details, rctx_add=context
        )
        out["scope"] = await _decide(request, ask, out["scope"])
        return _issued(minter.sign(out), out)

    async def _new(
        request: web.BaseRequest,
        peer: Peer,
        token: str,
        requested: list[str] | None,
        context: dict[str, Any],
        details: dict[str, Any],
    ) -> web.Response:
        try:
            identity = await access_token_validator(token, request)
        except ServiceUnavailable:
            raise
        except GatewayError as exc:
            log.info("token exchange: subject access token refused (%s)", exc.reason)
            raise _Refusal("invalid_grant", "subject token is invalid or expired") from None
        held = identity.principal.scopes
        _check_subset(requested, held)
        ask = ExchangeRequest(
            client=str(peer.spiffe_id),
            peer=peer,
            kind="new",
            subject=identity.principal.subject,
            current_scopes=held,
            scopes=tuple(requested if requested is not None else held),
            txn=None,
            identity=identity,
            claims=None,
            request_context=context,
            request_details=details,
        )
        out = minter.exchange_claims(
            identity, requester=ask.client, scopes=ask.scopes, tctx_add=details, rctx_add=context
        )
        out["scope"] = await _decide(request, ask, out["scope"])
        return _issued(minter.sign(out), out)

    async def _decide(request: web.BaseRequest, ask: ExchangeRequest, proposed: str) -> str:
        """Ask the PDP; return ``proposed`` (a scope string) narrowed by the decision."""
        decision = await authorize(request, ask)
        if decision.allow is not True:
            log.info("token exchange denied by policy (decision %s)", decision.decision_id)
            raise _Refusal("unauthorized_client", "token exchange not permitted")
        if decision.scopes is None:
            return proposed
        allowed = set(decision.scopes)
        return " ".join(s for s in proposed.split() if s in allowed)

    return token_handler


def _check_subset(requested: list[str] | None, held: Sequence[str]) -> None:
    if requested is not None and not set(requested) <= set(held):
        # SECURITY: §13.6 — a Txn-Token's scope never exceeds the subject's.
        raise _Refusal("invalid_scope", "requested scope exceeds the subject token's scope")


def _issued(token: str, claims: Mapping[str, Any]) -> web.Response:
    expires_in = max(0, int(claims["exp"]) - int(claims["iat"]))
    body = {
        "access_token": token,
        "issued_token_type": TT_TXN_TOKEN,
        "token_type": "N_A",
        "expires_in": expires_in,
        "scope": claims["scope"],
    }
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode("ascii"),
        content_type="application/json",
        headers=dict(_NO_STORE),
    )
