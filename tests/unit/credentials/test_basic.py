"""gateway.credentials.basic: HTTP Basic (RFC 7617) with a configured user and secret password."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ServiceUnavailable
from tests.unit.credentials.conftest import Build, context, outbound


@pytest.mark.parametrize(
    ("username", "password", "pair"),
    [
        pytest.param("svc", "p@ss:word", b"svc:p@ss:word", id="colon-in-password"),
        pytest.param("Aladdin", "open sesame", b"Aladdin:open sesame", id="rfc7617-example"),
        pytest.param("test", "123£", "test:123£".encode(), id="utf-8-rfc7617-2.1"),
    ],
)
async def test_authorization_header(
    build: Build, monkeypatch: pytest.MonkeyPatch, username: str, password: str, pair: bytes
) -> None:
    monkeypatch.setenv("SVC_PW", password)
    conv = build({"type": "basic", "username": username, "password": "env:SVC_PW"})
    out = outbound()
    out.headers["Authorization"] = "Bearer client-token"
    await conv.apply(out, context())
    assert out.headers.getall("Authorization") == ["Basic " + base64.b64encode(pair).decode()]


def test_rfc7617_example_value() -> None:
    # RFC 7617 §2: "Aladdin" / "open sesame" is QWxhZGRpbjpvcGVuIHNlc2FtZQ==.
    assert base64.b64encode(b"Aladdin:open sesame") == b"QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


async def test_unreadable_password_is_503_without_the_secret(
    build: Build, tmp_path: Path, later: Callable[[], None]
) -> None:
    (tmp_path / "pw").write_text("hunter2-secret")
    conv = build({"type": "basic", "username": "svc", "password": "file:pw"})
    assert "hunter2-secret" not in repr(conv) + repr(conv.__dict__)
    (tmp_path / "pw").unlink()
    later()
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(out, context())
    assert info.value.reason == "secret_unavailable"
    assert "hunter2-secret" not in str(info.value)
    assert "Authorization" not in out.headers
