"""Shared material for the token-based authentication tests (bearer, JWKS, DPoP, introspection).

Real keys (``cryptography``), tokens minted with PyJWT (or signed by hand where a test needs
bytes PyJWT refuses to produce: duplicate members, ``alg: none`` casings, HMAC with a public
key), aiohttp's own request objects, and real local aiohttp servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from multidict import CIMultiDict

from gateway.context import Inbound, Peer, RequestFacts
from gateway.settings import BearerMethod, Issuer
from tests.support import inbound

VECTORS = Path(__file__).resolve().parents[2] / "vectors"

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z: every test runs on this frozen wall clock
ISS = "https://idp.example.org"
AUD = "https://gateway.example.org"
HOST = "gw.example.org"
DROP = object()  # claims(sub=DROP) removes the claim


def vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Clock:
    """A settable clock (wall or monotonic): tests move time instead of sleeping."""

    def __init__(self, t: float = NOW) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Key:
    kid: str | None
    alg: str
    private: Any = field(repr=False)

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        out = public_jwk(self.public)
        if self.kid is not None:
            out["kid"] = self.kid
        if with_alg:
            out["alg"] = self.alg
        out.update(extra)
        return out

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def public_jwk(pub: Any) -> dict[str, Any]:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        size = (pub.curve.key_size + 7) // 8
        nums = pub.public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64(nums.x.to_bytes(size, "big")),
            "y": b64(nums.y.to_bytes(size, "big")),
        }
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    nums = pub.public_numbers()
    n_len = (nums.n.bit_length() + 7) // 8
    return {
        "kty": "RSA",
        "n": b64(nums.n.to_bytes(n_len, "big")),
        "e": b64(nums.e.to_bytes(3, "big")),
    }


def private_jwk(key: Key) -> dict[str, Any]:
    """The JWK with its private scalar: what a careless client might put in a DPoP header."""
    out = key.jwk(with_alg=False)
    out.pop("kid", None)
    priv = key.private.private_numbers().private_value
    out["d"] = b64(priv.to_bytes(32, "big"))
    return out


@functools.cache
def keys() -> dict[str, Key]:
    """Process-wide test keys (RSA generation is slow, so build them once)."""
    return {
        "es": Key("es-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        "es384": Key("es384-1", "ES384", ec.generate_private_key(ec.SECP384R1())),
        "ed": Key("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        "rs": Key("rs-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "attacker": Key("att-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        "client": Key(None, "ES256", ec.generate_private_key(ec.SECP256R1())),
        "client2": Key(None, "ES256", ec.generate_private_key(ec.SECP256R1())),
        "client_ed": Key(None, "EdDSA", ed25519.Ed25519PrivateKey.generate()),
    }


def jwks(*items: Key | Mapping[str, Any]) -> dict[str, Any]:
    return {"keys": [k.jwk() if isinstance(k, Key) else dict(k) for k in items]}


def write_jwks(path: Path, *items: Key | Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(jwks(*items)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- tokens


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "alice",
        "aud": AUD,
        "exp": NOW + 300,
        "iat": NOW,
        "jti": secrets.token_urlsafe(8),
        "client_id": "travel-agent",
        "scope": "flights.read flights.write",
    }
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def mint(
    payload: Mapping[str, Any] | None = None,
    *,
    key: Key | None = None,
    alg: str | None = None,
    kid: Any = "default",
    typ: str | None = "at+jwt",
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A JWT signed with PyJWT (the issuer's ES256 key unless told otherwise)."""
    key = key or keys()["es"]
    header: dict[str, Any] = {"typ": typ}
    if kid == "default":
        kid = key.kid
    if kid is not None:
        header["kid"] = kid
    header.update(headers or {})
    body = json.dumps(claims() if payload is None else dict(payload)).encode()
    # PyJWS, not PyJWT's claim layer: tests must be able to send claims PyJWT would refuse.
    return jwt.api_jws.encode(body, key.private, algorithm=alg or key.alg, headers=header)


