"""The Transaction Token workflow end to end, through the real mTLS listener.

Everything here is real: :class:`gateway.app.Gateway` on 127.0.0.1 with the dev PKI
(``client_cert: required``), the ``mtls``, ``bearer`` and ``txn_token`` authentication
methods, the embedded PDP (regopy) over the *shipped* ``policies/`` with a copy of
``policies/data.json`` extended in a temp folder (see :func:`policy_data`), Txn-Tokens signed
with a key written by :func:`gateway.tokens.keys.write_private_key`, and echo upstreams that
record exactly what they received. Tokens are checked with an independent JOSE library
(joserfc) against the keys the gateway publishes at ``GET /.well-known/jwks.json``, fetched
over HTTPS like any internal service would.

The workflow (DESIGN.md §2, §5, §7, §8; SPECS.md §1, §2):

* **Ingress.** Agent A (``spiffe://example.org/agent/travel``) calls ``/flights/...`` with
  alice's access token (``scope="flights.read flights.book"``, ``act`` = A). The upstream
  gets exactly one ``Txn-Token``, minted by the gateway, downscoped by the decision; a
  ``Txn-Token`` the client sent is never trusted or forwarded.
* **Two hops.** Service B (``spiffe://example.org/service/booking``) calls the internal route
  (``authn: {all_of: [mtls, txn_token]}``) with the token it received; service C (that
  route's upstream) gets a token of the *same* transaction (``txn``, ``sub``, ``aud``,
  ``tctx``) whose scope is the same or narrower, with B pushed on top of ``act``. The gateway
  asks the PDP again for this hop: expired, foreign-key and foreign-domain tokens are
  refused (401), other callers and other actions are denied (403).
* **Token Service.** ``POST /token`` on the same listener: an allowlisted workload trades its
  Txn-Token for a narrower replacement (RFC 8693 response, ``Cache-Control: no-store``,
  ``rctx.req_wl_chain``); a workload not on ``token_service_clients`` gets
  ``invalid_client``; the PDP is asked (``action: token.exchange``, seen in the decision log)
  and its deny is ``unauthorized_client``; a wider scope is ``invalid_scope``.
* **Coverage.** Every allowed request with an identity carries a Txn-Token (whatever the
  backend credential), unless the route says ``send_txn_token: false``; a public route
  (``tags: [public]``) neither needs nor gets one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, KeySet

from gateway.app import Gateway
from gateway.devtools.devpki import issue_leaf, load_issued
from gateway.sdk.txn import RemoteJWKS, TxnTokenVerifier, b64url_encode
from gateway.settings import parse_settings
from gateway.tokens.keys import SigningKey, write_private_key
from gateway.tokens.txn_token import header_segment, sign_claims
from tests.integration.conftest import tls_block
from tests.support import ROOT, CertPair, TestPKI, Upstream, client_context, wait_until

pytestmark = pytest.mark.integration

TD = "example.org"
GATEWAY_ID = f"spiffe://{TD}/gateway"
TXN_ISSUER = "https://gateway.example.org"
IDP = "https://idp.example.org"
API_AUDIENCE = "https://gateway.example.org"
TTL_S = 60
JWKS_MAX_AGE_S = 120

TRAVEL = f"spiffe://{TD}/agent/travel"  # agent A
BILLING = f"spiffe://{TD}/agent/billing"  # another agent, no delegation from A
BOOKING = f"spiffe://{TD}/service/booking"  # internal service B
PARTNER = f"spiffe://{TD}/partner/acme"  # allowlisted at the TTS, but not by policy

USER_SCOPE = "flights.read flights.book"
TT_TXN = "urn:ietf:params:oauth:token-type:txn_token"
GRANT_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
INTERNAL_ROUTE = "bookings-internal"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- policy data


def policy_data() -> dict[str, Any]:
    """The shipped ``policies/data.json`` plus what the east-west routes of this test need.

    The shipped data knows no internal route that a user's transaction may cross and no
    delegation to an internal service, so (correctly) it denies the two-hop flow. Added here,
    in a temp copy only:

    * ``rbac``: ``traveller`` may ``POST /flights/*/trips`` (a permission conferring both
      scopes, so a transaction can start with both), ``GET`` (``flights.read``) and ``POST``
      (``flights.book``) ``/internal/bookings/**``; ``travel-agent`` may ``GET /m2m/**``.
    * ``delegations``: alice -> travel also for the internal route; travel -> booking (B) for
      the internal route.
    * ``abac``: the internal route admits agent callers on behalf of users (no clock rule,
      so the test does not depend on the hour).
    """
    data: dict[str, Any] = json.loads((ROOT / "policies" / "data.json").read_text())
    roles = data["rbac"]["roles"]
    roles["traveller"] += [
        {
            "methods": ["POST"],
            "paths": ["/flights/*/trips"],
            "scopes": ["flights.read", "flights.book"],
        },
        {"methods": ["GET"], "paths": ["/internal/bookings/**"], "scopes": ["flights.read"]},
        {"methods": ["POST"], "paths": ["/internal/bookings/**"], "scopes": ["flights.book"]},
    ]
    roles["travel-agent"].append(
        {"methods": ["GET"], "paths": ["/m2m/**"], "scopes": ["flights.read"]}
    )
    data["delegations"]["alice"][TRAVEL]["routes"].append(INTERNAL_ROUTE)
    data["delegations"][TRAVEL][BOOKING] = {
        "routes": [INTERNAL_ROUTE],
        "scopes": ["flights.read", "flights.book"],
    }
    data["abac"]["routes"][INTERNAL_ROUTE] = {"callers": ["agent"], "subject_types": ["user"]}
    return data


