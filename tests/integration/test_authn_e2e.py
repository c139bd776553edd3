"""Authentication end to end through the real TLS listener (DESIGN.md §2, §4 ``authn``, §5, §7).

Every request here is a real TLS handshake on loopback (the session dev PKI; the agent's
certificate when the test says so) carrying a hand-written HTTP/1.1 request, so the test
controls every header byte: ``Host`` (which DPoP ``htu`` and RFC 9421 ``@target-uri`` are
computed from), repeated ``Authorization`` fields, and so on. Behind the gateway sits the
recording echo upstream of :mod:`tests.support`; the tests assert on what it *received*.

Credentials are produced here, independently of the gateway's code: ES256 access tokens
(RFC 9068) signed with keys that a local aiohttp JWKS server publishes (and rotates, and stops
publishing), RFC 9449 DPoP proofs, RFC 8705 certificate-bound tokens, API keys, an argon2id
users file, RFC 9421 ``hmac-sha256`` signatures, and agent-signed RFC 7523-style assertions.

Invariants checked throughout (DESIGN.md §5):

* the upstream never receives ``Authorization``, ``DPoP``, ``X-API-Key``, ``Agent-Assertion``,
  ``Signature`` or ``Signature-Input`` (:func:`assert_no_credentials_forwarded`);
* a refused request never reaches the upstream (hit counts), and an unauthenticated one never
  reaches the PDP (the decision log has no line for its request id).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import argon2
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.app import Gateway
from gateway.context import Identity
from gateway.settings import parse_settings
from tests.integration.conftest import BASE_SERVER, admin_url, merge, tls_block
from tests.support import (
    LOCALHOST,
    ROOT,
    CertPair,
    RawResponse,
    TestPKI,
    Upstream,
    client_context,
    http_request,
    raw_request,
    wait_until,
)

pytestmark = pytest.mark.integration

ISSUER = "https://idp.test"
AUDIENCE = "https://gateway.test"
TRAVEL = "spiffe://example.org/agent/travel"
BILLING = "spiffe://example.org/agent/billing"
GATEWAY_AUDIENCE = "https://example.org/"  # jwt_assertion default: https://<trust_domain>/

# Headers that carry an inbound credential: never forwarded (DESIGN.md §5).
CREDENTIAL_HEADERS = (
    "authorization",
    "dpop",
    "x-api-key",
    "agent-assertion",
    "signature",
    "signature-input",
)

# JWKS cache timings for the rotation/outage test (seconds; the issuer's ``jwks_cache``).
MIN_REFRESH_S = 0.2
DEFAULT_TTL_S = 0.5
MAX_STALE_S = 1.5


# --------------------------------------------------------------------------- JOSE helpers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _coord(value: int) -> str:
    return b64url(value.to_bytes(32, "big"))


def sign_es256(
    header: Mapping[str, Any], claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey
) -> str:
    """Compact JWS (RFC 7515 §7.1), ES256 as the fixed-size ``R || S`` of RFC 7518 §3.4."""
    segments = [
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    ]
    signing_input = ".".join(segments).encode("ascii")
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return ".".join([*segments, b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))])


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _coord(numbers.x), "y": _coord(numbers.y)}


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, lexicographic order, no whitespace."""
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def cert_thumbprint(cert_pem: Path) -> str:
    """RFC 8705 §3.1 ``x5t#S256``: base64url SHA-256 of the DER certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


@dataclass
class Signer:
    """An issuer's ES256 signing key, published in the JWKS under ``kid``."""

    kid: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def jwk(self) -> dict[str, str]:
        return {**public_jwk(self.key), "kid": self.kid, "alg": "ES256", "use": "sig"}

    def token(self, *, typ: str | None = "at+jwt", **overrides: Any) -> str:
        """An RFC 9068 access token; ``claim=None`` removes a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": TRAVEL,
            "client_id": "travel-agent",
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "scope": "flights.read",
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        header: dict[str, Any] = {"alg": "ES256", "kid": self.kid}
        if typ is not None:
            header["typ"] = typ
        return sign_es256(header, claims, self.key)


def dpop_proof(key: ec.EllipticCurvePrivateKey, method: str, htu: str, access_token: str) -> str:
    """RFC 9449 §4.2 proof with ``ath`` (§4.3 check 11)."""
    claims = {
        "jti": secrets.token_urlsafe(16),
        "htm": method,
        "htu": htu,
        "iat": int(time.time()),
        "ath": b64url(hashlib.sha256(access_token.encode("ascii")).digest()),
    }
    return sign_es256({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)}, claims, key)


# --------------------------------------------------------------------------- JWKS server


class JWKSServer:
    """An issuer's ``jwks_uri`` on loopback: publish keys, count fetches, go down on cue."""

    def __init__(self) -> None:
        self.signers: list[Signer] = []
        self.fetches = 0
        self.last_fetch = 0.0  # time.monotonic() of the last fetch served
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/jwks.json"

    def publish(self, *signers: Signer) -> None:
        self.signers = list(signers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, self.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.last_fetch = time.monotonic()
        body = {"keys": [s.jwk() for s in self.signers]}
        return web.json_response(body, content_type="application/jwk-set+json")


# --------------------------------------------------------------------------- the stack


def _argon2id(password: str) -> str:
    # Cheap parameters: the test measures behaviour, not hashing cost.
    return argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)


