"""gateway.authn.jwks: one issuer's keys (jwks_uri through gateway.jose.jwks.JWKSCache,
jwks_file, dev_signing_key) and their caching rules, against a real local JWKS server.

Key-set parsing itself (RFC 7517, RFC 8725 §3.1) is tested in tests/unit/jose/test_jwks.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.authn.jwks import JWKSClient, JWKSUnavailable, UnknownKeyError
from gateway.errors import ConfigError

from . import Clock, CountingServer, closed_port, keys, make_issuer, write_jwks

K = keys()

# --------------------------------------------------------------------- client with a real server


@dataclass
class JWKSServer:
    """A scriptable JWKS endpoint: the document, headers, status and latency are settable."""

    document: Any = field(default_factory=lambda: {"keys": [K["es"].jwk()]})
    cache_control: str | None = "max-age=600"
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None
    hits: int = 0

    async def handle(self, req: web.Request) -> web.StreamResponse:
        if req.path == "/redirect":
            raise web.HTTPFound("/jwks")
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        body = self.raw if self.raw is not None else json.dumps(self.document).encode()
        return web.Response(
            status=self.status, body=body, headers=headers, content_type="application/json"
        )


ClientFactory = Callable[..., Awaitable[JWKSClient]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[JWKSServer, CountingServer]]:
    script = JWKSServer()
    http = await CountingServer(script.handle).start()
    yield script, http
    await http.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
async def make_client(
    server: tuple[JWKSServer, CountingServer], clock: Clock
) -> AsyncIterator[ClientFactory]:
    created: list[JWKSClient] = []

    async def factory(path: str = "/jwks", **cache: Any) -> JWKSClient:
        settings = {"min_refresh_s": 30, "default_ttl_s": 300, "max_stale_s": 3600} | cache
        issuer = make_issuer(jwks_uri=server[1].url(path), jwks_cache=settings)
        client = JWKSClient(issuer, clock=clock)
        created.append(client)
        await client.start()
        return client

    yield factory
    for client in created:
        await client.close()


async def test_start_fetches_once(make_client: ClientFactory, server: Any) -> None:
    client = await make_client()
    assert client.ready()
    assert client.refreshes == 1
    assert server[0].hits == 1
    key = await client.get_key("es-1", "ES256")
    assert key.kid == "es-1"
    assert server[0].hits == 1


async def test_cache_control_max_age_is_honoured(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    script = server[0]
    client = await make_client()  # max-age=600
    clock.advance(599)
    await client.get_key("es-1", "ES256")
    assert script.hits == 1
    clock.advance(2)  # TTL over: the next request starts a background refresh
    await client.get_key("es-1", "ES256")
    await asyncio.sleep(0.05)
    assert script.hits == 2
    assert client.refreshes == 2


async def test_no_store_means_min_refresh(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    server[0].cache_control = "no-store"
    client = await make_client()
    clock.advance(31)
    await client.get_key("es-1", "ES256")
    await asyncio.sleep(0.05)
    assert server[0].hits == 2


async def test_expired_ttl_never_stalls_requests(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client()
    server[0].delay = 0.5  # a slow endpoint
    clock.advance(601)
    key = await client.get_key("es-1", "ES256")  # served from the cached set ...
    assert key.kid == "es-1"
    assert client.refreshes == 1  # ... without waiting for the refresh it started
    await asyncio.sleep(0.8)
    assert server[0].hits == 2
    assert client.refreshes == 2


async def test_unknown_kid_refetches_at_most_once_per_interval(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client()
    with pytest.raises(UnknownKeyError):
        await client.get_key("nope", "ES256")
    assert server[0].hits == 1  # the set fetched at start is younger than min_refresh_s
    clock.advance(30)
    for _ in range(3):
        with pytest.raises(UnknownKeyError):
            await client.get_key("nope", "ES256")
    assert server[0].hits == 2  # start + one refetch
    clock.advance(30)
    with pytest.raises(UnknownKeyError):
        await client.get_key("nope", "ES256")
    assert server[0].hits == 3


async def test_unknown_kid_single_flight(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client()
    clock.advance(30)
    server[0].delay = 0.2
    results = await asyncio.gather(
        *(client.get_key("nope", "ES256") for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKeyError) for r in results)
    assert server[0].hits == 2  # start + ONE fetch shared by all 50 callers


async def test_rotation_new_kid_is_picked_up(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client()
    clock.advance(30)
    server[0].document = {"keys": [K["es"].jwk(), K["ed"].jwk()]}
    results = await asyncio.gather(*(client.get_key("ed-1", "EdDSA") for _ in range(10)))
    assert {r.kid for r in results} == {"ed-1"}
    assert server[0].hits == 2


async def test_rotation_old_kid_disappears(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client()
    server[0].document = {"keys": [K["ed"].jwk()]}
    clock.advance(601)
    await client.get_key("es-1", "ES256")  # stale set served, refresh starts
    await asyncio.sleep(0.05)
    with pytest.raises(UnknownKeyError):
        await client.get_key("es-1", "ES256")


async def test_endpoint_down_serves_stale_then_fails_closed(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client(max_stale_s=100)
    server[0].status = 500
    clock.advance(650)  # past the 600 s TTL, within max_stale_s
    assert (await client.get_key("es-1", "ES256")).kid == "es-1"
    await asyncio.sleep(0.05)
    assert client.refresh_failures == 1
    assert client.ready()
    clock.advance(51)  # 701 s: stale beyond 600 + 100
    assert not client.ready()
    with pytest.raises(JWKSUnavailable) as info:
        await client.get_key("es-1", "ES256")
    assert info.value.status == 503
    assert info.value.reason == "jwks_unavailable"
    server[0].status = 200  # the endpoint comes back: the next attempt recovers
    clock.advance(30)
    assert (await client.get_key("es-1", "ES256")).kid == "es-1"


async def test_never_fetched_is_503(clock: Clock) -> None:
    issuer = make_issuer(jwks_uri=f"http://127.0.0.1:{closed_port()}/jwks")
    client = JWKSClient(issuer, clock=clock)
    await client.start()
    try:
        assert not client.ready()
        with pytest.raises(JWKSUnavailable):
            await client.get_key("es-1", "ES256")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("setup", "path"),
    [
        pytest.param({"status": 404}, "/jwks", id="http-404"),
        pytest.param({"raw": b"<html>"}, "/jwks", id="not-json"),
        pytest.param({"document": [K["es"].jwk()]}, "/jwks", id="json-array"),
        pytest.param({"document": {"kids": []}}, "/jwks", id="no-keys-member"),
        pytest.param({"raw": b'{"keys": [], "keys": []}'}, "/jwks", id="duplicate-members"),
        pytest.param({"raw": b'{"keys": [' + b" " * (1 << 20) + b"]}"}, "/jwks", id="over-1MiB"),
        pytest.param({}, "/redirect", id="redirect-not-followed"),
        pytest.param({"delay": 1.0}, "/jwks", id="timeout"),
    ],
)
async def test_unusable_responses(
    make_client: ClientFactory, server: Any, setup: dict[str, Any], path: str
) -> None:
    for name, value in setup.items():
        setattr(server[0], name, value)
    client = await make_client(path, fetch_timeout_s=0.3)
    assert not client.ready()
    assert client.refresh_failures == 1
    assert client.refreshes == 0
    with pytest.raises(JWKSUnavailable):
        await client.get_key("es-1", "ES256")
    if path == "/redirect":
        assert server[0].hits == 0


async def test_cancelled_caller_does_not_cancel_shared_fetch(
    make_client: ClientFactory, server: Any, clock: Clock
) -> None:
    client = await make_client()
    clock.advance(30)
    server[0].delay = 0.2
    server[0].document = {"keys": [K["es"].jwk(), K["ed"].jwk()]}
    first = asyncio.create_task(client.get_key("ed-1", "EdDSA"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await client.get_key("ed-1", "EdDSA")).kid == "ed-1"
    assert server[0].hits == 2


# --------------------------------------------------------------------------- jwks_file


async def test_jwks_file(tmp_path: Path) -> None:
    issuer = make_issuer(jwks_file=str(write_jwks(tmp_path / "k.json", K["es"])))
    client = JWKSClient(issuer)
    await client.start()
    assert client.ready()
    assert client.refreshes == 1
    assert (await client.get_key("es-1", "ES256")).kid == "es-1"
    with pytest.raises(UnknownKeyError):
        await client.get_key("other", "ES256")
    await client.close()


@pytest.mark.parametrize(
    "content", [b"not json", b"[]", b'{"keys": 1}', b'{"keys": [], "keys": []}'],
    ids=["garbage", "array", "keys-not-array", "duplicate"],
)  # fmt: skip
async def test_bad_jwks_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    client = JWKSClient(make_issuer(jwks_file=str(path)))
    with pytest.raises(ConfigError) as info:
        await client.start()
    assert info.value.lines()[0].startswith("issuers.corp.jwks_file: ")
