"""A refused token's log line says what was wanted and what came (issue 13 item 5).

Before the fix the log line of a refused bearer token said no more than the client was told
("wrong token type"), so an operator could not tell an IdP sending ``typ: JWT`` from a token
for another audience. Now the log line -- never the response -- names both sides
(``typ at+jwt wanted, got JWT``; ``aud wanted [...], got [...]``; the issuer; the algorithm;
``expired by N s``) and the token only by a SHA-256 prefix. Through the real listener, with
``caplog`` on ``agentgate.pipeline``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from gateway.app import Gateway
from gateway.settings import parse_settings
from tests.integration.conftest import base_url
from tests.support import Upstream

pytestmark = pytest.mark.integration

IDP = "https://idp.example.org"
AUDIENCE = "https://gateway.example.org"
ES = ECKey.generate_key("P-256", parameters={"kid": "es-1", "alg": "ES256"})
ES384 = ECKey.generate_key("P-384", parameters={"kid": "es384-1", "alg": "ES384"})


def token(*, typ: str | None = "at+jwt", alg: str = "ES256", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": IDP,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "client_id": "travel-agent",
    }
    body.update(claims)
    header: dict[str, Any] = {"alg": alg, "kid": "es-1" if alg == "ES256" else "es384-1"}
    if typ is not None:
        header["typ"] = typ
    # joserfc's jwt.encode would add typ "JWT" to a header without one: sign the JWS directly.
    payload = json.dumps(body).encode()
    return jws.serialize_compact(header, payload, ES if alg == "ES256" else ES384, algorithms=[alg])


@pytest.fixture
async def gw(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ES.as_dict(private=False), ES384.as_dict(private=False)]}))
    config = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "issuers": [
            {
                "name": "corp",
                "issuer": IDP,
                "jwks_file": str(jwks),
                "audience": AUDIENCE,
                "algorithms": ["ES256"],
                "leeway_s": 30,
            }
        ],
        "authn": {"bearer": {"issuers": ["corp"]}},
        "telemetry": {"audit_log": "off"},
        "routes": [{"name": "api", "authn": "bearer", "upstream": upstream.url}],
    }
    gateway_ = Gateway(parse_settings(config, tmp_path))
    await gateway_.start()
    try:
        yield gateway_
    finally:
        await gateway_.stop()


CASES: list[tuple[str, Callable[[], str], str, str]] = [
    # (id, token factory, public error_description, what the log line must say)
    ("typ", lambda: token(typ="JWT"), "wrong token type", "typ at+jwt wanted, got JWT"),
    ("typ-missing", lambda: token(typ=None), "wrong token type", "typ at+jwt wanted, got none"),
    (
        "audience",
        lambda: token(aud=["https://elsewhere.example", "account"]),
        "token audience mismatch",
        'aud wanted one of ["https://gateway.example.org"], '
        'got ["https://elsewhere.example", "account"]',
    ),
    (
        "issuer",
        lambda: token(iss="https://evil.example/\r\nforged: line"),
        "unknown token issuer",
        'iss https://evil.example/??forged: line wanted one of ["https://idp.example.org"]',
    ),
    (
        "alg",
        lambda: token(alg="ES384"),
        "algorithm not allowed",
        "alg ES384 not allowed, wanted one of ['ES256']",
    ),
    (
        "expired",
        lambda: token(exp=int(time.time()) - 100, iat=int(time.time()) - 400),
        "token expired",
        "expired by 10",  # 100 s (+ a second or so on a loaded machine)
    ),
]


@pytest.mark.parametrize(
    ("make", "public", "logged"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_log_names_wanted_and_got_response_does_not(
    gw: Gateway,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    make: Callable[[], str],
    public: str,
    logged: str,
) -> None:
    caplog.set_level(logging.INFO, logger="agentgate.pipeline")
    presented = make()
    async with (
        aiohttp.ClientSession() as s,
        s.get(base_url(gw) + "/x", headers={"Authorization": f"Bearer {presented}"}) as resp,
    ):
        body = await resp.text()
        challenge = resp.headers["WWW-Authenticate"]
        request_id = resp.headers["X-Request-Id"]
    assert resp.status == 401
    assert f'error_description="{public}"' in challenge
    [line] = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert logged in line, line
    # The token is named by a SHA-256 prefix only, never by itself or a piece of it.
    assert "sha256:" + hashlib.sha256(presented.encode()).hexdigest()[:12] in line
    assert presented not in caplog.text
    assert presented.split(".")[1][:40] not in caplog.text
    # The response says only the generic text.
    diagnostic_words = {"wanted", "got", "expired by", "sha256", "ES256", "elsewhere", "evil"}
    for word in diagnostic_words:
        assert word not in body
        assert word not in challenge
    assert upstream.hits == []
