"""gateway.tokens.service: POST /token on the gateway's real mTLS listener."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from gateway.context import Decision, Identity
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.sdk.txn import TxnTokenVerifier, decode_unverified
from gateway.tokens.keys import KeyRing, SigningKey
from gateway.tokens.service import ExchangeRequest, client_allowed, make_token_handler
from gateway.tokens.txn_token import TxnTokenMinter, dev_claims, sign_claims
from tests.support import TestPKI
from tests.unit.tokens.support import (
    BILLING,
    GATEWAY_ID,
    GRANT,
    ISSUER,
    PLANNER,
    TD,
    TT_AT,
    TT_TXN,
    MTLSServer,
    client_ssl,
    exchange_form,
    facts,
    identity,
    principal,
)

ACCESS_TOKEN = "at-good.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@dataclass
class TTS:
    url: str
    pki: TestPKI
    minter: TxnTokenMinter
    decision: Decision = field(default_factory=lambda: Decision(allow=True, decision_id="d-1"))
    pdp_down: bool = False
    asked: list[ExchangeRequest] = field(default_factory=list)

    async def post(
        self,
        body: str | bytes,
        *,
        agent: str | None = "planner",
        content_type: str = "application/x-www-form-urlencoded",
        method: str = "POST",
    ) -> tuple[int, Any, dict[str, Any]]:
        connector = aiohttp.TCPConnector(ssl=client_ssl(self.pki, agent))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(
                method, self.url + "/token", data=body, headers={"Content-Type": content_type}
            ) as resp,
        ):
            raw = await resp.read()
            parsed = json.loads(raw) if raw else {}
            return resp.status, resp.headers, parsed

    def ingress_token(self, scopes: tuple[str, ...] = ("flights.read", "flights.book")) -> str:
        return self.minter.mint(
            identity=identity(principal(scopes=scopes)),
            facts=facts(),
            route_name="flights",
            scopes=scopes,
        )


async def _validator(token: str, request: web.BaseRequest) -> Identity:
    if token == ACCESS_TOKEN:
        return identity(principal("alice", scopes=("research.read", "agents.invoke")))
    if token == "at-down":
        raise ServiceUnavailable("idp down")
    raise Unauthorized("bad access token")


@pytest.fixture
async def tts(
    pki: TestPKI, ring: KeyRing, minter: TxnTokenMinter, verifier: TxnTokenVerifier
) -> AsyncIterator[TTS]:
    state = TTS(url="", pki=pki, minter=minter)

    async def authorize(request: web.BaseRequest, ask: ExchangeRequest) -> Decision:
        state.asked.append(ask)
        if state.pdp_down:
            raise ServiceUnavailable("pdp down")
        return state.decision

    handler = make_token_handler(
        minter=minter,
        verifier=verifier,
        keys=ring,
        authorize=authorize,
        clients=(PLANNER, f"spiffe://{TD}/svc/"),
        access_token_validator=_validator,
    )
    server = MTLSServer(pki, handler)
    state.url = await server.start()
    try:
        yield state
    finally:
        await server.close()


def _no_store(headers: Any) -> None:
    assert headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------- client auth


@pytest.mark.parametrize("agent", [None, "travel"], ids=["no-client-cert", "not-allowlisted"])
async def test_invalid_client(tts: TTS, agent: str | None) -> None:
    status, headers, body = await tts.post(exchange_form(tts.ingress_token()), agent=agent)
    assert status == 401
    assert body["error"] == "invalid_client"
    assert "WWW-Authenticate" in headers
    _no_store(headers)
    # Nothing else is looked at before the client is authenticated.
    status, _, body = await tts.post("garbage", agent=agent, content_type="text/plain")
    assert status == 401
    assert body["error"] == "invalid_client"
    assert tts.asked == []


def test_client_allowlist_semantics() -> None:
    clients = (PLANNER, f"spiffe://{TD}/svc/")
    assert client_allowed(PLANNER, clients)
    assert client_allowed(f"spiffe://{TD}/svc/a", clients)
    assert client_allowed(f"spiffe://{TD}/svc/a/b", clients)
    assert not client_allowed(f"spiffe://{TD}/svc/", clients)  # the prefix itself is no workload
    assert not client_allowed(f"spiffe://{TD}/svcx/a", clients)
    assert not client_allowed(PLANNER + "2", clients)  # exact means exact
    assert not client_allowed(f"{PLANNER}/sub", clients)
    assert not client_allowed(BILLING, clients)
    assert not client_allowed(PLANNER, ())


# --------------------------------------------------------------------------- request errors


def _bad_forms(token: str) -> list[Any]:
    base = {
        "grant_type": GRANT,
        "requested_token_type": TT_TXN,
        "subject_token": token,
        "subject_token_type": TT_TXN,
    }

    def without(name: str) -> str:
        return urlencode({k: v for k, v in base.items() if k != name})

    def plus(**extra: str) -> str:
        return urlencode({**base, **extra})

    return [
        pytest.param(without("grant_type"), "invalid_request", id="no-grant_type"),
        pytest.param(without("subject_token"), "invalid_request", id="no-subject_token"),
        pytest.param(without("subject_token_type"), "invalid_request", id="no-subject_type"),
        pytest.param(without("requested_token_type"), "invalid_request", id="no-requested-type"),
        pytest.param(plus(requested_token_type=TT_AT), "invalid_request", id="wants-an-AT"),
        pytest.param(urlencode(base) + "&scope=a&scope=b", "invalid_request", id="repeated"),
        pytest.param(
            plus(actor_token="x", actor_token_type=TT_AT), "invalid_request", id="actor_token"
        ),
        pytest.param(
            plus(subject_token_type="urn:ietf:params:oauth:token-type:refresh_token"),
            "invalid_request",
            id="refresh-token-subject",
        ),
        pytest.param(
            plus(subject_token_type="urn:ietf:params:oauth:token-type:self_signed"),
            "invalid_request",
            id="self-signed-unsupported",
        ),
        pytest.param(plus(request_details="{not json"), "invalid_request", id="details-not-json"),
        pytest.param(plus(request_details="[1]"), "invalid_request", id="details-array"),
        pytest.param(
            plus(request_context='{"a":1,"a":2}'), "invalid_request", id="context-duplicate-key"
        ),
        pytest.param(
            plus(request_details=json.dumps({"x": "y" * 5000})),
            "invalid_request",
            id="details-too-large",
        ),
        pytest.param(
            plus(request_details="[" * 3000 + "]" * 3000), "invalid_request", id="details-deep"
        ),
        pytest.param(
            plus(request_details='{"sub":"mallory"}'), "invalid_request", id="details-reserved-sub"
        ),
        pytest.param(
            plus(request_details='{"route":"elsewhere"}'),
            "invalid_request",
            id="details-changes-tctx",
        ),
        pytest.param(
            plus(request_context='{"req_wl_chain":[]}'),
            "invalid_request",
            id="context-forges-chain",
        ),
        pytest.param(plus(audience="other.org"), "invalid_target", id="foreign-audience"),
        pytest.param(plus(resource="https://x"), "invalid_target", id="resource"),
        pytest.param(
            plus(grant_type="client_credentials"), "unsupported_grant_type", id="client-credentials"
        ),
        pytest.param(
            plus(grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer"),
            "unsupported_grant_type",
            id="jwt-bearer",
        ),
        pytest.param(plus(scope="flights.read  x"), "invalid_scope", id="malformed-scope"),
        pytest.param(plus(scope="flights.read admin"), "invalid_scope", id="widening"),
        pytest.param("a=%zz&=&&", "invalid_request", id="malformed-form"),
    ]


async def test_request_errors(tts: TTS) -> None:
    token = tts.ingress_token()
    for case in _bad_forms(token):
        body, error = case.values
        status, headers, answer = await tts.post(body)
        assert (status, answer.get("error")) == (400, error), case.id
        _no_store(headers)
        assert token not in json.dumps(answer)
    assert tts.asked == []  # the PDP is never asked about a malformed request


async def test_wrong_content_type_and_method(tts: TTS) -> None:
    status, _, body = await tts.post(
        json.dumps({"grant_type": GRANT}), content_type="application/json"
    )
    assert status == 400
    assert body["error"] == "invalid_request"
    status, headers, _ = await tts.post("", method="GET")
    assert status == 405
    assert headers["Allow"] == "POST"


async def test_body_is_bounded(tts: TTS) -> None:
    status, headers, body = await tts.post(
        exchange_form(tts.ingress_token(), request_details="x" * (70 * 1024))
    )
    assert status == 413
    assert body["error"] == "invalid_request"
    _no_store(headers)


# --------------------------------------------------------------------------- grants


async def test_expired_subject_token_is_invalid_grant(
    tts: TTS, es_key: tuple[Path, SigningKey]
) -> None:
    # Expired 2 s ago: inside the verifier's 5 s leeway, yet never revived by the TTS.
    now = int(time.time())
    claims = dev_claims(sub="alice", scopes=["a"], audience=TD, issuer=ISSUER, now=now - 62)
    token = sign_claims(es_key[1], claims)
    status, headers, body = await tts.post(exchange_form(token))
    assert status == 400
    assert body["error"] == "invalid_grant"
    _no_store(headers)


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."],
    ids=["garbage", "alg-none"],
)
async def test_invalid_subject_token_is_invalid_grant(tts: TTS, token: str) -> None:
    status, _, body = await tts.post(exchange_form(token))
    assert status == 400
    assert body["error"] == "invalid_grant"


async def test_foreign_key_subject_token_is_invalid_grant(tts: TTS, tmp_path: Path) -> None:
    from gateway.tokens.keys import write_private_key

    stranger = write_private_key(tmp_path / "s.pem", "ES256")
    token = sign_claims(stranger, dev_claims(sub="alice", scopes=[], audience=TD, issuer=ISSUER))
    status, _, body = await tts.post(exchange_form(token))
    assert status == 400
    assert body["error"] == "invalid_grant"


async def test_replacement_success(tts: TTS, verifier: TxnTokenVerifier) -> None:
    subject = tts.ingress_token()
    original = await verifier.verify(subject)
    status, headers, body = await tts.post(
        exchange_form(
            subject,
            scope="flights.read",
            audience=TD,
            request_details=json.dumps({"a2a": {"task_id": "t-91f2", "skill": "search"}}),
            request_context=json.dumps({"transport": "https"}),
        )
    )
    assert status == 200, body
    _no_store(headers)
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    assert body["issued_token_type"] == TT_TXN
    assert body["token_type"] == "N_A"
    assert body["scope"] == "flights.read"
    assert 0 < body["expires_in"] <= 60
    assert "refresh_token" not in body
    new = await verifier.verify(body["access_token"])
    for name in ("txn", "sub", "aud", "iss"):
        assert new[name] == original[name]
    assert new["scope"] == "flights.read"
    assert new["exp"] <= original["exp"]
    assert new["req_wl"] == PLANNER
    assert new["rctx"]["req_wl_chain"] == [GATEWAY_ID]
    assert new["tctx"] == {**original["tctx"], "a2a": {"task_id": "t-91f2", "skill": "search"}}
    assert decode_unverified(body["access_token"])[0]["typ"] == "txntoken+jwt"
    (ask,) = tts.asked
    assert ask.kind == "replacement"
    assert ask.client == PLANNER
    assert ask.txn == original["txn"]
    assert ask.current_scopes == ("flights.read", "flights.book")
    assert ask.scopes == ("flights.read",)
    assert ask.action == "token.exchange"


async def test_replacement_without_scope_keeps_the_current_scope(tts: TTS) -> None:
    status, _, body = await tts.post(exchange_form(tts.ingress_token()))
    assert status == 200
    assert body["scope"] == "flights.read flights.book"


async def test_decision_narrows_and_denies(tts: TTS) -> None:
    tts.decision = Decision(allow=True, decision_id="d-2", scopes=("flights.book", "other"))
    status, _, body = await tts.post(exchange_form(tts.ingress_token()))
    assert status == 200
    assert body["scope"] == "flights.book"
    tts.decision = Decision(allow=False, decision_id="d-3")
    status, headers, body = await tts.post(exchange_form(tts.ingress_token()))
    assert status == 400
    assert body["error"] == "unauthorized_client"
    _no_store(headers)


async def test_pdp_unavailable_fails_closed(tts: TTS) -> None:
    tts.pdp_down = True
    status, headers, body = await tts.post(exchange_form(tts.ingress_token()))
    assert status == 503
    assert body["error"] == "temporarily_unavailable"
    assert "access_token" not in body
    _no_store(headers)


async def test_new_transaction_from_an_access_token(tts: TTS, verifier: TxnTokenVerifier) -> None:
    # SPECS.md §1.10 / §2.3 worked examples.
    context = {"req_ip": "203.0.113.9", "authn": "mfa", "transport": "https"}
    details = {
        "a2a": {
            "method": "message/send",
            "task_id": "t-91f2",
            "context_id": "c-77aa",
            "skill": "literature_search",
            "origin_agent": PLANNER,
        }
    }
    status, headers, body = await tts.post(
        exchange_form(
            ACCESS_TOKEN,
            subject_token_type=TT_AT,
            scope="research.read",
            audience=TD,
            request_context=json.dumps(context),
            request_details=json.dumps(details),
        )
    )
    assert status == 200, body
    _no_store(headers)
    claims = await verifier.verify(body["access_token"])
    assert claims["sub"] == "alice"
    assert claims["scope"] == "research.read"
    assert claims["req_wl"] == PLANNER
    assert claims["tctx"]["a2a"] == details["a2a"]
    assert claims["tctx"]["subject_type"] == "user"
    assert claims["rctx"]["req_ip"] == "203.0.113.9"
    assert claims["rctx"]["authn"] == ["mfa"]  # the validated token's AMR wins
    assert claims["rctx"]["transport"] == "https"
    assert ACCESS_TOKEN not in json.dumps(claims)  # §13.4: never copied
    (ask,) = tts.asked
    assert ask.kind == "new"
    assert ask.identity is not None
    assert ask.claims is None


@pytest.mark.parametrize(
    ("token", "status", "error"),
    [("at-bad", 400, "invalid_grant"), ("at-down", 503, "temporarily_unavailable")],
    ids=["invalid", "idp-down"],
)
async def test_access_token_failures(tts: TTS, token: str, status: int, error: str) -> None:
    got, _, body = await tts.post(exchange_form(token, subject_token_type=TT_AT))
    assert (got, body["error"]) == (status, error)


async def test_access_token_scope_cannot_widen(tts: TTS) -> None:
    status, _, body = await tts.post(
        exchange_form(ACCESS_TOKEN, subject_token_type=TT_AT, scope="research.read admin")
    )
    assert status == 400
    assert body["error"] == "invalid_scope"
