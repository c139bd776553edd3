"""gateway.httpsig.hmac_sha256: RFC 9421 §3.3.3 vectors, and sign-then-verify round trips.

The round trips cross a real socket: what the outbound signer (the ``hmac_sign`` credential)
or a bare :func:`sign_request` (what the agent SDK will call) puts on the wire is verified by
a server that derives the components from the request *as received*, as the inbound ``hmac``
method does (the method itself is exercised the same way in tests/fuzz/test_httpsig.py and
tests/unit/authn/test_hmac_signature.py).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.credentials import ConvertContext, Outbound
from gateway.credentials.hmac_sign import HMACSignConverter
from gateway.httpsig import InvalidSignature, Request, parse_signature_fields, signature_base
from gateway.httpsig.hmac_sha256 import ALGORITHM, sign, sign_request, verify
from gateway.httpsig.sfv import InnerList, parse_dictionary
from gateway.settings import HMACSignCredential, Secret
from tests.unit.httpsig import vectors as v

RFC_KEY = base64.b64decode(v.SHARED_SECRET_B64)
KEY = b"round-trip-secret-0123456789abcdef"


def _b25() -> tuple[bytes, bytes]:
    (params,) = parse_dictionary(v.B25_INPUT).values()
    assert isinstance(params, InnerList)
    (sig,) = parse_dictionary(v.B25_SIGNATURE).values()
    return signature_base(params, v.REQUEST.component), sig.value  # type: ignore[union-attr,return-value]


def test_rfc9421_b25_vector() -> None:
    base, signature = _b25()
    assert base.decode() == v.B25_BASE
    assert sign(RFC_KEY, base) == signature
    verify(RFC_KEY, base, signature)


@pytest.mark.parametrize(
    ("key", "edit"),
    [
        pytest.param(RFC_KEY[:-1] + b"\x00", None, id="other-key"),
        pytest.param(RFC_KEY, "base", id="base-changed"),
        pytest.param(RFC_KEY, "signature", id="signature-bit-flipped"),
        pytest.param(RFC_KEY, "truncated", id="signature-truncated"),
        pytest.param(RFC_KEY, "empty", id="signature-empty"),
    ],
)
def test_verify_refuses(key: bytes, edit: str | None) -> None:
    base, signature = _b25()
    if edit == "base":
        base = base.replace(b"example.com", b"example.org")
    elif edit == "signature":
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    elif edit == "truncated":
        signature = signature[:16]
    elif edit == "empty":
        signature = b""
    with pytest.raises(InvalidSignature, match="signature mismatch"):
        verify(key, base, signature)


def test_sign_request_fields() -> None:
    signature_input, signature = sign_request(
        v.REQUEST, ("@method", "@authority"), key=KEY, keyid="agent-7", created=1, label="s"
    )
    assert (
        signature_input == 's=("@method" "@authority");created=1;keyid="agent-7";alg="hmac-sha256"'
    )
    parsed = parse_signature_fields([signature_input], [signature])
    assert parsed.params["alg"] == ALGORITHM
    verify(KEY, signature_base(parsed.params_list, v.REQUEST.component), parsed.signature)


# --------------------------------------------------------------------------- over a socket


class Verifier:
    """A server that verifies each request's signature from the request as received."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        received = Request(
            method=request.method,
            scheme="http",
            authority=request.headers["Host"],
            target=request.raw_path,
            fields=lambda name: request.headers.getall(name, ()),
        )
        parsed = parse_signature_fields(
            request.headers.getall("Signature-Input"), request.headers.getall("Signature")
        )
        try:
            verify(KEY, signature_base(parsed.params_list, received.component), parsed.signature)
        except InvalidSignature:
            return web.Response(status=401)
        return web.Response(text=",".join(parsed.covered))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        if not isinstance(server, asyncio.Server):
            raise RuntimeError("no TCP server")
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def verifier() -> AsyncIterator[Verifier]:
    server = Verifier()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def _send(out: Outbound, *, method: str | None = None, path: str | None = None) -> Any:
    url = out.url if path is None else out.url.with_path(path, encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method or out.method, url, headers=out.headers) as resp,
    ):
        return resp.status, await resp.text()


TARGETS = [
    pytest.param("GET", "/", id="root"),
    pytest.param("POST", "/api/v1/items?b=2&a=1", id="query-order-kept"),
    pytest.param("DELETE", "/a%2Fb/%7Euser?x=%20&flag", id="encoded-as-sent"),
    pytest.param("patch", "/p?", id="lowercase-method-empty-query"),
]


@pytest.mark.parametrize(("method", "target"), TARGETS)
async def test_outbound_signer_verifies_on_the_wire(
    verifier: Verifier, method: str, target: str
) -> None:
    cfg = HMACSignCredential(type="hmac_sign", key_id="gw-1", secret=Secret("env:K", KEY))
    out = Outbound(
        method.upper(),
        URL(f"http://127.0.0.1:{verifier.port}{target}", encoded=True),
        CIMultiDict(),
    )
    ctx = ConvertContext(facts=None, identity=None, txn_token=None)  # type: ignore[arg-type]
    await HMACSignConverter("default", cfg).apply(out, ctx)
    assert await _send(out) == (200, "@method,@authority,@path,@query")
    # A covered part changed after signing: refused.
    assert (await _send(out, method="PUT"))[0] == 401
    assert (await _send(out, path="/other"))[0] == 401


async def test_sdk_style_signer_verifies_on_the_wire(verifier: Verifier) -> None:
    authority = f"127.0.0.1:{verifier.port}"
    request = Request(
        "POST",
        "http",
        authority,
        "/tasks?id=7",
        lambda n: ["application/json"] if n == "content-type" else [],
    )
    signature_input, signature = sign_request(
        request,
        ("@method", "@target-uri", "content-type"),
        key=KEY,
        keyid="agent-7",
        created=int(time.time()),
        label="agent",
    )
    headers = CIMultiDict(
        {
            "Content-Type": "application/json",
            "Signature-Input": signature_input,
            "Signature": signature,
        }
    )
    out = Outbound("POST", URL(f"http://{authority}/tasks?id=7", encoded=True), headers)
    assert await _send(out) == (200, "@method,@target-uri,content-type")
    out.headers["Content-Type"] = "text/plain"
    assert (await _send(out))[0] == 401
