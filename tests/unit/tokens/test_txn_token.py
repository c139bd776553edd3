"""gateway.tokens.txn_token: minting, continuation and replacement claims."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context import Actor
from gateway.errors import Forbidden
from gateway.sdk.txn import TxnTokenVerifier, decode_unverified
from gateway.tokens.keys import KeyRing, SigningKey
from gateway.tokens.txn_token import (
    ExchangeError,
    TxnTokenMinter,
    act_claim,
    actors_from_act,
    clean_scopes,
    new_txn,
    parse_scope,
)
from tests.unit.tokens.support import (
    GATEWAY_ID,
    ISSUER,
    PLANNER,
    TD,
    TRAVEL,
    facts,
    identity,
    peer,
    principal,
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _minter(ring: KeyRing, clock: Clock | None = None, ttl: float = 60) -> TxnTokenMinter:
    return TxnTokenMinter(
        ring,
        issuer=ISSUER,
        audience=TD,
        ttl_s=ttl,
        gateway_spiffe_id=GATEWAY_ID,
        clock=clock or Clock(),
    )


# --------------------------------------------------------------------------- ingress mint


def test_minted_token_claim_by_claim(es_key: tuple[Path, SigningKey], ring: KeyRing) -> None:
    clock = Clock()
    minter = _minter(ring, clock)
    who = principal(
        "alice",
        scopes=("flights.read", "flights.book", "admin"),
        actors=(Actor(PLANNER, "https://idp.example.org"),),
        amr=("mfa", "hwk"),
    )
    mtls = principal(PLANNER, method="mtls", subject_type="agent", amr=("mtls",))
    ident = identity(who, caller="agent", mode="obo_user", extra={"mtls": mtls})
    inbound = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"  # never to be copied
    token = minter.mint(
        identity=ident,
        facts=facts(the_peer=peer(PLANNER), path="/flights/42/book", request_id="rid-7"),
        route_name="flights",
        scopes=["flights.book", "flights.read", "flights.book"],
    )
    header, claims = decode_unverified(token)
    assert header == {"alg": "ES256", "kid": es_key[1].kid, "typ": "txntoken+jwt"}
    assert claims["iss"] == ISSUER
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == int(clock.now) + 60
    assert claims["aud"] == TD
    assert uuid.UUID(claims["txn"]).version == 4
    assert claims["sub"] == "alice"
    assert claims["scope"] == "flights.book flights.read"  # deduplicated, as granted
    assert claims["req_wl"] == GATEWAY_ID
    assert claims["act"] == {"sub": PLANNER, "iss": "https://idp.example.org"}
    assert claims["tctx"] == {
        "route": "flights",
        "method": "POST",
        "path": "/flights/42/book",
        "subject_type": "user",
        "mode": "obo_user",
        "caller": "agent",
    }
    assert claims["rctx"] == {
        "req_ip": "203.0.113.9",
        "authn": ["mfa", "hwk", "mtls"],
        "transport": "https",
        "request_id": "rid-7",
        "a2a": {"hop": 1, "caller_agent": PLANNER},
    }
    assert set(claims) == {
        "iss",
        "iat",
        "exp",
        "aud",
        "txn",
        "sub",
        "scope",
        "req_wl",
        "act",
        "tctx",
        "rctx",
    }
    assert inbound not in token
    assert "eyJzdWIiOiJhbGljZSJ9" not in str(claims)
    # An independent library agrees on signature and claims.
    public = es_key[1].private_key.public_key()
    decoded = jwt.decode(
        token,
        public,
        algorithms=["ES256"],
        audience=TD,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded == claims


def test_txn_is_fresh_per_transaction(minter: TxnTokenMinter) -> None:
    txns = {
        decode_unverified(
            minter.mint(identity=identity(), facts=facts(), route_name="r", scopes=[])
        )[1]["txn"]
        for _ in range(50)
    }
    assert len(txns) == 50


def test_new_txn_is_a_uuid4() -> None:
    for _ in range(200):
        value = new_txn()
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_eddsa_signing(ed_key: tuple[Path, SigningKey]) -> None:
    ring = KeyRing([ed_key[0]], algorithm="EdDSA")
    token = _minter(ring).mint(identity=identity(), facts=facts(), route_name="r", scopes=["a"])
    header, _ = decode_unverified(token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == ed_key[1].kid
    public = ed_key[1].private_key.public_key()
    jwt.decode(
        token,
        public,
        algorithms=["EdDSA"],
        audience=TD,
        options={"verify_exp": False, "verify_iat": False},
    )


@pytest.mark.parametrize("ttl", [0, -1, 301, 3600])
def test_ttl_hard_maximum(ring: KeyRing, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        _minter(ring, ttl=ttl)


def test_ttl_300_is_allowed(ring: KeyRing) -> None:
    token = _minter(ring, ttl=300).mint(
        identity=identity(), facts=facts(), route_name="r", scopes=[]
    )
    _, claims = decode_unverified(token)
    assert claims["exp"] - claims["iat"] == 300


def test_malformed_scopes_are_dropped_never_split(minter: TxnTokenMinter) -> None:
    token = minter.mint(
        identity=identity(),
        facts=facts(),
        route_name="r",
        scopes=["ok", "two words", 'q"uote', "", "back\\slash", "ok"],
    )
    assert decode_unverified(token)[1]["scope"] == "ok"


def test_actor_chain_deeper_than_8_is_forbidden(minter: TxnTokenMinter) -> None:
    actors = tuple(Actor(f"spiffe://{TD}/agent/a{i}") for i in range(9))
    with pytest.raises(Forbidden):
        minter.mint(
            identity=identity(principal(actors=actors)), facts=facts(), route_name="r", scopes=[]
        )
    ok = minter.mint(
        identity=identity(principal(actors=actors[:8])), facts=facts(), route_name="r", scopes=[]
    )
    assert actors_from_act(decode_unverified(ok)[1]["act"]) == actors[:8]


def test_act_nesting_current_actor_outermost() -> None:
    chain = (Actor(TRAVEL), Actor(PLANNER, "https://idp"))
    assert act_claim(chain) == {"sub": TRAVEL, "act": {"sub": PLANNER, "iss": "https://idp"}}
    assert actors_from_act(act_claim(chain)) == chain
    assert act_claim(()) is None


def test_signing_follows_the_active_key_after_reload(tmp_path: Path) -> None:
    from gateway.tokens.keys import write_private_key

    active, previous = tmp_path / "a.pem", tmp_path / "b.pem"
    k1 = write_private_key(active, "ES256")
    write_private_key(previous, "ES256")
    ring = KeyRing([active, previous])
    minter = _minter(ring)
    first = minter.mint(identity=identity(), facts=facts(), route_name="r", scopes=[])
    previous.write_bytes(active.read_bytes())
    k2 = write_private_key(active, "ES256", overwrite=True)
    ring.reload()
    second = minter.mint(identity=identity(), facts=facts(), route_name="r", scopes=[])
    assert decode_unverified(first)[0]["kid"] == k1.kid
    assert decode_unverified(second)[0]["kid"] == k2.kid


# --------------------------------------------------------------------------- continuation


async def _parent(
    minter: TxnTokenMinter, verifier: TxnTokenVerifier, scopes: list[str]
) -> dict[str, Any]:
    token = minter.mint(
        identity=identity(principal(scopes=tuple(scopes)), caller="agent", mode="self"),
        facts=facts(the_peer=peer(PLANNER)),
        route_name="flights",
        scopes=scopes,
    )
    return await verifier.verify(token)


async def test_continuation_keeps_txn_sub_tctx_and_never_widens(ring: KeyRing) -> None:
    clock = Clock(_now())
    minter = _minter(ring, clock)
    verifier = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER)
    parent = await _parent(minter, verifier, ["flights.read"])
    clock.now += 30
    txn_principal = principal(
        parent["sub"],
        method="txn",
        scopes=("flights.read", "flights.book"),  # even if someone claimed more
        actors=(Actor(TRAVEL),),
        amr=(),
        claims=parent,
    )
    child = minter.mint_claims(
        identity=identity(txn_principal, caller="agent", mode="obo_user"),
        facts=facts(method="GET", path="/hotels/1", the_peer=peer(TRAVEL), request_id="r2"),
        route_name="hotels",
        scopes=["flights.read", "flights.book"],
        txn=parent["txn"],
    )
    assert child["txn"] == parent["txn"]
    assert child["sub"] == parent["sub"]
    assert child["aud"] == parent["aud"]
    assert child["scope"] == "flights.read"  # flights.book was never in the parent
    assert child["tctx"] == parent["tctx"]  # the original request, immutable
    assert child["exp"] == parent["exp"]  # min(now + ttl, parent exp): never extended
    assert child["rctx"]["req_ip"] == parent["rctx"]["req_ip"]
    assert child["rctx"]["authn"] == parent["rctx"]["authn"]
    assert child["rctx"]["a2a"] == {"hop": 2, "caller_agent": TRAVEL}
    assert child["rctx"]["request"] == {"route": "hotels", "method": "GET", "path": "/hotels/1"}
    assert child["act"] == {"sub": TRAVEL}


def test_continuation_requires_the_verified_parent(minter: TxnTokenMinter) -> None:
    with pytest.raises(ValueError, match="parent"):
        minter.mint(identity=identity(), facts=facts(), route_name="r", scopes=[], txn="t-1")


def _now() -> float:
    import time

    return float(int(time.time()))


# --------------------------------------------------------------------------- replacement


def _claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "iat": 1_800_000_000,
        "exp": 1_800_000_060,
        "aud": TD,
        "txn": "6f1c2a0e-8a57-4e55-9d0b-3c1f7f0b2a91",
        "sub": "alice",
        "scope": "a b c",
        "req_wl": GATEWAY_ID,
        "act": {"sub": PLANNER},
        "tctx": {"route": "flights", "a2a": {"task_id": "t-1"}},
        "rctx": {"req_ip": "203.0.113.9", "authn": ["mfa"]},
    }
    base.update(over)
    return base


def test_replacement_narrows_adds_and_records_the_chain(ring: KeyRing) -> None:
    minter = _minter(ring, Clock(1_800_000_010))
    out = minter.replace_claims(
        _claims(),
        requester=TRAVEL,
        scope=["a"],
        tctx_add={"tool": "search"},
        rctx_add={"transport": "https"},
    )
    assert out["txn"] == _claims()["txn"]
    assert out["sub"] == "alice"
    assert out["aud"] == TD
    assert out["scope"] == "a"
    assert out["tctx"] == {"route": "flights", "a2a": {"task_id": "t-1"}, "tool": "search"}
    assert out["rctx"]["req_wl_chain"] == [GATEWAY_ID]
    assert out["rctx"]["transport"] == "https"
    assert out["req_wl"] == TRAVEL
    assert out["act"] == {"sub": PLANNER}
    assert out["exp"] == 1_800_000_060  # min(now + 60, original exp)
    again = minter.replace_claims(out, requester=PLANNER, scope=None, tctx_add=None)
    assert again["rctx"]["req_wl_chain"] == [GATEWAY_ID, TRAVEL]
    assert again["scope"] == "a"


def test_replacement_never_extends_lifetime(ring: KeyRing) -> None:
    minter = _minter(ring, Clock(1_800_000_000), ttl=300)
    out = minter.replace_claims(_claims(), requester=TRAVEL, scope=None, tctx_add=None)
    assert out["exp"] == 1_800_000_060
    short = _minter(ring, Clock(1_800_000_000), ttl=10)
    assert (
        short.replace_claims(_claims(), requester=TRAVEL, scope=None, tctx_add=None)["exp"]
        == 1_800_000_010
    )


REFUSALS = [
    pytest.param({"scope": ["a", "z"]}, {}, "invalid_scope", id="widen-scope"),
    pytest.param({"tctx_add": {"route": "other"}}, {}, "invalid_request", id="change-tctx-key"),
    pytest.param({"tctx_add": {"a2a": {"task_id": "t-2"}}}, {}, "invalid_request", id="change-a2a"),
    pytest.param({"tctx_add": {"txn": "x"}}, {}, "invalid_request", id="tctx-reserved-txn"),
    pytest.param({"tctx_add": {"sub": "mallory"}}, {}, "invalid_request", id="tctx-reserved-sub"),
    pytest.param({"rctx_add": {"req_wl_chain": []}}, {}, "invalid_request", id="rctx-chain"),
    pytest.param({"rctx_add": {"aud": "x"}}, {}, "invalid_request", id="rctx-reserved-aud"),
    pytest.param({}, {"exp": 1_800_000_010}, "invalid_grant", id="expired-now"),
    pytest.param({}, {"exp": 1_799_999_999}, "invalid_grant", id="expired"),
    pytest.param({}, {"aud": "other.org"}, "invalid_grant", id="foreign-aud"),
    pytest.param(
        {}, {"rctx": {"req_wl_chain": ["w"] * 16}}, "invalid_grant", id="too-many-replacements"
    ),
]


@pytest.mark.parametrize(("kwargs", "claims", "error"), REFUSALS)
def test_replacement_refusals(
    ring: KeyRing, kwargs: dict[str, Any], claims: dict[str, Any], error: str
) -> None:
    minter = _minter(ring, Clock(1_800_000_010))
    args: dict[str, Any] = {"requester": TRAVEL, "scope": None, "tctx_add": None}
    args.update(kwargs)
    with pytest.raises(ExchangeError) as info:
        minter.replace_claims(_claims(**claims), **args)
    assert info.value.error == error


def test_same_value_for_an_existing_tctx_key_is_accepted(ring: KeyRing) -> None:
    minter = _minter(ring, Clock(1_800_000_010))
    out = minter.replace_claims(
        _claims(), requester=TRAVEL, scope=None, tctx_add={"route": "flights"}
    )
    assert out["tctx"]["route"] == "flights"


# --------------------------------------------------------------------------- scopes


def test_parse_scope() -> None:
    assert parse_scope("a b a") == ["a", "b"]
    for bad in ("a  b", " a", "a ", 'a"b', "a\\b", ""):
        with pytest.raises(ExchangeError):
            parse_scope(bad)


_SCOPE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@given(st.lists(st.text(max_size=12), max_size=12))
def test_clean_scopes_yield_only_scope_tokens(raw: list[str]) -> None:
    out = clean_scopes(raw)
    assert len(out) == len(set(out))
    assert all(re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", s) for s in out)
    assert set(out) <= set(raw)


# --------------------------------------------------------------------------- property


_KEY = st.sampled_from(["txn", "sub", "aud", "scope", "tool", "route", "a2a", "x", "y"])
_STEP = st.tuples(
    st.one_of(st.none(), st.lists(st.sampled_from("abcdefz"), max_size=6)),
    st.dictionaries(_KEY, st.one_of(st.text(max_size=4), st.integers()), max_size=3),
    st.dictionaries(_KEY, st.text(max_size=4), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, min_size=1, max_size=8))
def test_no_replacement_sequence_widens_or_changes_identity(
    es_key_static: tuple[KeyRing, Any], steps: list[Any]
) -> None:
    ring, _ = es_key_static
    minter = _minter(ring, Clock(1_800_000_010))
    original = _claims()
    current = original
    for scope, tctx_add, rctx_add in steps:
        held = set(current["scope"].split())
        try:
            nxt = minter.replace_claims(
                current, requester=TRAVEL, scope=scope, tctx_add=tctx_add, rctx_add=rctx_add
            )
        except ExchangeError as exc:
            refused = exc.error
        else:
            refused = ""
        if refused:
            widening = scope is not None and not set(scope) <= held
            expected = "invalid_scope" if widening else "invalid_request"
            assert refused == expected
            continue
        assert scope is None or set(scope) <= held  # a widening request never succeeds
        assert set(nxt["scope"].split()) <= held
        for name in ("txn", "sub", "aud", "act"):
            assert nxt[name] == original[name]
        for key, value in current["tctx"].items():
            assert nxt["tctx"][key] == value  # tctx only ever grows
        assert nxt["exp"] <= current["exp"]
        current = nxt


@pytest.fixture(scope="module")
def es_key_static(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyRing, Any]:
    from gateway.tokens.keys import write_private_key

    path = tmp_path_factory.mktemp("keys") / "k.pem"
    key = write_private_key(path, "ES256")
    return KeyRing([path]), key
