"""Credential conversion end to end (DESIGN.md §4 ``credential``, §5 "the upstream receives").

Every test drives the real gateway listener (in-process ``Gateway`` on loopback) and looks at
what a recording upstream actually received:

* each converter type puts EXACTLY ONE credential of its form on the upstream request, and it
  is the converted one: the inbound API key, bearer token or basic credential never goes
  through, and a client cannot smuggle its own copy of the backend credential;
* the credential is verifiable the way a backend would verify it (signed JWT with the public
  key; RFC 9421 HMAC signature recomputed from the bytes the upstream saw; the client
  certificate an HTTPS upstream demanded; Keycloak-issued tokens against Keycloak's JWKS);
* a converter that cannot produce its credential (secret file removed at runtime, token
  endpoint down, nothing to exchange) answers 503 ``application/problem+json`` with the
  generic text and the upstream is NOT contacted: never passthrough, never "no credential".

The OAuth converters run against a real Keycloak (``tests/keycloak_server.py``, one per
module); the rest needs nothing but loopback sockets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import bcrypt
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from multidict import CIMultiDict
from yarl import URL

from gateway.app import Gateway
from gateway.credentials import ConvertContext, Outbound
from gateway.credentials.hmac_sign import HMACSignConverter
from gateway.httpsig import signature_base
from gateway.httpsig.sfv import InnerList, parse_dictionary, serialize_inner_list
from gateway.settings import HMACSignCredential, Secret, parse_settings
from tests.integration.conftest import BASE_SERVER, merge
from tests.keycloak_server import Keycloak, start_keycloak
from tests.support import (
    LOCALHOST,
    Hit,
    RawResponse,
    TestPKI,
    Upstream,
    closed_port,
    http_request,
    raw_request,
)

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------------- secrets and names

INBOUND_API_KEY = "inb-key-" + "Q7v2Lr9xW4mZ8cT1pK6sN3dF5hJ0bY"  # what the client presents
INBOUND_USER, INBOUND_PASSWORD = "ops", "inbound-Pa55-Zq8r"
BACKEND_HEADER_KEY = "bk-hdr-9fB3xQ2mL8vR4tZ7wP1s"  # api_key (header) converter secret
BACKEND_QUERY_KEY = "bk+q/ry&=7Hn2Xc5Vb8Mz"  # api_key (query) secret; needs encoding
BACKEND_USER = "billing-svc"
BACKEND_PASSWORD = "bk:basic-P4ss-W0rd-8Jk2"  # a ':' in a password is legal (RFC 7617 §2)
BACKEND_BEARER = "bk-bearer-Lq3Zt8Wn5Rv2Yx7Pm4Kc"
HMAC_KEY_ID = "gw-to-legacy"
HMAC_SECRET = "hmac-secret-6Tg9Qw2Er5Ty8Ui1Op4As7Df0Gh3Jk"  # 40 bytes
JWT_ISSUER = "https://gateway.example.org"
JWT_AUDIENCE = "https://reports.internal"
JWT_TTL_S = 30
LOCAL_ISSUER = "https://idp.test"
GATEWAY_AUDIENCE = "agentgate"

CC_SECRET = "cc-test-secret"  # tests/fixtures/keycloak/realm.json
GW_SECRET = "gw-test-secret"

# Header names that can carry a credential to an upstream (lowercase).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-backend-key",
        "x-backend-jwt",
        "signature",
        "signature-input",
        "txn-token",
        "dpop",
        "cookie",
    }
)

# --------------------------------------------------------------------------- helpers


def _ec_pem() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, key


@dataclass
class Material:
    """Every file a test gateway needs, in the test's tmp folder."""

    dir: Path
    keys_file: Path
    users_file: Path
    jwks_file: Path
    idp_key: ec.EllipticCurvePrivateKey
    jwt_key_file: Path
    jwt_key: ec.EllipticCurvePrivateKey
    ed_key_file: Path
    ed_key: ed25519.Ed25519PrivateKey
    txn_key_file: Path
    secrets: dict[str, Path] = field(default_factory=dict)

    def secret_file(self, name: str, value: str) -> Path:
        path = self.dir / f"{name}.secret"
        path.write_text(value + "\n", encoding="utf-8")  # the trailing newline is stripped
        self.secrets[name] = path
        return path

    def bearer(self, sub: str = "agent-7", **extra: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": LOCAL_ISSUER,
            "sub": sub,
            "aud": GATEWAY_AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            "client_id": sub,
            "scope": "read",
            **extra,
        }
        return jwt.encode(
            claims, self.idp_key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "idp-1"}
        )


