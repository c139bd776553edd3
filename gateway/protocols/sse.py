"""Server-sent events (``text/event-stream``, WHATWG HTML §9.2.5-§9.2.6) split into events.

Contract: pure, incremental, no I/O. :class:`SSEParser` is fed the chunks of a response body as
they arrive and returns each *complete* event (ended by a blank line) as an :class:`Event` whose
``raw`` is its exact bytes, terminating blank line included; the bytes after the last complete
event are kept for the next chunk. The concatenation of every ``raw`` and the final
:meth:`SSEParser.flush` is the input, whatever the chunking, so a relay that sends ``raw`` for
the events it does not change sends the stream byte for byte.

Parsing follows §9.2.6: lines end in CRLF, LF or CR (a CR at the end of a chunk waits for the
next byte, it may be half of a CRLF); a line starting with ``:`` is a comment; the field name
runs to the first ``:`` and one space after it is dropped; ``data`` lines are joined with LF;
``event`` and ``id`` (without NUL) are kept, ``retry`` and unknown fields are left in ``raw``
only; one leading UTF-8 BOM of the stream is ignored; bytes are decoded as UTF-8 with
replacement. Unlike a browser, an event with no ``data`` is still returned (``data`` is None):
the relay must pass comments and keep-alives through.

An event, or an unterminated tail, longer than ``max_event_bytes`` raises
:class:`EventTooLarge` (SECURITY: the parser buffers one event, never an unbounded stream).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_BOM: Final = b"\xef\xbb\xbf"
_SPLIT_LINES: Final = re.compile(r"\r\n|\r|\n")


class EventTooLarge(Exception):
    """One event (or the unterminated tail of a stream) exceeded ``max_event_bytes``."""


@dataclass(frozen=True, slots=True)
class Event:
    raw: bytes  # the exact bytes of the event incl. its terminating blank line
    data: str | None  # joined data lines, None if the event has no data field
    event: str | None  # the `event:` field
    id: str | None = None  # the `id:` field (relay it when re-rendering a changed event)


class SSEParser:
    """Incremental splitter of one event stream; one instance per response."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_max", "_pos", "_started")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._pos = 0  # where the next unparsed line of the current event starts
        self._started = False  # the first line of the stream (BOM) has been seen
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] | None = None
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``; the rest is kept for the next call."""
        self._buf += chunk
        events = self._events(at_eof=False)
        if len(self._buf) > self._max:
            raise EventTooLarge("event too large")
        return events

    def close(self) -> tuple[list[Event], bytes]:
        """At EOF: the events a final CR completes, then the unterminated remainder.

        A filtering relay calls this (not :meth:`flush`) so that an event ended by a CR that is
        the stream's last byte is filtered like any other; the remainder is never an event.
        """
        events = self._events(at_eof=True)
        rest = bytes(self._buf)
        self._buf.clear()
        self._pos = 0
        self._reset()
        return events, rest

    def flush(self) -> bytes:
        """At EOF: every byte not yet returned in an event (relay it as is)."""
        events, rest = self.close()
        return b"".join(e.raw for e in events) + rest

    def _events(self, *, at_eof: bool) -> list[Event]:
        events: list[Event] = []
        buf = self._buf
        while (eol := _line_end(buf, self._pos, at_eof)) is not None:
            line = bytes(buf[self._pos : eol[0]])
            self._pos = eol[1]
            first, self._started = not self._started, True
            if first:
                line = line.removeprefix(_BOM)
            if line:
                self._field(line)
                continue
            if self._pos > self._max:
                raise EventTooLarge("event too large")
            raw = bytes(buf[: self._pos])
            del buf[: self._pos]
            self._pos = 0
            data = "\n".join(self._data) if self._data is not None else None
            events.append(Event(raw, data, self._event, self._id))
            self._reset()
        return events

    def _field(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if text.startswith(":"):
            return  # a comment
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value


def _line_end(buf: bytearray, pos: int, at_eof: bool) -> tuple[int, int] | None:
    """(start, end) of the first line terminator at or after ``pos``, None if none is complete.

    ``bytes.find`` (memchr) rather than a regular expression: a 2 KB ``data`` line is scanned
    in C at memory speed. A CR that is the last byte so far is not complete unless ``at_eof``:
    it may be the first half of a CRLF.
    """
    lf = buf.find(b"\n", pos)
    cr = buf.find(b"\r", pos, lf if lf >= 0 else len(buf))
    if cr < 0:
        return (lf, lf + 1) if lf >= 0 else None
    if cr + 1 < len(buf):
        return (cr, cr + 2) if buf[cr + 1] == 0x0A else (cr, cr + 1)
    return (cr, cr + 1) if at_eof else None


def render(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """One event: ``event:``, ``id:``, one ``data:`` line per line of ``data``, a blank line."""
    for name, value in (("event", event), ("id", id)):
        if value is not None and _SPLIT_LINES.search(value):
            # SECURITY: a line break in a field would inject fields (or whole events).
            raise ValueError(f"line break in the {name} field")
    if id is not None and "\x00" in id:
        raise ValueError("NUL in the id field")
    lines = [f"event: {event}"] if event is not None else []
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {line}" for line in _SPLIT_LINES.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")
