"""gateway.authz.cache: key stability, TTL, LRU bound, generation invalidation, no_cache."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.authz.cache import DecisionCache, cache_key
from gateway.context import Decision

from .samples import SAMPLES


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def allow(decision_id: str = "d", **obligations: Any) -> Decision:
    return Decision(allow=True, decision_id=decision_id, obligations=obligations)


@pytest.fixture
def base() -> dict[str, Any]:
    return SAMPLES["user_obo_chain"].input()


def test_key_ignores_request_id_and_time(base: dict[str, Any]) -> None:
    other = copy.deepcopy(base)
    other["request"]["id"] = "another-request"
    other["request"]["time_ns"] += 5_000_000_000
    assert cache_key(base, ["a"]) == cache_key(other, ["a"])


def test_key_does_not_mutate_input(base: dict[str, Any]) -> None:
    before = copy.deepcopy(base)
    cache_key(base, None)
    assert base == before


@pytest.mark.parametrize(
    "path",
    [
        ("request", "method"),
        ("request", "path"),
        ("request", "host"),
        ("source", "address"),
        ("source", "segment"),
        ("route", "name"),
        ("subject", "id"),
        ("mode",),
        ("caller",),
    ],
    ids=lambda p: ".".join(p),
)
def test_key_covers_every_other_field(base: dict[str, Any], path: tuple[str, ...]) -> None:
    other = copy.deepcopy(base)
    target = other
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "changed"
    assert cache_key(base, None) != cache_key(other, None)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["subject"]["scopes"].append("admin"), id="subject.scopes"),
        pytest.param(lambda d: d["actors"].pop(), id="actors"),
        pytest.param(lambda d: d["request"]["query"].update(a=["1"]), id="request.query"),
        pytest.param(lambda d: d["request"]["headers"].update(x="1"), id="request.headers"),
        pytest.param(lambda d: d["behavior"].update(requests=2), id="behavior"),
        pytest.param(lambda d: d["attestation"].update(status="warning"), id="attestation"),
        pytest.param(lambda d: d["txn"].update(id="other"), id="txn"),
    ],
)
def test_key_covers_nested_fields(base: dict[str, Any], mutate: Any) -> None:
    other = copy.deepcopy(base)
    mutate(other)
    assert cache_key(base, None) != cache_key(other, None)


def test_key_covers_subject_scopes_argument(base: dict[str, Any]) -> None:
    assert cache_key(base, None) != cache_key(base, [])
    assert cache_key(base, ["a"]) != cache_key(base, ["b"])


def test_hit_and_ttl_expiry() -> None:
    clock = Clock()
    cache = DecisionCache(ttl_s=1.0, max_entries=10, clock=clock)
    cache.put(b"k", allow(), generation=0)
    assert cache.get(b"k") == allow()
    clock.now += 0.999
    assert cache.get(b"k") is not None
    clock.now += 0.001
    assert cache.get(b"k") is None
    assert len(cache) == 0


def test_lru_bound_evicts_least_recently_used() -> None:
    cache = DecisionCache(ttl_s=60, max_entries=2, clock=Clock())
    cache.put(b"a", allow("a"), generation=0)
    cache.put(b"b", allow("b"), generation=0)
    assert cache.get(b"a") is not None  # "a" is now the most recently used
    cache.put(b"c", allow("c"), generation=0)
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None
    assert cache.get(b"c") is not None
    assert len(cache) == 2


def test_invalidate_drops_everything_and_stale_puts() -> None:
    cache = DecisionCache(ttl_s=60, max_entries=10, clock=Clock())
    cache.put(b"a", allow(), generation=0)
    started_under = cache.generation
    cache.invalidate()
    assert cache.get(b"a") is None
    cache.put(b"b", allow(), generation=started_under)  # evaluated by the old policy
    assert cache.get(b"b") is None
    cache.put(b"b", allow(), generation=cache.generation)
    assert cache.get(b"b") is not None


def test_no_cache_obligation_is_never_stored() -> None:
    cache = DecisionCache(ttl_s=60, max_entries=10, clock=Clock())
    cache.put(b"a", allow(no_cache=True), generation=0)
    assert cache.get(b"a") is None
    cache.put(b"b", allow(no_cache="yes"), generation=0)  # only literal true opts out
    assert cache.get(b"b") is not None


@pytest.mark.parametrize(("ttl", "entries"), [(0, 10), (1, 0)])
def test_disabled_cache_stores_nothing(ttl: float, entries: int) -> None:
    cache = DecisionCache(ttl_s=ttl, max_entries=entries)
    assert not cache.enabled
    cache.put(b"a", allow(), generation=0)
    assert cache.get(b"a") is None