@pytest.fixture
def material(tmp_path: Path) -> Material:
    digest = hashlib.sha256(INBOUND_API_KEY.encode()).hexdigest()
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(
        f"keys:\n  - id: partner-1\n    sha256: {digest}\n    subject: partner-agent-1\n"
        "    roles: [partner]\n",
        encoding="utf-8",
    )
    users_file = tmp_path / "users.yaml"
    hashed = bcrypt.hashpw(INBOUND_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    users_file.write_text(
        f"users:\n  - username: {INBOUND_USER}\n    hash: '{hashed}'\n    roles: [operator]\n",
        encoding="utf-8",
    )
    _, idp_key = _ec_pem()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp_key.public_key()))
    jwk.update({"kid": "idp-1", "alg": "ES256", "use": "sig"})
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    jwt_pem, jwt_key = _ec_pem()
    jwt_key_file = tmp_path / "backend-jwt.key"
    jwt_key_file.write_bytes(jwt_pem)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_key_file = tmp_path / "backend-jwt-ed.key"
    ed_key_file.write_bytes(
        ed_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    txn_pem, _ = _ec_pem()
    txn_key_file = tmp_path / "txn.key"
    txn_key_file.write_bytes(txn_pem)
    return Material(
        tmp_path,
        keys_file,
        users_file,
        jwks_file,
        idp_key,
        jwt_key_file,
        jwt_key,
        ed_key_file,
        ed_key,
        txn_key_file,
    )


def authn_sections(m: Material, extra_issuers: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Inbound methods: API key, a local JWT issuer (bearer) and HTTP Basic."""
    return {
        "issuers": [
            {
                "name": "local",
                "issuer": LOCAL_ISSUER,
                "jwks_file": str(m.jwks_file),
                "audience": GATEWAY_AUDIENCE,
                "algorithms": ["ES256"],
            },
            *extra_issuers,
        ],
        "authn": {
            "api_key": {"keys_file": str(m.keys_file)},
            "bearer": {"issuers": ["local", *(i["name"] for i in extra_issuers)]},
            "basic": {"users_file": str(m.users_file)},
        },
    }


ANY_INBOUND = {"any_of": ["api_key", "bearer", "basic"]}

GatewayMaker = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayMaker]:
    """``await make_gateway(routes=[...], **top_level_sections)``: a started in-process gateway."""
    started: list[Gateway] = []

    async def make(*, routes: list[dict[str, Any]], **sections: Any) -> Gateway:
        server = merge(BASE_SERVER, sections.pop("server", {}))
        config = {"server": server, "routes": routes, **sections}
        gw = Gateway(parse_settings(config, tmp_path))
        started.append(gw)
        await gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in reversed(started):
            await gw.stop()


async def send(
    gw: Gateway,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    method: str = "GET",
    body: bytes = b"",
) -> RawResponse:
    assert gw.main_address is not None
    return await raw_request(gw.main_address, http_request(method, target, headers, body))


def inbound_headers(kind: str, m: Material) -> list[tuple[str, str]]:
    if kind == "api_key":
        return [("X-API-Key", INBOUND_API_KEY)]
    if kind == "bearer":
        return [("Authorization", "Bearer " + m.bearer())]
    if kind == "basic":
        pair = base64.b64encode(f"{INBOUND_USER}:{INBOUND_PASSWORD}".encode()).decode()
        return [("Authorization", "Basic " + pair)]
    raise AssertionError(kind)


def credential_headers(hit: Hit) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in hit.headers if k.lower() in CREDENTIAL_HEADERS]


def query_of(hit: Hit) -> list[tuple[str, str]]:
    return parse_qsl(hit.path.partition("?")[2], keep_blank_values=True)


def assert_no_inbound_credential(hit: Hit, inbound: Sequence[tuple[str, str]]) -> None:
    """No inbound credential value (nor a piece of it) anywhere in what the upstream saw."""
    seen = hit.path + "\n" + "\n".join(f"{k}: {v}" for k, v in hit.headers)
    for _, value in inbound:
        assert value not in seen
        token = value.partition(" ")[2] or value
        assert token not in seen
    for secret in (INBOUND_API_KEY, INBOUND_PASSWORD):
        assert secret not in seen
    assert not any(k.lower() == "x-api-key" for k, _ in hit.headers)


def assert_503_generic(resp: RawResponse, *secrets: str) -> None:
    assert resp.status == 503, resp.body
    assert resp.header("Content-Type") == "application/problem+json"
    body = resp.json()
    assert body["status"] == 503
    assert body["detail"] == "service temporarily unavailable"
    assert body["request_id"] == resp.header("X-Request-Id")
    text = resp.body.decode() + "\n".join(f"{k}: {v}" for k, v in resp.headers)
    for secret in secrets:
        assert secret not in text
    assert "/" not in body["detail"]  # no path of a secret file, no URL of a token endpoint
    assert "127.0.0.1" not in text


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# --------------------------------------------------------------------------- RFC 9421 check

_SIG_INPUT = re.compile(
    r"^(?P<label>[a-z][a-z0-9_.*-]*)=(?P<params>\((?P<items>[^)]*)\)(?P<rest>.*))$"
)
_SIG_VALUE = re.compile(r"^(?P<label>[a-z][a-z0-9_.*-]*)=:(?P<b64>[A-Za-z0-9+/=]+):$")


def verify_hmac_signature(hit: Hit, secret: bytes, *, key_id: str, label: str = "sig1") -> int:
    """Recompute the RFC 9421 signature from the request the upstream received; return created."""
    inputs, values = hit.all("Signature-Input"), hit.all("Signature")
    assert len(inputs) == 1, hit.headers
    assert len(values) == 1, hit.headers
    m_in, m_sig = _SIG_INPUT.match(inputs[0]), _SIG_VALUE.match(values[0])
    assert m_in is not None, inputs
    assert m_sig is not None, values
    assert m_in["label"] == label == m_sig["label"]
    components = re.findall(r'"([^"]+)"', m_in["items"])
    assert components == ["@method", "@authority", "@path", "@query"]
    params = dict(re.findall(r';([a-z]+)=("[^"]*"|\d+)', m_in["rest"]))
    assert params["keyid"] == f'"{key_id}"'
    assert params["alg"] == '"hmac-sha256"'
    hosts = hit.all("Host")
    assert len(hosts) == 1
    path, _, query = hit.path.partition("?")
    component_values = {
        "@method": hit.method.upper(),
        "@authority": hosts[0].lower(),
        "@path": path,
        "@query": "?" + query,
    }
    inner = parse_dictionary(inputs[0])[label]
    assert isinstance(inner, InnerList)
    assert serialize_inner_list(inner) == m_in["params"]  # the signer wrote the canonical form
    base = signature_base(inner, component_values.__getitem__)
    expected = hmac.new(secret, base, hashlib.sha256).digest()
    assert hmac.compare_digest(base64.b64decode(m_sig["b64"]), expected), base
    return int(params["created"])


# --------------------------------------------------------------------------- routes

CONVERTERS = ("none", "api_key_header", "api_key_query", "basic", "bearer_static", "signed_jwt",
              "hmac_sign")  # fmt: skip


def converter_config(kind: str, m: Material, *, source: str = "mixed") -> dict[str, Any]:
    """One credential block. ``source``: ``mixed`` (env: and file:) or ``file`` (all file:)."""

    def ref(name: str, value: str, env: str) -> str:
        if source == "file" or env == "":
            return f"file:{m.secret_file(name, value).name}"  # relative: config folder
        return f"env:{env}"

    if kind == "none":
        return {"type": "none"}
    if kind == "api_key_header":
        return {
            "type": "api_key",
            "header": "X-Backend-Key",
            "secret": ref("backend-header-key", BACKEND_HEADER_KEY, "E2E_BACKEND_HEADER_KEY"),
        }
    if kind == "api_key_query":
        return {
            "type": "api_key",
            "header": None,
            "query_param": "key",
            "secret": ref("backend-query-key", BACKEND_QUERY_KEY, ""),
        }
    if kind == "basic":
        return {
            "type": "basic",
            "username": BACKEND_USER,
            "password": ref("backend-password", BACKEND_PASSWORD, ""),
        }
    if kind == "bearer_static":
        return {
            "type": "bearer_static",
            "token": ref("backend-bearer", BACKEND_BEARER, "E2E_BACKEND_BEARER"),
        }
    if kind == "signed_jwt":
        return {
            "type": "signed_jwt",
            "key": str(m.jwt_key_file),
            "issuer": JWT_ISSUER,
            "audience": JWT_AUDIENCE,
            "ttl_s": JWT_TTL_S,
        }
    if kind == "hmac_sign":
        return {
            "type": "hmac_sign",
            "key_id": HMAC_KEY_ID,
            "secret": ref("hmac", HMAC_SECRET, ""),
        }
    raise AssertionError(kind)


def converter_route(
    kind: str, m: Material, upstream: Upstream, *, authn: Any = ANY_INBOUND, source: str = "mixed"
) -> dict[str, Any]:
    return {
        "name": kind.replace("_", "-"),
        "match": {"path_prefix": f"/{kind}/"},
        "authn": authn,
        "upstream": upstream.url,
        "credential": converter_config(kind, m, source=source),
    }


@pytest.fixture
def backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2E_BACKEND_HEADER_KEY", BACKEND_HEADER_KEY)
    monkeypatch.setenv("E2E_BACKEND_BEARER", BACKEND_BEARER)


def check_credential(kind: str, hit: Hit, m: Material, *, subject: str) -> None:
    """The upstream got exactly the one credential ``kind`` produces, in the right form."""
    creds = credential_headers(hit)
    query = query_of(hit)
    if kind == "none":
        assert creds == []
        assert not any(k == "key" for k, _ in query)
    elif kind == "api_key_header":
        assert creds == [("x-backend-key", BACKEND_HEADER_KEY)]
    elif kind == "api_key_query":
        assert creds == []
        assert [v for k, v in query if k == "key"] == [BACKEND_QUERY_KEY]
    elif kind == "basic":
        pair = base64.b64encode(f"{BACKEND_USER}:{BACKEND_PASSWORD}".encode()).decode()
        assert creds == [("authorization", "Basic " + pair)]
    elif kind == "bearer_static":
        assert creds == [("authorization", "Bearer " + BACKEND_BEARER)]
    elif kind == "signed_jwt":
        assert [k for k, _ in creds] == ["authorization"], creds
        scheme, _, token = creds[0][1].partition(" ")
        assert scheme == "Bearer"
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "ES256"
        assert header["typ"] == "JWT"
        claims = jwt.decode(
            token,
            m.jwt_key.public_key(),
            algorithms=["ES256"],
            audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
        assert claims["sub"] == subject
        assert claims["exp"] - claims["iat"] == JWT_TTL_S  # short-lived, as configured
        assert abs(claims["iat"] - time.time()) < 10
        uuid.UUID(claims["jti"])
    elif kind == "hmac_sign":
        assert [k for k, _ in creds] == ["signature-input", "signature"], creds
        created = verify_hmac_signature(hit, HMAC_SECRET.encode(), key_id=HMAC_KEY_ID)
        assert abs(created - time.time()) < 10
    else:
        raise AssertionError(kind)


SUBJECTS = {"api_key": "partner-agent-1", "bearer": "agent-7", "basic": INBOUND_USER}


# =========================================================================== the converters


@pytest.mark.usefixtures("backend_env")
@pytest.mark.parametrize("inbound", ["api_key", "bearer", "basic"])
@pytest.mark.parametrize("kind", CONVERTERS)
async def test_upstream_receives_exactly_one_converted_credential(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material, kind: str, inbound: str
) -> None:
    gw = await make_gateway(
        routes=[converter_route(kind, material, upstream)], **authn_sections(material)
    )
    headers = inbound_headers(inbound, material)
    resp = await send(gw, f"/{kind}/items/7?a=1&b=two", headers)
    assert resp.status == 200, resp.body
    assert len(upstream.hits) == 1
    hit = upstream.hits[0]
    check_credential(kind, hit, material, subject=SUBJECTS[inbound])
    assert_no_inbound_credential(hit, headers)
    # The rest of the query reaches the upstream (the query converter only adds its param).
    assert [(k, v) for k, v in query_of(hit) if k != "key"] == [("a", "1"), ("b", "two")]


@pytest.mark.usefixtures("backend_env")
@pytest.mark.parametrize("kind", CONVERTERS)
async def test_client_cannot_smuggle_a_backend_credential(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material, kind: str
) -> None:
    """Whatever the client sends in the backend credential's own slot is replaced or dropped."""
    gw = await make_gateway(
        routes=[converter_route(kind, material, upstream, authn="api_key")],
        **authn_sections(material),
    )
    forged = [
        ("X-API-Key", INBOUND_API_KEY),
        ("Authorization", "Bearer attacker-chosen-token"),
        ("Signature-Input", 'sig1=("@method");created=1;keyid="gw-to-legacy"'),
        ("Signature", "sig1=:YXR0YWNrZXI=:"),
        ("Proxy-Authorization", "Basic YXR0YWNrZXI6eA=="),
        ("Txn-Token", "attacker.txn.token"),
    ]
    query = "z=1"
    if kind == "api_key_header":  # the converter's own header, twice
        forged += [("X-Backend-Key", "attacker-key"), ("x-backend-key", "attacker-key-2")]
    if kind == "api_key_query":  # the converter's own parameter, plain and percent-encoded
        query = "key=attacker-q&k%65y=attacker-q2&z=1&key=attacker-q3"
    resp = await send(gw, f"/{kind}/x?{query}", forged)
    assert resp.status == 200, resp.body
    (hit,) = upstream.hits
    seen = hit.path + "\n" + "\n".join(f"{k}: {v}" for k, v in hit.headers)
    assert "attacker" not in seen
    assert "YXR0YWNrZXI" not in seen
    check_credential(kind, hit, material, subject="partner-agent-1")
    assert_no_inbound_credential(hit, forged[:1])


@pytest.mark.usefixtures("backend_env")
async def test_query_converter_keeps_the_rest_of_the_query_byte_exact(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material
) -> None:
    """Only ``key`` changes: other parameters reach the upstream exactly as the PDP saw them."""
    gw = await make_gateway(
        routes=[converter_route("api_key_query", material, upstream)], **authn_sections(material)
    )
    headers = inbound_headers("api_key", material)
    resp = await send(gw, "/api_key_query/x?path=%2Fetc&flag&q=a+b", headers)
    assert resp.status == 200, resp.body
    (hit,) = upstream.hits
    raw_query = hit.path.partition("?")[2]
    others = [p for p in raw_query.split("&") if not p.startswith("key=")]
    assert others == ["path=%2Fetc", "flag", "q=a+b"]


@pytest.mark.usefixtures("backend_env")
async def test_signed_jwt_is_fresh_per_request_and_eddsa_works(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material
) -> None:
    routes = [
        converter_route("signed_jwt", material, upstream),
        {
            "name": "ed",
            "match": {"path_prefix": "/ed/"},
            "authn": "api_key",
            "upstream": upstream.url,
            "credential": {
                "type": "signed_jwt",
                "key": str(material.ed_key_file),
                "algorithm": "EdDSA",
                "issuer": JWT_ISSUER,
                "audience": JWT_AUDIENCE,
                "ttl_s": 5,
                "header": "X-Backend-JWT",
            },
        },
    ]
    gw = await make_gateway(routes=routes, **authn_sections(material))
    headers = inbound_headers("api_key", material)
    for _ in range(2):
        assert (await send(gw, "/signed_jwt/r", headers)).status == 200
    tokens = [credential_headers(h)[0][1].removeprefix("Bearer ") for h in upstream.hits]
    jtis = {jwt_claims(t)["jti"] for t in tokens}
    assert len(jtis) == 2  # a fresh JWT (and jti) per request, never replayed
    assert (await send(gw, "/ed/r", headers)).status == 200
    hit = upstream.hits[-1]
    creds = credential_headers(hit)
    assert [k for k, _ in creds] == ["x-backend-jwt"]  # raw token, no Authorization as well
    claims = jwt.decode(
        creds[0][1], material.ed_key.public_key(), algorithms=["EdDSA"], audience=JWT_AUDIENCE
    )
    assert claims["exp"] - claims["iat"] == 5
    assert claims["sub"] == "partner-agent-1"


@pytest.mark.usefixtures("backend_env")
async def test_hmac_signature_covers_the_upstream_request_target(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material
) -> None:
    """The signature is over what the upstream receives (method, authority, path, query)."""
    route = converter_route("hmac_sign", material, upstream)
    route["strip_prefix"] = True
    gw = await make_gateway(routes=[route], **authn_sections(material))
    headers = inbound_headers("api_key", material)
    resp = await send(gw, "/hmac_sign/a%20b/c?x=%2F&y=1", headers, method="POST", body=b"{}")
    assert resp.status == 200, resp.body
    (hit,) = upstream.hits
    assert hit.path.startswith("/a%20b/c?")
    assert hit.method == "POST"
    verify_hmac_signature(hit, HMAC_SECRET.encode(), key_id=HMAC_KEY_ID)
    # And a tampered request no longer verifies: the check above is not vacuous.
    tampered = Hit("GET", hit.path, hit.headers)
    with pytest.raises(AssertionError):
        verify_hmac_signature(tampered, HMAC_SECRET.encode(), key_id=HMAC_KEY_ID)


@pytest.mark.parametrize(
    "url", ["http://legacy.internal:80/x?a=1", "https://legacy.internal:443/x"]
)
async def test_hmac_authority_matches_the_host_header_sent_for_default_ports(url: str) -> None:
    # Not through the listener: nothing can listen on :80/:443 here. The Host header is
    # computed exactly as aiohttp's ClientRequest.update_host does.
    cfg = HMACSignCredential(
        type="hmac_sign", key_id=HMAC_KEY_ID, secret=Secret("env:X", HMAC_SECRET.encode())
    )
    out = Outbound("GET", URL(url, encoded=True), CIMultiDict())
    ctx = ConvertContext(facts=None, identity=None, txn_token=None)  # type: ignore[arg-type]
    await HMACSignConverter("default", cfg).apply(out, ctx)
    host = out.url.host_port_subcomponent
    assert host == "legacy.internal"
    target = out.url.raw_path + (f"?{out.url.raw_query_string}" if out.url.raw_query_string else "")
    hit = Hit("GET", target, [("Host", host), *out.headers.items()])
    verify_hmac_signature(hit, HMAC_SECRET.encode(), key_id=HMAC_KEY_ID)


async def test_txn_token_converter_sends_one_verifiable_txn_token(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material
) -> None:
    gw = await make_gateway(
        routes=[
            {
                "name": "txn",
                "match": {"path_prefix": "/txn/"},
                "authn": ANY_INBOUND,
                "upstream": upstream.url,
                "credential": {"type": "txn_token"},
            }
        ],
        txn_tokens={"signing_key": str(material.txn_key_file), "issuer": JWT_ISSUER},
        **authn_sections(material),
    )
    headers = [*inbound_headers("bearer", material), ("Txn-Token", "client.forged.txn")]
    resp = await send(gw, "/txn/x", headers)
    assert resp.status == 200, resp.body
    (hit,) = upstream.hits
    creds = credential_headers(hit)
    assert [k for k, _ in creds] == ["txn-token"]
    token = creds[0][1]
    assert token != "client.forged.txn"
    jwks = (await send(gw, "/.well-known/jwks.json")).json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token, key.key, algorithms=["ES256"], audience="example.org", issuer=JWT_ISSUER
    )
    assert claims["sub"]
    assert_no_inbound_credential(hit, headers[:1])


async def test_public_route_with_no_credential_forwards_nothing(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material
) -> None:
    """``none`` on a route without authn: the client's credentials are still never forwarded."""
    gw = await make_gateway(
        routes=[{"name": "pub", "upstream": upstream.url, "credential": {"type": "none"}}],
        **authn_sections(material),
    )
    headers = [
        ("Authorization", "Bearer " + material.bearer()),
        ("X-API-Key", INBOUND_API_KEY),
        ("DPoP", "eyJhbGciOi.x.y"),
    ]
    assert (await send(gw, "/anything", headers)).status == 200
    (hit,) = upstream.hits
    assert credential_headers(hit) == []
    assert_no_inbound_credential(hit, headers)


# =========================================================================== failures: 503


@pytest.mark.parametrize(
    "kind", ["api_key_header", "api_key_query", "basic", "bearer_static", "hmac_sign"]
)
async def test_secret_file_removed_at_runtime_is_503_and_upstream_not_contacted(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material, kind: str
) -> None:
    gw = await make_gateway(
        routes=[converter_route(kind, material, upstream, source="file")],
        **authn_sections(material),
    )
    headers = inbound_headers("api_key", material)
    assert (await send(gw, f"/{kind}/x", headers)).status == 200
    (secret_path,) = material.secrets.values()
    original = secret_path.read_text()
    secret_path.unlink()
    await asyncio.sleep(1.2)  # file secrets are stat'ed at most once a second
    resp = await send(gw, f"/{kind}/x", headers)
    assert_503_generic(resp, original.strip(), str(secret_path), secret_path.name)
    assert resp.json()["reason"] == "secret_unavailable"
    assert len(upstream.hits) == 1  # only the request before the removal

    # Rotation: a new value on disk is used on the next request, without a restart.
    rotated = original.strip() + "-rotated"
    secret_path.write_text(rotated + "\n")
    await asyncio.sleep(1.2)
    assert (await send(gw, f"/{kind}/x", headers)).status == 200
    hit = upstream.hits[-1]
    if kind == "hmac_sign":
        verify_hmac_signature(hit, rotated.encode(), key_id=HMAC_KEY_ID)
    elif kind == "api_key_query":
        assert [v for k, v in query_of(hit) if k == "key"] == [rotated]
    else:
        seen = "\n".join(v for _, v in hit.headers)
        if kind == "basic":
            rotated = base64.b64encode(f"{BACKEND_USER}:{rotated}".encode()).decode()
        assert rotated in seen


async def test_removed_secret_stays_unavailable_for_every_request(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material
) -> None:
    gw = await make_gateway(
        routes=[converter_route("bearer_static", material, upstream, source="file")],
        **authn_sections(material),
    )
    headers = inbound_headers("api_key", material)
    assert (await send(gw, "/bearer_static/x", headers)).status == 200
    (secret_path,) = material.secrets.values()
    secret_path.unlink()
    await asyncio.sleep(1.2)
    statuses = [(await send(gw, "/bearer_static/x", headers)).status for _ in range(5)]
    assert statuses == [503] * 5
    assert len(upstream.hits) == 1


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        pytest.param("api_key_header", b"abc\r\nX-Injected: 1", id="crlf-in-api-key"),
        pytest.param("bearer_static", b"ab\xffcd", id="not-utf8-bearer"),
    ],
)
async def test_secret_unusable_in_a_header_is_503_not_500(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material, kind: str, value: bytes
) -> None:
    route = converter_route(kind, material, upstream, source="file")
    (secret_path,) = material.secrets.values()
    secret_path.write_bytes(value)
    gw = await make_gateway(routes=[route], **authn_sections(material))
    resp = await send(gw, f"/{kind}/x", inbound_headers("api_key", material))
    assert upstream.hits == []  # fail closed already today; the status is the bug
    assert_503_generic(resp)


