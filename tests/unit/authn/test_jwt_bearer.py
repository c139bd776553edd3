"""gateway.authn.jwt_bearer: RFC 6750 presentation, RFC 9068 §4 validation, sender constraints."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import streams
from aiohttp.base_protocol import BaseProtocol
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.authn.jwt_bearer import JWTBearerAuthenticator, shown
from gateway.context import Actor, Peer, Principal
from gateway.devtools.devpki import create_ca, issue_leaf
from gateway.errors import BadRequest, ConfigError, ServiceUnavailable, Unauthorized
from gateway.jose.jwk import jwk_thumbprint
from gateway.net.spiffe import peer_from_der
from gateway.settings import BearerMethod, Issuer
from gateway.state.memory import MemoryReplayCache

from . import (
    AUD,
    DROP,
    ISS,
    NOW,
    Clock,
    claims,
    closed_port,
    dpop_proof,
    facts,
    keys,
    make_issuer,
    mint,
    request,
    vector,
    write_jwks,
)

K = keys()
CLIENT_JKT = jwk_thumbprint(K["client"].jwk(with_alg=False))

Factory = Callable[..., Awaitable[JWTBearerAuthenticator]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    return write_jwks(tmp_path / "jwks.json", K["es"], K["ed"], K["rs"])


@pytest.fixture
async def make_auth(jwks_file: Path, clock: Clock) -> AsyncIterator[Factory]:
    created: list[JWTBearerAuthenticator] = []

    async def factory(
        cfg: BearerMethod | None = None, issuer: Issuer | None = None, **issuer_kw: Any
    ) -> JWTBearerAuthenticator:
        if issuer is None:
            if "jwks_uri" not in issuer_kw:
                issuer_kw.setdefault("jwks_file", str(jwks_file))
            issuer = make_issuer(**issuer_kw)
        auth = JWTBearerAuthenticator(
            "bearer",
            cfg or BearerMethod(issuers=(issuer.name,)),
            [issuer],
            MemoryReplayCache(),
            trust_domain="example.org",
            clock=clock,
        )
        await auth.start()
        created.append(auth)
        return auth

    yield factory
    for auth in created:
        await auth.close()


@pytest.fixture
async def auth(make_auth: Factory) -> JWTBearerAuthenticator:
    return await make_auth()


async def present(
    auth: JWTBearerAuthenticator,
    token: str | None = None,
    *,
    scheme: str = "Bearer",
    peer: Peer | None = None,
    headers: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> Principal | None:
    pairs = list(headers or [])
    if token is not None:
        pairs.append(("Authorization", f"{scheme} {token}"))
    req = request(pairs, **kw)
    return await auth.authenticate(req, facts(req, peer=peer))


async def refused(auth: JWTBearerAuthenticator, token: str, **kw: Any) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await present(auth, token, **kw)
    return info.value


def peer_cert() -> Peer:
    ca = create_ca(trust_domain="example.org")
    leaf = issue_leaf(ca, common_name="agent", spiffe_id="spiffe://example.org/agent/travel")
    return peer_from_der(leaf.cert.public_bytes(Encoding.DER))


def nested_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"agent-{depth}"}
    for i in range(depth - 1, 0, -1):
        act = {"sub": f"agent-{i}", "act": act}
    return act


# --------------------------------------------------------------------------- happy path


async def test_valid_token_yields_principal(auth: JWTBearerAuthenticator) -> None:
    token = mint(
        claims(
            sub="user-5c1d",
            client_id="planner-app",
            scope="agents.invoke research.read",
            roles=["reader", "booker"],
            amr=["pwd", "otp"],
            acr="urn:example:acr:mfa",
            auth_time=NOW - 100,
            jti="at-3f2b9c",
            act=vector("rfc8693_token_exchange.json")["act_nested"]["act"],
            nbf=NOW - 10,
            nonce="n-0S6_WzA2Mj",
            tenant="acme",
        )
    )
    principal = await present(auth, token)
    assert principal is not None
    assert principal.method == "bearer"
    assert principal.subject == "user-5c1d"
    assert principal.subject_type == "user"
    assert principal.issuer == ISS
    assert principal.client_id == "planner-app"
    assert principal.scopes == ("agents.invoke", "research.read")
    assert principal.roles == ("reader", "booker")
    assert principal.amr == ("pwd", "otp")
    assert principal.actors == (
        Actor(sub="https://service16.example.com"),
        Actor(sub="https://service77.example.com"),
    )
    assert principal.sender_constraint == "none"
    assert principal.expires_at == NOW + 300
    assert principal.token_id == "at-3f2b9c"
    assert principal.claims["tenant"] == "acme"  # custom claims reach policy
    assert principal.claims["acr"] == "urn:example:acr:mfa"
    for hidden in ("jti", "nbf", "nonce"):
        assert hidden not in principal.claims
    assert token not in repr(principal)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="baseline"),
        pytest.param({"exp": NOW - 29}, id="exp-past-within-leeway"),
        pytest.param({"nbf": NOW + 29}, id="nbf-future-within-leeway"),
        pytest.param({"iat": NOW + 29}, id="iat-future-within-leeway"),
        pytest.param({"exp": NOW + 300.5, "iat": NOW - 0.5}, id="fractional-numericdates"),
        pytest.param({"aud": ["https://other.example.org", AUD]}, id="aud-array-containing-us"),
        pytest.param({"client_id": DROP, "azp": "travel-agent"}, id="azp-instead-of-client-id"),
        pytest.param({"act": nested_act(10)}, id="act-depth-10"),
        pytest.param({"scope": DROP}, id="no-scope"),
        pytest.param({"custom": {"nested": [1, 2]}}, id="custom-claim"),
    ],
)
async def test_accepted_claims(auth: JWTBearerAuthenticator, overrides: dict[str, Any]) -> None:
    assert await present(auth, mint(claims(**overrides))) is not None


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        pytest.param({"exp": DROP}, "missing exp", id="exp-missing"),
        pytest.param({"exp": str(NOW + 300)}, "malformed exp", id="exp-string"),
        pytest.param({"exp": True}, "malformed exp", id="exp-bool"),
        pytest.param({"exp": NOW - 30}, "token expired", id="exp-past-beyond-leeway"),
        pytest.param({"exp": 10**400}, "malformed exp", id="exp-huge-integer"),
        pytest.param({"nbf": NOW + 31}, "token not yet valid", id="nbf-future"),
        pytest.param({"nbf": "soon"}, "malformed nbf", id="nbf-string"),
        pytest.param({"iat": NOW + 31}, "token issued in the future", id="iat-future"),
        pytest.param({"iat": DROP}, "missing iat", id="iat-missing"),
        pytest.param(
            {"aud": "https://other.example.org"}, "token audience mismatch", id="aud-other"
        ),
        pytest.param(
            {"aud": ["https://a.example", "https://b.example"]},
            "token audience mismatch",
            id="aud-array-without-us",
        ),
        pytest.param({"aud": []}, "token audience mismatch", id="aud-empty-array"),
        pytest.param({"aud": 42}, "malformed aud", id="aud-number"),
        pytest.param({"aud": [AUD, 42]}, "malformed aud", id="aud-array-with-number"),
        pytest.param({"aud": DROP}, "missing aud", id="aud-missing"),
        pytest.param({"iss": "https://evil.example.org"}, "unknown token issuer", id="iss-other"),
        pytest.param({"iss": ISS + "/"}, "unknown token issuer", id="iss-trailing-slash"),
        pytest.param({"iss": ISS.upper()}, "unknown token issuer", id="iss-case"),
        pytest.param({"iss": DROP}, "unknown token issuer", id="iss-missing"),
        pytest.param({"iss": [ISS]}, "unknown token issuer", id="iss-array"),
        pytest.param({"sub": DROP}, "missing or malformed sub", id="sub-missing"),
        pytest.param({"sub": ""}, "missing or malformed sub", id="sub-empty"),
        pytest.param({"sub": 7}, "missing or malformed sub", id="sub-number"),
        pytest.param({"jti": DROP}, "missing or malformed jti", id="jti-missing"),
        pytest.param({"client_id": DROP}, "missing client_id", id="client-id-missing"),
        pytest.param({"client_id": 5}, "missing client_id", id="client-id-number"),
        pytest.param({"scope": ["a"]}, "malformed scope", id="scope-array"),
        pytest.param({"scope": DROP, "scp": 3}, "malformed scp", id="scp-number"),
        pytest.param({"roles": "admin"}, "malformed roles", id="roles-string"),
        pytest.param({"amr": "pwd"}, "malformed amr", id="amr-string"),
        pytest.param({"act": {"iss": ISS}}, "malformed act", id="act-without-sub"),
        pytest.param({"act": "agent"}, "malformed act", id="act-string"),
        pytest.param({"act": {"sub": "a", "iss": 1}}, "malformed act", id="act-iss-number"),
        pytest.param({"act": nested_act(11)}, "actor chain too deep", id="act-depth-11"),
        pytest.param({"cnf": "x"}, "malformed cnf", id="cnf-string"),
        pytest.param({"cnf": {"jkt": 5}}, "malformed cnf", id="cnf-jkt-number"),
    ],
)
async def test_refused_claims(
    auth: JWTBearerAuthenticator, overrides: dict[str, Any], description: str
) -> None:
    token = mint(claims(**overrides))
    err = await refused(auth, token)
    assert err.status == 401
    assert err.headers["WWW-Authenticate"] == (
        f'Bearer realm="agentgate", error="invalid_token", error_description="{description}"'
    )
    assert token not in err.headers["WWW-Authenticate"]
    assert token not in err.detail


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"scope": "a b a"}, ("a", "b"), id="scope-string-deduplicated"),
        pytest.param({"scope": DROP, "scp": ["x", "y"]}, ("x", "y"), id="scp-array"),
        pytest.param({"scope": DROP, "scp": "x y"}, ("x", "y"), id="scp-string"),
        pytest.param({"scope": "s", "scp": ["x"]}, ("s",), id="scope-wins-over-scp"),
        pytest.param({"scope": ""}, (), id="scope-empty"),
    ],
)
async def test_scopes(
    auth: JWTBearerAuthenticator, overrides: dict[str, Any], expected: tuple[str, ...]
) -> None:
    principal = await present(auth, mint(claims(**overrides)))
    assert principal is not None
    assert principal.scopes == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"sub": "travel-agent"}, "agent", id="client-credentials"),
        pytest.param({"sub": "travel-agent", "auth_time": NOW}, "user", id="client-with-auth-time"),
        pytest.param({"sub": "alice"}, "user", id="user"),
        pytest.param({"sub": "spiffe://example.org/agent/x"}, "agent", id="own-spiffe-workload"),
        pytest.param({"sub": "spiffe://other.org/agent/x"}, "user", id="foreign-spiffe-id"),
        pytest.param({"sub": "svc", "client_id": DROP, "azp": "svc"}, "agent", id="azp-equals-sub"),
        # Keycloak client credentials: acr + preferred_username, but no user session.
        pytest.param(
            {"sub": "53f8-uuid", "acr": "1", "preferred_username": "service-account-planner"},
            "agent",
            id="keycloak-service-account",
        ),
        pytest.param(
            {
                "sub": "53f8-uuid",
                "azp": "planner",
                "client_id": DROP,
                "acr": "1",
                "preferred_username": "service-account-planner",
            },
            "agent",
            id="keycloak-service-account-azp",
        ),
        pytest.param(
            {
                "sub": "53f8-uuid",
                "acr": "1",
                "sid": "s1",
                "preferred_username": "service-account-planner",
            },
            "user",
            id="service-account-name-with-a-session",
        ),
        pytest.param(
            {"sub": "df0d-uuid", "acr": "1", "sid": "s1", "preferred_username": "alice"},
            "user",
            id="keycloak-user",
        ),
    ],
)
async def test_subject_type(
    auth: JWTBearerAuthenticator, overrides: dict[str, Any], expected: str
) -> None:
    principal = await present(auth, mint(claims(**overrides)))
    assert principal is not None
    assert principal.subject_type == expected


# --------------------------------------------------------------------------- algorithms, keys


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        pytest.param("es", "ES256", id="ES256"),
        pytest.param("ed", "EdDSA", id="EdDSA"),
        pytest.param("rs", "RS256", id="RS256"),
    ],
)
async def test_each_configured_algorithm(auth: JWTBearerAuthenticator, key: str, alg: str) -> None:
    assert await present(auth, mint(key=K[key], alg=alg)) is not None


async def test_rsa_jwk_without_alg_allows_only_configured_rsa_algs(
    make_auth: Factory, tmp_path: Path
) -> None:
    path = write_jwks(tmp_path / "rsa.json", K["rs"].jwk(with_alg=False))
    auth = await make_auth(jwks_file=str(path), algorithms=["RS256", "PS256"])
    assert await present(auth, mint(key=K["rs"], alg="RS256")) is not None
    assert await present(auth, mint(key=K["rs"], alg="PS256")) is not None
    auth2 = await make_auth(jwks_file=str(path), algorithms=["PS256"])
    await refused(auth2, mint(key=K["rs"], alg="RS256"))


async def test_key_bound_to_its_jwk_alg(make_auth: Factory) -> None:
    # The issuer allows PS256, but the RSA JWK says alg RS256: PS256 with that key is refused.
    auth = await make_auth(algorithms=["ES256", "RS256", "PS256"])
    err = await refused(auth, mint(key=K["rs"], alg="PS256"))
    assert "no key for this algorithm" in err.headers["WWW-Authenticate"]


async def test_algorithm_not_in_issuer_allowlist(make_auth: Factory) -> None:
    auth = await make_auth(algorithms=["ES256"])
    err = await refused(auth, mint(key=K["ed"], alg="EdDSA"))
    assert "algorithm not allowed" in err.headers["WWW-Authenticate"]


async def test_kidless_token_matches_only_kidless_keys(make_auth: Factory, tmp_path: Path) -> None:
    kidless = {k: v for k, v in K["es"].jwk().items() if k != "kid"}
    auth = await make_auth(jwks_file=str(write_jwks(tmp_path / "k.json", kidless)))
    assert await present(auth, mint(kid=None)) is not None
    auth2 = await make_auth()  # all keys have a kid
    err = await refused(auth2, mint(kid=None))
    assert "unknown signing key" in err.headers["WWW-Authenticate"]


async def test_unknown_kid_in_static_file(auth: JWTBearerAuthenticator) -> None:
    err = await refused(auth, mint(kid="rotated-away"))
    assert "unknown signing key" in err.headers["WWW-Authenticate"]


async def test_rfc8693_example_token_is_refused(auth: JWTBearerAuthenticator) -> None:
    # TV-TE-1: a well-formed ES256 JWT from an issuer we do not trust.
    err = await refused(auth, vector("rfc8693_token_exchange.json")["access_token"])
    assert "unknown token issuer" in err.headers["WWW-Authenticate"]


# --------------------------------------------------------------------------- typ


@pytest.mark.parametrize(
    ("typ", "ok"),
    [
        pytest.param("at+jwt", True, id="at+jwt"),
        pytest.param("application/at+jwt", True, id="application/at+jwt"),
        pytest.param("AT+JWT", True, id="upper-case"),
        pytest.param("Application/At+Jwt", True, id="mixed-case-media-type"),
        pytest.param(None, False, id="missing"),
        pytest.param("JWT", False, id="JWT"),
        pytest.param("dpop+jwt", False, id="dpop+jwt"),
        pytest.param("txntoken+jwt", False, id="txntoken+jwt"),
        pytest.param("application/jwt", False, id="application/jwt"),
        pytest.param("at+jwt+x", False, id="suffix"),
    ],
)
async def test_typ_required(auth: JWTBearerAuthenticator, typ: str | None, ok: bool) -> None:
    if ok:
        assert await present(auth, mint(typ=typ)) is not None
    else:
        err = await refused(auth, mint(typ=typ))
        assert "wrong token type" in err.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("typ", "ok"),
    [
        pytest.param(None, True, id="missing"),
        pytest.param("JWT", True, id="JWT"),
        pytest.param("at+jwt", True, id="at+jwt"),
        pytest.param("dpop+jwt", False, id="dpop+jwt"),
        pytest.param("txntoken+jwt", False, id="txntoken+jwt"),
        pytest.param("wit+jwt", False, id="wit+jwt"),
    ],
)
async def test_typ_relaxed_by_issuer(make_auth: Factory, typ: str | None, ok: bool) -> None:
    auth = await make_auth(require_typ=None)
    if ok:
        assert await present(auth, mint(typ=typ)) is not None
    else:
        await refused(auth, mint(typ=typ))


@pytest.mark.parametrize(
    ("method_kw", "issuer_typ", "jwt_ok"),
    [
        # issue 13: `require_typ: null` on the method was accepted, then ignored.
        pytest.param({"require_typ": None}, "at+jwt", True, id="method-null-relaxes"),
        pytest.param({}, "at+jwt", False, id="method-unset-inherits-issuer"),
        pytest.param({}, None, True, id="method-unset-inherits-relaxed-issuer"),
        pytest.param({"require_typ": "at+jwt"}, None, False, id="method-explicit-wins"),
    ],
)
async def test_method_require_typ_overrides_issuer_when_set(
    make_auth: Factory, method_kw: dict[str, Any], issuer_typ: str | None, jwt_ok: bool
) -> None:
    auth = await make_auth(cfg=BearerMethod(issuers=("corp",), **method_kw), require_typ=issuer_typ)
    assert await present(auth, mint(typ="at+jwt")) is not None
    if jwt_ok:
        assert await present(auth, mint(typ="JWT")) is not None
        assert await present(auth, mint(typ=None)) is not None
    else:
        err = await refused(auth, mint(typ="JWT"))
        assert "wrong token type" in err.headers["WWW-Authenticate"]
    # Relaxed or not, another JWT kind is never an access token (RFC 8725 §2.8).
    await refused(auth, mint(typ="txntoken+jwt"))


# --------------------------------------------------------------------------- presentation


async def test_not_mine(auth: JWTBearerAuthenticator) -> None:
    assert await present(auth) is None
    assert await present(auth, "dXNlcjpwYXNz", scheme="Basic") is None
    assert await present(auth, "sig=abc", scheme="Signature") is None


async def test_scheme_is_case_insensitive(auth: JWTBearerAuthenticator) -> None:
    assert await present(auth, mint(), scheme="bearer") is not None
    assert await present(auth, mint(), scheme="BEARER") is not None


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("a b", id="space"),
        pytest.param("abc,def", id="comma"),
        pytest.param('abc"', id="quote"),
        pytest.param("=abc", id="leading-equals"),
    ],
)
async def test_malformed_credentials_are_bad_requests(
    auth: JWTBearerAuthenticator, token: str
) -> None:
    with pytest.raises(BadRequest) as info:
        await present(auth, token)
    assert info.value.status == 400
    assert 'error="invalid_request"' in info.value.headers["WWW-Authenticate"]


async def test_two_authorization_headers(auth: JWTBearerAuthenticator) -> None:
    token = mint()
    with pytest.raises(BadRequest):
        await present(auth, headers=[("Authorization", f"Bearer {token}")] * 2)


@pytest.mark.parametrize(
    ("query", "with_header"),
    [
        pytest.param("access_token=abc", False, id="query-only"),
        pytest.param("x=1&access_token=abc", True, id="query-and-header"),
        pytest.param("access%5Ftoken=abc", False, id="percent-encoded-name"),
        pytest.param("access_token=", False, id="empty-value"),
    ],
)
async def test_token_in_query_refused(
    auth: JWTBearerAuthenticator, query: str, with_header: bool
) -> None:
    with pytest.raises(BadRequest) as info:
        await present(auth, mint() if with_header else None, query=query)
    assert info.value.reason == "invalid_request"
    assert "URI query" in info.value.public


async def test_unrelated_query_is_fine(auth: JWTBearerAuthenticator) -> None:
    assert await present(auth, mint(), query="token=1&access=2") is not None


def _form_request(body: bytes, token: str | None, ctype: str) -> Any:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    loop = asyncio.get_running_loop()
    payload = streams.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    payload.feed_data(body)
    payload.feed_eof()
    return request(headers, method="POST", payload=payload)


async def test_token_in_form_body_refused(auth: JWTBearerAuthenticator) -> None:
    req = _form_request(b"a=1&access_token=abc", None, "application/x-www-form-urlencoded")
    with pytest.raises(BadRequest) as info:
        await auth.authenticate(req, facts(req))
    assert "request body" in info.value.public


async def test_form_body_is_kept_for_the_forwarder(auth: JWTBearerAuthenticator) -> None:
    body = b"flight=LH123&seats=2"
    req = _form_request(body, mint(), "application/x-www-form-urlencoded; charset=utf-8")
    assert await auth.authenticate(req, facts(req)) is not None
    assert req.body.buffered == body


async def test_json_body_is_not_inspected(auth: JWTBearerAuthenticator) -> None:
    req = _form_request(b'{"access_token": "x"}', mint(), "application/json")
    assert await auth.authenticate(req, facts(req)) is not None
    assert req.body.buffered is None


# --------------------------------------------------------------------------- challenges


async def test_challenge_with_and_without_dpop(make_auth: Factory) -> None:
    auth = await make_auth()
    assert auth.challenge() == 'Bearer realm="agentgate", DPoP algs="ES256 EdDSA"'
    off = await make_auth(cfg=BearerMethod(issuers=("corp",), sender_constraint="off"))
    assert off.challenge() == 'Bearer realm="agentgate"'


async def test_invalid_token_in_dpop_scheme_answers_with_dpop_challenge(
    auth: JWTBearerAuthenticator,
) -> None:
    err = await refused(auth, mint(claims(exp=NOW - 100)), scheme="DPoP")
    assert err.headers["WWW-Authenticate"].startswith(
        'DPoP realm="agentgate", error="invalid_token"'
    )


# --------------------------------------------------------------------------- sender constraints


def bound_token(**cnf: str) -> str:
    return mint(claims(cnf=cnf))


async def test_dpop_bound_token_with_valid_proof(auth: JWTBearerAuthenticator) -> None:
    token = bound_token(jkt=CLIENT_JKT)
    principal = await present(
        auth, token, scheme="DPoP", headers=[("DPoP", dpop_proof(token=token))]
    )
    assert principal is not None
    assert principal.sender_constraint == "dpop"
    assert principal.claims["cnf"] == {"jkt": CLIENT_JKT}


@pytest.mark.parametrize(
    ("scheme", "proof", "error"),
    [
        pytest.param(
            "Bearer",
            False,
            'Bearer realm="agentgate", error="invalid_token"',
            id="bearer-downgrade",
        ),
        pytest.param(
            "Bearer",
            True,
            'Bearer realm="agentgate", error="invalid_token"',
            id="bearer-downgrade-with-proof",
        ),
        pytest.param(
            "DPoP", False, 'DPoP realm="agentgate", error="invalid_dpop_proof"', id="no-proof"
        ),
    ],
)
async def test_dpop_bound_token_needs_dpop_scheme_and_proof(
    auth: JWTBearerAuthenticator, scheme: str, proof: bool, error: str
) -> None:
    token = bound_token(jkt=CLIENT_JKT)
    headers = [("DPoP", dpop_proof(token=token))] if proof else []
    err = await refused(auth, token, scheme=scheme, headers=headers)
    assert err.headers["WWW-Authenticate"].startswith(error)


async def test_dpop_proof_from_another_key(auth: JWTBearerAuthenticator) -> None:
    token = bound_token(jkt=CLIENT_JKT)
    proof = dpop_proof(K["client2"], token=token)
    err = await refused(auth, token, scheme="DPoP", headers=[("DPoP", proof)])
    assert "proof key does not match the token binding" in err.headers["WWW-Authenticate"]


async def test_unbound_token_with_dpop_scheme(auth: JWTBearerAuthenticator) -> None:
    token = mint()
    err = await refused(auth, token, scheme="DPoP", headers=[("DPoP", dpop_proof(token=token))])
    assert "token is not DPoP-bound" in err.headers["WWW-Authenticate"]


async def test_unbound_token_with_stray_dpop_header_as_bearer(auth: JWTBearerAuthenticator) -> None:
    token = mint()
    principal = await present(auth, token, headers=[("DPoP", dpop_proof(token=token))])
    assert principal is not None
    assert principal.sender_constraint == "none"


async def test_cached_dpop_token_still_needs_a_fresh_proof_each_time(
    auth: JWTBearerAuthenticator,
) -> None:
    token = bound_token(jkt=CLIENT_JKT)
    proof = dpop_proof(token=token)
    first = await present(auth, token, scheme="DPoP", headers=[("DPoP", proof)])
    assert first is not None
    await refused(auth, token, scheme="Bearer")  # cached, still bound
    err = await refused(auth, token, scheme="DPoP", headers=[("DPoP", proof)])
    assert "replayed" in err.headers["WWW-Authenticate"]
    again = await present(auth, token, scheme="DPoP", headers=[("DPoP", dpop_proof(token=token))])
    assert again is first  # the verification came from the cache, the proof did not


@pytest.fixture(scope="module")
def peer() -> Peer:
    return peer_cert()


async def test_cert_bound_token_with_matching_certificate(
    auth: JWTBearerAuthenticator, peer: Peer
) -> None:
    principal = await present(auth, bound_token(**{"x5t#S256": peer.cert_x5t_s256}), peer=peer)
    assert principal is not None
    assert principal.sender_constraint == "mtls"


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("other-cert", id="x5t-mismatch"),
        pytest.param("no-cert", id="no-client-certificate"),
        pytest.param("non-ascii", id="non-ascii-thumbprint"),
        pytest.param("hex-form", id="hex-instead-of-base64url"),
    ],
)
async def test_cert_bound_token_refused(
    auth: JWTBearerAuthenticator, peer: Peer, which: str
) -> None:
    x5t = {
        "other-cert": peer_cert().cert_x5t_s256,
        "no-cert": peer.cert_x5t_s256,
        "non-ascii": "é" * 43,
        "hex-form": peer.cert_sha256,
    }[which]
    err = await refused(
        auth, bound_token(**{"x5t#S256": x5t}), peer=None if which == "no-cert" else peer
    )
    assert "certificate binding mismatch" in err.headers["WWW-Authenticate"]


async def test_sender_constraint_required(make_auth: Factory, peer: Peer) -> None:
    auth = await make_auth(cfg=BearerMethod(issuers=("corp",), sender_constraint="required"))
    err = await refused(auth, mint())
    assert "token is not sender-constrained" in err.headers["WWW-Authenticate"]
    token = bound_token(**{"x5t#S256": peer.cert_x5t_s256})
    assert await present(auth, token, peer=peer) is not None


async def test_sender_constraint_off_never_weakens_bindings(make_auth: Factory, peer: Peer) -> None:
    auth = await make_auth(cfg=BearerMethod(issuers=("corp",), sender_constraint="off"))
    token = bound_token(jkt=CLIENT_JKT)
    # The DPoP scheme is not this method's any more ...
    assert (
        await present(auth, token, scheme="DPoP", headers=[("DPoP", dpop_proof(token=token))])
        is None
    )
    # ... and a DPoP-bound token can never be used as a bearer token.
    await refused(auth, token)
    # Certificate binding is still enforced.
    await refused(auth, bound_token(**{"x5t#S256": peer.cert_x5t_s256}), peer=peer_cert())
    assert await present(auth, mint()) is not None


# --------------------------------------------------------------------------- cache


async def test_repeat_presentation_is_served_from_cache(auth: JWTBearerAuthenticator) -> None:
    token = mint()
    first = await present(auth, token)
    assert first is not None
    assert await present(auth, token) is first


async def test_cache_never_outlives_exp(auth: JWTBearerAuthenticator, clock: Clock) -> None:
    token = mint(claims(exp=NOW + 100))
    first = await present(auth, token)
    clock.advance(101)  # past exp, still inside the 30 s leeway: re-verified, not cached
    second = await present(auth, token)
    assert second is not None
    assert second is not first
    clock.advance(30)
    await refused(auth, token)


async def test_cache_disabled(make_auth: Factory) -> None:
    auth = await make_auth(cfg=BearerMethod(issuers=("corp",), verified_cache_entries=0))
    token = mint()
    first = await present(auth, token)
    assert await present(auth, token) is not first
    assert auth.cached_tokens == 0


async def test_cache_is_bounded(make_auth: Factory) -> None:
    auth = await make_auth(cfg=BearerMethod(issuers=("corp",), verified_cache_entries=3))
    for _ in range(10):
        assert await present(auth, mint()) is not None
    assert auth.cached_tokens == 3


async def test_failures_are_not_cached(auth: JWTBearerAuthenticator, clock: Clock) -> None:
    token = mint(claims(nbf=NOW + 60))
    await refused(auth, token)
    clock.advance(60)
    assert await present(auth, token) is not None


# --------------------------------------------------------------------------- wiring


def test_unknown_issuer_name_is_a_config_error(jwks_file: Path) -> None:
    issuer = make_issuer(jwks_file=str(jwks_file))
    with pytest.raises(ConfigError) as info:
        JWTBearerAuthenticator(
            "bearer",
            BearerMethod(issuers=("corp", "partner")),
            [issuer],
            MemoryReplayCache(),
            trust_domain="example.org",
        )
    assert info.value.lines() == ["authn.bearer.issuers: issuer 'partner' is not defined"]


def test_duplicate_issuer_value_is_a_config_error(jwks_file: Path) -> None:
    one = make_issuer(jwks_file=str(jwks_file))
    two = make_issuer(name="corp2", jwks_file=str(jwks_file))
    with pytest.raises(ConfigError):
        JWTBearerAuthenticator(
            "bearer",
            BearerMethod(issuers=("corp", "corp2")),
            [one, two],
            MemoryReplayCache(),
            trust_domain="example.org",
        )


async def test_two_issuers_each_with_own_keys(tmp_path: Path, clock: Clock) -> None:
    corp = make_issuer(jwks_file=str(write_jwks(tmp_path / "a.json", K["es"])))
    partner = make_issuer(
        name="partner",
        issuer="https://partner.example.net",
        jwks_file=str(write_jwks(tmp_path / "b.json", K["ed"])),
    )
    auth = JWTBearerAuthenticator(
        "bearer",
        BearerMethod(issuers=("corp", "partner")),
        [corp, partner],
        MemoryReplayCache(),
        trust_domain="example.org",
        clock=clock,
    )
    await auth.start()
    try:
        ok = await present(auth, mint(claims(iss="https://partner.example.net"), key=K["ed"]))
        assert ok is not None
        assert ok.issuer == "https://partner.example.net"
        # SECURITY: partner's iss with corp's key must fail -- keys are pinned per issuer.
        await refused(auth, mint(claims(iss="https://partner.example.net"), key=K["es"]))
    finally:
        await auth.close()


async def test_jwks_unreachable_is_503(make_auth: Factory) -> None:
    auth = await make_auth(
        jwks_uri=f"http://127.0.0.1:{closed_port()}/jwks",
        jwks_cache={"fetch_timeout_s": 0.5},
    )
    assert auth.ready() is False
    with pytest.raises(ServiceUnavailable) as info:
        await present(auth, mint())
    assert info.value.status == 503
    assert info.value.reason == "jwks_unavailable"


async def test_ready_with_static_keys(auth: JWTBearerAuthenticator) -> None:
    assert auth.ready() is True


async def test_service_account_prefix_is_per_issuer(make_auth: Factory) -> None:
    token = claims(sub="53f8-uuid", acr="1", preferred_username="svc-planner")
    default = await make_auth()
    custom = await make_auth(service_account_prefix="svc-")
    off = await make_auth(service_account_prefix=None)
    robot = claims(sub="53f8-uuid", acr="1", preferred_username="service-account-planner")
    assert (await present(default, mint(token))).subject_type == "user"  # type: ignore[union-attr]
    assert (await present(custom, mint(token))).subject_type == "agent"  # type: ignore[union-attr]
    assert (await present(off, mint(robot))).subject_type == "user"  # type: ignore[union-attr]


async def test_claims_mapping_into_subject_attributes(make_auth: Factory) -> None:
    auth = await make_auth(
        claims={
            "username": "preferred_username",
            "roles": "realm_access.roles",
            "groups": "groups",
            "tenant": "org.tenant.id",
            "missing": "nope.not.here",
            "odd": "resource_access",
        }
    )
    token = claims(
        preferred_username="alice",
        roles=["from-token"],
        realm_access={"roles": ["traveller", "from-token", 7]},
        groups=["travellers"],
        org={"tenant": {"id": "acme"}},
        resource_access={"account": {"roles": ["x"]}},
    )
    principal = await present(auth, mint(token))
    assert principal is not None
    assert dict(principal.attributes) == {
        "username": "alice",
        "groups": ["travellers"],
        "tenant": "acme",
        "missing": None,  # mapped but absent: present, as null
        "odd": None,  # an object is not an attribute
    }
    assert principal.roles == ("from-token", "traveller")  # merged, deduplicated, strings only
    assert "preferred_username" not in principal.claims  # still dropped from claims


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("JWT", "JWT", id="plain"),
        pytest.param("a\r\nforged: 1", "a??forged: 1", id="crlf"),
        pytest.param("\x1b[31mred", "?[31mred", id="escape"),
        pytest.param("x" * 100, "x" * 77 + "...", id="truncated"),
        pytest.param(["a", 1], '["a", 1]', id="json"),
    ],
)
def test_shown_is_safe_for_a_log_line(value: Any, expected: str) -> None:
    assert shown(value) == expected


GATEWAY_AUD = '["https://gateway.example.org"]'
DIAGNOSTICS = [
    pytest.param({"typ": "JWT"}, {}, "typ at+jwt wanted, got JWT", id="typ"),
    pytest.param(
        {"payload": claims(aud="other")},
        {},
        f"aud wanted one of {GATEWAY_AUD}, got other",
        id="aud",
    ),
    pytest.param(
        {"payload": claims(exp=NOW - 100, iat=NOW - 200)},
        {},
        "expired by 100 s (leeway 30 s)",
        id="expired",
    ),
    pytest.param({"payload": claims(nbf=NOW + 100)}, {}, "nbf 100 s ahead (leeway 30 s)", id="nbf"),
    pytest.param(
        {"payload": claims(iss="https://evil.example")},
        {},
        'iss https://evil.example wanted one of ["https://idp.example.org"]',
        id="iss",
    ),
    pytest.param(
        {"alg": "EdDSA", "key": K["ed"]},
        {"algorithms": ["ES256"]},
        "alg EdDSA not allowed, wanted one of ['ES256']",
        id="alg",
    ),
    pytest.param(
        {"kid": "rotated-away"},
        {},
        "unknown signing key (iss https://idp.example.org, alg ES256, kid rotated-away)",
        id="kid",
    ),
]


@pytest.mark.parametrize(("token_kw", "issuer_kw", "diagnostic"), DIAGNOSTICS)
async def test_refusal_detail_names_wanted_and_got(
    make_auth: Factory, token_kw: dict[str, Any], issuer_kw: dict[str, Any], diagnostic: str
) -> None:
    auth = await make_auth(**issuer_kw)
    payload = token_kw.pop("payload", None)
    token = mint(payload, **token_kw)
    err = await refused(auth, token)
    assert diagnostic in err.detail
    assert hashlib.sha256(token.encode()).hexdigest()[:12] in err.detail
    assert token not in err.detail
    assert "wanted" not in err.headers["WWW-Authenticate"]
    assert "wanted" not in err.public
