"""gateway.credentials.bearer_static: a static bearer token (RFC 6750 §2.1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ServiceUnavailable
from gateway.settings import Secret, parse_settings
from tests.unit.credentials.conftest import Build, context, outbound


async def test_authorization_header(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATIC_TOKEN", "static-token")
    conv = build({"type": "bearer_static", "token": "env:STATIC_TOKEN"})
    out = outbound()
    out.headers["authorization"] = "Bearer client-token"
    await conv.apply(out, context())
    assert out.headers.getall("Authorization") == ["Bearer static-token"]


def test_settings_repr_never_shows_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATIC_TOKEN", "static-token")
    route = {
        "name": "r",
        "upstream": "http://127.0.0.1:9",
        "credential": {"type": "bearer_static", "token": "env:STATIC_TOKEN"},
    }
    settings = parse_settings({"routes": [route]}, tmp_path)
    text = repr(settings) + str(settings.model_dump())
    assert "static-token" not in text
    assert "env:STATIC_TOKEN" in text


def test_secret_object_compares_by_reference_only() -> None:
    assert Secret("env:A", b"x") == Secret("env:A", b"y")
    assert "x" not in str(Secret("env:A", b"x"))


@pytest.mark.parametrize(
    "content",
    [pytest.param(None, id="file-removed"), pytest.param(b"tok\x00en", id="control-character")],
)
async def test_unusable_token_is_503(
    build: Build, tmp_path: Path, later: Callable[[], None], content: bytes | None
) -> None:
    (tmp_path / "token").write_text("good-token")
    conv = build({"type": "bearer_static", "token": "file:token"})
    if content is None:
        (tmp_path / "token").unlink()
    else:
        (tmp_path / "token").write_bytes(content)
    later()
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(out, context())
    assert info.value.reason == "secret_unavailable"
    assert "good-token" not in str(info.value)
    assert "Authorization" not in out.headers