def sign_raw(header: str | bytes, payload: str | bytes, key: Key | None = None) -> str:
    """Sign exact header/payload bytes (duplicates and all) with an EC or Ed25519 key."""
    key = key or keys()["es"]
    h = header.encode() if isinstance(header, str) else header
    p = payload.encode() if isinstance(payload, str) else payload
    signing_input = f"{b64(h)}.{b64(p)}".encode()
    if isinstance(key.private, ec.EllipticCurvePrivateKey):
        size = (key.private.curve.key_size + 7) // 8
        digest = {32: hashes.SHA256(), 48: hashes.SHA384()}[size]
        r, s = decode_dss_signature(key.private.sign(signing_input, ec.ECDSA(digest)))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        sig = key.private.sign(signing_input)
    return f"{signing_input.decode()}.{b64(sig)}"


def hs256(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    """HMAC-SHA-256 JWS by hand (PyJWT refuses PEM-looking secrets, which is the point)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode()).digest())


def dpop_proof(
    key: Key | None = None,
    *,
    htm: str = "GET",
    htu: str = f"https://{HOST}/flights/42",
    token: str | None = None,
    iat: float = NOW,
    jti: str | None = None,
    typ: str | None = "dpop+jwt",
    jwk: Mapping[str, Any] | None = None,
    alg: str | None = None,
    drop: Iterable[str] = (),
    **extra: Any,
) -> str:
    key = key or keys()["client"]
    body: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(12), "htm": htm, "htu": htu}
    body["iat"] = iat
    if token is not None:
        body["ath"] = ath(token)
    body.update(extra)
    for name in drop:
        body.pop(name, None)
    header = {"typ": typ, "jwk": dict(jwk) if jwk is not None else key.jwk(with_alg=False)}
    return jwt.api_jws.encode(
        json.dumps(body).encode(), key.private, algorithm=alg or key.alg, headers=header
    )


# --------------------------------------------------------------------------- settings


def make_issuer(**overrides: Any) -> Issuer:
    data: dict[str, Any] = {
        "name": "corp",
        "issuer": ISS,
        "audience": AUD,
        "algorithms": ["ES256", "EdDSA", "RS256"],
        "leeway_s": 30,
    }
    data.update(overrides)
    return Issuer.model_validate(data)


def bearer_cfg(**overrides: Any) -> BearerMethod:
    data: dict[str, Any] = {"issuers": ["corp"]}
    data.update(overrides)
    return BearerMethod.model_validate(data)


# --------------------------------------------------------------------------- requests


def request(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    method: str = "GET",
    path: str = "/flights/42",
    query: str = "",
    host: str = HOST,
    **kwargs: Any,
) -> Inbound:
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if not any(name.lower() == "host" for name, _ in pairs):
        pairs.append(("Host", host))
    target = f"{path}?{query}" if query else path
    return inbound(make_mocked_request(method, target, headers=CIMultiDict(pairs), **kwargs))


def facts(
    req: web.BaseRequest | Inbound, *, peer: Peer | None = None, scheme: str = "https"
) -> RequestFacts:
    return RequestFacts(
        request_id="test",
        method=req.method,
        scheme=scheme,
        host=req.headers.get("Host", HOST),
        path=req.raw_path.partition("?")[0],  # as the pipeline: raw (already canonical) path
        raw_query=req.raw_path.partition("?")[2],
        client_address="127.0.0.1",
        peer_address="127.0.0.1",
        forwarded_for="127.0.0.1",
        forwarded_proto=scheme,
        forwarded_host=req.headers.get("Host", HOST),
        peer=peer,
        time_ns=NOW * 1_000_000_000,
    )


# --------------------------------------------------------------------------- servers


class CountingServer:
    """A real aiohttp server on 127.0.0.1 that counts TCP connections and requests."""

    def __init__(self, handler: Callable[[web.Request], Any]) -> None:
        self.connections = 0
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []
        self._handler = handler
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        self.requests.append(req)
        self.bodies.append(await req.read())
        result = self._handler(req)
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[no-any-return]

    async def start(self) -> CountingServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        factory = self._runner.server
        assert factory is not None

        def protocol() -> Any:
            self.connections += 1
            return factory()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
