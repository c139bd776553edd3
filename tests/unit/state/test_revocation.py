"""gateway.state.revocation: validation, the local index, the memory store, identifiers()."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.context import Identity, Peer, Principal, RequestFacts
from gateway.state import MAX_REVOCATION_TTL_S, Revocation
from gateway.state.revocation import (
    InvalidRevocation,
    MemoryRevocationStore,
    RevocationIndex,
    RevocationListFull,
    Revoked,
    identifiers,
    validate,
    validate_reason,
    validate_ttl,
)

CERT = "ab" * 32
NONE: dict[str, Any] = {
    "subject": None,
    "agent": None,
    "cert_sha256": None,
    "jti": None,
    "txn": None,
    "chain_agents": (),
    "credentials": (),
}

VALID = [
    pytest.param("subject", "alice", "alice", id="subject"),
    pytest.param(
        "agent", "spiffe://example.org/agent/x", "spiffe://example.org/agent/x", id="agent"
    ),
    pytest.param("cert_sha256", CERT.upper(), CERT, id="cert-upper-case-normalised"),
    pytest.param(
        "cert_sha256",
        ":".join(CERT[i : i + 2] for i in range(0, 64, 2)),
        CERT,
        id="cert-colon-separated-normalised",
    ),
    pytest.param("jti", "0f4c-uuid", "0f4c-uuid", id="jti"),
    pytest.param("txn", "8e6f3b4e-txn", "8e6f3b4e-txn", id="txn"),
]


@pytest.mark.parametrize(("kind", "value", "stored"), VALID)
def test_validate_accepts_and_normalises(kind: str, value: str, stored: str) -> None:
    assert validate(kind, value) == (kind, stored)


INVALID = [
    pytest.param("user", "alice", id="unknown-kind"),
    pytest.param(None, "alice", id="missing-kind"),
    pytest.param("subject", "", id="empty-value"),
    pytest.param("subject", 42, id="non-string-value"),
    pytest.param("subject", "a" * 1025, id="value-too-long"),
    pytest.param("subject", "al\nice", id="control-character"),
    pytest.param("cert_sha256", "ab" * 31, id="cert-too-short"),
    pytest.param("cert_sha256", "zz" * 32, id="cert-not-hex"),
    pytest.param("agent", "travel-agent", id="agent-not-spiffe"),
]


@pytest.mark.parametrize(("kind", "value"), INVALID)
def test_validate_refuses_without_echoing_the_value(kind: Any, value: Any) -> None:
    with pytest.raises(InvalidRevocation) as info:
        validate(kind, value)
    assert info.value.status == 400
    if isinstance(value, str) and len(value) > 3:
        assert value not in info.value.public


@pytest.mark.parametrize(
    ("ttl", "ok"),
    [
        pytest.param(None, 3600.0, id="default-one-hour"),
        pytest.param(1, 1.0, id="minimum"),
        pytest.param(MAX_REVOCATION_TTL_S, MAX_REVOCATION_TTL_S, id="thirty-days"),
        pytest.param(0, None, id="zero"),
        pytest.param(MAX_REVOCATION_TTL_S + 1, None, id="over-thirty-days"),
        pytest.param(True, None, id="boolean"),
        pytest.param("60", None, id="string"),
    ],
)
def test_validate_ttl(ttl: Any, ok: float | None) -> None:
    if ok is None:
        with pytest.raises(InvalidRevocation):
            validate_ttl(ttl)
    else:
        assert validate_ttl(ttl) == ok


def test_validate_reason() -> None:
    assert validate_reason(None) == ""
    assert validate_reason("compromised key") == "compromised key"
    for bad in ("x" * 257, 5, "a\x00b"):
        with pytest.raises(InvalidRevocation):
            validate_reason(bad)


def _rev(kind: Any, value: str) -> Revocation:
    now = time.time()
    return Revocation(kind, value, expires_at=now + 60, created_at=now)


def test_index_matches_each_kind_and_honours_deadlines() -> None:
    index = RevocationIndex()
    now = time.monotonic()
    index.put(_rev("subject", "alice"), now + 60)
    index.put(_rev("jti", "old"), now - 1)  # already expired
    index.put(_rev("cert_sha256", CERT), now + 60)
    assert index.match(now, "alice", None, None, None, None) == "subject"
    assert index.match(now, "bob", None, CERT, None, None) == "cert_sha256"
    assert index.match(now, "bob", None, None, "old", None) is None
    assert index.match(now, None, "alice", None, None, None) is None  # kinds never mix
    assert [r.value for r, _ in index.live(now)] == [CERT, "alice"]
    index.sweep(now)
    assert len(index) == 2
    assert index.remove("subject", "alice")
    assert not index.remove("subject", "alice")


async def test_memory_store_revoke_check_list_delete() -> None:
    store = MemoryRevocationStore()
    rev = await store.revoke("agent", "spiffe://example.org/agent/x", ttl_s=120, reason="stolen")
    assert rev.reason == "stolen"
    assert 119 < rev.remaining_s() <= 120
    assert await store.check(**{**NONE, "agent": "spiffe://example.org/agent/x"}) == "agent"
    assert await store.check(**{**NONE, "subject": "spiffe://example.org/agent/x"}) is None
    listed = await store.list()
    assert [(r.kind, r.value) for r in listed] == [("agent", "spiffe://example.org/agent/x")]
    assert listed[0].as_json()["ttl_s"] <= 120
    assert await store.delete("agent", "spiffe://example.org/agent/x") is True
    assert await store.delete("agent", "spiffe://example.org/agent/x") is False
    assert await store.check(**{**NONE, "agent": "spiffe://example.org/agent/x"}) is None


async def test_memory_store_expiry() -> None:
    store = MemoryRevocationStore()
    await store.revoke("jti", "j1", ttl_s=1)
    assert await store.check(**{**NONE, "jti": "j1"}) == "jti"
    await asyncio.sleep(1.05)
    assert await store.check(**{**NONE, "jti": "j1"}) is None
    assert await store.list() == []


async def test_memory_store_re_revoke_replaces_and_bound_refuses() -> None:
    store = MemoryRevocationStore(max_entries=2)
    await store.revoke("subject", "a", ttl_s=10)
    await store.revoke("subject", "b", ttl_s=10)
    again = await store.revoke("subject", "a", ttl_s=100, reason="longer")  # replace: allowed
    assert again.reason == "longer"
    assert again.remaining_s() > 99
    with pytest.raises(RevocationListFull) as info:
        await store.revoke("subject", "c")
    assert info.value.status == 409


def test_revoked_error_hides_the_kind() -> None:
    exc = Revoked("jti")
    assert exc.status == 401
    assert exc.reason == "credential_revoked"
    assert "jti" not in exc.public
    assert "jti" in exc.detail
    assert 'error="invalid_token"' in exc.headers["WWW-Authenticate"]


def _facts(peer: Peer | None) -> RequestFacts:
    return RequestFacts(
        request_id="r",
        method="GET",
        scheme="https",
        host="gw",
        path="/",
        raw_query="",
        client_address="203.0.113.9",
        peer_address="203.0.113.9",
        forwarded_for="203.0.113.9",
        forwarded_proto="https",
        forwarded_host="gw",
        peer=peer,
        time_ns=0,
    )


PEER = Peer(
    spiffe_id="spiffe://example.org/agent/travel",
    trust_domain="example.org",
    cert_sha256=CERT,
    cert_x5t_s256="x",
    subject="CN=travel",
    issuer="CN=ca",
    not_after=0.0,
)


def test_identifiers_from_verified_context() -> None:
    token = Principal(
        method="txn",
        subject="alice",
        subject_type="user",
        token_id="jti-9",
        claims={"txn": "txn-1"},
    )
    identity = Identity(principal=token, results={"txn": token}, caller="agent", mode="obo_user")
    assert identifiers(_facts(PEER), identity) == {
        "subject": "alice",
        "agent": "spiffe://example.org/agent/travel",
        "cert_sha256": CERT,
        "jti": "jti-9",
        "txn": "txn-1",
        "chain_agents": (),
        "credentials": (),
    }
    assert identifiers(_facts(None), None) == NONE
    agent = Principal(
        method="jwt_assertion", subject="spiffe://example.org/agent/a", subject_type="agent"
    )
    solo = Identity(principal=agent, results={"jwt_assertion": agent}, caller="agent", mode="self")
    assert identifiers(_facts(None), solo)["agent"] == "spiffe://example.org/agent/a"


async def test_a_revoked_parent_credential_or_chain_agent_refuses_the_chain() -> None:
    """Issue 16: kinds ``credential`` (any cid of the chain) and ``agent`` (any agent in it)."""
    store = MemoryRevocationStore()
    chain = {
        **NONE,
        "chain_agents": ("spiffe://td/a", "spiffe://td/a/b"),
        "credentials": ("c" * 22, "d" * 22),
    }
    assert await store.check(**chain) is None
    await store.revoke("credential", "c" * 22)
    assert await store.check(**chain) == "credential"
    assert await store.check(**{**chain, "credentials": ("d" * 22,)}) is None
    await store.revoke("agent", "spiffe://td/a/b")
    assert await store.check(**{**chain, "credentials": ()}) == "agent"


@pytest.mark.parametrize("value", ["short", "x" * 65, "bad/char" * 3, ""])
async def test_a_credential_revocation_needs_a_credential_id(value: str) -> None:
    with pytest.raises(InvalidRevocation):
        await MemoryRevocationStore().revoke("credential", value)
