"""gateway.authn.jwt_assertion: agent-signed JWT assertions (RFC 7523 §3, RFC 8725)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from multidict import CIMultiDict

from gateway.authn.jwt_assertion import JWTAssertionAuthenticator
from gateway.context import RequestFacts
from gateway.errors import BadRequest, ServiceUnavailable, Unauthorized
from gateway.settings import JWTAssertionMethod
from gateway.state.memory import MemoryReplayCache
from tests.support import inbound

NOW = 1_700_000_000
AUDIENCE = "https://gw.example.org/"
PLANNER_KEY = ec.generate_private_key(ec.SECP256R1())
TRAVEL_EC = ec.generate_private_key(ec.SECP256R1())
TRAVEL_ED = ed25519.Ed25519PrivateKey.generate()
ATTACKER = ec.generate_private_key(ec.SECP256R1())


def _jwk(key: Any, alg: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(key.public_key()))
    return {**data, "alg": alg, **extra}


@pytest.fixture(scope="module")
def agents_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("assert") / "agents.yaml"
    agents = [
        {"id": "planner", "roles": ["planner"], "jwks": {"keys": [_jwk(PLANNER_KEY, "ES256")]}},
        {
            "id": "travel",
            "subject": "spiffe://example.org/agent/travel",
            "jwks": {
                "keys": [
                    _jwk(TRAVEL_EC, "ES256", kid="ec-1"),
                    _jwk(TRAVEL_ED, "EdDSA", kid="ed-1"),
                ]
            },
        },
    ]
    path.write_text(yaml.safe_dump({"agents": agents}))
    return path


def _facts(now: int = NOW) -> RequestFacts:
    return RequestFacts(
        request_id="r1",
        method="GET",
        scheme="https",
        host="gw.example.org",
        path="/x",
        raw_query="",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto="https",
        forwarded_host="gw.example.org",
        peer=None,
        time_ns=now * 10**9,
    )


def _method(agents_file: Path, replay: Any = None, **cfg: Any) -> JWTAssertionAuthenticator:
    return JWTAssertionAuthenticator(
        "assert",
        JWTAssertionMethod(agents_file=agents_file, **cfg),
        replay if replay is not None else MemoryReplayCache(),
        gateway_audience=AUDIENCE,
    )


_counter = iter(range(10**9))


def claims(**override: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "planner",
        "sub": "planner",
        "aud": AUDIENCE,
        "iat": NOW,
        "exp": NOW + 60,
        "jti": f"jti-{next(_counter)}",
    }
    base.update(override)
    return {k: v for k, v in base.items() if v is not None}


def mint(
    payload: dict[str, Any] | None = None,
    *,
    key: Any = PLANNER_KEY,
    alg: str = "ES256",
    headers: dict[str, Any] | None = None,
) -> str:
    return jwt.encode(payload or claims(), key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: str, payload: str, key: Any = PLANNER_KEY) -> str:
    """A JWS over literal JSON text (for duplicate members and other oddities)."""
    signing_input = f"{_b64(header.encode())}.{_b64(payload.encode())}"
    sig = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), key)
    return f"{signing_input}.{_b64(sig)}"


def _request(*values: str, name: str = "Agent-Assertion") -> Any:
    return inbound(make_mocked_request("GET", "/x", headers=CIMultiDict((name, v) for v in values)))


# --------------------------------------------------------------------------- success


SUCCESS_CASES = [
    pytest.param(lambda: mint(), "planner", "planner", id="single-key-no-kid"),
    pytest.param(
        lambda: mint(claims(iss="travel", sub="travel"), key=TRAVEL_EC, headers={"kid": "ec-1"}),
        "travel",
        "spiffe://example.org/agent/travel",
        id="es256-by-kid",
    ),
    pytest.param(
        lambda: mint(
            claims(iss="travel", sub="travel"), key=TRAVEL_ED, alg="EdDSA", headers={"kid": "ed-1"}
        ),
        "travel",
        "spiffe://example.org/agent/travel",
        id="eddsa-by-kid",
    ),
    pytest.param(
        lambda: mint(claims(aud=["other", AUDIENCE])),
        "planner",
        "planner",
        id="aud-array-contains-ours",
    ),
    pytest.param(
        lambda: mint(claims(exp=NOW - 10)), "planner", "planner", id="expired-within-leeway"
    ),
    pytest.param(lambda: mint(headers={"typ": "JWT"}), "planner", "planner", id="typ-jwt"),
    pytest.param(lambda: mint(claims(nbf=NOW + 10)), "planner", "planner", id="nbf-within-leeway"),
    pytest.param(
        lambda: mint(
            headers={"jku": "https://attacker.example/jwks", "x5u": "https://a.example/c"}
        ),
        "planner",
        "planner",
        id="jku-x5u-ignored",
    ),
]


@pytest.mark.parametrize(("make_token", "client_id", "subject"), SUCCESS_CASES)
async def test_valid_assertion(
    agents_file: Path, make_token: Callable[[], str], client_id: str, subject: str
) -> None:
    token = make_token()
    principal = await _method(agents_file).authenticate(_request(token), _facts())
    assert principal is not None
    assert (principal.method, principal.client_id, principal.issuer) == (
        "assert",
        client_id,
        client_id,
    )
    assert (principal.subject, principal.subject_type) == (subject, "agent")
    assert principal.amr == ("swk",)
    assert principal.token_id == principal.claims["jti"]
    assert principal.expires_at == float(principal.claims["exp"])
    assert set(principal.claims) <= {"iss", "sub", "aud", "iat", "nbf", "exp", "jti"}


async def test_unregistered_claims_do_not_reach_policy(agents_file: Path) -> None:
    token = mint(claims(scope="admin", roles=["root"]))
    principal = await _method(agents_file).authenticate(_request(token), _facts())
    assert principal is not None
    assert "scope" not in principal.claims
    assert "roles" not in principal.claims
    assert principal.scopes == ()
    assert principal.roles == ("planner",)


NOT_MINE_CASES = [
    pytest.param((), "Agent-Assertion", id="no-header"),
    pytest.param((f"Bearer {mint()}",), "Authorization", id="bearer-token-is-not-mine"),
]


@pytest.mark.parametrize(("values", "name"), NOT_MINE_CASES)
async def test_not_mine(agents_file: Path, values: tuple[str, ...], name: str) -> None:
    assert await _method(agents_file).authenticate(_request(*values, name=name), _facts()) is None


@pytest.mark.parametrize(
    "values",
    [pytest.param(("a.b.c", "a.b.c"), id="sent-twice"), pytest.param(("  ",), id="empty")],
)
async def test_transport_problems_are_400(agents_file: Path, values: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as exc:
        await _method(agents_file).authenticate(_request(*values), _facts())
    assert (exc.value.status, exc.value.reason) == (400, "invalid_request")


# --------------------------------------------------------------------------- failures


def _hs256_with_public_key() -> str:
    # The classic RS/ES -> HS confusion: the public key used as an HMAC secret.
    pem = PLANNER_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims()).encode())
    sig = jwt.get_algorithm_by_name("HS256").sign(f"{header}.{payload}".encode(), pem)
    return f"{header}.{payload}.{_b64(sig)}"


def _unsigned(alg: str) -> str:
    header = _b64(json.dumps({"alg": alg}).encode())
    return f"{header}.{_b64(json.dumps(claims()).encode())}."


def _tampered() -> str:
    header, _, sig = mint().split(".")
    return f"{header}.{_b64(json.dumps(claims(iss='planner', sub='planner')).encode())}.{sig}"


FAILURE_CASES = [
    pytest.param(
        lambda: _unsigned("none"), "assertion algorithm not allowed", id="alg-none-empty-sig"
    ),
    pytest.param(
        lambda: _unsigned("none") + "AAAA", "assertion algorithm not allowed", id="alg-none"
    ),
    pytest.param(
        lambda: _unsigned("NoNe") + "AAAA",
        "assertion algorithm not allowed",
        id="alg-none-mixed-case",
    ),
    pytest.param(
        _hs256_with_public_key, "assertion algorithm not allowed", id="hs256-public-key-confusion"
    ),
    pytest.param(
        lambda: _unsigned("hs256") + "AAAA", "assertion algorithm not allowed", id="hs256-lowercase"
    ),
    pytest.param(
        lambda: mint(key=ec.generate_private_key(ec.SECP384R1()), alg="ES384"),
        "assertion algorithm not allowed",
        id="alg-not-in-allowlist",
    ),
    pytest.param(
        lambda: _unsigned("es256") + "AAAA", "assertion algorithm not allowed", id="alg-wrong-case"
    ),
    pytest.param(
        lambda: mint(
            claims(iss="travel", sub="travel"), key=TRAVEL_ED, alg="EdDSA", headers={"kid": "ec-1"}
        ),
        "assertion algorithm does not match the key",
        id="key-used-for-other-alg",
    ),
    pytest.param(
        lambda: mint(claims(iss="travel", sub="travel"), key=TRAVEL_EC),
        "assertion key not found",
        id="kid-needed-with-two-keys",
    ),
    pytest.param(
        lambda: mint(claims(iss="travel", sub="travel"), key=TRAVEL_EC, headers={"kid": "nope"}),
        "assertion key not found",
        id="unknown-kid",
    ),
    pytest.param(lambda: mint(key=ATTACKER), "assertion signature invalid", id="wrong-key"),
    pytest.param(
        lambda: mint(key=ATTACKER, headers={"jwk": _jwk(ATTACKER, "ES256")}),
        "assertion signature invalid",
        id="embedded-jwk-ignored",
    ),
    pytest.param(
        lambda: mint(key=ATTACKER, headers={"jku": "https://attacker.example/jwks"}),
        "assertion signature invalid",
        id="jku-not-followed",
    ),
    pytest.param(
        lambda: mint(claims(iss="travel", sub="travel"), key=PLANNER_KEY, headers={"kid": "ec-1"}),
        "assertion signature invalid",
        id="other-agents-key",
    ),
    pytest.param(_tampered, "assertion signature invalid", id="payload-tampered"),
    pytest.param(
        lambda: mint(headers={"crit": ["exp"], "exp": 1}),
        "assertion has critical header parameters",
        id="crit",
    ),
    pytest.param(
        lambda: mint(headers={"typ": "at+jwt"}), "assertion has the wrong typ", id="typ-at-jwt"
    ),
    pytest.param(
        lambda: mint(headers={"typ": "dpop+jwt"}), "assertion has the wrong typ", id="typ-dpop"
    ),
    pytest.param(
        lambda: mint(claims(iss="stranger", sub="stranger")),
        "assertion issuer is not a registered agent",
        id="unknown-iss",
    ),
    pytest.param(
        lambda: mint(claims(iss=None)), "assertion issuer is not a registered agent", id="no-iss"
    ),
    pytest.param(
        lambda: mint(claims(sub="alice")), "assertion sub must equal iss", id="sub-not-iss"
    ),
    pytest.param(
        lambda: mint(claims(aud="https://other.example/")),
        "assertion audience mismatch",
        id="wrong-aud",
    ),
    pytest.param(lambda: mint(claims(aud=None)), "assertion audience mismatch", id="no-aud"),
    pytest.param(lambda: mint(claims(exp=NOW - 31)), "assertion expired", id="expired"),
    pytest.param(
        lambda: mint(claims(exp=None)), "assertion needs numeric exp and iat", id="no-exp"
    ),
    pytest.param(
        lambda: mint(claims(iat=None)), "assertion needs numeric exp and iat", id="no-iat"
    ),
    pytest.param(
        lambda: mint(claims(exp=str(NOW + 60))),
        "assertion needs numeric exp and iat",
        id="exp-string",
    ),
    pytest.param(
        lambda: mint(claims(exp=True)), "assertion needs numeric exp and iat", id="exp-bool"
    ),
    pytest.param(
        lambda: mint(claims(iat=NOW + 31, exp=NOW + 90)),
        "assertion issued in the future",
        id="iat-future",
    ),
    pytest.param(
        lambda: mint(claims(iat=NOW - 10, exp=NOW + 300)),
        "assertion lifetime too long",
        id="lifetime-over-max",
    ),
    pytest.param(lambda: mint(claims(nbf=NOW + 31)), "assertion not yet valid", id="nbf-future"),
    pytest.param(lambda: mint(claims(jti=None)), "assertion needs a jti", id="no-jti"),
    pytest.param(lambda: mint(claims(jti="")), "assertion needs a jti", id="empty-jti"),
    pytest.param(lambda: mint(claims(jti=7)), "assertion needs a jti", id="jti-not-string"),
    pytest.param(
        lambda: raw_token('{"alg":"ES256"}', '{"iss":"planner","iss":"evil","sub":"planner"}'),
        "assertion is not valid JSON",
        id="duplicate-claim",
    ),
    pytest.param(
        lambda: raw_token('{"alg":"ES256","alg":"ES256"}', json.dumps(claims())),
        "assertion is not valid JSON",
        id="duplicate-header-member",
    ),
    pytest.param(
        lambda: raw_token('{"alg":"ES256"}', '{"iss":"planner","exp":NaN}'),
        "assertion is not valid JSON",
        id="nan",
    ),
    pytest.param(
        lambda: raw_token('{"alg":"ES256"}', '["not","an","object"]'),
        "assertion segment is not a JSON object",
        id="payload-array",
    ),
    pytest.param(lambda: mint(claims(pad="x" * 9000)), "assertion too large", id="over-8-kib"),
    pytest.param(lambda: "a.b", "assertion is not a compact JWS", id="two-segments"),
    pytest.param(lambda: mint() + ".x", "assertion is not a compact JWS", id="four-segments"),
    pytest.param(lambda: "e30=.e30.AAAA", "assertion is not valid base64url", id="padded-base64"),
    pytest.param(
        lambda: _b64(b'{"alg":"ES256"}') + "." + _b64(b"\xff\xfe") + ".AAAA",
        "assertion is not valid JSON",
        id="payload-not-utf8",
    ),
]


@pytest.mark.parametrize(("make_token", "description"), FAILURE_CASES)
async def test_invalid_assertion_is_401(
    agents_file: Path, make_token: Callable[[], str], description: str
) -> None:
    token = make_token()
    with pytest.raises(Unauthorized) as exc:
        await _method(agents_file).authenticate(_request(token), _facts())
    assert exc.value.status == 401
    challenge = exc.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="agentgate", error="invalid_token"')
    assert f'error_description="{description}"' in challenge
    for text in (str(exc.value), exc.value.detail, challenge, repr(exc.value)):
        assert token not in text


async def test_explicit_audience_overrides_gateway_default(agents_file: Path) -> None:
    method = _method(agents_file, audience="urn:agentgate:ingress")
    with pytest.raises(Unauthorized):
        await method.authenticate(_request(mint()), _facts())
    token = mint(claims(aud="urn:agentgate:ingress"))
    assert await method.authenticate(_request(token), _facts()) is not None


async def test_allowlist_can_admit_other_asymmetric_algs(agents_file: Path) -> None:
    method = _method(agents_file, algorithms=["EdDSA"])
    with pytest.raises(Unauthorized):
        await method.authenticate(_request(mint()), _facts())  # ES256 no longer allowed


# --------------------------------------------------------------------------- replay


async def test_jti_is_single_use(agents_file: Path) -> None:
    method = _method(agents_file)
    token = mint()
    assert await method.authenticate(_request(token), _facts()) is not None
    with pytest.raises(Unauthorized) as exc:
        await method.authenticate(_request(token), _facts(NOW + 5))
    assert "assertion replayed" in exc.value.headers["WWW-Authenticate"]


async def test_same_jti_from_other_agent_is_independent(agents_file: Path) -> None:
    method = _method(agents_file)
    shared = "same-jti"
    first = mint(claims(jti=shared))
    second = mint(
        claims(iss="travel", sub="travel", jti=shared), key=TRAVEL_EC, headers={"kid": "ec-1"}
    )
    assert await method.authenticate(_request(first), _facts()) is not None
    assert await method.authenticate(_request(second), _facts()) is not None


async def test_concurrent_replay_exactly_one_wins(agents_file: Path) -> None:
    method = _method(agents_file)
    token = mint()
    results = await asyncio.gather(
        method.authenticate(_request(token), _facts()),
        method.authenticate(_request(token), _facts()),
        return_exceptions=True,
    )
    assert sum(1 for r in results if r is not None and not isinstance(r, BaseException)) == 1
    assert sum(1 for r in results if isinstance(r, Unauthorized)) == 1


async def test_unusable_replay_store_is_503(agents_file: Path) -> None:
    method = _method(agents_file, MemoryReplayCache(max_entries=0))
    with pytest.raises(ServiceUnavailable):
        await method.authenticate(_request(mint()), _facts())


def test_repr_and_contract(agents_file: Path) -> None:
    method = _method(agents_file)
    assert repr(method) == "JWTAssertionAuthenticator('assert', agents=2)"
    assert method.challenge() is None
    assert method.credential_headers() == ("Agent-Assertion",)
