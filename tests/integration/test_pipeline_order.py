"""THE ORDER, checked from the outside of each stage: which stages ran, in which order.

A real in-process gateway (api_key authn, the embedded PDP with a real Rego policy, Txn-Token
minting, an echo upstream). Each stage object is wrapped by a recorder that calls the real
stage and notes its name, so the test sees the order the pipeline actually used and which
stages never ran. The security argument: no PDP call for a request whose authentication
failed or that a rate limit refused; a Txn-Token is minted only after an allow; nothing
reaches the upstream before all of that.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.tokens.keys import write_private_key
from tests.integration.conftest import GatewayFactory, base_url
from tests.support import Upstream

API_KEY = "ak_" + secrets.token_urlsafe(32)
POLICY = """package agentgate.authz

default decision := {"allow": false, "reason": "not on the list"}

decision := {"allow": true} if input.request.path == "/ok"
"""


def record(trail: list[str], name: str, call: Callable[..., Awaitable[Any]]) -> Any:
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        trail.append(name)
        return await call(*args, **kwargs)

    return recorded


def spy(gw: Gateway) -> list[str]:
    """Record every stage the pipeline calls; each recorder calls the real stage."""
    trail: list[str] = []
    p = gw.pipeline
    assert p.authenticator is not None
    assert p.pdp is not None
    assert p.minter is not None
    p.limiter.before_authn = record(trail, "limits", p.limiter.before_authn)
    p.authenticator.authenticate = record(trail, "authenticate", p.authenticator.authenticate)
    p.limiter.after_authn = record(trail, "screen_limits", p.limiter.after_authn)
    p.pdp.decide = record(trail, "decide", p.pdp.decide)
    p.limiter.obligations = record(trail, "obligations", p.limiter.obligations)
    p.minter.mint = record(trail, "mint", p.minter.mint)
    p.forwarder.forward = record(trail, "forward", p.forwarder.forward)
    return trail


@pytest.fixture
async def stack(
    tmp_path: Path, gateway: GatewayFactory, upstream: Upstream
) -> tuple[Gateway, list[str]]:
    keys = {"keys": [{"id": "k1", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                      "subject": "agent-1"}]}  # fmt: skip
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump(keys))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "order.rego").write_text(POLICY)
    write_private_key(tmp_path / "txn.pem", "ES256")
    # The factory only takes routes and server; the other sections go through its config.
    gw = await gateway(
        routes=[
            {
                "name": "agents",
                "upstream": upstream.url,
                "authn": "key",
                "rate_limits": [{"per": "client", "rate": 0.001, "burst": 4}],
            }
        ],
        extra={
            "authn": {"key": {"type": "api_key", "keys_file": str(tmp_path / "keys.yaml")}},
            "pdp": {"engine": "embedded", "policies": str(tmp_path / "policies")},
            "txn_tokens": {"signing_key": str(tmp_path / "txn.pem")},
        },
    )
    return gw, spy(gw)


async def call(gw: Gateway, path: str, key: str | None) -> int:
    headers = {"X-API-Key": key} if key is not None else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(base_url(gw) + path, headers=headers, allow_redirects=False) as r,
    ):
        return r.status


FULL = ["limits", "authenticate", "screen_limits", "decide", "obligations", "mint", "forward"]


@pytest.mark.parametrize(
    ("path", "key", "status", "stages"),
    [
        pytest.param("/ok", API_KEY, 200, FULL, id="allow-runs-every-stage-in-order"),
        pytest.param("/no", API_KEY, 403, FULL[:4], id="deny-mints-nothing-forwards-nothing"),
        pytest.param("/ok", None, 401, FULL[:2], id="no-credential-no-pdp-call"),
        pytest.param("/ok", "ak_wrong", 401, FULL[:2], id="bad-credential-no-pdp-call"),
    ],
)
async def test_the_order(
    stack: tuple[Gateway, list[str]],
    upstream: Upstream,
    path: str,
    key: str | None,
    status: int,
    stages: list[str],
) -> None:
    gw, trail = stack
    assert await call(gw, path, key) == status
    assert trail == stages
    assert len(upstream.hits) == (1 if status == 200 else 0)


async def test_a_rate_limited_request_reaches_no_stage_after_limits(
    stack: tuple[Gateway, list[str]], upstream: Upstream
) -> None:
    gw, trail = stack
    for _ in range(4):  # the burst
        assert await call(gw, "/ok", API_KEY) == 200
    trail.clear()
    assert await call(gw, "/ok", API_KEY) == 429
    assert trail == ["limits"]  # no argon2/JWKS work, no PDP call, no mint
    assert len(upstream.hits) == 4
