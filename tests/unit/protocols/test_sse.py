"""gateway.protocols.sse: events from any chunking, byte-exact raws, CR/LF/CRLF, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.sse import Event, EventTooLarge, SSEParser, render

STREAM = (
    b": keep-alive\r\n\r\n"
    b'event: message\r\nid: 1\r\ndata: {"a":1}\r\n\r\n'
    b"data: line one\ndata: line two\nretry: 500\n\n"
    b"data:no-space\rdata:  two-spaces\r\r"
    b"data: tail without end"
)
EVENTS = [
    Event(b": keep-alive\r\n\r\n", None, None),
    Event(b'event: message\r\nid: 1\r\ndata: {"a":1}\r\n\r\n', '{"a":1}', "message", "1"),
    Event(b"data: line one\ndata: line two\nretry: 500\n\n", "line one\nline two", None),
    Event(b"data:no-space\rdata:  two-spaces\r\r", "no-space\n two-spaces", None),
]
TAIL = b"data: tail without end"


def _whole(stream: bytes) -> tuple[list[Event], bytes]:
    parser = SSEParser()
    events = parser.feed(stream)
    closed, tail = parser.close()
    return events + closed, tail


def test_whole_stream() -> None:
    assert _whole(STREAM) == (EVENTS, TAIL)


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_two_way_split_gives_the_same_events(cut: int) -> None:
    parser = SSEParser()
    events = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
    assert events == EVENTS
    assert parser.flush() == TAIL


def test_crlf_split_between_cr_and_lf_keeps_the_lf_in_the_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []
    assert parser.feed(b"\ndata: y\n\n") == [
        Event(b"data: x\r\n\r\n", "x", None),
        Event(b"data: y\n\n", "y", None),
    ]


def test_a_cr_ending_the_stream_completes_the_event_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\r") == []
    assert parser.close() == ([Event(b"data: x\r\r", "x", None)], b"")


def test_flush_returns_every_byte_not_yet_returned() -> None:
    parser = SSEParser()
    parser.feed(b"data: x\r\r")
    assert parser.flush() == b"data: x\r\r"
    assert parser.flush() == b""


FIELDS = [
    ("field-without-colon", b"data\n\n", ""),
    ("empty-data-lines", b"data:\ndata:\n\n", "\n"),
    ("only-first-space-dropped", b"data:   x\n\n", "  x"),
    ("colon-in-value", b"data: a: b\n\n", "a: b"),
    ("unknown-field-ignored", b"foo: bar\ndata: x\n\n", "x"),
    ("comment-between-data", b"data: a\n: note\ndata: b\n\n", "a\nb"),
    ("invalid-utf8-replaced", b"data: \xff\n\n", "\ufffd"),
    ("bom-at-stream-start", b"\xef\xbb\xbfdata: x\n\n", "x"),
]


@pytest.mark.parametrize(("stream", "data"), [f[1:] for f in FIELDS], ids=[f[0] for f in FIELDS])
def test_field_parsing(stream: bytes, data: str) -> None:
    (event,), tail = _whole(stream)
    assert (event.data, event.raw, tail) == (data, stream, b"")


def test_id_with_nul_is_ignored_and_last_event_field_wins() -> None:
    (event,), _ = _whole(b"id: a\x00b\nevent: one\nevent: two\ndata: x\n\n")
    assert (event.id, event.event) == (None, "two")


def test_bom_later_in_the_stream_is_data() -> None:
    events, _ = _whole(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")
    assert [e.data for e in events] == ["a", None]


def test_event_too_large_while_buffering() -> None:
    parser = SSEParser(max_event_bytes=16)
    parser.feed(b"data: 0123456")
    with pytest.raises(EventTooLarge):
        parser.feed(b"789abcdef")


def test_event_too_large_in_one_chunk() -> None:
    parser = SSEParser(max_event_bytes=16)
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: 0123456789abcdef\n\ndata: x\n\n")


def test_events_at_the_limit_pass() -> None:
    parser = SSEParser(max_event_bytes=10)
    assert parser.feed(b"data: 12\n\n" * 3) == [Event(b"data: 12\n\n", "12", None)] * 3


RENDER = [
    ("data-only", ("x",), b"data: x\n\n"),
    ("event-and-id", ('{"a":1}', "message", "7"), b'event: message\nid: 7\ndata: {"a":1}\n\n'),
    ("multi-line-data", ("a\nb\r\nc\rd",), b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
    ("empty-data", ("",), b"data: \n\n"),
]


@pytest.mark.parametrize(("args", "expected"), [r[1:] for r in RENDER], ids=[r[0] for r in RENDER])
def test_render(args: tuple[str, ...], expected: bytes) -> None:
    out = render(*args)
    assert out == expected
    (event,), _ = _whole(out)
    assert (event.data, event.event, event.id) == (
        args[0].replace("\r\n", "\n").replace("\r", "\n"),
        args[1] if len(args) > 1 else None,
        args[2] if len(args) > 2 else None,
    )


@pytest.mark.parametrize(
    ("event", "id"),
    [("a\nevent: b", None), ("a\r", None), (None, "1\ndata: x"), (None, "a\x00")],
    ids=["lf-in-event", "cr-in-event", "lf-in-id", "nul-in-id"],
)
def test_render_refuses_field_injection(event: str | None, id: str | None) -> None:
    with pytest.raises(ValueError, match=r"in the (event|id) field"):
        render("x", event, id)


# --------------------------------------------------------------------------- properties

_line = st.one_of(
    st.sampled_from([b"data: x", b"data:", b"data", b": c", b"event: e", b"id: 1", b"retry: 9"]),
    st.binary(max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
_eol = st.sampled_from([b"\n", b"\r", b"\r\n"])
_stream = st.lists(st.tuples(_line, _eol), max_size=30).map(
    lambda pairs: b"".join(line + eol for line, eol in pairs)
)


@st.composite
def _stream_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(st.one_of(_stream, st.binary(max_size=200)))
    tail = draw(st.binary(max_size=10))
    stream += tail
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return stream, cuts


@settings(max_examples=400, deadline=None)
@given(_stream_and_cuts())
def test_any_chunking_gives_the_events_of_the_whole_stream(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    whole = SSEParser()
    expected = whole.feed(stream)
    expected_rest = whole.flush()
    parser = SSEParser()
    events: list[Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += parser.feed(stream[start:end])
    rest = parser.flush()
    assert events == expected
    assert rest == expected_rest
    assert b"".join(e.raw for e in events) + rest == stream


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=5))
def test_rendered_events_parse_back(datas: list[str]) -> None:
    stream = b"".join(render(d, "message") for d in datas)
    events, tail = _whole(stream)
    assert tail == b""
    assert [e.data for e in events] == [d.replace("\r\n", "\n").replace("\r", "\n") for d in datas]
