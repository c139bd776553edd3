"""gateway.state.redis.link.RedisLink: the budget, the error mapping and the script objects.

Against a real ``redis-server`` (``tests/redis_server.py``) except where no server is the
point. The stores' behaviour on top (replay, buckets, revocations, outages, restarts) is
``tests/integration/test_redis_state.py``; here is what every store relies on: each call
answers or raises :class:`StateUnavailable` naming only the operation and the exception
type, within ``timeout_s``; Lua runs through redis-py ``register_script()`` objects, one
per source and client, rebuilt after ``close()``/``open()``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.settings import Secret
from gateway.state import StateUnavailable
from gateway.state.redis.link import RedisLink, digest
from tests.redis_server import RedisServer
from tests.support import closed_port

TIMEOUT_S = 0.25
INCR = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _link(url: str) -> RedisLink:
    return RedisLink(Secret("env:REDIS_URL", url.encode()), timeout_s=TIMEOUT_S)


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    made = _link(redis_server.url)
    made.open()
    yield made
    await made.close()


async def test_not_started_is_state_unavailable() -> None:
    with pytest.raises(StateUnavailable, match=r"^redis replay: not started$"):
        await _link("redis://127.0.0.1:1/0").script("replay", INCR, ["k"], [])


async def test_refused_is_state_unavailable_within_the_budget_naming_no_url() -> None:
    password = "hunter2-link"
    link = _link(f"redis://:{password}@127.0.0.1:{closed_port()}/0")
    link.open()
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as info:
            await link.script("ratelimit", INCR, ["k"], [])
        assert time.monotonic() - started < TIMEOUT_S + 0.5
    finally:
        await link.close()
    assert info.value.status == 503
    # SECURITY: the operation and the exception type only: no host, port or password.
    assert info.value.detail == "redis ratelimit: ConnectionError"
    assert password not in repr(link)


SCRIPT_ERRORS = [
    pytest.param("return redis.call('INCR', KEYS[1])", ["h"], id="wrong-type"),
    pytest.param("return redis.call('NOSUCHCOMMAND')", ["k"], id="unknown-command"),
    pytest.param("return error('x'", ["k"], id="lua-syntax-error"),
    pytest.param("return redis.error_reply('policy says no')", ["k"], id="error-reply"),
]


@pytest.mark.parametrize(("source", "keys"), SCRIPT_ERRORS)
async def test_a_failing_script_is_state_unavailable(
    link: RedisLink, redis_server: RedisServer, source: str, keys: list[str]
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    await raw.hset("h", "f", "v")  # a hash, so INCR on it is WRONGTYPE
    await raw.aclose()
    with pytest.raises(StateUnavailable, match=r"^redis behaviour: ResponseError$"):
        await link.script("behaviour", source, keys, [])


async def test_one_script_object_per_source_run_by_sha(
    link: RedisLink, redis_server: RedisServer
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    await raw.config_resetstat()
    results = [await link.script("op", INCR, ["n"], []) for _ in range(5)]
    stats: dict[str, Any] = await raw.info("commandstats")
    await raw.aclose()
    assert results == [1, 2, 3, 4, 5]
    # The first EVALSHA meets NOSCRIPT and loads the source once; then SHA only, never EVAL.
    assert stats["cmdstat_evalsha"]["calls"] == 6
    assert sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_script")) == 1
    assert "cmdstat_eval" not in stats


async def test_scripts_work_again_after_close_and_open(
    link: RedisLink, redis_server: RedisServer
) -> None:
    assert await link.script("op", INCR, ["n"], []) == 1
    await link.close()
    with pytest.raises(StateUnavailable, match="not started"):
        await link.script("op", INCR, ["n"], [])
    link.open()  # a new client: the script objects are rebuilt for it
    assert await link.script("op", INCR, ["n"], []) == 2


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("jwt:https://issuer.example:jti-1", id="ascii"),
        pytest.param("spiffe://example.org/agent/é", id="non-ascii"),
        pytest.param("dpop:\ud800", id="lone-surrogate"),
    ],
)
def test_digest_is_a_sha256_hex_of_any_string(key: str) -> None:
    hashed = digest(key)
    assert len(hashed) == 64
    assert set(hashed) <= set("0123456789abcdef")
    assert digest(key) == hashed
    assert key not in hashed


def test_the_memory_backend_never_imports_redis() -> None:
    # state/redis/ is a package of its own so that a memory-only gateway loads no redis-py.
    code = (
        "import sys, gateway.state.factory, gateway.state.memory\n"
        "from gateway.settings import StateSettings\n"
        "gateway.state.factory.build_state(StateSettings())\n"
        "sys.exit(1 if any(m == 'redis' or m.startswith('redis.') for m in sys.modules) else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