async def test_token_endpoint_down_is_503_and_upstream_not_contacted(
    make_gateway: GatewayMaker,
    upstream: Upstream,
    material: Material,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2E_CC_SECRET", "cc-secret-never-sent-anywhere")
    down = f"http://{LOCALHOST}:{closed_port()}/token"
    routes = [
        {
            "name": "cc",
            "match": {"path_prefix": "/cc/"},
            "authn": ANY_INBOUND,
            "upstream": upstream.url,
            "credential": {
                "type": "oauth_client_credentials",
                "token_endpoint": down,
                "client_id": "billing",
                "client_secret": "env:E2E_CC_SECRET",
                "timeout_s": 1,
            },
        },
        {
            "name": "tx",
            "match": {"path_prefix": "/tx/"},
            "authn": ANY_INBOUND,
            "upstream": upstream.url,
            "credential": {
                "type": "token_exchange",
                "token_endpoint": down,
                "client_id": "agentgate",
                "client_secret": "env:E2E_CC_SECRET",
                "audience": "billing",
                "timeout_s": 1,
            },
        },
    ]
    gw = await make_gateway(routes=routes, **authn_sections(material))
    token = material.bearer()
    for path in ("/cc/x", "/tx/x"):
        resp = await send(gw, path, [("Authorization", "Bearer " + token)])
        assert_503_generic(resp, "cc-secret-never-sent-anywhere", token, "/token")
        assert resp.json()["reason"] == "credential_unavailable"
    assert upstream.hits == []


async def test_token_exchange_without_an_inbound_token_is_503_never_passthrough(
    make_gateway: GatewayMaker,
    upstream: Upstream,
    material: Material,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An API-key (or basic) caller has no token to exchange: refuse, never forward bare."""
    monkeypatch.setenv("E2E_CC_SECRET", "x" * 20)
    hits: list[bytes] = []

    async def token(request: web.Request) -> web.Response:  # must never be asked
        hits.append(await request.read())
        return web.json_response({"access_token": "should-not-be-used", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOCALHOST, 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        gw = await make_gateway(
            routes=[
                {
                    "name": "tx",
                    "authn": ANY_INBOUND,
                    "upstream": upstream.url,
                    "credential": {
                        "type": "token_exchange",
                        "token_endpoint": f"http://{LOCALHOST}:{port}/token",
                        "client_id": "agentgate",
                        "client_secret": "env:E2E_CC_SECRET",
                    },
                }
            ],
            **authn_sections(material),
        )
        for kind in ("api_key", "basic"):
            resp = await send(gw, "/x", inbound_headers(kind, material))
            assert_503_generic(resp, INBOUND_API_KEY, INBOUND_PASSWORD)
        assert upstream.hits == []
        assert hits == []
    finally:
        await runner.cleanup()


# =========================================================================== policy choice


POLICY = """package agentgate.authz

decision := {"allow": true, "credential": "alt"} if {
	startswith(input.request.path, "/alt/")
} else := {"allow": true, "credential": "bogus"} if {
	startswith(input.request.path, "/bogus/")
} else := {"allow": true, "credential": "default"} if {
	startswith(input.request.path, "/explicit-default/")
} else := {"allow": true}
"""


@pytest.mark.usefixtures("backend_env")
async def test_decision_selects_a_route_credential_alternative(
    make_gateway: GatewayMaker, upstream: Upstream, material: Material, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "authz.rego").write_text(POLICY, encoding="utf-8")
    gw = await make_gateway(
        routes=[
            {
                "name": "multi",
                "authn": ANY_INBOUND,
                "upstream": upstream.url,
                "credential": converter_config("api_key_header", material),
                "credentials": {"alt": converter_config("bearer_static", material)},
            }
        ],
        pdp={"engine": "embedded", "policies": str(policies), "cache": {"ttl_s": 0}},
        **authn_sections(material),
    )
    headers = inbound_headers("bearer", material)
    assert (await send(gw, "/plain", headers)).status == 200
    assert (await send(gw, "/explicit-default/x", headers)).status == 200
    assert (await send(gw, "/alt/x", headers)).status == 200
    default, explicit, alt = upstream.hits
    check_credential("api_key_header", default, material, subject="agent-7")
    check_credential("api_key_header", explicit, material, subject="agent-7")
    check_credential("bearer_static", alt, material, subject="agent-7")
    for hit in upstream.hits:
        assert_no_inbound_credential(hit, headers)

    # A credential the route does not list: 403, and nothing reaches the upstream.
    resp = await send(gw, "/bogus/x", headers)
    assert resp.status == 403
    assert resp.header("Content-Type") == "application/problem+json"
    assert resp.json()["reason"] == "credential_not_allowed"
    assert "bogus" not in resp.body.decode()
    assert len(upstream.hits) == 3


# =========================================================================== upstream mTLS


@dataclass
class TLSUpstream:
    """An HTTPS upstream that REQUIRES a client certificate from the dev CA."""

    pki: TestPKI
    peers: list[dict[str, Any]] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{LOCALHOST}:{self.port}"

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.server.cert), str(self.pki.server.key))
        ctx.verify_mode = ssl.CERT_REQUIRED

        async def echo(request: web.Request) -> web.Response:
            transport = request.transport
            assert transport is not None
            self.peers.append(transport.get_extra_info("peercert"))
            self.hits.append(
                Hit(
                    request.method,
                    request.raw_path,
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
                )
            )
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, 0, ssl_context=ctx)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def tls_upstream(pki: TestPKI) -> AsyncIterator[TLSUpstream]:
    up = TLSUpstream(pki)
    await up.start()
    try:
        yield up
    finally:
        await up.close()


def _san_uris(peer: Mapping[str, Any]) -> list[str]:
    return [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]


async def test_mtls_credential_certificate_reaches_a_cert_requiring_upstream(
    make_gateway: GatewayMaker, tls_upstream: TLSUpstream, material: Material, pki: TestPKI
) -> None:
    billing = pki.agents["billing"]
    gw = await make_gateway(
        routes=[
            {
                "name": "with-cert",
                "match": {"path_prefix": "/with/"},
                "authn": ANY_INBOUND,
                "upstream": tls_upstream.url,
                "upstream_tls": {"ca": str(pki.ca)},
                "credential": {
                    "type": "mtls",
                    "cert": str(billing.cert),
                    "key": str(billing.key),
                    "ca": str(pki.ca),
                },
            },
            {
                "name": "without-cert",
                "match": {"path_prefix": "/without/"},
                "authn": ANY_INBOUND,
                "upstream": tls_upstream.url,
                "upstream_tls": {"ca": str(pki.ca)},
                "credential": {"type": "none"},
            },
            {
                "name": "foreign-cert",
                "match": {"path_prefix": "/foreign/"},
                "authn": ANY_INBOUND,
                "upstream": tls_upstream.url,
                "upstream_tls": {"ca": str(pki.ca)},
                "credential": {
                    "type": "mtls",
                    "cert": str(pki.foreign.cert),
                    "key": str(pki.foreign.key),
                    "ca": str(pki.ca),
                },
            },
        ],
        **authn_sections(material),
    )
    headers = inbound_headers("bearer", material)
    resp = await send(gw, "/with/x", headers)
    assert resp.status == 200, resp.body
    (peer,) = tls_upstream.peers
    assert _san_uris(peer) == [billing.spiffe_id]
    (hit,) = tls_upstream.hits
    assert credential_headers(hit) == []  # the certificate is the one credential
    assert_no_inbound_credential(hit, headers)

    for path in ("/without/x", "/foreign/x"):
        resp = await send(gw, path, headers)
        assert resp.status == 502, (path, resp.body)
        assert resp.header("Content-Type") == "application/problem+json"
    assert len(tls_upstream.hits) == 1  # the handshake was refused: no request got through


async def test_mtls_credential_honours_the_routes_upstream_ca(
    make_gateway: GatewayMaker, tls_upstream: TLSUpstream, material: Material, pki: TestPKI
) -> None:
    billing = pki.agents["billing"]
    gw = await make_gateway(
        routes=[
            {
                "name": "with-cert",
                "authn": "api_key",
                "upstream": tls_upstream.url,
                "upstream_tls": {"ca": str(pki.ca)},
                "credential": {"type": "mtls", "cert": str(billing.cert), "key": str(billing.key)},
            }
        ],
        **authn_sections(material),
    )
    resp = await send(gw, "/x", inbound_headers("api_key", material))
    assert resp.status == 200, resp.body


async def test_mtls_credential_on_plain_http_upstream_is_never_forwarded_bare(
    tmp_path: Path, upstream: Upstream, material: Material, pki: TestPKI
) -> None:
    billing = pki.agents["billing"]
    config = {
        "server": BASE_SERVER,
        **authn_sections(material),
        "routes": [
            {
                "name": "plain",
                "authn": "api_key",
                "upstream": upstream.url,
                "credential": {"type": "mtls", "cert": str(billing.cert), "key": str(billing.key)},
            }
        ],
    }
    try:
        gw = Gateway(parse_settings(config, tmp_path))
    except Exception:
        return
    await gw.start()
    try:
        assert gw.main_address is not None
        resp = await raw_request(
            gw.main_address, http_request("GET", "/x", inbound_headers("api_key", material))
        )
    finally:
        await gw.stop()
    assert resp.status == 503
    assert upstream.hits == []


# =========================================================================== real Keycloak


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keycloak]:
    yield from start_keycloak(tmp_path_factory.mktemp("keycloak") / "keycloak.log")


def keycloak_issuer(kc: Keycloak) -> dict[str, Any]:
    return {
        "name": "keycloak",
        "issuer": kc.issuer,
        "jwks_uri": f"{kc.issuer}/protocol/openid-connect/certs",
        "audience": GATEWAY_AUDIENCE,
        "algorithms": ["RS256"],
        "require_typ": None,
    }


async def keycloak_verify(kc: Keycloak, token: str) -> dict[str, Any]:
    """Verify a Keycloak token the way a backend would: signature with the realm's JWKS."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{kc.issuer}/protocol/openid-connect/certs") as r,
    ):
        jwks = await r.json()
    keys = jwt.PyJWKSet.from_dict({"keys": [k for k in jwks["keys"] if k.get("use") == "sig"]})
    key = keys[jwt.get_unverified_header(token)["kid"]]
    return dict(
        jwt.decode(
            token, key.key, algorithms=["RS256"], issuer=kc.issuer, options={"verify_aud": False}
        )
    )


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    return [str(a) for a in aud] if isinstance(aud, list) else [str(aud)]


async def test_keycloak_client_credentials_token_reaches_upstream(
    keycloak: Keycloak,
    make_gateway: GatewayMaker,
    upstream: Upstream,
    material: Material,
) -> None:
    secret = material.secret_file("cc", CC_SECRET)
    gw = await make_gateway(
        routes=[
            {
                "name": "billing",
                "match": {"path_prefix": "/billing/"},
                "authn": ANY_INBOUND,
                "upstream": upstream.url,
                "credential": {
                    "type": "oauth_client_credentials",
                    "token_endpoint": keycloak.token_endpoint,
                    "client_id": "billing-backend-client",
                    "client_secret": f"file:{secret}",
                },
            },
            {
                "name": "billing-post",
                "match": {"path_prefix": "/post/"},
                "authn": ANY_INBOUND,
                "upstream": upstream.url,
                "credential": {
                    "type": "oauth_client_credentials",
                    "token_endpoint": keycloak.token_endpoint,
                    "client_id": "billing-backend-client",
                    "client_secret": f"file:{secret}",
                    "auth_method": "client_secret_post",
                },
            },
            {
                "name": "billing-wrong",
                "match": {"path_prefix": "/wrong/"},
                "authn": ANY_INBOUND,
                "upstream": upstream.url,
                "credential": {
                    "type": "oauth_client_credentials",
                    "token_endpoint": keycloak.token_endpoint,
                    "client_id": "billing-backend-client",
                    "client_secret": f"file:{material.secret_file('cc-wrong', 'not-the-secret')}",
                    "auth_method": "client_secret_post",
                },
            },
        ],
        **authn_sections(material),
    )
    for inbound in ("api_key", "bearer", "basic"):
        headers = inbound_headers(inbound, material)
        resp = await send(gw, "/billing/invoices", headers)
        assert resp.status == 200, resp.body
        hit = upstream.hits[-1]
        assert_no_inbound_credential(hit, headers)
    tokens = []
    for hit in upstream.hits:
        creds = credential_headers(hit)
        assert [k for k, _ in creds] == ["authorization"], creds
        scheme, _, token = creds[0][1].partition(" ")
        assert scheme == "Bearer"
        tokens.append(token)
    assert len(set(tokens)) == 1  # fetched once, cached for the route
    claims = await keycloak_verify(keycloak, tokens[0])
    assert claims["azp"] == "billing-backend-client"
    assert "billing-backend" in _audiences(claims)

    # client_secret_post works too, and is a separate cached token (its own converter).
    resp = await send(gw, "/post/invoices", inbound_headers("api_key", material))
    assert resp.status == 200, resp.body
    (post,) = credential_headers(upstream.hits[-1])
    assert post[1].startswith("Bearer ")
    assert post[1] != "Bearer " + tokens[0]
    assert (await keycloak_verify(keycloak, post[1][7:]))["azp"] == "billing-backend-client"

    # Keycloak refuses the client: 503, generic, and the upstream is not contacted.
    before = len(upstream.hits)
    resp = await send(gw, "/wrong/x", inbound_headers("api_key", material))
    assert_503_generic(resp, "not-the-secret", CC_SECRET, "unauthorized_client", "invalid_client")
    assert len(upstream.hits) == before


async def test_keycloak_token_exchange_replaces_the_inbound_token(
    keycloak: Keycloak,
    make_gateway: GatewayMaker,
    upstream: Upstream,
    material: Material,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2E_GW_SECRET", GW_SECRET)
    gw = await make_gateway(
        routes=[
            {
                "name": "billing",
                "authn": ANY_INBOUND,
                "upstream": upstream.url,
                "credential": {
                    "type": "token_exchange",
                    "token_endpoint": keycloak.token_endpoint,
                    "client_id": "agentgate",
                    "client_secret": "env:E2E_GW_SECRET",
                    "audience": "billing-backend",
                },
            }
        ],
        **authn_sections(material, [keycloak_issuer(keycloak)]),
    )
    user_token = await asyncio.to_thread(
        keycloak.password_token, "alice", "alice-test-password", "travel-agent"
    )
    inbound = [("Authorization", "Bearer " + user_token)]
    resp = await send(gw, "/invoices/1", inbound)
    # A 401 here means the bearer method refused a genuine Keycloak access token.
    assert resp.status == 200, (resp.status, resp.body, jwt_claims(user_token))
    resp = await send(gw, "/invoices/2", inbound)
    assert resp.status == 200, resp.body
    first, second = upstream.hits
    for hit in (first, second):
        assert_no_inbound_credential(hit, inbound)
        assert user_token.split(".")[2] not in "\n".join(v for _, v in hit.headers)
    creds = credential_headers(first)
    assert [k for k, _ in creds] == ["authorization"]
    exchanged = creds[0][1].removeprefix("Bearer ")
    assert exchanged != user_token
    claims = await keycloak_verify(keycloak, exchanged)
    original = jwt_claims(user_token)
    assert _audiences(claims) == ["billing-backend"]
    assert claims["sub"] == original["sub"]
    assert claims["azp"] == "agentgate"
    assert credential_headers(second) == creds  # cached per subject token

    # A locally issued token is accepted by the gateway but Keycloak will not exchange it.
    resp = await send(gw, "/invoices/3", inbound_headers("bearer", material))
    assert_503_generic(resp, GW_SECRET)
    # Callers without a token to exchange: 503, never passthrough.
    for kind in ("api_key", "basic"):
        assert_503_generic(await send(gw, "/invoices/4", inbound_headers(kind, material)))
    assert len(upstream.hits) == 2
