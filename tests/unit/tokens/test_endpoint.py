"""gateway.tokens.endpoint: the Token Service's path->handler table and POST /token's calls.

Real key files, key ring, minter and verifier; the PDP, the authn service and the pipeline are
small recording stand-ins (they are the *callers' collaborators*, not what is tested here):
what is proved is which call the Token Service makes, with what input, on which (current) part,
and how a missing part fails closed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.authz.exchange import exchange_input
from gateway.context import Decision, Identity, RequestFacts
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.pipeline import FACTS_KEY
from gateway.sdk.txn import TxnTokenVerifier
from gateway.settings import TxnTokenSettings
from gateway.tokens.endpoint import TokenExchange, token_endpoints
from gateway.tokens.keys import JWKS_PATH, KeyRing, SigningKey
from gateway.tokens.kit import TokenKit
from gateway.tokens.service import TOKEN_PATH, ExchangeRequest
from gateway.tokens.txn_token import TxnTokenMinter
from tests.unit.tokens.support import GATEWAY_ID, PLANNER, TD, facts, identity, peer


class RecordingPDP:
    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.calls: list[tuple[dict[str, Any], Sequence[str] | None]] = []

    async def decide(self, input: dict[str, Any], subject_scopes: Sequence[str] | None) -> Decision:
        self.calls.append((input, subject_scopes))
        return self.decision


class RecordingAuthn:
    def __init__(self, answer: Identity) -> None:
        self.answer = answer
        self.tokens: list[str] = []

    async def validate_access_token(self, token: str) -> Identity:
        self.tokens.append(token)
        return self.answer


class RecordingPipeline:
    def __init__(self) -> None:
        self.observed: list[str] = []

    def observe(self, request: web.BaseRequest, request_id: str) -> RequestFacts:
        self.observed.append(request_id)
        return facts(request_id=request_id, path=request.path, the_peer=peer())


class Source:
    """What app.Gateway is to TokenExchange: the current parts, swappable (a reload)."""

    def __init__(self, pdp: RecordingPDP | None = None, authn: RecordingAuthn | None = None):
        self.pdp = pdp
        self.authn = authn
        self.pipeline = RecordingPipeline()


def _decision(decision_id: str, *, allow: bool = True) -> Decision:
    return Decision(allow=allow, decision_id=decision_id)


def _exchange(kind: str = "replacement") -> ExchangeRequest:
    return ExchangeRequest(
        client=PLANNER,
        peer=peer(),
        kind="replacement" if kind == "replacement" else "new",
        subject="alice",
        current_scopes=("flights.read", "flights.book"),
        scopes=("flights.read",),
        txn="txn-1" if kind == "replacement" else None,
        identity=None if kind == "replacement" else identity(),
        claims={"tctx": {"trip": "42"}} if kind == "replacement" else None,
    )


def _kit(es_key: tuple[Path, SigningKey], clients: tuple[str, ...]) -> TokenKit:
    path, _ = es_key
    tt = TxnTokenSettings(signing_key=path, token_service_clients=clients, jwks_max_age_s=120)
    ring = KeyRing([path], algorithm="ES256")
    minter = TxnTokenMinter(
        ring, issuer=tt.issuer, audience=TD, ttl_s=60, gateway_spiffe_id=GATEWAY_ID
    )
    verifier = TxnTokenVerifier(ring, audience=TD, issuer=tt.issuer)
    return TokenKit(tt, ring, minter, verifier)


# ---------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("clients", "paths"),
    [
        pytest.param((), [JWKS_PATH], id="no-clients-jwks-only"),
        pytest.param((PLANNER,), [JWKS_PATH, TOKEN_PATH], id="clients-jwks-and-token"),
    ],
)
def test_table_paths(
    es_key: tuple[Path, SigningKey], clients: tuple[str, ...], paths: list[str]
) -> None:
    table = token_endpoints(_kit(es_key, clients), Source(), FACTS_KEY, exchange_input)
    assert list(table) == paths


async def test_jwks_entry_serves_the_key_ring(es_key: tuple[Path, SigningKey]) -> None:
    kit = _kit(es_key, ())
    handler = token_endpoints(kit, Source(), FACTS_KEY, exchange_input)[JWKS_PATH]
    resp = await handler(make_mocked_request("GET", JWKS_PATH))
    assert isinstance(resp, web.Response)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=120"
    assert resp.content_type == "application/jwk-set+json"
    assert isinstance(resp.body, bytes)
    kids = [k["kid"] for k in json.loads(resp.body)["keys"]]
    assert kids == list(kit.keys.verification_keys())
    assert resp.headers["ETag"] == kit.keys.etag


async def test_token_entry_refuses_a_non_allowlisted_caller(
    es_key: tuple[Path, SigningKey],
) -> None:
    # The entry is make_token_handler's: a mocked request has no mTLS peer -> invalid_client.
    handler = token_endpoints(_kit(es_key, (PLANNER,)), Source(), FACTS_KEY, exchange_input)[
        TOKEN_PATH
    ]
    resp = await handler(make_mocked_request("POST", TOKEN_PATH))
    assert isinstance(resp, web.Response)
    assert resp.status == 401
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body)["error"] == "invalid_client"
    assert resp.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------------- the PDP call


@pytest.mark.parametrize("kind", ["replacement", "new"])
async def test_authorize_asks_the_pdp_with_the_observed_facts(kind: str) -> None:
    pdp = RecordingPDP(_decision("d-1"))
    source = Source(pdp=pdp)
    request = make_mocked_request("POST", TOKEN_PATH)
    request[FACTS_KEY] = facts(path=TOKEN_PATH, the_peer=peer(), request_id="req-observed")
    decision = await TokenExchange(source, FACTS_KEY, exchange_input).authorize(
        request, _exchange(kind)
    )
    assert decision.decision_id == "d-1"
    assert source.pipeline.observed == []  # the pipeline's facts are used, not rebuilt
    [(document, subject_scopes)] = pdp.calls
    assert document["action"] == "token.exchange"
    assert document["request"]["id"] == "req-observed"
    assert subject_scopes == ("flights.read", "flights.book")


async def test_authorize_observes_when_the_request_has_no_facts() -> None:
    pdp = RecordingPDP(_decision("d-2"))
    source = Source(pdp=pdp)
    request = make_mocked_request("POST", TOKEN_PATH)
    await TokenExchange(source, FACTS_KEY, exchange_input).authorize(request, _exchange())
    [request_id] = source.pipeline.observed
    assert pdp.calls[0][0]["request"]["id"] == request_id


async def test_authorize_reads_the_current_pdp_at_each_call() -> None:
    first, second = RecordingPDP(_decision("old")), RecordingPDP(_decision("new"))
    source = Source(pdp=first)
    exchange = TokenExchange(source, FACTS_KEY, exchange_input)
    request = make_mocked_request("POST", TOKEN_PATH)
    assert (await exchange.authorize(request, _exchange())).decision_id == "old"
    source.pdp = second  # a reload swapped the runtime
    assert (await exchange.authorize(request, _exchange())).decision_id == "new"
    assert (len(first.calls), len(second.calls)) == (1, 1)


async def test_authorize_without_a_pdp_fails_closed() -> None:
    request = make_mocked_request("POST", TOKEN_PATH)
    with pytest.raises(ServiceUnavailable) as caught:
        await TokenExchange(Source(), FACTS_KEY, exchange_input).authorize(request, _exchange())
    assert (caught.value.status, caught.value.reason) == (503, "pdp_unavailable")


# ---------------------------------------------------------------------- the validation call


async def test_validate_delegates_to_the_current_authn_service() -> None:
    alice, bob = identity(), identity()
    source = Source(authn=RecordingAuthn(alice))
    exchange = TokenExchange(source, FACTS_KEY, exchange_input)
    request = make_mocked_request("POST", TOKEN_PATH)
    assert await exchange.validate_access_token("at-1", request) is alice
    replacement = RecordingAuthn(bob)
    source.authn = replacement
    assert await exchange.validate_access_token("at-2", request) is bob
    assert replacement.tokens == ["at-2"]


async def test_validate_without_authn_is_a_401_the_service_maps_to_invalid_grant() -> None:
    request = make_mocked_request("POST", TOKEN_PATH)
    with pytest.raises(Unauthorized) as caught:
        await TokenExchange(Source(), FACTS_KEY, exchange_input).validate_access_token(
            "at", request
        )
    assert (caught.value.status, caught.value.reason) == (401, "authn_invalid")
