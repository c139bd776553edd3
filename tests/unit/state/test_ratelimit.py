"""gateway.state.ratelimit: bucket arithmetic, the memory limiter, headers, pipeline helpers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.context import Identity, Peer, Principal, RequestFacts
from gateway.settings import RateLimit
from gateway.state import Verdict
from gateway.state.ratelimit import (
    MemoryRateLimiter,
    RateLimited,
    enforce,
    limit_key,
    rate_limit_headers,
    split,
    take,
    tighter,
    verdict,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TAKE_CASES = [
    # tokens, seconds since last, rate, burst -> allowed, tokens after
    pytest.param(5.0, 0.0, 1.0, 5, True, 4.0, id="full-bucket-takes-one"),
    pytest.param(0.0, 0.0, 1.0, 5, False, 0.0, id="empty-refused"),
    pytest.param(0.5, 0.0, 1.0, 5, False, 0.5, id="half-token-refused"),
    pytest.param(0.0, 1.0, 1.0, 5, True, 0.0, id="refilled-one-after-a-second"),
    pytest.param(0.0, 100.0, 1.0, 5, True, 4.0, id="refill-caps-at-burst"),
    pytest.param(2.0, -5.0, 1.0, 5, True, 1.0, id="clock-going-back-adds-nothing"),
    pytest.param(0.0, 0.25, 4.0, 1, True, 0.0, id="fast-rate"),
]


@pytest.mark.parametrize(("tokens", "elapsed", "rate", "burst", "allowed", "after"), TAKE_CASES)
def test_take(
    tokens: float, elapsed: float, rate: float, burst: int, allowed: bool, after: float
) -> None:
    left, out = take(tokens, 100.0, 100.0 + elapsed, rate, burst)
    assert out.allowed is allowed
    assert left == pytest.approx(after)
    assert out.limit == burst
    assert out.remaining == int(after)


def test_verdict_times() -> None:
    refused = verdict(False, 0.25, 0.5, 10)
    assert refused.retry_after_s == pytest.approx(1.5)  # 0.75 token at 0.5/s
    assert refused.reset_s == pytest.approx(19.5)
    allowed = verdict(True, 10, 0.5, 10)
    assert allowed.retry_after_s == 0
    assert allowed.reset_s == 0
    assert allowed.remaining == 10


async def test_memory_limiter_burst_then_refill() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    results = [await limiter.hit("k", 2.0, 3) for _ in range(4)]
    assert [v.allowed for v in results] == [True, True, True, False]
    assert [v.remaining for v in results] == [2, 1, 0, 0]
    assert results[-1].retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    assert (await limiter.hit("k", 2.0, 3)).allowed
    assert not (await limiter.hit("k", 2.0, 3)).allowed
    clock.now += 10
    assert (await limiter.hit("k", 2.0, 3)).remaining == 2
    assert (await limiter.hit("other", 2.0, 3)).remaining == 2  # keys are independent


async def test_memory_limiter_is_bounded() -> None:
    limiter = MemoryRateLimiter(max_buckets=3, clock=Clock())
    for key in "abcde":
        await limiter.hit(key, 1.0, 1)
    assert len(limiter) == 3
    assert (await limiter.hit("a", 1.0, 1)).allowed  # evicted: forgotten, hence full


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0), (float("inf"), 1)])
async def test_memory_limiter_refuses_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        await MemoryRateLimiter().hit("k", rate, burst)


HEADER_CASES = [
    pytest.param(
        Verdict(True, 7, 0.0, 10, 2.5, 1.0),
        {"RateLimit-Policy": '"burst";q=10;w=10', "RateLimit": '"burst";r=7;t=3'},
        id="allowed-t-is-time-to-full",
    ),
    pytest.param(
        Verdict(False, 0, 0.2, 10, 9.8, 5.0),
        {
            "RateLimit-Policy": '"burst";q=10;w=2',
            "RateLimit": '"burst";r=0;t=1',
            "Retry-After": "1",
        },
        id="refused-retry-after-equals-t-at-least-1",
    ),
    pytest.param(
        Verdict(False, 0, 30.0, 1, 30.0, 1 / 30),
        {
            "RateLimit-Policy": '"burst";q=1;w=30',
            "RateLimit": '"burst";r=0;t=30',
            "Retry-After": "30",
        },
        id="slow-rate",
    ),
    pytest.param(
        Verdict(True, 100, 0.0, 100, 0.0, 1000.0),
        {"RateLimit-Policy": '"burst";q=100;w=1', "RateLimit": '"burst";r=100;t=0'},
        id="sub-second-window-rounds-up-to-1",
    ),
]


@pytest.mark.parametrize(("v", "expected"), HEADER_CASES)
def test_rate_limit_headers(v: Verdict, expected: dict[str, str]) -> None:
    assert rate_limit_headers(v) == expected


def test_rate_limit_headers_policy_name_checked() -> None:
    v = Verdict(True, 1, 0.0, 2, 1.0, 1.0)
    assert rate_limit_headers(v, "per-agent")["RateLimit"].startswith('"per-agent";')
    with pytest.raises(ValueError, match="policy name"):
        rate_limit_headers(v, 'x";q=1')


def test_rate_limited_error() -> None:
    exc = RateLimited(Verdict(False, 0, 1.5, 5, 4.0, 1.0))
    assert exc.status == 429
    assert exc.reason == "rate_limited"
    assert exc.headers["Retry-After"] == "2"


def test_split_pre_and_post_authentication() -> None:
    limits = [RateLimit(per=p, rate=1, burst=1) for p in ("client", "subject", "route", "agent")]
    before, after = split(limits)
    assert [lim.per for lim in before] == ["client", "route"]
    assert [lim.per for lim in after] == ["subject", "agent"]


def _facts(client: str = "203.0.113.9", peer: Peer | None = None) -> RequestFacts:
    return RequestFacts(
        request_id="r",
        method="GET",
        scheme="https",
        host="gw",
        path="/",
        raw_query="",
        client_address=client,
        peer_address=client,
        forwarded_for=client,
        forwarded_proto="https",
        forwarded_host="gw",
        peer=peer,
        time_ns=0,
    )


def _identity(subject: str, kind: Any = "user", issuer: str = "https://idp") -> Identity:
    p = Principal(method="bearer", subject=subject, subject_type=kind, issuer=issuer)
    return Identity(principal=p, results={"bearer": p}, caller="human_api", mode="self")


PEER = Peer(
    spiffe_id="spiffe://example.org/agent/travel",
    trust_domain="example.org",
    cert_sha256="a" * 64,
    cert_x5t_s256="x",
    subject="CN=t",
    issuer="CN=ca",
    not_after=0.0,
)


def test_limit_key_partitions() -> None:
    subject = RateLimit(per="subject", rate=1, burst=1)
    agent = RateLimit(per="agent", rate=1, burst=1)
    route = RateLimit(per="route", rate=1, burst=1)
    client = RateLimit(per="client", rate=1, burst=1)
    alice, bob = _identity("alice"), _identity("bob")
    assert limit_key("r", subject, _facts(), alice) != limit_key("r", subject, _facts(), bob)
    assert limit_key("r", subject, _facts("1.1.1.1"), alice) == limit_key(
        "r", subject, _facts("2.2.2.2"), alice
    )
    assert limit_key("r", subject, _facts(), alice) != limit_key("r2", subject, _facts(), alice)
    assert limit_key("r", subject, _facts(), _identity("alice", issuer="other")) != limit_key(
        "r", subject, _facts(), alice
    )
    # agent: the peer's SPIFFE ID wins over the token subject
    assert limit_key("r", agent, _facts(peer=PEER), alice) == limit_key(
        "r", agent, _facts(peer=PEER), bob
    )
    assert limit_key("r", route, _facts("1.1.1.1"), alice) == limit_key(
        "r", route, _facts("2.2.2.2"), bob
    )
    assert limit_key("r", client, _facts("1.1.1.1"), alice) != limit_key(
        "r", client, _facts("2.2.2.2"), alice
    )
    # no identity: subject limits fall back to the client address
    assert limit_key("r", subject, _facts("1.1.1.1"), None) == limit_key(
        "r", client, _facts("1.1.1.1"), None
    ).replace("|client|", "|subject|")
    assert "alice" not in limit_key("r", subject, _facts(), alice)  # hashed


async def test_enforce_refuses_on_any_bucket_and_reports_tightest() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    limits = [RateLimit(per="route", rate=1, burst=5), RateLimit(per="subject", rate=1, burst=2)]
    alice = _identity("alice")
    first = await enforce(limiter, "r", limits, _facts(), alice)
    assert first is not None
    assert first.limit == 2
    assert first.remaining == 1
    await enforce(limiter, "r", limits, _facts(), alice)
    with pytest.raises(RateLimited) as info:
        await enforce(limiter, "r", limits, _facts(), alice)
    assert info.value.headers["RateLimit"] == '"burst";r=0;t=1'
    assert await enforce(limiter, "r", [], _facts(), alice) is None


async def test_enforce_hits_identical_limits_once() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    twice = [RateLimit(per="route", rate=1, burst=2)] * 2
    v = await enforce(limiter, "r", twice, _facts(), None)
    assert v is not None
    assert v.remaining == 1


def test_tighter() -> None:
    low, high = Verdict(True, 1, 0.0, 5, 4.0, 1.0), Verdict(True, 3, 0.0, 5, 2.0, 1.0)
    assert tighter(None, None) is None
    assert tighter(low, None) is low
    assert tighter(None, high) is high
    assert tighter(high, low) is low
    assert tighter(low, high) is low