# --------------------------------------------------------------------------- identities


@pytest.fixture(scope="module")
def workloads(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertPair]:
    """Client certificates from the dev CA: the PKI fixture's agents plus B and a partner."""
    directory = tmp_path_factory.mktemp("workloads")
    ca = load_issued(pki.ca, pki.directory / "ca.key")
    out = {"travel": pki.agents["travel"], "billing": pki.agents["billing"]}
    for name, spiffe_id in (("booking", BOOKING), ("partner", PARTNER)):
        issued = issue_leaf(ca, common_name=name, spiffe_id=spiffe_id)
        pair = CertPair(directory / f"{name}.pem", directory / f"{name}.key", spiffe_id)
        issued.write(pair.cert, pair.key)
        out[name] = pair
    return out


@dataclass
class IdP:
    """The corporate IdP: an ES256 key whose public JWK the gateway reads from a file."""

    key: ECKey
    jwks_file: Path

    def access_token(self, sub: str = "alice", scope: str = USER_SCOPE, **extra: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": IDP,
            "sub": sub,
            "aud": API_AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            "client_id": "travel-agent",
            "scope": scope,
            "amr": ["mfa"],
            "act": {"sub": TRAVEL},  # RFC 8693 §4.1: agent A acts for alice
        }
        claims.update(extra)
        header = {"alg": "ES256", "kid": "idp-1", "typ": "at+jwt"}
        return jose_jwt.encode(header, claims, self.key)


# --------------------------------------------------------------------------- the gateway