@dataclass
class Creds:
    """Credential files and the secrets behind them (the gateway only sees hashes/refs)."""

    directory: Path
    api_key: str = field(default_factory=lambda: "ak_" + secrets.token_urlsafe(32))
    other_api_key: str = field(default_factory=lambda: "ak_" + secrets.token_urlsafe(32))
    password: str = "correct horse battery staple"
    hmac_secret: bytes = field(default_factory=lambda: secrets.token_bytes(48))
    agent_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def write(self) -> Creds:
        d = self.directory
        keys = {
            "keys": [
                {
                    "id": "partner-1",
                    "sha256": hashlib.sha256(self.api_key.encode()).hexdigest(),
                    "subject": "partner-agent-1",
                    "roles": ["partner"],
                }
            ]
        }
        (d / "api-keys.yaml").write_text(yaml.safe_dump(keys))
        users = {
            "users": [{"username": "ops", "hash": _argon2id(self.password), "roles": ["operator"]}]
        }
        (d / "users.yaml").write_text(yaml.safe_dump(users))
        (d / "hmac.secret").write_bytes(base64.b64encode(self.hmac_secret) + b"\n")
        hmac_keys = {
            "keys": [
                {
                    "id": "legacy-agent-7",
                    "secret": "file:hmac.secret",
                    "encoding": "base64",
                    "subject": "legacy-agent-7",
                }
            ]
        }
        (d / "hmac-keys.yaml").write_text(yaml.safe_dump(hmac_keys))
        agents = {
            "agents": [
                {
                    "id": "travel-agent",
                    "subject": TRAVEL,
                    "roles": ["travel-agent"],
                    "jwks": {
                        "keys": [{**public_jwk(self.agent_key), "kid": "travel-1", "alg": "ES256"}]
                    },
                }
            ]
        }
        (d / "agents.yaml").write_text(yaml.safe_dump(agents))
        return self

    def assertion(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "travel-agent",
            "sub": "travel-agent",
            "aud": GATEWAY_AUDIENCE,
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        header = {"alg": "ES256", "kid": "travel-1", "typ": "JWT"}
        return sign_es256(header, claims, self.agent_key)


def hmac_headers(
    secret: bytes, *, method: str, authority: str, target: str, body: bytes, keyid: str
) -> list[tuple[str, str]]:
    """RFC 9421 §2.5 signature base over ``@method @target-uri content-digest`` + ``created``."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    params = (
        '("@method" "@target-uri" "content-digest")'
        f';created={int(time.time())};keyid="{keyid}";alg="hmac-sha256"'
    )
    base = "\n".join(
        [
            f'"@method": {method}',
            f'"@target-uri": https://{authority}{target}',  # listener scheme, Host, raw target
            f'"content-digest": {digest}',
            f'"@signature-params": {params}',
        ]
    )
    mac = hmac.new(secret, base.encode("ascii"), hashlib.sha256).digest()
    return [
        ("Content-Digest", digest),
        ("Signature-Input", f"sig1={params}"),
        ("Signature", f"sig1=:{base64.b64encode(mac).decode()}:"),
        ("Content-Type", "application/json"),
    ]


def issuer_block(jwks: JWKSServer, **cache: float) -> dict[str, Any]:
    block: dict[str, Any] = {
        "name": "corp",
        "issuer": ISSUER,
        "jwks_uri": jwks.url,
        "audience": AUDIENCE,
        "algorithms": ["ES256"],
        "leeway_s": 5,
    }
    if cache:
        block["jwks_cache"] = {"fetch_timeout_s": 1, **cache}
    return block


def route(name: str, prefix: str, authn: Any, upstream: Upstream, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": prefix},
        "authn": authn,
        "upstream": upstream.url,
        **extra,
    }


MTLS_AND_BEARER = {"all_of": ["mtls", "bearer"]}
PARTNER_TREE = {"any_of": [MTLS_AND_BEARER, "api_key"]}
AGENT_TREE = {"all_of": ["mtls", {"any_of": ["bearer", "jwt_assertion"]}]}


def standard_config(
    pki: TestPKI, upstream: Upstream, jwks: JWKSServer, creds: Creds, mode: str = "optional"
) -> dict[str, Any]:
    """Every method, one route per method or tree (path prefix = what it tests)."""
    d = creds.directory
    return {
        "server": merge(BASE_SERVER, {"tls": tls_block(pki, mode)}),
        "issuers": [issuer_block(jwks)],
        "authn": {
            "mtls": {},
            "bearer": {"issuers": ["corp"], "require_typ": "at+jwt"},
            "plain_bearer": {"type": "bearer", "issuers": ["corp"], "sender_constraint": "off"},
            "api_key": {"header": "X-API-Key", "keys_file": str(d / "api-keys.yaml")},
            "basic": {"users_file": str(d / "users.yaml")},
            "hmac": {"keys_file": str(d / "hmac-keys.yaml")},
            "jwt_assertion": {"agents_file": str(d / "agents.yaml")},
        },
        "telemetry": {"audit_log": "off", "decision_log": "off"},
        "routes": [
            route("mtls", "/mtls/", "mtls", upstream),
            route("bearer", "/bearer/", "bearer", upstream),
            route("plain-bearer", "/plain/", "plain_bearer", upstream),
            route("api-key", "/api-key/", "api_key", upstream),
            route("basic", "/basic/", "basic", upstream),
            route("hmac", "/hmac/", "hmac", upstream),
            route("assertion", "/assertion/", "jwt_assertion", upstream),
            route("strict", "/strict/", MTLS_AND_BEARER, upstream),
            route("partner", "/partner/", PARTNER_TREE, upstream),
            route("agents", "/agents/", AGENT_TREE, upstream),
        ],
    }


@dataclass
class Stack:
    gw: Gateway
    pki: TestPKI
    upstream: Upstream
    jwks: JWKSServer
    signer: Signer
    creds: Creds
    identities: list[Identity]

    @property
    def address(self) -> tuple[str, int]:
        assert self.gw.main_address is not None
        return self.gw.main_address

    @property
    def authority(self) -> str:
        """The ``Host`` every request sends (the server certificate names localhost)."""
        return f"localhost:{self.address[1]}"

    def url(self, path: str) -> str:
        return f"https://{self.authority}{path}"

    async def call(
        self,
        path: str,
        *,
        cert: str | CertPair | None = None,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> RawResponse:
        """One request on a fresh TLS connection, presenting ``cert`` (an agent name) if given."""
        pair = self.pki.agents[cert] if isinstance(cert, str) else cert
        data = http_request(method, path, headers, body, host=self.authority)
        return await raw_request(self.address, data, ssl_context=client_context(self.pki, pair))

    def bearer(self, token: str) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {token}")]


GatewayBuilder = Callable[[Mapping[str, Any]], Awaitable[Gateway]]


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[GatewayBuilder]:
    """Start an in-process gateway from a full settings dict; stop it at teardown."""
    started: list[Gateway] = []

    async def make(config: Mapping[str, Any]) -> Gateway:
        gw = Gateway(parse_settings(dict(config), tmp_path))
        started.append(gw)
        await gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in reversed(started):
            await gw.stop()


@pytest.fixture
async def jwks() -> AsyncIterator[JWKSServer]:
    server = JWKSServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def creds(tmp_path: Path) -> Creds:
    folder = tmp_path / "creds"
    folder.mkdir()
    return Creds(folder).write()


def spy_identities(gw: Gateway) -> list[Identity]:
    """Record the ``Identity`` each authenticated request produced."""
    seen: list[Identity] = []
    original = gw.pipeline.authenticate

    async def recording(route: Any, request: Any, facts: Any) -> Identity | None:
        identity = await original(route, request, facts)
        if identity is not None:
            seen.append(identity)
        return identity

    gw.pipeline.authenticate = recording  # type: ignore[method-assign]
    return seen


@pytest.fixture
async def stack(
    build: GatewayBuilder, pki: TestPKI, upstream: Upstream, jwks: JWKSServer, creds: Creds
) -> Stack:
    signer = Signer("k1")
    jwks.publish(signer)
    gw = await build(standard_config(pki, upstream, jwks, creds))
    return Stack(gw, pki, upstream, jwks, signer, creds, spy_identities(gw))


# --------------------------------------------------------------------------- assertions


def assert_no_credentials_forwarded(upstream: Upstream) -> None:
    for hit in upstream.hits:
        leaked = sorted({k.lower() for k, _ in hit.headers} & set(CREDENTIAL_HEADERS))
        assert not leaked, f"upstream received credential headers {leaked} on {hit.path}"


def challenges(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """Parse ``WWW-Authenticate`` (RFC 9110 §11.6.1) into (scheme, params) pairs."""
    assert value is not None, "no WWW-Authenticate header"
    param = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*')
    scheme = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)")
    out: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(value):
        while i < len(value) and value[i] in ", ":
            i += 1
        if i >= len(value):
            break
        m = scheme.match(value, i)
        assert m is not None, f"malformed challenge list: {value!r}"
        name, i = m.group(1), m.end()
        params: dict[str, str] = {}
        while (p := param.match(value, i)) is not None:
            key, raw = p.groups()
            params[key.lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw[:1] == '"' else raw
            i = p.end()
            if value[i : i + 1] == "," and param.match(value, i + 1):
                i += 1
                continue
            break
        out.append((name, params))
    return out


def assert_problem(resp: RawResponse, status: int, reason: str | None = None) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert (resp.header("Content-Type") or "").startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    assert body["request_id"] == resp.header("X-Request-Id")
    if reason is not None:
        assert body["reason"] == reason, body
    return body


def assert_no_credential_challenge(resp: RawResponse, *, dpop: bool, exact: bool = True) -> None:
    """DESIGN.md §5 "no credential": ``Bearer realm="agentgate"`` without ``error``, plus a
    ``DPoP`` challenge (RFC 9449 §7.1) when the route's bearer method accepts DPoP.

    ``exact``: also require that the Bearer challenge is offered exactly once (RFC 9110
    §11.6.1: one challenge per scheme and realm); composition tests relax this so that they
    keep testing composition while the challenge bug is open.
    """
    assert resp.status == 401
    found = challenges(resp.header("WWW-Authenticate"))
    bearer = [p for s, p in found if s.lower() == "bearer"]
    assert bearer, found
    assert all(p == {"realm": "agentgate"} for p in bearer), found
    if exact:
        assert len(bearer) == 1, f"Bearer challenge repeated: {found}"
    dpops = [p for s, p in found if s.lower() == "dpop"]
    if dpop:
        assert len(dpops) == 1, found
        assert "error" not in dpops[0], found
        assert "ES256" in dpops[0].get("algs", "").split(), found
    else:
        assert dpops == [], found


def assert_invalid_token(resp: RawResponse, scheme: str = "Bearer") -> dict[str, str]:
    """DESIGN.md §5 / RFC 6750 §3.1: 401 with ``error="invalid_token"``."""
    assert_problem(resp, 401)
    found = challenges(resp.header("WWW-Authenticate"))
    assert found, "no challenge"
    assert found[0][0].lower() == scheme.lower(), found
    params = found[0][1]
    assert params.get("error") == "invalid_token", found
    assert params.get("realm") == "agentgate", found
    assert params.get("error_description"), found
    return params


# =========================================================================== 1. every method


async def test_mtls_alone_agent_cert_is_the_subject(stack: Stack) -> None:
    resp = await stack.call("/mtls/x", cert="travel")
    assert resp.status == 200, resp.body
    [identity] = stack.identities
    assert identity.principal.subject == TRAVEL
    assert identity.principal.subject_type == "agent"
    assert set(identity.results) == {"mtls"}
    assert len(stack.upstream.hits) == 1


async def test_mtls_alone_without_cert_on_optional_listener_is_401_with_challenge(
    stack: Stack,
) -> None:
    resp = await stack.call("/mtls/x")
    assert_problem(resp, 401)
    assert_no_credential_challenge(resp, dpop=False)
    assert stack.upstream.hits == []


async def test_mtls_alone_on_a_required_listener(
    build: GatewayBuilder, pki: TestPKI, upstream: Upstream, jwks: JWKSServer, creds: Creds
) -> None:
    signer = Signer("k1")
    jwks.publish(signer)
    gw = await build(standard_config(pki, upstream, jwks, creds, mode="required"))
    s = Stack(gw, pki, upstream, jwks, signer, creds, spy_identities(gw))
    resp = await s.call("/mtls/a", cert="planner")
    assert resp.status == 200
    assert [i.principal.subject for i in s.identities] == ["spiffe://example.org/agent/planner"]


async def test_mtls_cert_without_spiffe_id_is_refused_by_the_mtls_method(stack: Stack) -> None:
    # The handshake accepts it (same CA); the mtls method requires a SPIFFE ID by default.
    resp = await stack.call("/mtls/x", cert=stack.pki.no_spiffe)
    assert_problem(resp, 401)
    assert challenges(resp.header("WWW-Authenticate"))[0] == ("Bearer", {"realm": "agentgate"})
    assert stack.upstream.hits == []


async def test_bearer_rfc9068_token_is_accepted_and_never_forwarded(stack: Stack) -> None:
    token = stack.signer.token(sub="alice", client_id="travel-app")
    resp = await stack.call("/bearer/flights", headers=stack.bearer(token))
    assert resp.status == 200, resp.body
    [identity] = stack.identities
    assert identity.principal.subject == "alice"
    assert identity.principal.issuer == ISSUER
    assert identity.principal.scopes == ("flights.read",)
    assert_no_credentials_forwarded(stack.upstream)
    assert token.encode() not in resp.body


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti", "client_id", "sub"])
async def test_bearer_requires_every_rfc9068_claim(stack: Stack, claim: str) -> None:
    resp = await stack.call("/bearer/x", headers=stack.bearer(stack.signer.token(**{claim: None})))
    assert_invalid_token(resp)
    assert stack.upstream.hits == []


async def test_dpop_bound_token_with_a_correct_proof_then_a_replayed_proof(stack: Stack) -> None:
    dpop_key = ec.generate_private_key(ec.SECP256R1())
    token = stack.signer.token(cnf={"jkt": jwk_thumbprint(public_jwk(dpop_key))})
    auth = ("Authorization", f"DPoP {token}")
    proof = dpop_proof(dpop_key, "GET", stack.url("/bearer/booking"), token)

    ok = await stack.call("/bearer/booking", headers=[auth, ("DPoP", proof)])
    assert ok.status == 200, ok.body
    assert stack.identities[-1].principal.sender_constraint == "dpop"

    replay = await stack.call("/bearer/booking", headers=[auth, ("DPoP", proof)])
    assert_problem(replay, 401)
    found = challenges(replay.header("WWW-Authenticate"))
    assert found[0][0] == "DPoP", found
    assert found[0][1].get("error") == "invalid_dpop_proof", found

    # A fresh proof works again: the refusal was about the proof, not the token.
    again = await stack.call(
        "/bearer/booking",
        headers=[auth, ("DPoP", dpop_proof(dpop_key, "GET", stack.url("/bearer/booking"), token))],
    )
    assert again.status == 200
    assert len(stack.upstream.hits) == 2
    assert_no_credentials_forwarded(stack.upstream)


async def test_dpop_bound_token_is_refused_without_proof_or_as_a_bearer_token(
    stack: Stack,
) -> None:
    dpop_key = ec.generate_private_key(ec.SECP256R1())
    token = stack.signer.token(cnf={"jkt": jwk_thumbprint(public_jwk(dpop_key))})
    # RFC 9449 §7.2: a DPoP-bound token downgraded to the Bearer scheme.
    assert_invalid_token(await stack.call("/bearer/x", headers=stack.bearer(token)))
    # The right scheme but no proof at all.
    no_proof = await stack.call("/bearer/x", headers=[("Authorization", f"DPoP {token}")])
    assert_problem(no_proof, 401)
    # A proof for another URI (htu) or signed by another key.
    other = ec.generate_private_key(ec.SECP256R1())
    for proof in (
        dpop_proof(dpop_key, "GET", stack.url("/bearer/elsewhere"), token),
        dpop_proof(other, "GET", stack.url("/bearer/x"), token),
    ):
        resp = await stack.call(
            "/bearer/x", headers=[("Authorization", f"DPoP {token}"), ("DPoP", proof)]
        )
        assert_problem(resp, 401)
        assert challenges(resp.header("WWW-Authenticate"))[0][1]["error"] == "invalid_dpop_proof"
    assert stack.upstream.hits == []


async def test_dpop_htu_is_the_listener_uri_never_x_forwarded(stack: Stack) -> None:
    """DESIGN.md §5: ``htu`` is ``{listener scheme}://{Host}{path}``; X-Forwarded-* is ignored."""
    dpop_key = ec.generate_private_key(ec.SECP256R1())
    token = stack.signer.token(cnf={"jkt": jwk_thumbprint(public_jwk(dpop_key))})
    forwarded = [("X-Forwarded-Host", "public.example"), ("X-Forwarded-Proto", "http")]
    spoofed = dpop_proof(dpop_key, "GET", "http://public.example/bearer/x", token)
    resp = await stack.call(
        "/bearer/x", headers=[("Authorization", f"DPoP {token}"), ("DPoP", spoofed), *forwarded]
    )
    assert_problem(resp, 401)
    assert challenges(resp.header("WWW-Authenticate"))[0][1]["error"] == "invalid_dpop_proof"
    honest = dpop_proof(dpop_key, "GET", stack.url("/bearer/x"), token)
    resp = await stack.call(
        "/bearer/x", headers=[("Authorization", f"DPoP {token}"), ("DPoP", honest), *forwarded]
    )
    assert resp.status == 200, resp.body
    assert len(stack.upstream.hits) == 1


async def test_certificate_bound_token(stack: Stack) -> None:
    travel_x5t = cert_thumbprint(stack.pki.agents["travel"].cert)
    token = stack.signer.token(cnf={"x5t#S256": travel_x5t})
    ok = await stack.call("/bearer/x", cert="travel", headers=stack.bearer(token))
    assert ok.status == 200, ok.body
    assert stack.identities[-1].principal.sender_constraint == "mtls"
    # The same token over another agent's (perfectly valid) certificate, or over none.
    assert_invalid_token(await stack.call("/bearer/x", cert="planner", headers=stack.bearer(token)))
    assert_invalid_token(await stack.call("/bearer/x", headers=stack.bearer(token)))
    assert len(stack.upstream.hits) == 1
    assert_no_credentials_forwarded(stack.upstream)


async def test_api_key_header(stack: Stack) -> None:
    ok = await stack.call("/api-key/x", headers=[("X-API-Key", stack.creds.api_key)])
    assert ok.status == 200, ok.body
    assert stack.identities[-1].principal.subject == "partner-agent-1"
    assert stack.identities[-1].principal.roles == ("partner",)
    bad = await stack.call("/api-key/x", headers=[("X-API-Key", stack.creds.other_api_key)])
    assert_invalid_token(bad)
    assert stack.creds.other_api_key.encode() not in bad.body
    missing = await stack.call("/api-key/x")
    assert_no_credential_challenge(missing, dpop=False)
    assert len(stack.upstream.hits) == 1
    assert_no_credentials_forwarded(stack.upstream)


async def test_basic_with_argon2id_users_file(stack: Stack) -> None:
    def basic(user: str, password: str) -> list[tuple[str, str]]:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return [("Authorization", f"Basic {raw}")]

    ok = await stack.call("/basic/x", headers=basic("ops", stack.creds.password))
    assert ok.status == 200, ok.body
    assert stack.identities[-1].principal.subject == "ops"
    for user, password in (("ops", "wrong"), ("nobody", stack.creds.password)):
        resp = await stack.call("/basic/x", headers=basic(user, password))
        assert_problem(resp, 401)
        found = challenges(resp.header("WWW-Authenticate"))
        assert ("Basic", {"realm": "agentgate"}) in found, found
    # No credential: the Basic challenge is offered next to Bearer.
    missing = await stack.call("/basic/x")
    assert_problem(missing, 401)
    assert ("Basic", {"realm": "agentgate"}) in challenges(missing.header("WWW-Authenticate"))
    assert len(stack.upstream.hits) == 1
    assert_no_credentials_forwarded(stack.upstream)


async def test_hmac_rfc9421_signature(stack: Stack) -> None:
    body = b'{"invoice": 42, "amount": "12.00"}'
    target = "/hmac/invoices?draft=1"
    headers = hmac_headers(
        stack.creds.hmac_secret,
        method="POST",
        authority=stack.authority,
        target=target,
        body=body,
        keyid="legacy-agent-7",
    )
    ok = await stack.call(target, method="POST", headers=headers, body=body)
    assert ok.status == 200, ok.body
    assert stack.identities[-1].principal.subject == "legacy-agent-7"
    [hit] = stack.upstream.hits
    assert hit.body_len == len(body)  # the buffered body still went through
    assert hit.complete

    # The same signature again is a replay; a body that does not match Content-Digest fails.
    assert_invalid_token(await stack.call(target, method="POST", headers=headers, body=body))
    fresh = hmac_headers(
        stack.creds.hmac_secret,
        method="POST",
        authority=stack.authority,
        target=target,
        body=body,
        keyid="legacy-agent-7",
    )
    tampered = body.replace(b"12.00", b"99.00")
    assert_invalid_token(await stack.call(target, method="POST", headers=fresh, body=tampered))
    # Signed with another secret.
    forged = hmac_headers(
        secrets.token_bytes(48),
        method="POST",
        authority=stack.authority,
        target=target,
        body=body,
        keyid="legacy-agent-7",
    )
    assert_invalid_token(await stack.call(target, method="POST", headers=forged, body=body))
    assert len(stack.upstream.hits) == 1
    assert_no_credentials_forwarded(stack.upstream)


async def test_jwt_assertion_signed_by_the_registered_agent_key(stack: Stack) -> None:
    assertion = stack.creds.assertion()
    ok = await stack.call("/assertion/x", headers=[("Agent-Assertion", assertion)])
    assert ok.status == 200, ok.body
    principal = stack.identities[-1].principal
    assert (principal.subject, principal.client_id) == (TRAVEL, "travel-agent")
    # jti is single-use; an assertion for another audience or signed by another key fails.
    assert_invalid_token(await stack.call("/assertion/x", headers=[("Agent-Assertion", assertion)]))
    wrong_aud = stack.creds.assertion(aud="https://elsewhere.example/")
    assert_invalid_token(await stack.call("/assertion/x", headers=[("Agent-Assertion", wrong_aud)]))
    impostor = Creds(stack.creds.directory)  # same agent id, another private key
    forged = impostor.assertion()
    assert_invalid_token(await stack.call("/assertion/x", headers=[("Agent-Assertion", forged)]))
    assert len(stack.upstream.hits) == 1
    assert_no_credentials_forwarded(stack.upstream)


# =========================================================================== 2. composition


async def test_all_of_mtls_and_bearer(stack: Stack) -> None:
    token = stack.signer.token(sub="alice")
    only_token = await stack.call("/strict/x", headers=stack.bearer(token))
    assert_problem(only_token, 401)
    assert_no_credential_challenge(only_token, dpop=True, exact=False)
    only_cert = await stack.call("/strict/x", cert="travel")
    assert_problem(only_cert, 401)
    assert_no_credential_challenge(only_cert, dpop=True, exact=False)
    assert stack.upstream.hits == []

    both = await stack.call("/strict/x", cert="travel", headers=stack.bearer(token))
    assert both.status == 200, both.body
    [identity] = stack.identities
    assert set(identity.results) == {"mtls", "bearer"}
    assert identity.principal.subject == "alice"  # the token's subject beats the transport's
    assert identity.results["mtls"].subject == TRAVEL
    assert len(stack.upstream.hits) == 1
    assert_no_credentials_forwarded(stack.upstream)


async def test_any_of_cert_and_token_or_api_key(stack: Stack) -> None:
    token = stack.signer.token()
    key = [("X-API-Key", stack.creds.api_key)]
    assert (await stack.call("/partner/a", headers=key)).status == 200
    assert (
        await stack.call("/partner/b", cert="travel", headers=stack.bearer(token))
    ).status == 200
    # Half of the all_of branch satisfies nothing.
    for resp in (
        await stack.call("/partner/c", cert="travel"),
        await stack.call("/partner/d", headers=stack.bearer(stack.signer.token())),
        await stack.call("/partner/e"),
    ):
        assert_problem(resp, 401, "authn_missing")
        assert_no_credential_challenge(resp, dpop=True, exact=False)
    assert stack.upstream.paths() == ["/partner/a", "/partner/b"]
    assert [i.principal.subject for i in stack.identities] == ["partner-agent-1", TRAVEL]
    assert_no_credentials_forwarded(stack.upstream)


async def test_mtls_and_bearer_or_assertion(stack: Stack) -> None:
    """The README's ``mtls AND (bearer OR jwt_assertion)``."""
    assertion = [("Agent-Assertion", stack.creds.assertion())]
    assert (await stack.call("/agents/a", cert="travel", headers=assertion)).status == 200
    token = stack.bearer(stack.signer.token())
    assert (await stack.call("/agents/b", cert="travel", headers=token)).status == 200
    no_cert = await stack.call("/agents/c", headers=[("Agent-Assertion", stack.creds.assertion())])
    assert_problem(no_cert, 401, "authn_missing")
    assert_problem(await stack.call("/agents/d", cert="travel"), 401, "authn_missing")
    assert stack.upstream.paths() == ["/agents/a", "/agents/b"]
    assert_no_credentials_forwarded(stack.upstream)


async def test_one_valid_and_one_invalid_credential_is_refused(stack: Stack) -> None:
    good_key = ("X-API-Key", stack.creds.api_key)
    expired = stack.signer.token(exp=int(time.time()) - 600, iat=int(time.time()) - 900)
    good_token = stack.signer.token()
    cases = {
        # a valid API key (enough on its own) next to an expired token
        "valid-key+expired-token": (
            "/partner/x",
            None,
            [good_key, ("Authorization", f"Bearer {expired}")],
        ),
        # a valid cert+token branch next to an unknown API key
        "valid-branch+unknown-key": (
            "/partner/x",
            "travel",
            [("Authorization", f"Bearer {good_token}"), ("X-API-Key", stack.creds.other_api_key)],
        ),
        # a valid token next to a replayed/forged assertion, all_of with the cert
        "valid-token+forged-assertion": (
            "/agents/x",
            "travel",
            [("Authorization", f"Bearer {good_token}"), ("Agent-Assertion", good_token)],
        ),
    }
    for label, (path, cert, headers) in cases.items():
        resp = await stack.call(path, cert=cert, headers=headers)
        assert resp.status == 401, (label, resp.status, resp.body)
        assert_invalid_token(resp)
    assert stack.upstream.hits == []


async def test_two_authorization_headers_are_invalid_request(stack: Stack) -> None:
    token = stack.signer.token()
    for path, cert in (("/bearer/x", None), ("/partner/x", "travel"), ("/strict/x", "travel")):
        resp = await stack.call(
            path,
            cert=cert,
            headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
        )
        assert_problem(resp, 400, "invalid_request")
        found = challenges(resp.header("WWW-Authenticate"))
        assert found[0][1].get("error") == "invalid_request", found
    # Basic + Bearer: a token sent twice in two dialects is just as ambiguous.
    basic = base64.b64encode(f"ops:{stack.creds.password}".encode()).decode()
    resp = await stack.call(
        "/basic/x",
        headers=[("Authorization", f"Basic {basic}"), ("Authorization", f"Bearer {token}")],
    )
    assert_problem(resp, 400, "invalid_request")
    assert stack.upstream.hits == []


async def test_no_credential_header_ever_reaches_the_upstream(stack: Stack) -> None:
    """Every credential at once on routes that accept some of them: none is forwarded."""
    token = stack.signer.token()
    body = b"{}"
    for path, method in (("/strict/all", "GET"), ("/partner/all", "GET"), ("/hmac/all", "POST")):
        headers = [
            ("Authorization", f"Bearer {token}"),
            ("DPoP", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
            ("X-API-Key", stack.creds.api_key),
            ("Agent-Assertion", stack.creds.assertion()),
        ]
        if path.startswith("/hmac/"):
            headers = (
                hmac_headers(
                    stack.creds.hmac_secret,
                    method=method,
                    authority=stack.authority,
                    target=path,
                    body=body,
                    keyid="legacy-agent-7",
                )
                + headers[1:]
            )
        resp = await stack.call(path, cert="travel", method=method, headers=headers, body=body)
        assert resp.status == 200, (path, resp.body)
    assert len(stack.upstream.hits) == 3
    assert_no_credentials_forwarded(stack.upstream)


# =========================================================================== 3. WWW-Authenticate


@pytest.mark.parametrize(
    ("path", "dpop"),
    [
        pytest.param("/bearer/x", True, id="bearer"),
        pytest.param("/plain/x", False, id="bearer-dpop-off"),
        pytest.param("/mtls/x", False, id="mtls"),
        pytest.param("/api-key/x", False, id="api-key"),
        pytest.param("/strict/x", True, id="mtls-and-bearer"),
        pytest.param("/partner/x", True, id="any-of-with-api-key"),
        pytest.param("/agents/x", True, id="mtls-and-bearer-or-assertion"),
    ],
)
async def test_no_credential_challenge(stack: Stack, path: str, dpop: bool) -> None:
    """One ``Bearer realm="agentgate"`` (no error), plus ``DPoP algs=...`` iff DPoP is on."""
    resp = await stack.call(path)
    assert_problem(resp, 401, "authn_missing")
    assert_no_credential_challenge(resp, dpop=dpop)
    assert stack.upstream.hits == []


async def test_token_in_query_or_form_is_invalid_request(stack: Stack) -> None:
    """OAuth 2.1 §5.2.1 removed query tokens; RFC 6750 §2.2 form tokens are not supported."""
    token = stack.signer.token()
    resp = await stack.call(f"/bearer/x?access_token={token}")
    assert_problem(resp, 400, "invalid_request")
    assert token.encode() not in resp.body
    form = f"access_token={token}".encode()
    resp = await stack.call(
        "/bearer/x",
        method="POST",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=form,
    )
    assert_problem(resp, 400, "invalid_request")
    assert stack.upstream.hits == []


def _bad_tokens(signer: Signer) -> dict[str, str]:
    now = int(time.time())
    impostor = Signer(signer.kid)  # same kid, another key: a forged signature
    return {
        "wrong-aud": signer.token(aud="https://other.example"),
        "expired": signer.token(exp=now - 600, iat=now - 900),
        "wrong-typ": signer.token(typ="JWT"),
        "no-typ": signer.token(typ=None),
        "dpop-typ": signer.token(typ="dpop+jwt"),
        "wrong-iss": signer.token(iss="https://evil.example"),
        "future-iat": signer.token(iat=now + 600),
        "not-yet-valid": signer.token(nbf=now + 600),
        "bad-signature": impostor.token(),
        "garbage-jws": "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln",
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong-aud",
        "expired",
        "wrong-typ",
        "no-typ",
        "dpop-typ",
        "wrong-iss",
        "future-iat",
        "not-yet-valid",
        "bad-signature",
        "garbage-jws",
    ],
)
async def test_invalid_token_is_401_invalid_token(stack: Stack, case: str) -> None:
    token = _bad_tokens(stack.signer)[case]
    resp = await stack.call("/bearer/x", headers=stack.bearer(token))
    assert_invalid_token(resp)
    assert token.encode() not in resp.body
    assert token not in (resp.header("WWW-Authenticate") or "")
    assert stack.upstream.hits == []


# =========================================================================== 4. with a PDP


async def test_unauthenticated_requests_never_reach_the_pdp_and_denials_are_403(
    build: GatewayBuilder, pki: TestPKI, upstream: Upstream, creds: Creds, tmp_path: Path
) -> None:
    decisions = tmp_path / "decisions.jsonl"
    gw = await build(
        {
            "server": merge(BASE_SERVER, {"tls": tls_block(pki, "optional")}),
            "authn": {
                "mtls": {},
                "api_key": {"keys_file": str(creds.directory / "api-keys.yaml")},
            },
            "pdp": {
                "engine": "embedded",
                "policies": str(ROOT / "policies"),
                "data": str(ROOT / "policies" / "data.json"),
                "cache": {"ttl_s": 0, "max_entries": 0},
            },
            "telemetry": {"audit_log": "off", "decision_log": str(decisions)},
            "routes": [
                route(
                    "flights",
                    "/flights/",
                    {"any_of": ["mtls", "api_key"]},
                    upstream,
                    segment="booking",
                )
            ],
        }
    )
    s = Stack(gw, pki, upstream, JWKSServer(), Signer("unused"), creds, spy_identities(gw))

    anonymous = await s.call("/flights/42")
    assert_problem(anonymous, 401, "authn_missing")
    bad_key = await s.call("/flights/42", headers=[("X-API-Key", creds.other_api_key)])
    assert_invalid_token(bad_key)

    allowed = await s.call("/flights/42", cert="travel")
    assert allowed.status == 200, allowed.body

    # Authenticated (a valid agent certificate) but the policy gives billing no flights role.
    denied = await s.call("/flights/42", cert="billing")
    body = assert_problem(denied, 403)
    assert body.get("decision_id"), body
    assert "rbac" not in denied.body.decode(), "policy internals in the error body"
    assert s.upstream.paths() == ["/flights/42"]

    def logged() -> dict[str, dict[str, Any]]:
        if not decisions.exists():
            return {}
        lines = [json.loads(line) for line in decisions.read_text().splitlines() if line]
        return {line["request_id"]: line for line in lines}

    # Lines are written by a thread in order: once the later two are there, so is anything
    # earlier.
    await wait_until(
        lambda: {allowed.header("X-Request-Id"), denied.header("X-Request-Id")} <= logged().keys()
    )
    lines = logged()
    assert anonymous.header("X-Request-Id") not in lines
    assert bad_key.header("X-Request-Id") not in lines
    assert len(lines) == 2
    assert lines[allowed.header("X-Request-Id") or ""]["result"] == "allow"
    deny_line = lines[denied.header("X-Request-Id") or ""]
    assert deny_line["result"] == "deny"
    assert deny_line["decision_id"] == body["decision_id"]
    assert deny_line["input"]["subject"]["id"] == BILLING


# =========================================================================== 5. JWKS lifecycle


async def _status(s: Stack, token: str, path: str = "/bearer/x") -> int:
    return (await s.call(path, headers=s.bearer(token))).status


async def _poll_status(
    s: Stack, make_token: Callable[[], str], wanted: int, within_s: float = 10.0
) -> RawResponse:
    """Send fresh tokens until the gateway answers ``wanted`` (a state change to wait for)."""
    deadline = time.monotonic() + within_s
    while True:
        resp = await s.call("/bearer/x", headers=s.bearer(make_token()))
        if resp.status == wanted or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.05)


