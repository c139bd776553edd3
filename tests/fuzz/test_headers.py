"""Fuzz gateway.upstream.headers: what reaches the upstream and what comes back.

Documented: none of these functions raises for hostile input (``forwarded_for`` only for a
negative ``trusted_hops``, a configuration value). Properties of ``sanitize_request_headers``:
the result never holds a name with ``_``, a hop-by-hop field, a field named by ``Connection``,
a default-stripped identity or credential field, or one of ``extra_strip`` (in any casing);
everything else is kept, in order, with its repetitions; the input is not modified.
``forwarded_for`` keeps at most ``trusted_hops`` client-side entries, all canonical IPs, and
always ends with the TCP peer.
"""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.upstream.headers import (
    DEFAULT_STRIPPED,
    HOP_BY_HOP,
    connection_options,
    forwarded_for,
    header_block_size,
    sanitize_request_headers,
    sanitize_response_headers,
)
from tests.fuzz.strategies import fuzz

INTERESTING = sorted(
    HOP_BY_HOP
    | DEFAULT_STRIPPED
    | {"x-forwarded-for", "content-type", "accept", "x-trace", "x-internal-route", "cookie"}
)


@st.composite
def names(draw: st.DrawFn) -> str:
    """A header name: known names in random casing, with '-' swapped for '_', or random."""
    choice = draw(st.integers(0, 3))
    if choice == 3:
        return draw(st.text("abcXYZ-_0", min_size=1, max_size=10))
    name = draw(st.sampled_from(INTERESTING))
    name = draw(st.sampled_from([str.lower, str.upper, str.title, str.capitalize]))(name)
    if choice == 2:
        name = name.replace("-", "_")
    return name


@st.composite
def connection_values(draw: st.DrawFn) -> str:
    options = draw(st.lists(names(), max_size=4))
    spaces = draw(st.sampled_from(["", " ", "  ", "\t"]))
    return ("," + spaces).join(options) + draw(st.sampled_from(["", ",", ", ,"]))


header_lists = st.lists(
    st.tuples(names(), st.text(max_size=8)) | st.tuples(st.just("Connection"), connection_values()),
    max_size=12,
)


def dropped_names(headers: CIMultiDict[str], extra: frozenset[str]) -> set[str]:
    return (
        set(HOP_BY_HOP)
        | set(DEFAULT_STRIPPED)
        | {e.lower() for e in extra}
        | set(connection_options(headers))
    )


@fuzz(150)
@given(header_lists, st.frozensets(names(), max_size=3))
@example([("X_Forwarded_For", "1.2.3.4"), ("Connection", "x-a, ,X-B")], frozenset())
@example([("Connection", "authorization"), ("TE", "trailers")], frozenset({"X-Agent-Note"}))
def test_sanitize_request_headers(pairs: list[tuple[str, str]], extra: frozenset[str]) -> None:
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    before = list(headers.items())
    out = sanitize_request_headers(headers, extra_strip=extra)
    assert list(headers.items()) == before  # the input is never mutated
    drop = dropped_names(headers, extra)
    for name in out:
        assert "_" not in name
        assert name.lower() not in drop, name
    expected = [(k, v) for k, v in before if "_" not in k and k.lower() not in drop]
    assert list(out.items()) == expected  # everything else kept, in order, with repetitions


@fuzz(100)
@given(header_lists)
def test_sanitize_response_headers(pairs: list[tuple[str, str]]) -> None:
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    out = sanitize_response_headers(headers)
    drop = set(HOP_BY_HOP) | set(connection_options(headers))
    assert list(out.items()) == [(k, v) for k, v in pairs if k.lower() not in drop]
    raw = tuple(
        (k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in pairs
    )
    assert header_block_size(raw) == sum(len(k) + len(v) + 4 for k, v in raw)


ENTRIES = (
    "192.0.2.1",
    "192.0.2.1:8080",
    "2001:db8::1",
    "[2001:db8::1]",
    "[2001:db8::1]:443",
    "[2001:db8::1",
    "::ffff:192.0.2.1",
    "unknown",
    "_hidden",
    "1.2.3.4:99999",
    "1.2.3.4:-1",
    "1.2.3.4:٣",  # a non-ASCII digit
    "01.2.3.4",
    "",
    " ",
    "fe80::1%eth0",
)


@fuzz(300)
@given(
    st.lists(
        st.lists(st.sampled_from(ENTRIES) | st.text(max_size=6), max_size=4).map(", ".join),
        max_size=3,
    ),
    st.sampled_from(["203.0.113.9", "2001:db8::9", "::ffff:203.0.113.9", "not-an-ip"]),
    st.integers(0, 4),
)
def test_forwarded_for(lines: list[str], peer: str, hops: int) -> None:
    xff, client = forwarded_for(lines, peer, hops)
    entries = xff.split(", ")
    canonical_peer = entries[-1]
    if peer != "not-an-ip":
        assert canonical_peer == str(ipaddress.ip_address(peer))
    if hops == 0:
        assert xff == client == canonical_peer
        return
    assert len(entries) <= hops + 1
    for entry in entries[:-1]:
        assert str(ipaddress.ip_address(entry)) == entry
    assert client in entries
