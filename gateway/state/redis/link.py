"""One Redis client for the ``redis`` state backend: pool, time budget, error mapping, scripts.

Every call runs under ``state.timeout_s`` and maps any failure (refused, reset, timeout,
``NOAUTH``, ``OOM``, ``LOADING``...) to :class:`gateway.state.StateUnavailable` -- 503,
fail closed. Nothing is retried beyond one immediate reconnect inside that budget (a
pooled connection that died with a Redis restart is replaced on first use), so when
Redis comes back the next call simply works: there is no circuit state to wedge.

Lua scripts are redis-py ``register_script()`` objects, one per script source and
client: each call is ``EVALSHA``; on ``NOSCRIPT`` (a restarted or ``SCRIPT FLUSH`` ed
Redis forgot it) redis-py loads the source and runs it again, inside the same budget.

The Redis URL may carry a password; it is only ever handed to redis-py and never
logged or put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.secret import Secret
from gateway.state import StateUnavailable

T = TypeVar("T")

DEFAULT_MAX_CONNECTIONS = 64


def digest(key: str) -> str:
    """The key-name form of an identifier: hashed, so no identifier appears in Redis."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class RedisLink:
    """One client (connection pool) with the timeout and error mapping of every call."""

    def __init__(
        self, url: Secret, *, timeout_s: float, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self._url = url
        self.timeout_s = timeout_s
        self._max_connections = max_connections
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def open(self) -> None:
        if self._client is not None:
            return
        pool = BlockingConnectionPool.from_url(
            self._url.reveal_str(),
            max_connections=self._max_connections,
            timeout=self.timeout_s,  # waiting for a free pooled connection
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            # One immediate retry on a fresh connection: a pooled connection that died
            # with a Redis restart fails once and is replaced, inside the same budget.
            retry=Retry(NoBackoff(), 1),
            client_name="agentgate",
            protocol=2,  # the same replies from redis-py 5 to 8 and from Redis >= 5
        )
        self._client = Redis(connection_pool=pool)

    async def close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
            with contextlib.suppress(RedisError, OSError):
                await client.connection_pool.disconnect()

    async def run(
        self, op: str, call: Callable[[Redis], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        """``call(client)`` within the budget; any failure -> :class:`StateUnavailable`."""
        client = self._client
        if client is None:
            raise StateUnavailable(f"redis {op}: not started")
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                return await call(client)
        except (RedisError, OSError, TimeoutError) as exc:
            # SECURITY: only the operation and the exception type: redis-py messages can
            # name the server, and the URL may hold a password.
            raise StateUnavailable(f"redis {op}: {type(exc).__name__}") from None

    async def script(
        self,
        op: str,
        source: str,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """Run the Lua ``source`` (EVALSHA, reloaded on NOSCRIPT) like :meth:`run`."""

        async def call(client: Redis) -> Any:
            script = self._scripts.get(source)
            if script is None:
                script = self._scripts[source] = client.register_script(source)
            return await script(keys=keys, args=args)

        return await self.run(op, call, timeout_s=timeout_s)
