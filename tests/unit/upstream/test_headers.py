"""gateway.upstream.headers: what crosses the gateway in each direction (DESIGN.md §5)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.headers import (
    DEFAULT_STRIPPED,
    HOP_BY_HOP,
    forwarded_for,
    header_block_size,
    sanitize_request_headers,
    sanitize_response_headers,
)

Pairs = list[tuple[str, str]]


def _headers(pairs: Pairs) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


REQUEST_CASES = [
    pytest.param(
        [("Accept", "application/json"), ("Content-Type", "text/plain")],
        [("Accept", "application/json"), ("Content-Type", "text/plain")],
        id="ordinary-headers-kept",
    ),
    pytest.param(
        [("Connection", "close, X-Secret"), ("X-Secret", "s"), ("Accept", "*/*")],
        [("Accept", "*/*")],
        id="connection-named-header-removed",
    ),
    pytest.param(
        [
            ("Connection", " x-ONE ,,x-two "),
            ("Connection", "X-Three"),
            ("x-one", "1"),
            ("X-Two", "2"),
            ("x-three", "3"),
            ("X-Four", "4"),
        ],
        [("X-Four", "4")],
        id="connection-options-trimmed-case-insensitive-several-lines",
    ),
    pytest.param(
        [(name, "v") for name in sorted(HOP_BY_HOP)] + [("Accept", "*/*")],
        [("Accept", "*/*")],
        id="all-hop-by-hop-removed",
    ),
    pytest.param(
        [(name.title(), "v") for name in sorted(DEFAULT_STRIPPED)] + [("Accept", "*/*")],
        [("Accept", "*/*")],
        id="all-default-stripped-removed",
    ),
    pytest.param(
        [("X_Forwarded_For", "6.6.6.6"), ("x_spiffe_id", "spiffe://evil/x"), ("X-Ok", "1")],
        [("X-Ok", "1")],
        id="underscore-variants-removed",
    ),
    pytest.param(
        [("X-Custom_Thing", "1"), ("X-Custom-Thing", "2")],
        [("X-Custom-Thing", "2")],
        id="any-underscore-name-removed",
    ),
    pytest.param(
        [("Txn-Token", "client-minted"), ("TXN-TOKEN", "again"), ("Accept", "*/*")],
        [("Accept", "*/*")],
        id="client-txn-token-removed-every-copy",
    ),
    pytest.param(
        [("Accept", "a"), ("X-Multi", "1"), ("Accept", "b"), ("X-Multi", "2")],
        [("Accept", "a"), ("X-Multi", "1"), ("Accept", "b"), ("X-Multi", "2")],
        id="order-and-repeats-kept",
    ),
    pytest.param(
        [("Cookie", "a=1"), ("Traceparent", "00-ab-cd-01"), ("User-Agent", "ua")],
        [("Cookie", "a=1"), ("Traceparent", "00-ab-cd-01"), ("User-Agent", "ua")],
        id="end-to-end-headers-kept",
    ),
]


@pytest.mark.parametrize(("inbound", "expected"), REQUEST_CASES)
def test_sanitize_request_headers(inbound: Pairs, expected: Pairs) -> None:
    out = sanitize_request_headers(_headers(inbound))
    assert isinstance(out, CIMultiDict)
    assert list(out.items()) == expected


def test_sanitize_request_headers_extra_strip() -> None:
    inbound = _headers([("X-Api-Key", "k"), ("X-Keep", "1"), ("Cookie", "c")])
    out = sanitize_request_headers(inbound, extra_strip=frozenset({"x-api-key", "Cookie"}))
    assert list(out.items()) == [("X-Keep", "1")]


def test_sanitize_request_headers_accepts_mutable_and_does_not_mutate() -> None:
    inbound: CIMultiDict[str] = CIMultiDict([("Authorization", "Bearer t"), ("Accept", "*/*")])
    out = sanitize_request_headers(inbound)
    assert list(out.items()) == [("Accept", "*/*")]
    assert inbound["Authorization"] == "Bearer t"
    out.add("Txn-Token", "minted")
    assert "Txn-Token" not in inbound


RESPONSE_CASES = [
    pytest.param(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "12"),
            ("Content-Encoding", "gzip"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "12"),
            ("Content-Encoding", "gzip"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
        id="end-to-end-kept-with-framing-and-repeats",
    ),
    pytest.param(
        [
            ("Connection", "keep-alive, X-Internal"),
            ("Keep-Alive", "timeout=5"),
            ("X-Internal", "10.0.0.7"),
            ("Transfer-Encoding", "chunked"),
            ("ETag", '"x"'),
        ],
        [("ETag", '"x"')],
        id="hop-by-hop-and-connection-named-removed",
    ),
    pytest.param(
        [
            ("Upgrade", "h2c"),
            ("Trailer", "X-Sum"),
            ("Proxy-Authenticate", "Basic"),
            ("WWW-Authenticate", "Bearer"),
        ],
        [("WWW-Authenticate", "Bearer")],
        id="upgrade-trailer-proxy-authenticate-removed",
    ),
]


@pytest.mark.parametrize(("upstream", "expected"), RESPONSE_CASES)
def test_sanitize_response_headers(upstream: Pairs, expected: Pairs) -> None:
    assert list(sanitize_response_headers(_headers(upstream)).items()) == expected


XFF_CASES = [
    pytest.param([], "10.0.0.9", 0, ("10.0.0.9", "10.0.0.9"), id="no-xff-no-trust"),
    pytest.param(
        ["6.6.6.6"], "10.0.0.9", 0, ("10.0.0.9", "10.0.0.9"), id="client-xff-ignored-at-zero"
    ),
    pytest.param([], "10.0.0.9", 2, ("10.0.0.9", "10.0.0.9"), id="trusted-but-no-xff"),
    pytest.param(
        ["203.0.113.5"], "10.0.0.9", 1, ("203.0.113.5, 10.0.0.9", "203.0.113.5"), id="one-hop"
    ),
    pytest.param(
        ["6.6.6.6, 203.0.113.5"],
        "10.0.0.9",
        1,
        ("203.0.113.5, 10.0.0.9", "203.0.113.5"),
        id="spoofed-left-entry-dropped",
    ),
    pytest.param(
        ["6.6.6.6, 203.0.113.5", "192.0.2.1"],
        "10.0.0.9",
        2,
        ("203.0.113.5, 192.0.2.1, 10.0.0.9", "203.0.113.5"),
        id="repeated-xff-lines-joined-in-order",
    ),
    pytest.param(
        ["203.0.113.5"],
        "10.0.0.9",
        5,
        ("203.0.113.5, 10.0.0.9", "203.0.113.5"),
        id="trusted-hops-larger-than-chain",
    ),
    pytest.param(
        [" 203.0.113.5 ,, ", ""],
        "10.0.0.9",
        3,
        ("203.0.113.5, 10.0.0.9", "203.0.113.5"),
        id="empty-entries-and-whitespace-dropped",
    ),
    pytest.param(
        ["6.6.6.6, unknown"],
        "10.0.0.9",
        1,
        ("10.0.0.9", "10.0.0.9"),
        id="junk-in-trusted-position-does-not-promote-client-entry",
    ),
    pytest.param(
        ["<script>, 203.0.113.5"],
        "10.0.0.9",
        2,
        ("203.0.113.5, 10.0.0.9", "203.0.113.5"),
        id="invalid-entry-dropped",
    ),
    pytest.param(
        ["2001:DB8::1"], "::1", 1, ("2001:db8::1, ::1", "2001:db8::1"), id="ipv6-canonicalised"
    ),
    pytest.param(
        ["[2001:db8::1]:4711, 198.51.100.7:80"],
        "2001:db8::ff",
        2,
        ("2001:db8::1, 198.51.100.7, 2001:db8::ff", "2001:db8::1"),
        id="ports-and-brackets-stripped",
    ),
    pytest.param(
        ["198.51.100.7:99999, 1.2.3.4:"],
        "10.0.0.9",
        2,
        ("10.0.0.9", "10.0.0.9"),
        id="bad-ports-dropped",
    ),
]


@pytest.mark.parametrize(("xff", "peer", "hops", "expected"), XFF_CASES)
def test_forwarded_for(xff: list[str], peer: str, hops: int, expected: tuple[str, str]) -> None:
    assert forwarded_for(xff, peer, hops) == expected


def test_forwarded_for_negative_hops_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="trusted_hops"):
        forwarded_for([], "10.0.0.9", -1)


BLOCK_CASES = [
    pytest.param((), 0, id="empty"),
    pytest.param(((b"Host", b"a"),), len(b"Host: a\r\n"), id="one"),
    pytest.param(
        ((b"Host", b"example.org"), (b"Accept", b"")),
        len(b"Host: example.org\r\nAccept: \r\n"),
        id="two-with-empty-value",
    ),
]


@pytest.mark.parametrize(("raw", "size"), BLOCK_CASES)
def test_header_block_size(raw: tuple[tuple[bytes, bytes], ...], size: int) -> None:
    assert header_block_size(raw) == size


def test_stripped_sets_are_lowercase_and_disjoint() -> None:
    for name in HOP_BY_HOP | DEFAULT_STRIPPED:
        assert name == name.lower()
    assert not HOP_BY_HOP & DEFAULT_STRIPPED
