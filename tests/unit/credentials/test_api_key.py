"""gateway.credentials.api_key: a static key in a header or one query parameter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ServiceUnavailable
from tests.unit.credentials.conftest import Build, context, outbound

KEY = "k-123/+ =&"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_KEY", KEY)


@pytest.mark.parametrize(
    ("cfg", "header"),
    [
        pytest.param({}, "X-API-Key", id="default-header"),
        pytest.param({"header": "X-Billing-Key"}, "X-Billing-Key", id="configured-header"),
    ],
)
async def test_key_in_a_header(build: Build, cfg: dict[str, str], header: str) -> None:
    conv = build({"type": "api_key", "secret": "env:BILLING_KEY", **cfg})
    out = outbound()
    out.headers[header] = "client-sent"
    await conv.apply(out, context())
    assert out.headers.getall(header) == [KEY]
    assert out.url.raw_query_string == "a=1"  # the URL is untouched
    assert out.scrub_query == frozenset()


QUERY_CASES = [
    pytest.param("?a=1", "a=1&key=k-123%2F%2B%20%3D%26", id="appended-percent-encoded"),
    pytest.param("", "key=k-123%2F%2B%20%3D%26", id="no-query"),
    pytest.param("?key=forged&a=1", "a=1&key=k-123%2F%2B%20%3D%26", id="client-copy-dropped"),
    pytest.param("?k%65y=forged&a=1", "a=1&key=k-123%2F%2B%20%3D%26", id="encoded-copy-dropped"),
    pytest.param("?key&a=%2f+x", "a=%2f+x&key=k-123%2F%2B%20%3D%26", id="other-bytes-kept"),
    pytest.param("?a=1&&b=2", "a=1&b=2&key=k-123%2F%2B%20%3D%26", id="empty-pairs-dropped"),
]


@pytest.mark.parametrize(("query", "expected"), QUERY_CASES)
async def test_key_in_the_query(build: Build, query: str, expected: str) -> None:
    conv = build(
        {"type": "api_key", "header": None, "query_param": "key", "secret": "env:BILLING_KEY"}
    )
    out = outbound(f"http://backend.internal/api/x{query}")
    await conv.apply(out, context())
    assert out.url.raw_query_string == expected
    assert out.url.query["key"] == KEY
    assert out.scrub_query == frozenset({"key"})
    assert "X-API-Key" not in out.headers


def test_secret_never_in_repr(build: Build) -> None:
    conv = build({"type": "api_key", "secret": "env:BILLING_KEY"})
    assert KEY not in repr(conv)
    assert KEY not in repr(conv.__dict__)


async def test_file_secret_rotates_and_fails_closed(
    build: Build, tmp_path: Path, later: Callable[[], None]
) -> None:
    (tmp_path / "key.txt").write_text("first\n")
    conv = build({"type": "api_key", "secret": "file:key.txt"})
    out = outbound()
    await conv.apply(out, context())
    assert out.headers["X-API-Key"] == "first"
    (tmp_path / "key.txt").write_text("second-longer")
    later()
    out = outbound()
    await conv.apply(out, context())
    assert out.headers["X-API-Key"] == "second-longer"
    (tmp_path / "key.txt").unlink()
    later()
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(out, context())
    assert info.value.status == 503
    assert info.value.reason == "secret_unavailable"
    assert "second-longer" not in str(info.value) + repr(info.value)
    assert "X-API-Key" not in out.headers
