"""gateway.credentials.none: nothing is added, nothing is changed."""

from __future__ import annotations

from pathlib import Path

from gateway.credentials.none import NoneConverter
from tests.unit.credentials.conftest import Build, context, manager, outbound


async def test_explicit_none_sends_nothing(build: Build) -> None:
    conv = build({"type": "none"})
    assert isinstance(conv, NoneConverter)
    out = outbound("https://backend.internal/p?a=1&b=%20")
    out.headers["Accept"] = "application/json"
    await conv.apply(out, context())
    assert list(out.headers.items()) == [("Accept", "application/json")]
    assert str(out.url) == "https://backend.internal/p?a=1&b=%20"
    assert out.ssl_context is None
    assert out.scrub_query == frozenset()


async def test_default_without_minting_is_none(tmp_path: Path) -> None:
    conv = manager(tmp_path, {}).select("r", None)
    assert isinstance(conv, NoneConverter)
    out = outbound()
    await conv.apply(out, context(None))
    assert dict(out.headers) == {}
