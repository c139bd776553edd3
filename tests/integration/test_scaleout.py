"""Two gateway nodes on one Redis share replay, rate-limit and revocation state.

Each node is a full Gateway with its own process-local state; only Redis joins
them, exactly as two workers or two machines behind a load balancer. Requests
are sent to a chosen node so the "two uses hit different nodes" cases are
deterministic (SO_REUSEPORT would pick the worker by connection hash).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app import Gateway
from gateway.jose.jwk import jwk_thumbprint
from gateway.settings import parse_settings
from tests.redis_server import RedisServer
from tests.support import Upstream

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.org"
AUDIENCE = "https://gateway.example.org"
HOST = "gateway.example.org"  # both nodes are addressed by this name (DPoP htu)
ADMIN = "scaleout-admin-token-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Keys:
    def __init__(self) -> None:
        self.issuer = ec.generate_private_key(ec.SECP256R1())
        self.holder = ec.generate_private_key(ec.SECP256R1())
        pub = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.issuer.public_key()))
        self.jwks = {"keys": [{**pub, "kid": "k1", "alg": "ES256", "use": "sig"}]}
        self.holder_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.holder.public_key()))

    def access_token(self, sub: str = "alice") -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": sub,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            "client_id": "travel-agent",
            "scope": "flights.read",
            "cnf": {"jkt": jwk_thumbprint(self.holder_jwk)},
        }
        return jwt.encode(
            claims, self.issuer, algorithm="ES256", headers={"kid": "k1", "typ": "at+jwt"}
        )

    def proof(self, token: str, path: str) -> str:
        claims = {
            "jti": str(uuid.uuid4()),
            "htm": "GET",
            "htu": f"http://{HOST}{path}",
            "iat": int(time.time()),
            "ath": _b64(hashlib.sha256(token.encode()).digest()),
        }
        headers = {"typ": "dpop+jwt", "jwk": self.holder_jwk}
        return jwt.encode(claims, self.holder, algorithm="ES256", headers=headers)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def nodes(
    tmp_path: Path,
    redis_server: RedisServer,
    upstream: Upstream,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[list[Gateway]]:
    monkeypatch.setenv("SCALEOUT_REDIS_URL", redis_server.url)
    monkeypatch.setenv("SCALEOUT_ADMIN", ADMIN)
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks))
    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "timeouts": {"drain_s": 1},
        },
        "issuers": [
            {"name": "corp", "issuer": ISSUER, "jwks_file": "jwks.json", "audience": AUDIENCE}
        ],
        "authn": {"bearer": {"issuers": ["corp"], "sender_constraint": "required"}},
        "state": {
            "backend": "redis",
            "redis_url": "env:SCALEOUT_REDIS_URL",
            "key_prefix": f"scaleout-{uuid.uuid4().hex[:8]}:",
        },
        "admin": {"token": "env:SCALEOUT_ADMIN"},
        "routes": [
            {
                "name": "api",
                "match": {"path_prefix": "/api/"},
                "authn": "bearer",
                "upstream": upstream.url,
                "rate_limits": [{"per": "subject", "rate": 0.01, "burst": 4}],
            },
            {
                "name": "free",
                "match": {"path_prefix": "/free/"},
                "authn": "bearer",
                "upstream": upstream.url,
            },
        ],
    }
    settings = parse_settings(config, tmp_path)
    started = [Gateway(settings), Gateway(settings)]
    for gw in started:
        await gw.start()
    yield started
    for gw in started:
        await gw.stop()


async def _get(node: Gateway, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    assert node.main_address is not None
    url = f"http://127.0.0.1:{node.main_address[1]}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Host": HOST, **headers}) as resp,
    ):
        await resp.read()
        return resp.status, dict(resp.headers)


def _dpop(keys: Keys, token: str, path: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": keys.proof(token, path)}


async def test_dpop_proof_replayed_on_another_node_is_refused(
    nodes: list[Gateway], keys: Keys
) -> None:
    token = keys.access_token()
    headers = _dpop(keys, token, "/api/a")
    status, _ = await _get(nodes[0], "/api/a", headers)
    assert status == 200
    status, resp = await _get(nodes[1], "/api/a", headers)  # the same proof, another node
    assert status == 401
    assert 'error="invalid_dpop_proof"' in resp["WWW-Authenticate"]


async def test_rate_limit_is_shared_by_both_nodes(nodes: list[Gateway], keys: Keys) -> None:
    token = keys.access_token(sub="bob")
    statuses = []
    for i in range(6):
        status, resp = await _get(nodes[i % 2], "/api/r", _dpop(keys, token, "/api/r"))
        statuses.append(status)
    assert statuses[:4] == [200, 200, 200, 200]  # burst 4, spent across both nodes
    assert statuses[4:] == [429, 429]
    assert "Retry-After" in resp
    assert resp["RateLimit-Policy"].startswith('"burst";q=4')


async def test_revocation_on_one_node_is_effective_on_the_other_within_1s(
    nodes: list[Gateway], keys: Keys
) -> None:
    token = keys.access_token(sub="carol")
    assert (await _get(nodes[1], "/free/v", _dpop(keys, token, "/free/v")))[0] == 200
    assert nodes[0].admin_address is not None
    admin = f"http://127.0.0.1:{nodes[0].admin_address[1]}/admin/revocations"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            admin,
            json={"kind": "subject", "value": "carol", "ttl_s": 60},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as resp,
    ):
        assert resp.status in (200, 201)
    revoked_at = time.monotonic()
    while True:
        status, _ = await _get(nodes[1], "/free/v", _dpop(keys, token, "/free/v"))
        if status == 401:
            break
        assert status == 200
        assert time.monotonic() - revoked_at < 1.0, "revocation took more than 1 s"
        await asyncio.sleep(0.05)


async def test_redis_down_fails_closed_then_recovers(
    nodes: list[Gateway], keys: Keys, redis_server: RedisServer
) -> None:
    token = keys.access_token(sub="dave")
    redis_server.stop()
    status, _ = await _get(nodes[0], "/free/d", _dpop(keys, token, "/free/d"))
    assert status == 503  # the replay check cannot be made: never let the proof through
    redis_server.restart()
    deadline = time.monotonic() + 10
    while True:
        status, _ = await _get(nodes[0], "/free/d", _dpop(keys, token, "/free/d"))
        if status == 200:
            break
        assert status == 503
        assert time.monotonic() < deadline, "did not recover after Redis came back"
        await asyncio.sleep(0.2)