@dataclass
class World:
    gw: Gateway
    base: str
    idp: IdP
    signing_key: SigningKey
    flights: Upstream  # behind the ingress routes
    service_c: Upstream  # behind the internal route
    decision_log: Path
    tls: dict[str, ssl.SSLContext] = field(default_factory=dict)
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    async def call(
        self,
        who: str,
        method: str,
        path: str,
        *,
        headers: Any = None,
        data: Any = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        async with self.sessions[who].request(
            method, self.base + path, headers=headers, data=data, allow_redirects=False
        ) as resp:
            return resp.status, resp.headers.copy(), await resp.read()

    async def token(self, who: str, **params: str) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        form = {
            "grant_type": GRANT_EXCHANGE,
            "requested_token_type": TT_TXN,
            "subject_token_type": TT_TXN,
            "audience": TD,
            **params,
        }
        status, headers, body = await self.call(
            who,
            "POST",
            "/token",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            data=urlencode(form),
        )
        return status, headers, json.loads(body)

    async def jwks(self) -> dict[str, Any]:
        status, _headers, body = await self.call("booking", "GET", "/.well-known/jwks.json")
        assert status == 200
        document: dict[str, Any] = json.loads(body)
        return document

    async def decisions(self, predicate: Any, count: int = 1) -> list[dict[str, Any]]:
        """Decision-log lines matching ``predicate`` (waits for the writer thread)."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            found.clear()
            if self.decision_log.exists():
                for line in self.decision_log.read_text().splitlines():
                    entry = json.loads(line)
                    if predicate(entry):
                        found.append(entry)
            return len(found) >= count

        await wait_until(ready, timeout=5)
        return list(found)


@pytest.fixture
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, pki: TestPKI, workloads: dict[str, CertPair]
) -> AsyncIterator[World]:
    """The gateway; ``indirect`` parameter ``"shipped"`` runs it on the unmodified data.json."""
    flights, service_c = Upstream(), Upstream()
    await flights.start()
    await service_c.start()

    idp_key = ECKey.generate_key("P-256", parameters={"kid": "idp-1", "alg": "ES256", "use": "sig"})
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [idp_key.as_dict(private=False)]}))
    signing_key = write_private_key(tmp_path / "txn-signing.pem", "ES256")
    data_file = tmp_path / "data.json"
    shipped = getattr(request, "param", "extended") == "shipped"
    if shipped:
        data_file.write_bytes((ROOT / "policies" / "data.json").read_bytes())
    else:
        data_file.write_text(json.dumps(policy_data()))
    backend_key = tmp_path / "backend.key"
    backend_key.write_text("backend-secret-0123456789")
    decision_log = tmp_path / "decisions.log"

    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "tls": tls_block(pki),
            "trust_domain": TD,
            "timeouts": {"drain_s": 1, "upstream_total_s": 10, "pdp_s": 5},
        },
        "issuers": [
            {
                "name": "corp",
                "issuer": IDP,
                "jwks_file": str(jwks_file),
                "audience": API_AUDIENCE,
                "algorithms": ["ES256"],
            }
        ],
        "authn": {
            "mtls": {},
            "bearer": {"issuers": ["corp"], "require_typ": "at+jwt"},
            "txn_token": {},
        },
        "pdp": {
            "engine": "embedded",
            "policies": str(ROOT / "policies"),
            "data": str(data_file),
            "cache": {"ttl_s": 0, "max_entries": 0},  # every request reaches the policy
        },
        "txn_tokens": {
            "issuer": TXN_ISSUER,
            "ttl_s": TTL_S,
            "signing_key": str(signing_key.path),
            "jwks_max_age_s": JWKS_MAX_AGE_S,
            "token_service_clients": [BOOKING, f"spiffe://{TD}/partner/"],
        },
        "telemetry": {"decision_log": str(decision_log), "audit_log": "off"},
        "routes": [
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/", "methods": ["GET", "POST"]},
                "authn": {"all_of": ["mtls", "bearer"]},
                "upstream": flights.url,
                "segment": "booking",
            },
            {
                "name": INTERNAL_ROUTE,
                "match": {"path_prefix": "/internal/bookings/"},
                "authn": {"all_of": ["mtls", "txn_token"]},
                "upstream": service_c.url,
                "segment": "internal",
            },
            {
                # send_txn_token: false is "unless the route says otherwise" (DESIGN.md §5)
                "name": "m2m-legacy",
                "match": {"path_prefix": "/m2m/legacy/"},
                "authn": "mtls",
                "upstream": flights.url,
                "segment": "booking",
                "credential": {
                    "type": "api_key",
                    "header": "X-Backend-Key",
                    "secret": f"file:{backend_key}",
                },
                "send_txn_token": False,
            },
            {
                "name": "m2m",
                "match": {"path_prefix": "/m2m/"},
                "authn": "mtls",
                "upstream": flights.url,
                "segment": "booking",
                "credential": {
                    "type": "api_key",
                    "header": "X-Backend-Key",
                    "secret": f"file:{backend_key}",
                },
            },
            {
                "name": "public-none",
                "match": {"path_prefix": "/public/none/"},
                "upstream": flights.url,
                "segment": "public",
                "tags": ["public"],
                "credential": {"type": "none"},
            },
            {
                "name": "public",
                "match": {"path_prefix": "/public/"},
                "upstream": flights.url,
                "segment": "public",
                "tags": ["public"],
            },
        ],
    }
    gw = Gateway(parse_settings(config, tmp_path))
    await gw.start()
    assert gw.main_address is not None
    host, port = gw.main_address
    world = World(
        gw=gw,
        base=f"https://{host}:{port}",
        idp=IdP(idp_key, jwks_file),
        signing_key=signing_key,
        flights=flights,
        service_c=service_c,
        decision_log=decision_log,
    )
    try:
        for name, pair in workloads.items():
            world.tls[name] = client_context(pki, pair)
            connector = aiohttp.TCPConnector(ssl=world.tls[name])
            world.sessions[name] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)
            )
        yield world
    finally:
        for session in world.sessions.values():
            await session.close()
        await gw.stop()
        await service_c.close()
        await flights.close()


# --------------------------------------------------------------------------- helpers


def verify_jose(token: str, jwks: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """joserfc, with keys from the live JWKS: (header, claims) or an exception."""
    keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    decoded = jose_jwt.decode(token, keys, algorithms=["ES256"])
    jose_jwt.JWTClaimsRegistry(
        now=int(time.time()),
        leeway=5,
        iss={"essential": True, "value": TXN_ISSUER},
        aud={"essential": True, "value": TD},
        iat={"essential": True},
        exp={"essential": True},
        sub={"essential": True},
        txn={"essential": True},
        scope={"essential": True},
        req_wl={"essential": True},
    ).validate(decoded.claims)
    return dict(decoded.header), dict(decoded.claims)


def only_txn_token(hit_headers: list[str]) -> str:
    assert len(hit_headers) == 1, f"expected exactly one Txn-Token, got {len(hit_headers)}"
    return hit_headers[0]


async def ingress(world: World, method: str = "GET", path: str = "/flights/42") -> tuple[str, str]:
    """Agent A calls with alice's token; returns (the Txn-Token the upstream got, request id)."""
    before = len(world.flights.hits)
    status, headers, body = await world.call(
        "travel",
        method,
        path,
        headers={"Authorization": f"Bearer {world.idp.access_token()}"},
    )
    assert status == 200, body
    assert len(world.flights.hits) == before + 1
    hit = world.flights.hits[-1]
    return only_txn_token(hit.all("Txn-Token")), headers["X-Request-Id"]


def unverified_claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


def scopes(claims: Mapping[str, Any]) -> set[str]:
    return set(str(claims["scope"]).split())


# --------------------------------------------------------------------------- 1. ingress


async def test_jwks_endpoint_over_https(world: World) -> None:
    status, headers, body = await world.call("travel", "GET", "/.well-known/jwks.json")
    assert status == 200
    assert headers["Cache-Control"] == f"public, max-age={JWKS_MAX_AGE_S}"
    assert headers["Content-Type"].startswith("application/jwk-set+json")
    assert headers.get("X-Request-Id")
    jwks = json.loads(body)
    assert len(jwks["keys"]) == 1
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == world.signing_key.kid
    assert jwk["alg"] == "ES256"
    assert jwk["use"] == "sig"
    assert jwk["kty"] == "EC"
    assert "d" not in jwk  # public members only
    # kid is the RFC 7638 thumbprint, as an independent library computes it
    assert ECKey.import_key(jwk).thumbprint() == jwk["kid"]
    # conditional GET
    status, again, _ = await world.call(
        "travel", "GET", "/.well-known/jwks.json", headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 304
    assert again["ETag"] == headers["ETag"]


async def test_ingress_mints_exactly_one_verified_txn_token(world: World) -> None:
    jwks = await world.jwks()
    access_token = world.idp.access_token()
    # Two client-sent Txn-Tokens: one forged with a foreign key, one genuinely signed by the
    # gateway but for another subject and transaction. Neither may be trusted or forwarded.
    foreign = write_private_key(world.decision_log.parent / "forger.pem", "ES256")
    now = int(time.time())
    bogus = {
        "iss": TXN_ISSUER,
        "iat": now,
        "exp": now + 60,
        "aud": TD,
        "txn": str(uuid.uuid4()),
        "sub": "mallory",
        "scope": "flights.read flights.book admin",
        "req_wl": GATEWAY_ID,
    }
    forged = sign_claims(foreign, bogus)
    genuine_other = sign_claims(world.signing_key, {**bogus, "sub": "bob", "scope": "flights.read"})
    sent = [
        ("Authorization", f"Bearer {access_token}"),
        ("Txn-Token", forged),
        ("Txn-Token", genuine_other),
    ]
    status, headers, body = await world.call("travel", "GET", "/flights/42", headers=sent)
    assert status == 200, body
    request_id = headers["X-Request-Id"]

    assert len(world.flights.hits) == 1
    hit = world.flights.hits[0]
    token = only_txn_token(hit.all("Txn-Token"))
    assert token not in (forged, genuine_other)
    assert hit.all("Authorization") == []  # the user's access token never goes upstream
    assert hit.all("X-Request-Id") == [request_id]

    header, claims = verify_jose(token, jwks)
    # JOSE header (SPECS.md §1.2)
    assert header == {"alg": "ES256", "kid": world.signing_key.kid, "typ": "txntoken+jwt"}
    # claims (SPECS.md §1.3, DESIGN.md §8)
    assert claims["iss"] == TXN_ISSUER
    assert claims["aud"] == TD
    assert isinstance(claims["iat"], int)
    assert isinstance(claims["exp"], int)
    assert abs(claims["iat"] - time.time()) < 10
    assert 0 < claims["exp"] - claims["iat"] <= TTL_S
    assert UUID4.fullmatch(claims["txn"])
    assert uuid.UUID(claims["txn"]).version == 4
    assert claims["txn"] != bogus["txn"]
    assert claims["sub"] == "alice"
    # scope: within the access token's, narrowed by the decision (GET grants flights.read)
    assert scopes(claims) <= set(USER_SCOPE.split())
    assert scopes(claims) == {"flights.read"}
    assert claims["req_wl"] == GATEWAY_ID
    assert claims["act"] == {"sub": TRAVEL}  # the acting agent (RFC 8693 §4.1)
    rctx = claims["rctx"]
    assert rctx["req_ip"] == "127.0.0.1"
    assert rctx["authn"] == ["mfa", "swk"]  # RFC 8176: the token's amr, then mTLS
    assert rctx["transport"] == "https"
    assert rctx["request_id"] == request_id
    assert rctx["a2a"] == {"hop": 1, "caller_agent": TRAVEL}
    assert "req_wl_chain" not in rctx
    assert claims["tctx"] == {
        "route": "flights",
        "method": "GET",
        "path": "/flights/42",
        "subject_type": "user",
        "mode": "obo_user",
        "caller": "agent",
    }
    # §13.4: the inbound access token is never copied into the Txn-Token
    assert access_token not in json.dumps(claims)
    assert access_token.split(".")[2] not in token

    # The decision behind it: the PDP allowed this very request for alice on "flights".
    (entry,) = await world.decisions(lambda e: e["request_id"] == request_id)
    assert (entry["result"], entry["route"], entry["subject"]) == ("allow", "flights", "alice")
    assert entry["input"]["actors"] == [{"sub": TRAVEL}]

    # The gateway's own verification kit, following the live JWKS over mTLS, agrees.
    connector = aiohttp.TCPConnector(ssl=world.tls["booking"])
    async with aiohttp.ClientSession(connector=connector) as session:
        remote = RemoteJWKS(world.base + "/.well-known/jwks.json", session=session)
        async with TxnTokenVerifier(remote, audience=TD, issuer=TXN_ISSUER) as verifier:
            assert await verifier.verify(token) == claims


async def test_each_ingress_request_starts_a_new_transaction(world: World) -> None:
    first, _ = await ingress(world)
    second, _ = await ingress(world)
    one, two = unverified_claims(first), unverified_claims(second)
    assert one["txn"] != two["txn"]
    assert one["sub"] == two["sub"] == "alice"


async def test_ingress_scope_follows_the_decision(world: World) -> None:
    """POST /flights/*/trips confers both scopes; POST .../bookings only flights.book."""
    trips, _ = await ingress(world, "POST", "/flights/42/trips")
    assert scopes(unverified_claims(trips)) == {"flights.read", "flights.book"}
    booking, _ = await ingress(world, "POST", "/flights/42/bookings")
    assert scopes(unverified_claims(booking)) == {"flights.book"}
    # an access token holding less yields less, whatever the permission confers
    status, _, _ = await world.call(
        "travel",
        "POST",
        "/flights/42/trips",
        headers={"Authorization": f"Bearer {world.idp.access_token(scope='flights.read')}"},
    )
    assert status == 200
    assert scopes(unverified_claims(world.flights.hits[-1].all("Txn-Token")[0])) == {"flights.read"}


# --------------------------------------------------------------------------- 2. two hops


@pytest.mark.parametrize(
    ("ingress_call", "hop_method", "expected_scope"),
    [
        pytest.param(("GET", "/flights/42"), "GET", {"flights.read"}, id="same-scope"),
        pytest.param(("POST", "/flights/42/trips"), "POST", {"flights.book"}, id="narrower"),
    ],
)
async def test_two_hop_keeps_the_transaction(
    world: World,
    ingress_call: tuple[str, str],
    hop_method: str,
    expected_scope: set[str],
) -> None:
    jwks = await world.jwks()
    t1, _ = await ingress(world, *ingress_call)
    _, first = verify_jose(t1, jwks)

    # B received t1 from the upstream side and now calls the internal route with it.
    status, headers, body = await world.call(
        "booking", hop_method, "/internal/bookings/42", headers={"Txn-Token": t1}
    )
    assert status == 200, body
    assert len(world.service_c.hits) == 1
    hit = world.service_c.hits[0]
    t2 = only_txn_token(hit.all("Txn-Token"))
    assert t2 != t1
    _, second = verify_jose(t2, jwks)

    # the same transaction ...
    for name in ("txn", "sub", "aud", "iss", "tctx"):
        assert second[name] == first[name], name
    assert second["req_wl"] == GATEWAY_ID
    # ... with the same or a narrower scope, never a longer life
    assert scopes(second) <= scopes(first)
    assert scopes(second) == expected_scope
    assert second["exp"] <= first["exp"]
    assert second["exp"] - second["iat"] <= TTL_S
    # B is pushed on top of the actor chain (SPECS.md §2.2 rule 2)
    assert second["act"] == {"sub": BOOKING, "act": {"sub": TRAVEL}}
    rctx = second["rctx"]
    assert rctx["req_ip"] == first["rctx"]["req_ip"]
    assert rctx["authn"] == first["rctx"]["authn"]
    assert rctx["a2a"] == {"hop": 2, "caller_agent": BOOKING}
    assert rctx["request"] == {
        "route": INTERNAL_ROUTE,
        "method": hop_method,
        "path": "/internal/bookings/42",
    }
    assert rctx["request_id"] == headers["X-Request-Id"]

    # The gateway decided this hop itself (secondary authorization), for alice via B and A.
    (entry,) = await world.decisions(lambda e: e["request_id"] == headers["X-Request-Id"])
    assert (entry["result"], entry["route"], entry["subject"]) == ("allow", INTERNAL_ROUTE, "alice")
    assert entry["input"]["actors"] == [{"sub": BOOKING}, {"sub": TRAVEL}]
    assert entry["input"]["authn"]["methods"] == ["mtls", "txn_token"]


@pytest.mark.parametrize("world", ["shipped"], indirect=True)
async def test_shipped_data_denies_the_internal_hop_but_allows_the_exchange(world: World) -> None:
    """With the shipped data.json alone, ingress works, B may use the Token Service
    (``token_exchange.clients`` lists ``spiffe://example.org/service/``), but the internal
    hop is denied: no delegation covers B, so the valid token alone gets B nowhere."""
    t1, _ = await ingress(world)
    status, headers, body = await world.call(
        "booking", "GET", "/internal/bookings/42", headers={"Txn-Token": t1}
    )
    assert status == 403, body
    request_id = headers["X-Request-Id"]
    (entry,) = await world.decisions(lambda e: e["request_id"] == request_id)
    assert (entry["result"], entry["reason"]) == ("deny", "rebac:not_delegated")
    assert world.service_c.hits == []
    status, _, token = await world.token("booking", subject_token=t1)
    assert status == 200, token
    assert token["issued_token_type"] == TT_TXN


async def test_internal_hop_is_authorized_again(world: World) -> None:
    """A valid Txn-Token is not a pass: the PDP decides each hop for the caller at hand."""
    read_only, _ = await ingress(world, "GET", "/flights/42")
    cases: list[tuple[str, str, list[tuple[str, str]], int, str | None]] = [
        # the transaction holds flights.read; POST needs flights.book: no widening at a hop
        ("booking", "POST", [("Txn-Token", read_only)], 403, "rbac:insufficient_scope"),
        # an action no permission covers
        ("booking", "DELETE", [("Txn-Token", read_only)], 403, "rbac:no_permission"),
        # another workload replaying the token: A never delegated to it
        ("billing", "GET", [("Txn-Token", read_only)], 403, "rebac:not_delegated"),
        # the internal route demands the transaction's token, not just a certificate
        ("booking", "GET", [], 401, None),
        # exactly one Txn-Token (SPECS.md §1.4)
        ("booking", "GET", [("Txn-Token", read_only)] * 2, 400, None),
    ]
    for who, method, headers, expected, reason in cases:
        status, got, body = await world.call(who, method, "/internal/bookings/42", headers=headers)
        assert status == expected, (who, method, body)
        if reason is None:
            continue
        request_id = got["X-Request-Id"]
        (entry,) = await world.decisions(lambda e, r=request_id: e["request_id"] == r)
        assert (entry["result"], entry["reason"]) == ("deny", reason), (who, method)
        assert json.loads(body)["decision_id"] == entry["decision_id"]
        if reason == "rbac:insufficient_scope":
            assert 'error="insufficient_scope"' in got["WWW-Authenticate"]
            assert 'scope="flights.book"' in got["WWW-Authenticate"]
    assert world.service_c.hits == []


async def test_wider_scope_at_the_token_service_is_invalid_scope(world: World) -> None:
    t1, _ = await ingress(world, "GET", "/flights/42")  # scope flights.read
    status, headers, body = await world.token(
        "booking", subject_token=t1, scope="flights.read flights.book"
    )
    assert status == 400
    assert body["error"] == "invalid_scope"
    assert "access_token" not in body
    assert headers["Cache-Control"] == "no-store"


def _shifted(token: str, **changes: Any) -> dict[str, Any]:
    claims = unverified_claims(token)
    claims.update(changes)
    return claims


async def test_expired_txn_token_is_refused(world: World) -> None:
    t1, _ = await ingress(world)
    now = int(time.time())
    expired = sign_claims(world.signing_key, _shifted(t1, iat=now - 120, exp=now - 60))
    status, headers, _ = await world.call(
        "booking", "GET", "/internal/bookings/42", headers={"Txn-Token": expired}
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert world.service_c.hits == []
    # and the Token Service never revives it (SPECS.md §1.8)
    status, _, body = await world.token("booking", subject_token=expired)
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_txn_token_past_exp_is_never_continued(world: World) -> None:
    """A Txn-Token whose ``exp`` has passed, but is still inside the verifier's clock-skew
    leeway (5 s), must not produce a new token: SPECS.md §1.6 "TTS MUST NOT issue if the
    presented subject token is already expired" -- the Token Service honours that with *no*
    leeway, the internal route must too. (Otherwise C receives a token with exp < iat.)"""
    t1, _ = await ingress(world)
    now = int(time.time())
    just_expired = sign_claims(world.signing_key, _shifted(t1, iat=now - 62, exp=now - 2))
    status, _, body = await world.token("booking", subject_token=just_expired)
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _, _ = await world.call(
        "booking", "GET", "/internal/bookings/42", headers={"Txn-Token": just_expired}
    )
    forwarded = [unverified_claims(h.all("Txn-Token")[0]) for h in world.service_c.hits]
    assert status == 401, f"continued an expired transaction; C received {forwarded}"
    assert world.service_c.hits == []


@pytest.mark.parametrize(
    "forgery",
    ["foreign-key", "foreign-key-our-kid", "foreign-trust-domain", "foreign-issuer", "wrong-typ"],
)
async def test_foreign_txn_tokens_are_refused(world: World, forgery: str) -> None:
    t1, _ = await ingress(world)
    claims = unverified_claims(t1)
    other = write_private_key(world.decision_log.parent / "other-tts.pem", "ES256")
    if forgery == "foreign-key":
        token = sign_claims(other, claims)
    elif forgery == "foreign-key-our-kid":
        token = sign_claims(other, claims, header_segment(world.signing_key))
    elif forgery == "foreign-trust-domain":
        token = sign_claims(world.signing_key, {**claims, "aud": "other.example"})
    elif forgery == "foreign-issuer":
        token = sign_claims(world.signing_key, {**claims, "iss": "https://tts.other.example"})
    else:
        head = {"alg": "ES256", "kid": world.signing_key.kid, "typ": "JWT"}
        token = sign_claims(world.signing_key, claims, b64url_encode(json.dumps(head).encode()))
    status, headers, _ = await world.call(
        "booking", "GET", "/internal/bookings/42", headers={"Txn-Token": token}
    )
    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert world.service_c.hits == []
    status, _, body = await world.token("booking", subject_token=token)
    assert (status, body["error"]) == (400, "invalid_grant")


# --------------------------------------------------------------------------- 3. POST /token


async def test_token_service_issues_a_narrower_replacement(world: World) -> None:
    jwks = await world.jwks()
    t1, _ = await ingress(world, "POST", "/flights/42/trips")
    _, first = verify_jose(t1, jwks)
    assert scopes(first) == {"flights.read", "flights.book"}

    status, headers, body = await world.token("booking", subject_token=t1, scope="flights.read")
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")
    assert body["token_type"] == "N_A"
    assert body["issued_token_type"] == TT_TXN
    assert "refresh_token" not in body
    assert body["scope"] == "flights.read"
    assert 0 < body["expires_in"] <= TTL_S
    header, replaced = verify_jose(body["access_token"], jwks)
    assert header["typ"] == "txntoken+jwt"
    assert header["kid"] == world.signing_key.kid
    for name in ("txn", "sub", "aud", "iss", "tctx", "act"):
        assert replaced[name] == first[name], name
    assert scopes(replaced) == {"flights.read"}
    assert replaced["exp"] <= first["exp"]
    assert replaced["req_wl"] == BOOKING  # the requester of this token
    assert replaced["rctx"]["req_wl_chain"] == [GATEWAY_ID]  # and who asked before

    # A replacement of the replacement records the whole chain, oldest first.
    status, _, body2 = await world.token("booking", subject_token=body["access_token"])
    assert status == 200, body2
    _, again = verify_jose(body2["access_token"], jwks)
    assert again["rctx"]["req_wl_chain"] == [GATEWAY_ID, BOOKING]
    assert (again["txn"], again["sub"], scopes(again)) == (first["txn"], "alice", {"flights.read"})

    # The replacement works on the next hop like the original: same transaction at C.
    status, _, _ = await world.call(
        "booking", "GET", "/internal/bookings/42", headers={"Txn-Token": body["access_token"]}
    )
    assert status == 200
    _, at_c = verify_jose(only_txn_token(world.service_c.hits[-1].all("Txn-Token")), jwks)
    assert (at_c["txn"], at_c["sub"], scopes(at_c)) == (first["txn"], "alice", {"flights.read"})

    # The PDP was asked, with action token.exchange, about this very exchange.
    entries = await world.decisions(lambda e: e["input"].get("action") == "token.exchange", count=2)
    entry = entries[0]
    assert entry["result"] == "allow"
    assert entry["reason"] == "token_exchange"
    assert entry["route"] == "token-service"
    assert entry["subject"] == "alice"
    assert entry["input"]["exchange"] == {
        "kind": "replacement",
        "client": BOOKING,
        "requested_scopes": ["flights.read"],
        "current_scopes": ["flights.book", "flights.read"],
        "txn": first["txn"],
    }
    assert entry["input"]["source"]["peer"]["spiffe_id"] == BOOKING


async def test_next_hop_keeps_the_requester_chain_of_a_replacement(world: World) -> None:
    """SPECS.md §1.8: a token issued from a presented Txn-Token MUST preserve the chain of
    requesting workloads. After B replaced the token (req_wl B, req_wl_chain [gateway]), the
    token the gateway mints for C from it must still record that B asked (today the
    continuation rebuilds rctx from req_ip/authn only and drops req_wl_chain, so C's token
    says req_wl = gateway with no history)."""
    jwks = await world.jwks()
    t1, _ = await ingress(world, "POST", "/flights/42/trips")
    status, _, body = await world.token("booking", subject_token=t1, scope="flights.read")
    assert status == 200, body
    status, _, _ = await world.call(
        "booking", "GET", "/internal/bookings/42", headers={"Txn-Token": body["access_token"]}
    )
    assert status == 200
    _, at_c = verify_jose(only_txn_token(world.service_c.hits[-1].all("Txn-Token")), jwks)
    assert at_c["rctx"].get("req_wl_chain") == [GATEWAY_ID, BOOKING]


async def test_token_service_decision_log_joins_the_response(world: World) -> None:
    """DESIGN.md §7: ``request.id`` equals the ``X-Request-Id`` of the response -- for the
    Token Service's decision too, so its audit and decision records can be joined."""
    t1, _ = await ingress(world)
    status, headers, _ = await world.token("booking", subject_token=t1)
    assert status == 200
    (entry,) = await world.decisions(lambda e: e["input"].get("action") == "token.exchange")
    assert entry["request_id"] == headers["X-Request-Id"]


async def test_token_service_refuses_workloads_not_allowlisted(world: World) -> None:
    t1, _ = await ingress(world)
    for who in ("travel", "billing"):
        status, headers, body = await world.token(who, subject_token=t1)
        assert status == 401, who
        assert body["error"] == "invalid_client"
        assert headers["Cache-Control"] == "no-store"
        assert headers["WWW-Authenticate"] == 'Bearer realm="agentgate"'
        assert "access_token" not in body
    # refused before the PDP: no token.exchange decision at all
    await asyncio.sleep(0.2)
    lines = world.decision_log.read_text().splitlines() if world.decision_log.exists() else []
    assert not [x for x in lines if '"token.exchange"' in x]


async def test_token_service_policy_deny_is_unauthorized_client(world: World) -> None:
    t1, _ = await ingress(world)
    status, headers, body = await world.token("partner", subject_token=t1)
    assert status == 400
    assert body["error"] == "unauthorized_client"
    assert headers["Cache-Control"] == "no-store"
    assert "access_token" not in body
    (entry,) = await world.decisions(lambda e: e["input"].get("action") == "token.exchange")
    assert entry["result"] == "deny"
    assert entry["reason"] == "exchange:client_not_allowed"
    assert entry["input"]["exchange"]["client"] == PARTNER


# --------------------------------------------------------------------------- 4. coverage


async def test_every_identified_request_carries_a_txn_token(world: World) -> None:
    jwks = await world.jwks()
    # user + agent (mtls + bearer), default credential: the Txn-Token is the credential
    await ingress(world)
    # agent on its own (mtls only), backend speaks API keys: Txn-Token still goes along
    status, _, body = await world.call("travel", "GET", "/m2m/flights/7")
    assert status == 200, body
    hit = world.flights.hits[-1]
    assert hit.all("X-Backend-Key") == ["backend-secret-0123456789"]
    _, claims = verify_jose(only_txn_token(hit.all("Txn-Token")), jwks)
    assert claims["sub"] == TRAVEL
    assert claims["tctx"]["mode"] == "self"
    assert claims["tctx"]["subject_type"] == "agent"
    assert "act" not in claims
    assert scopes(claims) == {"flights.read"}  # what the policy granted the agent
    assert claims["rctx"]["authn"] == ["swk"]
    # the route says otherwise: no Txn-Token, only the backend credential
    status, _, body = await world.call(
        "travel", "GET", "/m2m/legacy/7", headers={"Txn-Token": "eyJhbGciOiJub25lIn0.e30."}
    )
    assert status == 200, body
    hit = world.flights.hits[-1]
    assert hit.all("Txn-Token") == []
    assert hit.all("X-Backend-Key") == ["backend-secret-0123456789"]
    # a request the policy denies reaches nobody, and nothing is minted for it
    before = len(world.flights.hits)
    status, _, _ = await world.call("billing", "GET", "/m2m/flights/7")
    assert status == 403
    assert len(world.flights.hits) == before


async def test_public_route_with_explicit_no_credential(world: World) -> None:
    """``tags: [public]``, no ``authn``: nothing is authenticated, so nothing is minted; the
    policy allows it as public; a client-sent Txn-Token is stripped."""
    t1, _ = await ingress(world)
    status, _, body = await world.call(
        "travel",
        "GET",
        "/public/none/status",
        headers={"Txn-Token": t1, "Authorization": f"Bearer {world.idp.access_token()}"},
    )
    assert status == 200, body
    hit = world.flights.hits[-1]
    assert hit.path == "/public/none/status"
    assert hit.all("Txn-Token") == []
    assert hit.all("Authorization") == []
    (entry,) = await world.decisions(lambda e: e["route"] == "public-none")
    assert (entry["result"], entry["reason"], entry["subject"]) == ("allow", "public", None)


async def test_public_route_with_default_credential(world: World) -> None:
    """The same public route without a ``credential`` key. With ``txn_tokens`` configured the
    default credential is ``txn_token`` (gateway/credentials/manager.py), but an anonymous
    request never has one (Pipeline.mint), so every request to a public route would fail
    503 ``txn_token_missing``. A route without ``authn`` cannot have promised a Txn-Token:
    it must forward without one."""
    status, _, body = await world.call("travel", "GET", "/public/status")
    assert status == 200, body
    assert world.flights.hits[-1].all("Txn-Token") == []


async def test_forged_txn_token_headers_never_reach_any_upstream(world: World) -> None:
    """Belt and braces over every route kind: whatever Txn-Token a client sends, an upstream
    sees at most the one the gateway minted for this request."""
    marker = "eyJ0eXAiOiJ0eG50b2tlbitqd3QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0."
    auth = {"Authorization": f"Bearer {world.idp.access_token()}"}
    for path, extra in (
        ("/flights/1", auth),
        ("/m2m/x", {}),
        ("/m2m/legacy/x", {}),
        ("/public/none/x", {}),
    ):
        headers = [("Txn-Token", marker), ("txn-token", marker), *extra.items()]
        status, _, body = await world.call("travel", "GET", path, headers=headers)
        assert status == 200, (path, body)
        values = world.flights.hits[-1].all("Txn-Token")
        assert marker not in values, path
        assert len(values) <= 1, path
