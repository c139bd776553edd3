"""The listener's body-read deadline (gateway.net.listener.BodyIdleTimer) on aiohttp's own
StreamReader, the one a request body is read from; and which HTTP parser runs.

Timings are generous (a loaded two-core machine): a deadline of 0.3 s against gaps of 0.05 s.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import helpers
from aiohttp.streams import StreamReader

from gateway.net.listener import BodyIdleTimer, BodyReadTimeout, parser_kind

IDLE_S = 0.3


class _Protocol:
    """What StreamReader asks of its protocol: whether it is connected, flow control."""

    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def body(fired: list[bool]) -> StreamReader:
    loop = asyncio.get_running_loop()
    reader = StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    reader._timer = BodyIdleTimer(loop, IDLE_S, lambda: fired.append(True))
    return reader


def test_stream_reader_still_takes_a_timer() -> None:
    # The listener relies on this slot (aiohttp builds server payloads with no timer).
    assert "_timer" in StreamReader.__slots__


async def test_a_stalled_body_read_times_out_and_stays_timed_out() -> None:
    fired: list[bool] = []
    reader = body(fired)
    reader.feed_data(b"abc")
    assert await reader.read(10) == b"abc"  # data already there: no wait, no deadline
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BodyReadTimeout):
        await reader.read(10)
    assert loop.time() - started >= IDLE_S * 0.9
    assert fired == [True]
    reader.feed_data(b"late")
    with pytest.raises(BodyReadTimeout):  # a timed-out body is never read again
        await reader.read(10)


async def test_the_deadline_is_per_gap_not_for_the_whole_body() -> None:
    fired: list[bool] = []
    reader = body(fired)

    async def trickle() -> None:
        for _ in range(12):  # 12 x 0.05 s = 0.6 s in all, twice the deadline
            await asyncio.sleep(0.05)
            reader.feed_data(b"x")
        reader.feed_eof()

    task = asyncio.create_task(trickle())
    received = b""
    while chunk := await reader.read(10):
        received += chunk
    await task
    assert received == b"x" * 12
    assert fired == []


async def test_another_cancellation_is_not_a_timeout() -> None:
    fired: list[bool] = []
    reader = body(fired)
    task = asyncio.create_task(reader.read(10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fired == []
    await asyncio.sleep(IDLE_S * 1.5)  # the cancelled wait left no deadline behind
    assert fired == []


def test_parser_kind_matches_aiohttp() -> None:
    expected = "python" if helpers.NO_EXTENSIONS else "llhttp"
    try:
        from aiohttp import _http_parser  # noqa: F401  # the compiled extension
    except ImportError:
        expected = "python"
    assert parser_kind() == expected