@pytest.fixture
async def jwks_stack(
    build: GatewayBuilder, pki: TestPKI, upstream: Upstream, jwks: JWKSServer, creds: Creds
) -> Stack:
    signer = Signer("k1")
    jwks.publish(signer)
    config = standard_config(pki, upstream, jwks, creds)
    # One bearer method only: each bearer method keeps its own JWKS client (and fetches).
    del config["authn"]["plain_bearer"]
    config["routes"] = [r for r in config["routes"] if r["authn"] != "plain_bearer"]
    config["issuers"] = [
        issuer_block(
            jwks,
            min_refresh_s=MIN_REFRESH_S,
            default_ttl_s=DEFAULT_TTL_S,
            max_stale_s=MAX_STALE_S,
        )
    ]
    gw = await build(config)
    assert jwks.fetches == 1, "the gateway fetches the JWKS at startup"
    return Stack(gw, pki, upstream, jwks, signer, creds, spy_identities(gw))


async def _readyz(gw: Gateway) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url(gw) + "/readyz") as resp,
    ):
        await resp.read()
        return resp.status


async def test_jwks_rotation_then_outage(jwks_stack: Stack) -> None:
    s, jwks, k1 = jwks_stack, jwks_stack.jwks, jwks_stack.signer
    old_token = k1.token()
    assert await _status(s, old_token) == 200

    # Rotation: the issuer publishes k2 next to k1 and starts signing with k2.
    k2 = Signer("k2")
    jwks.publish(k1, k2)
    # The unknown-kid refetch is rate-limited to one per min_refresh_s: wait that out (poll).
    await wait_until(lambda: time.monotonic() - jwks.last_fetch > MIN_REFRESH_S + 0.05)
    before = jwks.fetches
    assert await _status(s, k2.token()) == 200, "a token with the new kid after a refetch"
    assert jwks.fetches > before
    # Old tokens keep working while the old key is published: the one seen, and new ones.
    assert await _status(s, old_token) == 200
    assert await _status(s, k1.token()) == 200

    # k1 is withdrawn: once the gateway has refreshed, a k1 token is an unknown key (401).
    jwks.publish(k2)
    withdrawn = await _poll_status(s, k1.token, 401)
    assert_invalid_token(withdrawn)
    assert await _status(s, k2.token()) == 200

    # The JWKS endpoint goes down. Cached keys serve (fresh tokens, so no verified-token
    # cache is involved) until they have been stale for max_stale_s ...
    await jwks.stop()
    last_good = jwks.last_fetch
    hits = len(s.upstream.hits)
    assert await _status(s, k2.token()) == 200
    assert time.monotonic() < last_good + DEFAULT_TTL_S + MAX_STALE_S, (
        "the stale-keys request came too late to prove anything; the machine is too slow"
    )
    assert len(s.upstream.hits) == hits + 1

    # ... and then the gateway fails closed: 503, never 2xx, and readiness drops.
    await wait_until(
        lambda: time.monotonic() > last_good + DEFAULT_TTL_S + MAX_STALE_S + 0.3, timeout=10
    )
    resp = await s.call("/bearer/x", headers=s.bearer(k2.token()))
    assert_problem(resp, 503, "jwks_unavailable")
    assert len(s.upstream.hits) == hits + 1
    assert await _readyz(s.gw) == 503
    # Non-JWT methods are unaffected by the issuer's outage.
    assert (await s.call("/mtls/x", cert="travel")).status == 200
    assert_no_credentials_forwarded(s.upstream)


async def test_previously_verified_token_fails_closed_once_jwks_is_stale(jwks_stack: Stack) -> None:
    """A token verified while keys were fresh is not a free pass once they are unusable.

    DESIGN.md §5: JWKS unreachable -> 503, fail closed; ``max_stale_s`` bounds how long stale
    keys may be relied on. A verified-token cache entry is a stale key in disguise.
    """
    s, jwks = jwks_stack, jwks_stack.jwks
    token = s.signer.token()
    assert await _status(s, token) == 200
    await jwks.stop()
    last_good = jwks.last_fetch
    await wait_until(
        lambda: time.monotonic() > last_good + DEFAULT_TTL_S + MAX_STALE_S + 0.3, timeout=10
    )
    assert await _status(s, s.signer.token()) == 503  # a new token: fails closed
    resp = await s.call("/bearer/x", headers=s.bearer(token))  # the token seen before
    assert_problem(resp, 503, "jwks_unavailable")
    assert len(s.upstream.hits) == 1
