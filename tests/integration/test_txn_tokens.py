"""Transaction Tokens against live endpoints.

* An independent JOSE library (joserfc) verifies our tokens with keys it fetched over HTTP
  from our own JWKS handler on 127.0.0.1.
* Key rotation end to end: a verifier that follows the live JWKS accepts old-key tokens
  while the old key is published, new-key tokens after the reload, and refuses the old key
  once it is withdrawn.
* A hypothesis property test drives random replacement sequences through the real Token
  Service on the gateway's mTLS listener: no sequence widens scope or changes txn/sub/aud,
  and every widening attempt is refused with invalid_scope.
* ``agentgate token verify --jwks URL`` in a subprocess.

The two-hop test through the whole gateway is added once the pipeline mints tokens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import warnings
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, SecurityWarning
from joserfc.jwk import KeySet

from gateway.context import Decision, Identity
from gateway.sdk.txn import RemoteJWKS, TxnTokenError, TxnTokenVerifier
from gateway.tokens.keys import JWKS_PATH, KeyRing, make_jwks_handler, write_private_key
from gateway.tokens.service import ExchangeRequest, make_token_handler
from gateway.tokens.txn_token import TxnTokenMinter
from tests.support import ROOT, TestPKI
from tests.unit.tokens.support import (
    GATEWAY_ID,
    ISSUER,
    PLANNER,
    TD,
    MTLSServer,
    client_ssl,
    exchange_form,
    facts,
    identity,
    principal,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _minter(ring: KeyRing) -> TxnTokenMinter:
    return TxnTokenMinter(ring, issuer=ISSUER, audience=TD, ttl_s=60, gateway_spiffe_id=GATEWAY_ID)


def _mint(minter: TxnTokenMinter, scopes: tuple[str, ...] = ("flights.read",)) -> str:
    return minter.mint(
        identity=identity(principal(scopes=scopes), caller="agent", mode="obo_user"),
        facts=facts(),
        route_name="flights",
        scopes=scopes,
    )


class JWKSEndpoint:
    """Our JWKS handler on a real loopback socket."""

    def __init__(self, ring: KeyRing) -> None:
        app = web.Application()
        app.router.add_get(JWKS_PATH, make_jwks_handler(ring, max_age_s=300))
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{JWKS_PATH}"
        return self.url

    async def close(self) -> None:
        await self._runner.cleanup()


async def _fetch_jwks(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=300"
        document: dict[str, Any] = json.loads(await resp.read())
        return document


def _jose_verify(token: str, jwks: dict[str, Any], alg: str) -> Any:
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (which names it "Ed25519").
        warnings.simplefilter("ignore", SecurityWarning)
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        decoded = jose_jwt.decode(token, keys, algorithms=[alg])
    registry = jose_jwt.JWTClaimsRegistry(
        now=int(time.time()),
        leeway=5,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": TD},
        sub={"essential": True},
        txn={"essential": True},
        scope={"essential": True},
        req_wl={"essential": True},
    )
    registry.validate(decoded.claims)
    return decoded


# --------------------------------------------------------------------------- joserfc


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
async def test_joserfc_verifies_against_the_live_jwks(tmp_path: Path, alg: str) -> None:
    other = "EdDSA" if alg == "ES256" else "ES256"
    write_private_key(tmp_path / "active.pem", alg)  # type: ignore[arg-type]
    write_private_key(tmp_path / "other.pem", other)  # type: ignore[arg-type]
    ring = KeyRing([tmp_path / "active.pem", tmp_path / "other.pem"])
    endpoint = JWKSEndpoint(ring)
    url = await endpoint.start()
    try:
        jwks = await _fetch_jwks(url)
    finally:
        await endpoint.close()
    token = _mint(_minter(ring), ("flights.read", "flights.book"))
    decoded = _jose_verify(token, jwks, alg)
    assert decoded.header == {"alg": alg, "kid": ring.active.kid, "typ": "txntoken+jwt"}
    claims = decoded.claims
    assert claims["aud"] == TD
    assert claims["sub"] == "alice"
    assert claims["scope"] == "flights.read flights.book"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["tctx"]["route"] == "flights"
    # Tampering is caught by the independent library too.
    head, _body, sig = token.split(".")
    forged = json.dumps({**claims, "scope": "admin"}).encode()
    import base64

    evil = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        with pytest.raises(BadSignatureError):
            jose_jwt.decode(f"{head}.{evil}.{sig}", keys, algorithms=[alg])


# --------------------------------------------------------------------------- rotation


async def test_rotation_end_to_end(tmp_path: Path) -> None:
    active, previous = tmp_path / "active.pem", tmp_path / "previous.pem"
    k1 = write_private_key(active, "ES256")
    write_private_key(previous, "ES256")
    ring = KeyRing([active, previous])
    minter = _minter(ring)
    endpoint = JWKSEndpoint(ring)
    url = await endpoint.start()
    remote = RemoteJWKS(url, min_refresh_s=0.0)
    try:
        async with TxnTokenVerifier(remote, audience=TD, issuer=ISSUER) as verifier:
            old_token = _mint(minter)
            assert (await verifier.verify(old_token))["sub"] == "alice"
            # Rotate: k1 moves to previous.pem (still published), k2 becomes active.
            previous.write_bytes(active.read_bytes())
            k2 = write_private_key(active, "ES256", overwrite=True)
            assert ring.reload()
            new_token = _mint(minter)
            assert (
                json.loads(__import__("base64").urlsafe_b64decode(new_token.split(".")[0] + "=="))[
                    "kid"
                ]
                == k2.kid
            )
            await verifier.verify(new_token)  # unknown kid -> one refetch
            await verifier.verify(old_token)  # the old key is still published
            jwks = await _fetch_jwks(url)
            assert {k["kid"] for k in jwks["keys"]} == {k1.kid, k2.kid}
            _jose_verify(old_token, jwks, "ES256")
            _jose_verify(new_token, jwks, "ES256")
            # Withdraw k1: once the verifier has refreshed, its tokens are refused.
            write_private_key(previous, "ES256", overwrite=True)
            assert ring.reload()
            await remote.refresh()
            with pytest.raises(TxnTokenError) as info:
                await verifier.verify(old_token)
            assert info.value.code == "unknown_kid"
            await verifier.verify(new_token)
    finally:
        await endpoint.close()


# --------------------------------------------------------------------------- CLI


async def test_cli_verify_against_the_live_jwks(tmp_path: Path) -> None:
    write_private_key(tmp_path / "k.pem", "ES256")
    ring = KeyRing([tmp_path / "k.pem"])
    token = _mint(_minter(ring))
    endpoint = JWKSEndpoint(ring)
    url = await endpoint.start()
    script = (
        "import argparse, sys\n"
        "from gateway.tokens.cli import add_subcommands, dispatch\n"
        "p = argparse.ArgumentParser(prog='agentgate')\n"
        "add_subcommands(p.add_subparsers(dest='command', required=True))\n"
        "sys.exit(dispatch(p.parse_args(sys.argv[1:])))\n"
    )

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(token.encode()), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    try:
        rc, out, err = await cli(
            "token", "verify", "-", "--jwks", url, "--audience", TD, "--issuer", ISSUER
        )
        assert rc == 0, err
        assert out.startswith("VERIFIED")
        assert '"sub": "alice"' in out
        rc, _, err = await cli("token", "verify", "-", "--jwks", url, "--audience", "other.org")
        assert rc == 1
        assert "wrong_audience" in err
    finally:
        await endpoint.close()


# --------------------------------------------------------------------------- property (TTS)


class LoopThread:
    """An event loop in a background thread, for driving async servers from hypothesis."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class LiveTTS:
    loop: LoopThread
    url: str
    session: aiohttp.ClientSession
    minter: TxnTokenMinter
    verifier: TxnTokenVerifier

    def exchange(self, body: str) -> tuple[int, dict[str, Any]]:
        async def go() -> tuple[int, dict[str, Any]]:
            async with self.session.post(
                self.url + "/token",
                data=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as resp:
                assert resp.headers["Cache-Control"] == "no-store"
                return resp.status, json.loads(await resp.read())

        return self.loop.run(go())

    def verify(self, token: str) -> dict[str, Any]:
        return self.loop.run(self.verifier.verify(token))


async def _allow(request: web.BaseRequest, ask: ExchangeRequest) -> Decision:
    return Decision(allow=True, decision_id="d")


async def _no_access_tokens(token: str, request: web.BaseRequest) -> Identity:
    raise AssertionError("not used here")


@pytest.fixture(scope="module")
def live_tts(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTTS]:
    key = tmp_path_factory.mktemp("tts") / "k.pem"
    write_private_key(key, "ES256")
    ring = KeyRing([key])
    minter = _minter(ring)
    verifier = TxnTokenVerifier(ring, audience=TD, issuer=ISSUER)
    handler = make_token_handler(
        minter=minter,
        verifier=verifier,
        keys=ring,
        authorize=_allow,
        clients=(PLANNER,),
        access_token_validator=_no_access_tokens,
    )
    loop = LoopThread()

    async def start() -> tuple[MTLSServer, aiohttp.ClientSession]:
        server = MTLSServer(pki, handler)
        await server.start()
        connector = aiohttp.TCPConnector(ssl=client_ssl(pki, "planner"))
        return server, aiohttp.ClientSession(connector=connector)

    server, session = loop.run(start())
    try:
        yield LiveTTS(loop, server.url, session, minter, verifier)
    finally:

        async def stop() -> None:
            await session.close()
            await server.close()

        loop.run(stop())
        loop.close()


_LETTERS = "abcdef"
_KEYS = st.sampled_from(["txn", "sub", "aud", "iss", "scope", "route", "x", "y", "a2a"])
_VALUES = st.one_of(st.text(max_size=6), st.integers(), st.just("mallory"))
_STEP = st.fixed_dictionaries(
    {
        "scope": st.one_of(
            st.none(), st.lists(st.sampled_from(_LETTERS + "z"), min_size=1, max_size=4)
        ),
        "details": st.dictionaries(_KEYS, _VALUES, max_size=3),
        "context": st.dictionaries(_KEYS, _VALUES, max_size=2),
        "audience": st.sampled_from([None, TD, "evil.example"]),
    }
)
_RESERVED = {"txn", "sub", "aud", "iss", "scope"}


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    initial=st.sets(st.sampled_from(_LETTERS), min_size=1, max_size=6),
    steps=st.lists(_STEP, min_size=1, max_size=5),
)
def test_replacements_never_widen_or_change_identity(
    live_tts: LiveTTS, initial: set[str], steps: list[dict[str, Any]]
) -> None:
    token = _mint(live_tts.minter, tuple(sorted(initial)))
    original = live_tts.verify(token)
    current = original
    for step in steps:
        params: dict[str, str] = {}
        if step["scope"] is not None:
            params["scope"] = " ".join(step["scope"])
        if step["details"]:
            params["request_details"] = json.dumps(step["details"])
        if step["context"]:
            params["request_context"] = json.dumps(step["context"])
        if step["audience"] is not None:
            params["audience"] = step["audience"]
        status, body = live_tts.exchange(exchange_form(token, **params))
        held = set(current["scope"].split())
        widening = step["scope"] is not None and not set(step["scope"]) <= held
        event(f"status {status} {body.get('error', 'ok')}")
        if step["audience"] == "evil.example":
            assert (status, body["error"]) == (400, "invalid_target")
            continue
        if widening:
            # SECURITY: every attempt to widen is refused, and with invalid_scope.
            assert (status, body["error"]) == (400, "invalid_scope")
            continue
        if status != 200:
            assert (status, body["error"]) == (400, "invalid_request")
            changes = any(
                k in _RESERVED or (k in current["tctx"] and current["tctx"][k] != v)
                for k, v in step["details"].items()
            ) or any(k in _RESERVED for k in step["context"])
            assert changes, body
            continue
        new = live_tts.verify(body["access_token"])
        for name in ("txn", "sub", "aud", "iss"):
            assert new[name] == original[name]
        assert set(new["scope"].split()) <= held
        assert body["scope"] == new["scope"]
        for key, value in current["tctx"].items():
            assert new["tctx"][key] == value
        assert new["exp"] <= current["exp"]
        assert new["rctx"]["req_wl_chain"][-1] == current["req_wl"]
        token, current = body["access_token"], new
