"""gateway.authz.input: the DESIGN.md §7 document, pinned by golden files.

Regenerate the golden files after a deliberate change with
``AGENTGATE_UPDATE_GOLDEN=1 pytest tests/unit/authz/test_input.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType

import pytest
from multidict import CIMultiDict

from gateway.authz.input import (
    CREDENTIAL_HEADERS,
    build_input,
    derive_segment,
    policy_headers,
    query_params,
)
from gateway.context import Identity, Principal

from .samples import FLIGHTS, RAW_HEADERS, SAMPLES, facts, peer

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
TOP_LEVEL = [
    "request", "source", "route", "subject", "actors", "mode", "caller", "authn",
    "agent", "attestation", "behavior", "txn", "provenance",
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_input(name: str) -> None:
    document = SAMPLES[name].input()
    path = GOLDEN / f"input_{name}.json"
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if os.environ.get("AGENTGATE_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8")) == document
    # JSON round trip is lossless: nothing non-JSON (tuples, proxies) hides in the document.
    assert json.loads(json.dumps(document)) == document
    assert list(document) == TOP_LEVEL


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_no_raw_credential_in_input(name: str) -> None:
    text = json.dumps(SAMPLES[name].input())
    assert "eyJhbGciOiJFUzI1NiJ9" not in text
    assert "jti-not-in-input" not in text
    assert "authorization" not in text


def test_user_obo_chain_shape() -> None:
    document = SAMPLES["user_obo_chain"].input()
    assert document["subject"]["id"] == "alice"
    assert document["subject"]["issuer"] == "https://idp.example.org"
    assert document["actors"] == [
        {"sub": "spiffe://example.org/agent/pricing", "iss": "https://gateway.example.org"},
        {"sub": "spiffe://example.org/agent/travel", "iss": "https://idp.example.org"},
    ]
    assert document["mode"] == "obo_user"
    assert document["authn"]["methods"] == ["mtls", "bearer"]
    assert document["authn"]["sender_constrained"] == "mtls"
    assert document["source"]["segment"] == "agent"


def test_unauthenticated_input() -> None:
    document = build_input(facts("r", "GET", "/flights/"), FLIGHTS, None, {}, {})
    assert document["subject"] is None
    assert document["actors"] == []
    assert document["mode"] is None
    assert document["caller"] is None
    assert document["authn"] == {"methods": [], "results": {}, "sender_constrained": "none"}
    assert document["source"] == {"address": "127.0.0.1", "segment": "external", "peer": None}
    for key in ("agent", "attestation", "behavior", "txn"):
        assert document[key] == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("a=1", {"a": ["1"]}, id="single"),
        pytest.param("a=1&a=2&b=", {"a": ["1", "2"], "b": [""]}, id="repeated-and-blank"),
        pytest.param("q=a%20b+c", {"q": ["a b c"]}, id="decoded"),
    ],
)
def test_query_values_are_always_lists(raw: str, expected: dict[str, list[str]]) -> None:
    assert query_params(raw) == expected
    document = build_input(
        facts("r", "GET", "/flights/", raw), FLIGHTS, None, {}, query_params(raw)
    )
    assert document["request"]["query"] == expected


def test_policy_headers_allowlist_lowercases_and_joins() -> None:
    headers = CIMultiDict(RAW_HEADERS)
    out = policy_headers(headers, ["Content-Type", "X-Trip-Id", "Authorization", "missing"])
    assert out == {"content-type": "application/json", "x-trip-id": "trip-1, trip-2"}


@pytest.mark.parametrize("name", sorted(CREDENTIAL_HEADERS))
def test_policy_headers_never_lets_credentials_through(name: str) -> None:
    assert policy_headers({name: "secret"}, [name]) == {}


def test_policy_headers_extra_never() -> None:
    assert policy_headers({"X-Billing-Key": "k"}, ["x-billing-key"], never=["X-Billing-Key"]) == {}


def test_build_input_drops_credential_headers_even_if_passed() -> None:
    document = build_input(
        facts("r", "GET", "/flights/"), FLIGHTS, None, {"Authorization": "Bearer x", "A": "b"}, {}
    )
    assert document["request"]["headers"] == {"a": "b"}


@pytest.mark.parametrize(
    ("spiffe_path", "agent", "expected"),
    [
        pytest.param("/agent/travel", None, "agent", id="spiffe-first-segment"),
        pytest.param("/service/scheduler/x", None, "service", id="deeper-path"),
        pytest.param("/agent/travel", {"segment": "partners"}, "partners", id="registry-wins"),
        pytest.param(None, None, "external", id="no-peer"),
        pytest.param(None, {"segment": ""}, "external", id="empty-registry-segment"),
    ],
)
def test_derive_segment(
    spiffe_path: str | None, agent: dict[str, str] | None, expected: str
) -> None:
    assert derive_segment(peer(spiffe_path) if spiffe_path else None, agent) == expected


def test_explicit_source_segment_wins() -> None:
    document = build_input(
        facts("r", "GET", "/flights/", peer_=peer("/agent/travel")),
        FLIGHTS,
        None,
        {},
        {},
        source_segment="partners",
    )
    assert document["source"]["segment"] == "partners"


def test_non_json_enrichment_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        build_input(facts("r", "GET", "/"), FLIGHTS, None, {}, {}, agent={"x": object()})


def test_claims_mapping_proxy_is_copied_to_plain_dict() -> None:
    principal = Principal(
        method="bearer",
        subject="alice",
        subject_type="user",
        claims=MappingProxyType({"nested": MappingProxyType({"k": ("a", "b")})}),
    )
    identity = Identity(principal, {"bearer": principal}, caller="human_api", mode="self")
    document = build_input(facts("r", "GET", "/"), FLIGHTS, identity, {}, {})
    assert document["subject"]["claims"] == {"nested": {"k": ["a", "b"]}}
    assert type(document["subject"]["claims"]) is dict


def test_east_west_txn_comes_from_the_txn_token_principal() -> None:
    # issue 13: input.txn used to be {} on every live request.
    document = SAMPLES["east_west_txn"].input()
    txn = document["txn"]
    assert txn["id"] == "0b6c5d2e-1111-4222-8333-944455556666"
    assert txn["sub"] == document["subject"]["id"] == "alice"
    assert txn["scope"] == ["flights.read"]
    assert txn["tctx"]["route"] == "flights"
    assert txn["rctx"]["a2a"]["hop"] == 1
    # The token's own chain; input.actors also has this hop's peer on top.
    assert txn["actors"] == [{"sub": "spiffe://example.org/agent/travel"}]
    assert document["actors"][0] == {"sub": "spiffe://example.org/service/booking"}
    assert "iat" not in txn
    assert "exp" not in txn
    # An explicit txn= still wins (enrichment), and non-Txn-Token requests get {}.
    explicit = build_input(
        SAMPLES["east_west_txn"].facts,
        FLIGHTS,
        SAMPLES["east_west_txn"].identity,
        {},
        {},
        txn={"x": 1},
    )
    assert explicit["txn"] == {"x": 1}
    assert SAMPLES["user_obo_chain"].input()["txn"] == {}


def test_mapped_attributes_never_override_verified_subject_keys() -> None:
    principal = Principal(
        method="bearer",
        subject="53f8-uuid",
        subject_type="user",
        attributes=MappingProxyType({"username": "alice", "id": "admin", "type": "agent"}),
    )
    identity = Identity(principal, {"bearer": principal}, caller="human_api", mode="self")
    subject = build_input(facts("r", "GET", "/flights/"), FLIGHTS, identity, {}, {})["subject"]
    assert subject["username"] == "alice"
    assert subject["id"] == "53f8-uuid"
    assert subject["type"] == "user"
