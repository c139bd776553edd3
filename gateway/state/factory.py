"""Build the :class:`gateway.state.State` that ``state.backend`` names.

``build_state`` does no I/O: the Redis connection pool is created in
``State.start()``, on the serving event loop. A Redis URL with a scheme redis-py
does not speak is a configuration error that names the key, never the URL (it may
carry a password).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.settings.state import StateSettings
from gateway.state import State

REDIS_SCHEMES = ("redis", "rediss", "unix")


def build_state(settings: StateSettings) -> State:
    if settings.backend == "memory":
        from gateway.state.memory import MemoryState

        return MemoryState()
    if settings.redis_url is None:
        raise ConfigError([("state.redis_url", "required for the redis backend")])
    try:
        scheme = urlsplit(settings.redis_url.reveal_str()).scheme
    except (UnicodeDecodeError, ValueError):
        scheme = ""
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(
            [("state.redis_url", f"must be a {', '.join(s + '://' for s in REDIS_SCHEMES)} URL")]
        )
    from gateway.state.redis import RedisState

    return RedisState(settings)
