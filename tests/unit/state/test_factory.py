"""gateway.state.factory: backend selection; a bad Redis URL is named by key, never shown."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings import Secret, StateSettings
from gateway.state.factory import build_state
from gateway.state.memory import MemoryState
from gateway.state.redis import RedisState


def _redis(url: str) -> StateSettings:
    return StateSettings(backend="redis", redis_url=Secret("env:REDIS_URL", url.encode()))


def test_memory_backend() -> None:
    assert isinstance(build_state(StateSettings(backend="memory")), MemoryState)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.internal:6380/1", "unix:///run/redis.sock"],
)
def test_redis_backend_builds_without_io(url: str) -> None:
    state = build_state(_redis(url))
    assert isinstance(state, RedisState)
    assert state.backend == "redis"
    assert not state.ready()  # nothing synced before start()


@pytest.mark.parametrize(
    "url", ["http://:s3cret-pw@host:6379", "s3cret-pw@host:6379", "redis//:s3cret-pw@host"]
)
def test_bad_redis_url_is_a_config_error_that_hides_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_state(_redis(url))
    assert info.value.problems[0][0] == "state.redis_url"
    assert "s3cret-pw" not in str(info.value)
