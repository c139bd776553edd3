"""gateway.credentials.hmac_sign: RFC 9421 ``hmac-sha256`` signatures on the outbound request.

What goes out is checked against an independent computation from the RFC text, and against
the gateway's own verifier (the other user of :mod:`gateway.httpsig`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.credentials.hmac_sign import COMPONENTS, HMACSignConverter
from gateway.errors import ServiceUnavailable
from tests.unit.credentials.conftest import Build, context, outbound

SECRET = b"outbound-shared-secret-0123456789abcdef"
_INPUT = re.compile(
    r'^(?P<label>[a-z*][a-z0-9_.*-]*)=\("@method" "@authority" "@path" "@query"\)'
    r';created=(?P<created>\d+);keyid="(?P<keyid>[^"]*)";alg="hmac-sha256"$'
)


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    (tmp_path / "hmac.secret").write_bytes(SECRET)
    return "file:hmac.secret"


def _expected(method: str, authority: str, path: str, query: str, params: str) -> str:
    base = (
        f'"@method": {method}\n"@authority": {authority}\n"@path": {path}\n"@query": {query}\n'
        f'"@signature-params": {params}'
    )
    mac = hmac.new(SECRET, base.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


CASES = [
    pytest.param(
        "GET", "http://backend.internal/api/x?a=1", "backend.internal", "/api/x", "?a=1", id="http"
    ),
    pytest.param(
        "post",
        "https://Backend.Internal:443/",
        "backend.internal",
        "/",
        "?",
        id="default-port-dropped-method-upper",
    ),
    pytest.param(
        "DELETE",
        "https://backend.internal:8443/a%2Fb/c?x=%20&y",
        "backend.internal:8443",
        "/a%2Fb/c",
        "?x=%20&y",
        id="port-kept-encoding-as-sent",
    ),
    pytest.param("GET", "http://[::1]:8080", "[::1]:8080", "/", "?", id="ipv6-empty-path"),
]


@pytest.mark.parametrize(("method", "url", "authority", "path", "query"), CASES)
async def test_signature_headers(
    build: Build,
    secret_file: str,
    method: str,
    url: str,
    authority: str,
    path: str,
    query: str,
) -> None:
    conv = build({"type": "hmac_sign", "key_id": "gw-1", "secret": secret_file, "label": "gw"})
    assert isinstance(conv, HMACSignConverter)
    out = outbound(url, method=method)
    before = int(time.time())
    await conv.apply(out, context())
    (signature_input,) = out.headers.getall("Signature-Input")
    (signature,) = out.headers.getall("Signature")
    match = _INPUT.match(signature_input)
    assert match is not None, signature_input
    assert (match["label"], match["keyid"]) == ("gw", "gw-1")
    assert before <= int(match["created"]) <= int(time.time())
    params = signature_input.removeprefix("gw=")
    assert signature == f"gw=:{_expected(method.upper(), authority, path, query, params)}:"
    assert SECRET.decode() not in str(out.headers)


def test_covers_what_the_docstring_says() -> None:
    assert COMPONENTS == ("@method", "@authority", "@path", "@query")


async def test_client_sent_signature_fields_are_replaced(build: Build, secret_file: str) -> None:
    conv = build({"type": "hmac_sign", "key_id": "gw-1", "secret": secret_file})
    out = outbound()
    out.headers["Signature-Input"] = 'sig1=("@method");keyid="forged"'
    out.headers["Signature"] = "sig1=:AAAA:"
    await conv.apply(out, context())
    assert len(out.headers.getall("Signature-Input")) == 1
    assert 'keyid="gw-1"' in out.headers["Signature-Input"]
    assert out.headers["Signature"] != "sig1=:AAAA:"


async def test_unreadable_secret_is_503(
    build: Build, secret_file: str, tmp_path: Path, later: Callable[[], None]
) -> None:
    conv = build({"type": "hmac_sign", "key_id": "gw-1", "secret": secret_file})
    assert SECRET.decode() not in repr(conv) + repr(vars(conv))
    (tmp_path / "hmac.secret").unlink()
    later()
    out = outbound()
    with pytest.raises(ServiceUnavailable) as info:
        await conv.apply(out, context())
    assert info.value.reason == "secret_unavailable"
    assert "Signature" not in out.headers
