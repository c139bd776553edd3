"""Txn-Token verification: the kit (gateway.sdk.txn) and the txn_token authn method refuse the
same bad tokens; remote JWKS caching; the aiohttp middleware."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from gateway.authn.txn_token import TxnTokenAuthenticator, principal_from_claims
from gateway.context import Actor
from gateway.errors import BadRequest, Forbidden, ServiceUnavailable, Unauthorized
from gateway.sdk.txn import (
    TXN_TOKEN,
    KeysUnavailable,
    RemoteJWKS,
    TxnTokenError,
    TxnTokenVerifier,
    b64url_encode,
    txn_token_middleware,
)
from gateway.settings import TxnTokenMethod
from gateway.tokens.keys import JWKS_PATH, KeyRing, SigningKey, make_jwks_handler
from gateway.tokens.keys import write_private_key as new_key
from gateway.tokens.txn_token import sign_claims
from tests.unit.tokens.support import GATEWAY_ID, ISSUER, PLANNER, TD, TRAVEL, facts, identity, peer

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "iat": now,
        "exp": now + 60,
        "aud": TD,
        "txn": "6f1c2a0e-8a57-4e55-9d0b-3c1f7f0b2a91",
        "sub": "alice",
        "scope": "flights.read",
        "req_wl": GATEWAY_ID,
        "tctx": {"subject_type": "user", "route": "flights"},
        "rctx": {"req_ip": "203.0.113.9", "a2a": {"hop": 1}},
    }
    for key, value in over.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return base


_DROP = object()


def forge(key: SigningKey, header: dict[str, Any], body: dict[str, Any] | bytes) -> str:
    """A token with an arbitrary header, validly signed by ``key``."""
    head = b64url_encode(json.dumps(header).encode())
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    payload = b64url_encode(raw)
    token = sign_claims(key, {}, head)  # signature over a different payload, replaced below
    signing_key = key.private_key
    data = f"{head}.{payload}".encode()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(signing_key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(signing_key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = signing_key.sign(data)
    del token
    return f"{head}.{payload}.{b64url_encode(sig)}"


def header(key: SigningKey, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"alg": key.alg, "kid": key.kid, "typ": "txntoken+jwt"}
    for k, v in over.items():
        if v is _DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _flip_last(segment: str) -> str:
    return segment[:-2] + ("A" if segment[-2] != "A" else "B") + segment[-1]


Case = Callable[[SigningKey, SigningKey], str]


def _tamper_payload(k: SigningKey, _: SigningKey) -> str:
    h, _p, s = forge(k, header(k), claims()).split(".")
    evil = b64url_encode(json.dumps(claims(scope="admin")).encode())
    return f"{h}.{evil}.{s}"


def _tamper_signature(k: SigningKey, _: SigningKey) -> str:
    h, p, s = forge(k, header(k), claims()).split(".")
    return f"{h}.{p}.{_flip_last(s)}"


def _alg_none(k: SigningKey, _: SigningKey) -> str:
    h = b64url_encode(json.dumps({"alg": "none", "kid": k.kid, "typ": "txntoken+jwt"}).encode())
    return f"{h}.{b64url_encode(json.dumps(claims()).encode())}."


def _alg_none_with_sig(k: SigningKey, _: SigningKey) -> str:
    good = forge(k, header(k), claims())
    h = b64url_encode(json.dumps({"alg": "none", "kid": k.kid, "typ": "txntoken+jwt"}).encode())
    return h + good[good.index(".") :]


def _hs256_key_confusion(k: SigningKey, _: SigningKey) -> str:
    # RFC 8725 §2.1: the public key bytes used as an HMAC secret.
    secret = k.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = b64url_encode(json.dumps({"alg": "HS256", "kid": k.kid, "typ": "txntoken+jwt"}).encode())
    p = b64url_encode(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url_encode(mac)}"


def _rfc7520_hs256(k: SigningKey, _: SigningKey) -> str:
    return str(json.loads((VECTORS / "rfc7520_jws_hs256.json").read_text())["jws"])


def _duplicate_claim(k: SigningKey, _: SigningKey) -> str:
    body = json.dumps(claims())[:-1] + ', "sub": "mallory"}'
    return forge(k, header(k), body.encode())


REFUSED: list[Any] = [
    pytest.param(
        lambda k, o: forge(k, header(k), claims(exp=int(time.time()) - 30)), "expired", id="expired"
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(aud="other.org")),
        "wrong_audience",
        id="foreign-aud",
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(aud=[TD])), "wrong_audience", id="aud-as-array"
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(iss="https://evil")), "wrong_issuer", id="wrong-iss"
    ),
    pytest.param(lambda k, o: forge(k, header(k, typ="JWT"), claims()), "wrong_typ", id="typ-jwt"),
    pytest.param(
        lambda k, o: forge(k, header(k, typ="at+jwt"), claims()), "wrong_typ", id="typ-at-jwt"
    ),
    pytest.param(
        lambda k, o: forge(k, header(k, typ="txn_token"), claims()),
        "wrong_typ",
        id="typ-obsolete-txn_token",
    ),
    pytest.param(lambda k, o: forge(k, header(k, typ="N_A"), claims()), "wrong_typ", id="typ-N_A"),
    pytest.param(
        lambda k, o: forge(k, header(k, typ=_DROP), claims()), "wrong_typ", id="typ-missing"
    ),
    pytest.param(lambda k, o: forge(o, header(o), claims()), "unknown_kid", id="unknown-kid"),
    pytest.param(
        lambda k, o: forge(o, header(o, kid=k.kid), claims()),
        "bad_signature",
        id="foreign-key-our-kid",
    ),
    pytest.param(lambda k, o: forge(k, header(k, kid=_DROP), claims()), "unknown_kid", id="no-kid"),
    pytest.param(_tamper_payload, "bad_signature", id="tampered-payload"),
    pytest.param(_tamper_signature, "bad_signature", id="tampered-signature"),
    pytest.param(_alg_none, "malformed", id="alg-none-empty-signature"),
    pytest.param(_alg_none_with_sig, "unsupported_alg", id="alg-none-with-signature"),
    pytest.param(_hs256_key_confusion, "unsupported_alg", id="hs256-key-confusion"),
    pytest.param(_rfc7520_hs256, "unsupported_alg", id="rfc7520-hs256-vector"),
    pytest.param(
        lambda k, o: forge(k, header(k, alg="EdDSA"), claims()),
        "unsupported_alg",
        id="alg-not-the-keys",
    ),
    pytest.param(
        lambda k, o: forge(k, header(k, crit=["exp"]), claims()), "malformed", id="crit-header"
    ),
    pytest.param(_duplicate_claim, "malformed", id="duplicate-claim"),
    pytest.param(lambda k, o: forge(k, header(k), claims(txn=_DROP)), "missing_claim", id="no-txn"),
    pytest.param(lambda k, o: forge(k, header(k), claims(sub="")), "missing_claim", id="empty-sub"),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(req_wl=_DROP)), "missing_claim", id="no-req_wl"
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(scope=_DROP)), "missing_claim", id="no-scope"
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(exp=True)), "missing_claim", id="bool-exp"
    ),
    pytest.param(lambda k, o: forge(k, header(k), claims(iat=_DROP)), "missing_claim", id="no-iat"),
    pytest.param(
        lambda k, o: forge(
            k, header(k), claims(iat=int(time.time()) + 60, exp=int(time.time()) + 90)
        ),
        "not_yet_valid",
        id="iat-in-future",
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(exp=int(time.time()) + 3600)),
        "lifetime_too_long",
        id="lifetime-over-300",
    ),
    pytest.param(
        lambda k, o: forge(k, header(k), claims(tctx="x")), "bad_claim", id="tctx-not-object"
    ),
    pytest.param(lambda k, o: forge(k, header(k), b"[1,2]"), "malformed", id="payload-array"),
    pytest.param(lambda k, o: "not-a-token", "malformed", id="garbage"),
    pytest.param(lambda k, o: "a.b.c.d.e", "malformed", id="jwe-shape"),
    pytest.param(lambda k, o: forge(k, header(k), claims()) + "=", "malformed", id="padding"),
    pytest.param(lambda k, o: "x" * 9000, "malformed", id="oversized"),
]


@pytest.fixture
def other_key(tmp_path: Path) -> SigningKey:
    return new_key(tmp_path / "other.pem", "ES256")


@pytest.mark.parametrize(("make", "code"), REFUSED)
async def test_kit_refuses(
    make: Case, code: str, es_key: tuple[Path, SigningKey], ring: KeyRing, other_key: SigningKey
) -> None:
    verifier = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER, leeway_s=5)
    with pytest.raises(TxnTokenError) as info:
        await verifier.verify(make(es_key[1], other_key))
    assert info.value.code == code
    # The same refusal from a verifier that fetched the JWKS document.
    static = TxnTokenVerifier(ring.jwks(), audience=TD, issuer=ISSUER, leeway_s=5)
    with pytest.raises(TxnTokenError):
        static.verify_local(make(es_key[1], other_key))


def _request(*values: str, name: str = "Txn-Token") -> web.BaseRequest:
    headers: CIMultiDict[str] = CIMultiDict()
    for value in values:
        headers.add(name, value)
    return make_mocked_request("GET", "/internal/x", headers=headers)


def _method(ring: KeyRing, leeway: float = 5) -> TxnTokenAuthenticator:
    verifier = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER)
    return TxnTokenAuthenticator("txn", TxnTokenMethod(leeway_s=leeway), verifier)


@pytest.mark.parametrize(("make", "code"), REFUSED)
async def test_authn_method_refuses(
    make: Case, code: str, es_key: tuple[Path, SigningKey], ring: KeyRing, other_key: SigningKey
) -> None:
    method = _method(ring)
    with pytest.raises(Unauthorized) as info:
        await method.authenticate(_request(make(es_key[1], other_key)), facts())
    challenge = info.value.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert info.value.status == 401
    assert code in info.value.detail  # the reason goes to the log/audit, not the caller
    assert code not in challenge


async def test_both_accept_a_good_token(es_key: tuple[Path, SigningKey], ring: KeyRing) -> None:
    token = forge(es_key[1], header(es_key[1]), claims())
    kit = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER)
    assert (await kit.verify(token))["sub"] == "alice"
    principal = await _method(ring).authenticate(_request(token), facts())
    assert principal is not None
    assert principal.subject == "alice"


async def test_typ_is_case_insensitive_media_type(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    kit = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER)
    for typ in ("TxnToken+JWT", "application/txntoken+jwt"):
        await kit.verify(forge(es_key[1], header(es_key[1], typ=typ), claims()))


# --------------------------------------------------------------------------- authn method


async def test_not_mine_without_the_header(ring: KeyRing) -> None:
    method = _method(ring)
    assert await method.authenticate(_request(), facts()) is None
    assert method.challenge() is None
    assert method.credential_headers() == ("Txn-Token",)


@pytest.mark.parametrize(
    "values", [("a.b.c", "a.b.c"), ("",), ("   ",)], ids=["twice", "empty", "blank"]
)
async def test_malformed_header_is_400(ring: KeyRing, values: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as info:
        await _method(ring).authenticate(_request(*values), facts())
    assert info.value.status == 400
    assert info.value.reason == "invalid_request"


async def test_principal_mapping(es_key: tuple[Path, SigningKey], ring: KeyRing) -> None:
    body = claims(scope="flights.read flights.book", act={"sub": PLANNER, "iss": "https://idp"})
    token = forge(es_key[1], header(es_key[1]), body)
    principal = await _method(ring).authenticate(_request(token), facts(the_peer=peer(TRAVEL)))
    assert principal is not None
    assert principal.method == "txn"
    assert principal.subject == "alice"
    assert principal.subject_type == "user"
    assert principal.scopes == ("flights.read", "flights.book")
    # The verified mTLS caller is pushed on top of the token's chain (SPECS §2.2 rule 2).
    assert principal.actors == (Actor(TRAVEL), Actor(PLANNER, "https://idp"))
    assert principal.token_id == body["txn"]
    assert principal.expires_at == float(body["exp"])
    assert principal.issuer == ISSUER
    assert principal.claims["tctx"] == body["tctx"]
    assert principal.claims["rctx"] == body["rctx"]
    assert principal.claims["txn"] == body["txn"]
    ident = identity(principal)
    assert ident.continued_txn == body["txn"]  # a Txn-Token principal continues its txn


def test_peer_not_pushed_twice_or_for_the_subject_itself() -> None:
    base = claims(act={"sub": PLANNER})
    same_actor = principal_from_claims("txn", base, facts(the_peer=peer(PLANNER)))
    assert same_actor.actors == (Actor(PLANNER),)
    autonomous = claims(sub=PLANNER, tctx={"subject_type": "agent"}, act=_DROP)
    me = principal_from_claims("txn", autonomous, facts(the_peer=peer(PLANNER)))
    assert me.actors == ()
    assert me.subject_type == "agent"
    no_peer = principal_from_claims("txn", base, facts())
    assert no_peer.actors == (Actor(PLANNER),)


def test_actor_chain_depth_cap() -> None:
    act: dict[str, Any] | None = None
    for i in range(8):
        act = {"sub": f"spiffe://{TD}/agent/a{i}", **({"act": act} if act else {})}
    eight = claims(act=act)
    assert len(principal_from_claims("txn", eight, facts()).actors) == 8
    with pytest.raises(Forbidden):
        principal_from_claims("txn", eight, facts(the_peer=peer(TRAVEL)))  # a ninth


async def test_leeway_comes_from_the_method_config(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    now = int(time.time())
    token = forge(es_key[1], header(es_key[1]), claims(iat=now - 63, exp=now - 3))
    assert await _method(ring, leeway=10).authenticate(_request(token), facts()) is not None
    with pytest.raises(Unauthorized):
        await _method(ring, leeway=0).authenticate(_request(token), facts())


async def test_unreachable_keys_are_503_not_401(es_key: tuple[Path, SigningKey]) -> None:
    from tests.support import closed_port

    async with TxnTokenVerifier(
        f"http://127.0.0.1:{closed_port()}/jwks", audience=TD, issuer=ISSUER
    ) as verifier:
        method = TxnTokenAuthenticator("txn", TxnTokenMethod(), verifier)
        token = forge(es_key[1], header(es_key[1]), claims())
        with pytest.raises(ServiceUnavailable):
            await method.authenticate(_request(token), facts())


# --------------------------------------------------------------------------- remote JWKS


class JWKSServer:
    """The real JWKS handler behind a switch that can fail, delay or change headers."""

    def __init__(self, ring: KeyRing, max_age: int = 300) -> None:
        self.ring = ring
        self.hits = 0
        self.fail = False
        self.delay = 0.0
        self._handler = make_jwks_handler(ring, max_age_s=max_age)
        app = web.Application()
        app.router.add_get(JWKS_PATH, self._serve)
        self.client = TestClient(TestServer(app))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return web.Response(status=500)
        return await self._handler(request)

    @property
    def url(self) -> str:
        return str(self.client.make_url(JWKS_PATH))

    async def __aenter__(self) -> JWKSServer:
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _with_remote(
    ring: KeyRing,
    clock: Clock,
    body: Callable[[JWKSServer, TxnTokenVerifier], Awaitable[None]],
    *,
    max_age: int = 300,
    **jwks_kw: Any,
) -> None:
    async with JWKSServer(ring, max_age) as server:
        remote = RemoteJWKS(server.url, clock=clock, **jwks_kw)
        async with TxnTokenVerifier(remote, audience=TD, issuer=ISSUER) as verifier:
            await body(server, verifier)


async def test_remote_jwks_is_cached_per_max_age(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    clock = Clock()
    token = forge(es_key[1], header(es_key[1]), claims())

    async def body(server: JWKSServer, verifier: TxnTokenVerifier) -> None:
        for _ in range(20):
            await verifier.verify(token)
        assert server.hits == 1
        clock.now += 119
        await verifier.verify(token)
        assert server.hits == 1
        clock.now += 2  # past max-age=120
        await verifier.verify(token)
        assert server.hits == 2

    await _with_remote(ring, clock, body, max_age=120)


async def test_unknown_kid_refetches_at_most_once_per_30s(
    tmp_path: Path, es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    clock = Clock()
    stranger = new_key(tmp_path / "stranger.pem", "ES256")
    unknown = forge(stranger, header(stranger), claims())

    async def body(server: JWKSServer, verifier: TxnTokenVerifier) -> None:
        await verifier.verify(forge(es_key[1], header(es_key[1]), claims()))
        assert server.hits == 1
        clock.now += 31
        for _ in range(5):
            with pytest.raises(TxnTokenError, match="unknown key"):
                await verifier.verify(unknown)
        assert server.hits == 2  # one refetch for the whole burst
        clock.now += 10
        with pytest.raises(TxnTokenError):
            await verifier.verify(unknown)
        assert server.hits == 2
        clock.now += 25
        with pytest.raises(TxnTokenError):
            await verifier.verify(unknown)
        assert server.hits == 3

    await _with_remote(ring, clock, body)


async def test_rotation_is_picked_up_through_the_unknown_kid_refetch(tmp_path: Path) -> None:
    clock = Clock()
    active, previous = tmp_path / "active.pem", tmp_path / "previous.pem"
    old = new_key(active, "ES256")
    new_key(previous, "ES256")
    ring = KeyRing([active, previous])

    async def body(server: JWKSServer, verifier: TxnTokenVerifier) -> None:
        await verifier.verify(forge(old, header(old), claims()))
        previous.write_bytes(active.read_bytes())
        new = new_key(active, "ES256", overwrite=True)
        assert ring.reload()
        clock.now += 31
        await verifier.verify(forge(new, header(new), claims()))  # unknown kid -> refetch
        await verifier.verify(forge(old, header(old), claims()))  # still published
        assert server.hits == 2

    await _with_remote(ring, clock, body)


async def test_concurrent_cold_verifies_share_one_fetch(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    clock = Clock()
    token = forge(es_key[1], header(es_key[1]), claims())

    async def body(server: JWKSServer, verifier: TxnTokenVerifier) -> None:
        server.delay = 0.1
        results = await asyncio.gather(*(verifier.verify(token) for _ in range(25)))
        assert all(r["sub"] == "alice" for r in results)
        assert server.hits == 1

    await _with_remote(ring, clock, body)


async def test_stale_keys_are_served_while_the_endpoint_is_down(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    clock = Clock()
    token = forge(es_key[1], header(es_key[1]), claims())

    async def body(server: JWKSServer, verifier: TxnTokenVerifier) -> None:
        await verifier.verify(token)
        server.fail = True
        clock.now += 400  # expired (max-age 300)
        await verifier.verify(token)  # fetch fails, stale keys still good
        assert server.hits == 2
        await verifier.verify(token)
        assert server.hits == 2  # no retry inside retry_s
        clock.now += 3600  # beyond max_stale_s
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token)

    await _with_remote(ring, clock, body, max_stale_s=3600, retry_s=5)


async def test_never_fetched_is_keys_unavailable(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    clock = Clock()
    token = forge(es_key[1], header(es_key[1]), claims())

    async def body(server: JWKSServer, verifier: TxnTokenVerifier) -> None:
        server.fail = True
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token)
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token)
        assert server.hits == 1  # the second call did not wait on another fetch
        server.fail = False
        clock.now += 6
        await verifier.verify(token)

    await _with_remote(ring, clock, body, retry_s=5)


async def test_redirects_are_not_followed_and_size_is_bounded(
    es_key: tuple[Path, SigningKey], ring: KeyRing
) -> None:
    token = forge(es_key[1], header(es_key[1]), claims())

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/real")

    async def huge(request: web.Request) -> web.Response:
        return web.json_response({"keys": [], "pad": "x" * 70000})

    async def real(request: web.Request) -> web.Response:
        return web.json_response(ring.jwks())

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/huge", huge)
    app.router.add_get("/real", real)
    async with TestClient(TestServer(app)) as client:
        for path in ("/redirect", "/huge"):
            url = str(client.make_url(path))
            async with TxnTokenVerifier(url, audience=TD, issuer=ISSUER) as verifier:
                with pytest.raises(KeysUnavailable):
                    await verifier.verify(token)


def test_jwks_parsing_skips_unusable_keys(es_key: tuple[Path, SigningKey]) -> None:
    from gateway.sdk.txn import parse_jwks

    good = dict(es_key[1].public_jwk)
    doc = {
        "keys": [
            good,
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "rs", "alg": "RS256"},
            {**good, "kid": "priv", "d": "AAAA"},
            {**good, "kid": "off-curve", "y": b64url_encode(b"\x01" * 32)},
            {**good, "kid": "short", "x": "AAAA"},
            {"kty": "oct", "kid": "hmac", "k": "AAAA"},
            "not-a-jwk",
            {**good, "kid": "dup"},
            {**good, "kid": "dup"},
        ]
    }
    assert list(parse_jwks(doc)) == [good["kid"]]
    with pytest.raises(ValueError, match="JWKS"):
        parse_jwks({"nokeys": []})


# --------------------------------------------------------------------------- middleware


async def test_middleware(es_key: tuple[Path, SigningKey], ring: KeyRing) -> None:
    verifier = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"sub": request[TXN_TOKEN]["sub"]})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(
        middlewares=[txn_token_middleware(verifier, audience=TD, exempt_paths={"/healthz"})]
    )
    app.router.add_get("/work", handler)
    app.router.add_get("/healthz", health)
    token = forge(es_key[1], header(es_key[1]), claims())
    async with TestClient(TestServer(app)) as client:
        ok = await client.get("/work", headers={"Txn-Token": token})
        assert ok.status == 200
        assert (await ok.json())["sub"] == "alice"
        missing = await client.get("/work")
        assert missing.status == 401
        assert "Txn-Token" in missing.headers["WWW-Authenticate"]
        assert (await missing.json())["error"] == "invalid_token"
        bad = await client.get(
            "/work", headers={"Txn-Token": _tamper_signature(es_key[1], es_key[1])}
        )
        assert bad.status == 401
        twice = CIMultiDict([("Txn-Token", token), ("Txn-Token", token)])
        assert (await client.get("/work", headers=twice)).status == 400
        assert (await client.get("/healthz")).status == 200
    with pytest.raises(ValueError, match="audience"):
        txn_token_middleware(verifier, audience="other.org")


async def test_middleware_answers_503_without_keys(es_key: tuple[Path, SigningKey]) -> None:
    from tests.support import closed_port

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="never")

    async with TxnTokenVerifier(
        f"http://127.0.0.1:{closed_port()}/jwks", audience=TD, issuer=ISSUER
    ) as verifier:
        app = web.Application(middlewares=[txn_token_middleware(verifier, audience=TD)])
        app.router.add_get("/work", handler)
        token = forge(es_key[1], header(es_key[1]), claims())
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/work", headers={"Txn-Token": token})
            assert resp.status == 503


def test_unused_helpers_stay_honest() -> None:
    # base64 of the standard alphabet is not base64url: '+' and '/' are refused.
    from gateway.sdk.txn import b64url_decode

    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(base64.b64encode(b"\xfb\xff").decode())
