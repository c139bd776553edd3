"""Fuzz gateway.upstream.paths: the one path normalisation router, PDP and upstream share.

Documented error: :class:`gateway.errors.InvalidPath` (400), nothing else. Properties of
every normalised path: it starts with ``/``; it has no empty, ``.`` or ``..`` segment (so no
``//``, ``/./``, ``/../``) except one final empty segment; it contains only the allowed
characters, with upper-case escapes that are neither unreserved nor refused bytes; it is at
most ``MAX_PATH_BYTES`` long; and normalising it again changes nothing (idempotence).
``drop_query_params`` never raises and only ever removes whole parameters.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from hypothesis import event, example, given
from hypothesis import strategies as st

from gateway.errors import InvalidPath
from gateway.upstream.paths import MAX_PATH_BYTES, drop_query_params, normalize_path
from tests.fuzz.strategies import fuzz, paths, segments

_ALLOWED = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@%/]*")
_ESCAPE = re.compile(r"%(..)")
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_REFUSED_BYTES = {*range(0x20), 0x7F, 0x2F, 0x5C, 0x3B}


def check_canonical(path: str) -> None:
    assert path.startswith("/")
    assert len(path) <= MAX_PATH_BYTES
    assert _ALLOWED.fullmatch(path), path
    inner = path.split("/")[1:]
    for segment in inner[:-1]:
        assert segment not in ("", ".", ".."), path
    assert inner[-1] not in (".", ".."), path
    assert "//" not in path
    assert "/../" not in path
    assert "/./" not in path
    for escape in _ESCAPE.findall(path):
        assert re.fullmatch(r"[0-9A-F]{2}", escape), path
        value = int(escape, 16)
        assert chr(value) not in _UNRESERVED, path
        assert value not in _REFUSED_BYTES, path
    assert path.count("%") == len(_ESCAPE.findall(path))


@fuzz(600)
@given(paths)
@example("/a/%2e%2e/%2e%2e/b")
@example("/.%2e/x")
@example("/a/..;/b")
@example("/a" * 5000)
@example("/" + "%41" * 3000)
def test_normalize_path(raw: str) -> None:
    try:
        path = normalize_path(raw)
    except InvalidPath:
        event("refused")
        return
    event("normalised" if path != raw else "already canonical")
    check_canonical(path)
    assert normalize_path(path) == path


@fuzz(200)
@given(
    st.lists(st.tuples(segments, st.sampled_from(["=", ""]), segments), max_size=6).map(
        lambda pairs: "&".join(k + eq + v for k, eq, v in pairs)
    )
    | st.text(max_size=30),
    st.frozensets(st.sampled_from(["api_key", "token", "a", "%61", "", "a b"]), max_size=3),
)
def test_drop_query_params(query: str, names: frozenset[str]) -> None:
    kept = drop_query_params(query, names)
    if not names or not query:
        assert kept == query
        return
    pairs = query.split("&")
    expected = [pair for pair in pairs if unquote_plus(pair.partition("=")[0]) not in names]
    # Whole parameters removed, the others kept byte for byte and in order.
    assert kept == "&".join(expected)
