"""gateway.upstream.paths: the one path normalisation rule (DESIGN.md §6, RFC 3986)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidPath
from gateway.upstream.paths import MAX_PATH_BYTES, normalize_path

NORMALISED = [
    # already canonical (fast path)
    pytest.param("/", "/", id="root"),
    pytest.param("/a/b", "/a/b", id="plain"),
    pytest.param("/a/b/", "/a/b/", id="trailing-slash-kept"),
    pytest.param("/A/B", "/A/B", id="case-kept"),
    pytest.param("/v1/file.json", "/v1/file.json", id="dot-inside-segment"),
    pytest.param("/a..b/c.", "/a..b/c.", id="dots-not-a-segment"),
    pytest.param("/.well-known/jwks.json", "/.well-known/jwks.json", id="leading-dot-name"),
    pytest.param("/...", "/...", id="three-dots-is-a-name"),
    pytest.param("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", id="sub-delims-colon-at"),
    pytest.param("/-_~", "/-_~", id="unreserved-punctuation"),
    # dot segments (RFC 3986 §5.2.4)
    pytest.param("/a/./b", "/a/b", id="dot"),
    pytest.param("/a/b/../c", "/a/c", id="dotdot"),
    pytest.param("/a/../../etc/passwd", "/etc/passwd", id="dotdot-above-root"),
    pytest.param("/../a", "/a", id="dotdot-at-root"),
    pytest.param("/..", "/", id="only-dotdot"),
    pytest.param("/.", "/", id="only-dot"),
    pytest.param("/a/b/..", "/a/", id="trailing-dotdot-keeps-slash"),
    pytest.param("/a/.", "/a/", id="trailing-dot-keeps-slash"),
    pytest.param("/a/b/../..", "/", id="back-to-root"),
    pytest.param("/a/./", "/a/", id="dot-then-slash"),
    # escaped dots count as dots
    pytest.param("/%2e%2e/admin", "/admin", id="encoded-dotdot"),
    pytest.param("/a/%2E%2E/b", "/b", id="encoded-dotdot-upper"),
    pytest.param("/a/.%2e/b", "/b", id="half-encoded-dotdot"),
    pytest.param("/a/%2e/b", "/a/b", id="encoded-dot"),
    pytest.param("/a%2eb", "/a.b", id="encoded-dot-in-name"),
    # slashes
    pytest.param("//a//b", "/a/b", id="repeated-slashes"),
    pytest.param("//", "/", id="double-root"),
    pytest.param("/a///", "/a/", id="trailing-slashes-merged"),
    pytest.param("/a//../b", "/b", id="slashes-then-dotdot"),
    # percent-escapes
    pytest.param("/%41", "/A", id="encoded-alpha"),
    pytest.param("/%61%62", "/ab", id="encoded-lower-alpha"),
    pytest.param("/%30", "/0", id="encoded-digit"),
    pytest.param("/%7e", "/~", id="encoded-tilde"),
    pytest.param("/%2D%5f", "/-_", id="encoded-hyphen-underscore"),
    pytest.param("/%3a", "/%3A", id="reserved-kept-uppercased"),
    pytest.param("/%3A", "/%3A", id="reserved-kept"),
    pytest.param("/%c3%a9t%C3%A9", "/%C3%A9t%C3%A9", id="utf8-escapes-uppercased"),
    pytest.param("/%25", "/%25", id="encoded-percent-kept"),
    pytest.param("/%252e%252e/x", "/%252e%252e/x", id="double-encoded-not-decoded-twice"),
    pytest.param("/a%20b", "/a%20b", id="encoded-space-kept"),
    pytest.param("/%3f%23", "/%3F%23", id="encoded-query-and-fragment-kept"),
    # raw characters RFC 3986 forbids but clients send
    pytest.param("/a{b}", "/a%7Bb%7D", id="braces-encoded"),
    pytest.param('/"<>`|^[]', "/%22%3C%3E%60%7C%5E%5B%5D", id="unsafe-ascii-encoded"),
    pytest.param("/a{b}/../c", "/c", id="encoded-then-dotdot"),
]

REJECTED = [
    pytest.param("", id="empty"),
    pytest.param("a/b", id="relative"),
    pytest.param("*", id="asterisk-form"),
    pytest.param("http://x/a", id="absolute-form"),
    pytest.param("/a/..;/b", id="tomcat-dotdot-semicolon"),
    pytest.param("/a;jsessionid=1", id="path-parameter"),
    pytest.param("/a%3Bb", id="encoded-semicolon"),
    pytest.param("/a%3bb", id="encoded-semicolon-lower"),
    pytest.param("/a\\b", id="raw-backslash"),
    pytest.param("/a%5Cb", id="encoded-backslash"),
    pytest.param("/a%5cb", id="encoded-backslash-lower"),
    pytest.param("/a%2fb", id="encoded-slash-lower"),
    pytest.param("/a%2Fb", id="encoded-slash"),
    pytest.param("/%2e%2e%2f", id="encoded-dotdot-slash"),
    pytest.param("/%00", id="encoded-nul"),
    pytest.param("/a%0d%0aX:y", id="encoded-crlf"),
    pytest.param("/a%7f", id="encoded-del"),
    pytest.param("/a\x00", id="raw-nul"),
    pytest.param("/a\tb", id="raw-tab"),
    pytest.param("/a\r\nb", id="raw-crlf"),
    pytest.param("/a b", id="raw-space"),
    pytest.param("/a\x7f", id="raw-del"),
    pytest.param("/caf\u00e9", id="raw-non-ascii"),
    pytest.param("/\u2025", id="raw-two-dot-leader"),
    pytest.param("/a?b", id="raw-question-mark"),
    pytest.param("/a#b", id="raw-hash"),
    pytest.param("/a%zz", id="invalid-escape"),
    pytest.param("/a%4", id="truncated-escape"),
    pytest.param("/a%", id="lone-percent"),
    pytest.param("/a%%41", id="percent-percent"),
    pytest.param("/a%+1", id="escape-with-sign"),
    pytest.param("/" + "a" * MAX_PATH_BYTES, id="too-long-canonical"),
    pytest.param("/" + "%41" * 3000, id="too-long-before-decoding"),
    pytest.param("/" + "{" * 3000, id="too-long-after-encoding"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalised(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", REJECTED)
def test_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath) as info:
        normalize_path(raw)
    assert info.value.status == 400
    assert info.value.reason == "invalid_path"


def test_longest_allowed_path() -> None:
    raw = "/" + "a" * (MAX_PATH_BYTES - 1)
    assert normalize_path(raw) == raw


# Hypothesis: paths assembled from the pieces that matter to the rules above.
_PIECES = st.sampled_from(
    [
        "/", "/", "/", ".", "..", "a", "B", "z9", "~", "-", "_", ":", "@", "{",
        "%2e", "%2E", "%41", "%7e", "%3a", "%25", "%C3%A9", "%2f", "%00", "%", "%z",
        ";", "\\", " ", "?", "\u00e9",
    ]
)  # fmt: skip
_PATHS = st.lists(_PIECES, max_size=24).map(lambda parts: "/" + "".join(parts))


def _normalise_or_none(raw: str) -> str | None:
    try:
        return normalize_path(raw)
    except InvalidPath:
        return None


@settings(max_examples=500, database=None, deadline=None)
@given(_PATHS)
def test_idempotent(raw: str) -> None:
    once = _normalise_or_none(raw)
    if once is not None:
        assert normalize_path(once) == once


@settings(max_examples=500, database=None, deadline=None)
@given(_PATHS)
def test_output_shape(raw: str) -> None:
    out = _normalise_or_none(raw)
    if out is None:
        return
    assert out.startswith("/")
    for bad in ("//", "/./", "/../"):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    assert out.isascii()
    assert ";" not in out
    assert "\\" not in out


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(max_size=64))
def test_arbitrary_text_only_raises_invalid_path(raw: str) -> None:
    out = _normalise_or_none(raw)
    if out is not None:
        assert normalize_path(out) == out


@settings(max_examples=300, database=None, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=8))
def test_escaping_unreserved_changes_nothing(segments: list[str]) -> None:
    plain = "/" + "/".join(segments)
    escaped = "/" + "/".join("".join(f"%{ord(c):02x}" for c in s) for s in segments)
    assert normalize_path(escaped) == normalize_path(plain) == plain
