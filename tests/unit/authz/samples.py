"""Four representative requests, as the pipeline would hand them to ``build_input``.

Shared by the golden-file test (``tests/golden/input_*.json`` are their inputs), the
conformance tests and ``bench/bench_pdp.py`` (both read the golden JSON files).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from yarl import URL

from gateway.authn.txn_token import principal_from_claims as txn_principal
from gateway.authz.input import build_input, policy_headers, query_params
from gateway.context import Actor, Identity, Peer, Principal, RequestFacts
from gateway.routing import CompiledRoute
from gateway.settings import Route, RouteMatch

# 2026-01-01T10:00:00Z
TIME_NS = 1_767_261_600_000_000_000
IDP = "https://idp.example.org"


def route(name: str, prefix: str, upstream: str, segment: str, **extra: Any) -> CompiledRoute:
    settings = Route(
        name=name,
        match=RouteMatch(path_prefix=prefix),
        upstream=upstream,
        segment=segment,
        **extra,
    )
    url = URL(settings.upstream)
    return CompiledRoute(settings, url, str(url.origin()))


FLIGHTS = route(
    "flights",
    "/flights/",
    "http://127.0.0.1:9001",
    "booking",
    tags=("agents", "booking"),
    policy_headers=("content-type", "x-trip-id", "authorization"),
)


INTERNAL = route("internal", "/internal/", "http://127.0.0.1:9003", "internal")


def peer(spiffe_path: str) -> Peer:
    return Peer(
        spiffe_id=f"spiffe://example.org{spiffe_path}",
        trust_domain="example.org",
        cert_sha256="9f" * 32,
        cert_x5t_s256="n5-fn5-fn5-fn5-fn5-fn5-fn5-fn5-fn5-fn5-fn5-f",
        subject=f"CN={spiffe_path.rsplit('/', 1)[-1]}",
        issuer="CN=agentgate dev CA",
        not_after=1_798_761_600.0,
    )


def facts(
    request_id: str,
    method: str,
    path: str,
    raw_query: str = "",
    *,
    client: str = "127.0.0.1",
    peer_: Peer | None = None,
) -> RequestFacts:
    return RequestFacts(
        request_id=request_id,
        method=method,
        scheme="https",
        host="gateway.example.org:8443",
        path=path,
        raw_query=raw_query,
        client_address=client,
        peer_address=client,
        forwarded_for=client,
        forwarded_proto="https",
        forwarded_host="gateway.example.org:8443",
        peer=peer_,
        time_ns=TIME_NS,
    )


RAW_HEADERS = (
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.secret.sig"),  # must never reach the input
    ("X-Trip-Id", "trip-1"),
    ("X-Trip-Id", "trip-2"),
    ("User-Agent", "travel-agent/1.0"),  # not allowlisted
)


@dataclass(frozen=True)
class Sample:
    name: str
    facts: RequestFacts
    route: CompiledRoute
    identity: Identity | None
    enrichment: dict[str, Any]

    def input(self) -> dict[str, Any]:
        headers = policy_headers(RAW_HEADERS, self.route.settings.policy_headers)
        return build_input(
            self.facts,
            self.route,
            self.identity,
            headers,
            query_params(self.facts.raw_query),
            **self.enrichment,
        )


def _mtls_agent() -> Sample:
    travel = peer("/agent/travel")
    principal = Principal(
        method="mtls",
        subject=str(travel.spiffe_id),
        subject_type="agent",
        issuer=travel.issuer,
        amr=("mtls",),
        sender_constraint="mtls",
    )
    return Sample(
        "mtls_agent",
        facts("req-mtls-agent", "GET", "/flights/42", "cabin=economy&cabin=business", peer_=travel),
        FLIGHTS,
        Identity(principal, MappingProxyType({"mtls": principal}), caller="agent", mode="self"),
        {
            "agent": {"id": "travel", "owner": "travel-team", "model": "planner-v2"},
            "attestation": {
                "status": "affirming",
                "tv": {"instance-identity": 2, "executables": 2, "hardware": 2},
                "verifier": {"developer": "https://verifier.example.org", "build": "v2.3.1"},
                "policy_ids": ["https://verifier.example.org/policy/agent-runtime/v7"],
                "age_s": 12,
            },
            "behavior": {
                "window_s": 60,
                "requests": 12,
                "errors": 0,
                "denies": 0,
                "distinct_routes": 1,
                "deny_rate": 0.0,
                "error_rate": 0.0,
            },
        },
    )


def _user_obo_chain() -> Sample:
    pricing = peer("/agent/pricing")
    chain = (
        Actor("spiffe://example.org/agent/pricing", "https://gateway.example.org"),
        Actor("spiffe://example.org/agent/travel", IDP),
    )
    bearer = Principal(
        method="bearer",
        subject="alice",
        subject_type="user",
        issuer=IDP,
        scopes=("flights.read", "flights.book"),
        client_id="travel-agent",
        actors=chain,
        amr=("pwd", "mfa"),
        sender_constraint="mtls",
        claims=MappingProxyType({"acr": "urn:example:mfa", "tenant": "acme"}),
        expires_at=1_767_261_900.0,
        token_id="jti-not-in-input",
    )
    mtls = Principal(
        method="mtls",
        subject=str(pricing.spiffe_id),
        subject_type="agent",
        issuer=pricing.issuer,
        amr=("mtls",),
    )
    identity = Identity(
        bearer, MappingProxyType({"mtls": mtls, "bearer": bearer}), caller="agent", mode="obo_user"
    )
    return Sample(
        "user_obo_chain",
        facts("req-user-obo", "GET", "/flights/42", "", peer_=pricing),
        FLIGHTS,
        identity,
        {},  # an ingress request: no Txn-Token, so input.txn is {}
    )


def _east_west_txn() -> Sample:
    """Service booking calls an internal route with the Txn-Token of alice's transaction."""
    booking = peer("/service/booking")
    claims: dict[str, Any] = {
        "iss": "https://gateway.example.org",
        "iat": 1_767_261_590,
        "exp": 1_767_261_650,
        "aud": "example.org",
        "txn": "0b6c5d2e-1111-4222-8333-944455556666",
        "sub": "alice",
        "scope": "flights.read",
        "req_wl": "spiffe://example.org/gateway",
        "act": {"sub": "spiffe://example.org/agent/travel"},
        "tctx": {
            "route": "flights",
            "method": "POST",
            "path": "/flights/42/trips",
            "subject_type": "user",
            "mode": "obo_user",
            "caller": "agent",
        },
        "rctx": {
            "req_ip": "203.0.113.9",
            "authn": ["mfa", "swk"],
            "transport": "https",
            "request_id": "req-ingress",
            "a2a": {"hop": 1, "caller_agent": "spiffe://example.org/agent/travel"},
        },
    }
    the_facts = facts("req-east-west", "GET", "/internal/bookings/42", "", peer_=booking)
    txn = txn_principal("txn_token", claims, the_facts)
    mtls = Principal(
        method="mtls",
        subject=str(booking.spiffe_id),
        subject_type="service",
        issuer="spiffe://example.org",
        amr=("swk",),
    )
    identity = Identity(
        txn, MappingProxyType({"mtls": mtls, "txn_token": txn}), caller="agent", mode="obo_user"
    )
    return Sample("east_west_txn", the_facts, INTERNAL, identity, {})


def _api_key_partner() -> Sample:
    principal = Principal(
        method="api_key",
        subject="partner-agent-1",
        subject_type="agent",
        roles=("partner",),
        amr=("api_key",),
    )
    return Sample(
        "api_key_partner",
        facts("req-api-key", "GET", "/flights/", "from=LHR&to=&to=JFK", client="203.0.113.9"),
        FLIGHTS,
        Identity(principal, MappingProxyType({"api_key": principal}), caller="agent", mode="self"),
        {},
    )


SAMPLES: dict[str, Sample] = {
    s.name: s for s in (_mtls_agent(), _user_obo_chain(), _api_key_partner(), _east_west_txn())
}
