"""Shared builders for the observability unit tests: request facts and identities."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.context import Actor, Decision, Identity, Peer, Principal, RequestFacts

PEER = Peer(
    spiffe_id="spiffe://example.org/agent/travel",
    trust_domain="example.org",
    cert_sha256="ab" * 32,
    cert_x5t_s256="q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s",
    subject="CN=travel",
    issuer="CN=agentgate dev CA",
    not_after=2_000_000_000.0,
)


def make_facts(**overrides: Any) -> RequestFacts:
    base = RequestFacts(
        request_id="7f1d2c3b-0000-4000-8000-000000000001",
        method="GET",
        scheme="https",
        host="gw.test:8443",
        path="/flights/42",
        raw_query="token=s3cr3t",
        client_address="203.0.113.9",
        peer_address="203.0.113.9",
        forwarded_for="203.0.113.9",
        forwarded_proto="https",
        forwarded_host="gw.test:8443",
        peer=PEER,
        time_ns=1_777_636_800_123_456_789,
    )
    return dataclasses.replace(base, **overrides)


def make_identity(**principal: Any) -> Identity:
    fields: dict[str, Any] = {
        "method": "bearer",
        "subject": "alice",
        "subject_type": "user",
        "issuer": "https://idp.example.org",
        "scopes": ("flights.read",),
        "client_id": "travel-agent",
        "actors": (Actor("spiffe://example.org/agent/travel", "https://idp.example.org"),),
    }
    fields.update(principal)
    p = Principal(**fields)
    return Identity(principal=p, results={p.method: p}, caller="agent", mode="obo_user")


def make_decision(allow: bool = True, **extra: Any) -> Decision:
    return Decision(allow=allow, decision_id="4ac1d7e2-3f0b-4b8e-9d61-0f3c2b1a9e77", **extra)
