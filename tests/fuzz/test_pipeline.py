"""Fuzz the whole gateway over a real socket: fuzzed path, Host and credentials.

A real :class:`gateway.app.Gateway` (plain HTTP listener, embedded PDP with the shipped
policies, memory state) runs on an event loop in a background thread, in front of the echo
upstream of :mod:`tests.support`. Each example is one hand-written HTTP/1.1 request on a fresh
connection. The authenticated route accepts bearer tokens (plain or DPoP-bound), RFC 9421
signatures, API keys and basic credentials; each example carries valid ones or ones with one
fault (see :mod:`tests.fuzz.strategies`), or random header values.

Properties: the status is one the gateway documents for a client error or a decision (never a
500, and never a 502/503/504: every dependency here is up); a request with valid credentials
and an acceptable path is never refused as unauthenticated; a request that reaches the
upstream never carries ``Authorization``, ``DPoP``, ``Signature``, ``Signature-Input`` or the
API key header there.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import argon2
import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.errors import InvalidPath
from gateway.jose.jwk import jwk_thumbprint
from gateway.settings import parse_settings
from gateway.upstream.paths import normalize_path
from tests.fuzz.strategies import (
    KEYS,
    ath,
    b64url,
    compact_json,
    faults,
    fuzz,
    jws_tokens,
    mostly,
    mutated_text,
    paths,
    sign_compact,
)
from tests.support import LOCALHOST, ROOT, Upstream

T = TypeVar("T")

ISSUER = "https://idp.fuzz.test"
AUDIENCE = "https://gateway.fuzz.test"
TOKEN_KEY = KEYS["ES256"]  # the issuer's key (in jwks.json)
PROOF_KEY = KEYS["EdDSA"]  # the client's DPoP key
JKT = jwk_thumbprint(PROOF_KEY.public_jwk())
API_KEY = "ak_fuzz_0123456789abcdefghijklmnopqrstuv"
PASSWORD = "correct horse battery staple"
HMAC_SECRET = b"pipeline-fuzz-secret-0123456789abcdef"
HMAC_KEYID = "legacy-7"

# Client errors and decisions the gateway documents (DESIGN.md §6-7); never 5xx here.
ALLOWED = frozenset({200, 400, 401, 403, 404, 405, 413, 414, 429, 431})
CREDENTIAL_HEADERS = ("authorization", "dpop", "signature", "signature-input", "x-api-key")


# --------------------------------------------------------------------------- the stack


class Stack:
    """Upstream and gateway on one event loop in a daemon thread; blocking calls from tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.upstream = Upstream()
        self.gateway: Gateway | None = None
        self.port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self.upstream.start())
        self.gateway = self.call(self._gateway())
        assert self.gateway.main_address is not None
        self.port = self.gateway.main_address[1]

    async def _gateway(self) -> Gateway:
        settings = parse_settings(config(self.folder, self.upstream.url), self.folder)
        gateway = Gateway(settings)
        await gateway.start()
        return gateway

    def stop(self) -> None:
        if self.gateway is not None:
            self.call(self.gateway.stop())
        self.call(self.upstream.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def host(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def send(self, request: bytes) -> tuple[int, bytes]:
        with socket.create_connection((LOCALHOST, self.port), timeout=15) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        response = b"".join(chunks)
        status_line = response.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ")
        assert len(parts) >= 2, response[:200]
        assert parts[0] in (b"HTTP/1.1", b"HTTP/1.0"), response[:200]
        return int(parts[1]), response


def config(folder: Path, upstream: str) -> dict[str, Any]:
    jwk = {**TOKEN_KEY.public_jwk(), "kid": TOKEN_KEY.kid, "alg": "ES256", "use": "sig"}
    (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    api_keys = [
        {
            "id": "partner-1",
            "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
            "subject": "partner-agent-1",
            "roles": ["partner"],
        }
    ]
    (folder / "api-keys.yaml").write_text(yaml.safe_dump({"keys": api_keys}))
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    users = [{"username": "ops", "hash": hasher.hash(PASSWORD), "roles": ["operator"]}]
    (folder / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    (folder / "hmac.secret").write_bytes(HMAC_SECRET)
    hmac_keys = [
        {
            "id": HMAC_KEYID,
            "secret": "file:hmac.secret",
            "subject": "legacy-agent-7",
            "roles": ["partner"],
        }
    ]
    (folder / "hmac-keys.yaml").write_text(yaml.safe_dump({"keys": hmac_keys}))
    return {
        "server": {
            "listen": f"{LOCALHOST}:0",
            "admin_listen": f"{LOCALHOST}:0",
            "trust_domain": "example.org",
            "timeouts": {"drain_s": 1, "upstream_total_s": 10, "upstream_connect_s": 2},
        },
        "issuers": [
            {
                "name": "corp",
                "issuer": ISSUER,
                "jwks_file": "jwks.json",
                "audience": AUDIENCE,
                "algorithms": ["ES256"],
                "leeway_s": 5,
            }
        ],
        "authn": {
            "bearer": {"issuers": ["corp"]},
            "api_key": {"keys_file": "api-keys.yaml"},
            "basic": {"users_file": "users.yaml"},
            "hmac": {"keys_file": "hmac-keys.yaml", "required_components": ["@method", "created"]},
        },
        "pdp": {
            "engine": "embedded",
            "policies": str(ROOT / "policies"),
            "data": str(ROOT / "policies" / "data.json"),
            "cache": {"ttl_s": 0, "max_entries": 0},
        },
        "telemetry": {"audit_log": "off", "decision_log": "off"},
        "routes": [
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/"},
                "authn": {"any_of": ["bearer", "hmac", "api_key", "basic"]},
                "upstream": upstream,
                "segment": "booking",
            },
            {"name": "public", "upstream": upstream, "segment": "public", "tags": ["public"]},
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("pipeline"))
    s.start()
    try:
        # Warm-up (policy compilation, first connections) outside any example's deadline.
        status, _ = s.send(request("GET", "/public/x", s.host, []))
        assert status == 200
        yield s
    finally:
        s.stop()


# --------------------------------------------------------------------------- requests


def request(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += ["Content-Length: 0", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def access_token_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "travel-app",
        "scope": "flights.read",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **extra,
    }


TOKEN_HEADER = {"alg": "ES256", "typ": "at+jwt", "kid": TOKEN_KEY.kid}


def signed_token(**extra: Any) -> str:
    return sign_compact(
        TOKEN_KEY,
        b64url(compact_json(TOKEN_HEADER).encode()),
        b64url(compact_json(access_token_claims(**extra)).encode()),
    )


def dpop_proof(method: str, htu: str, token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": PROOF_KEY.public_jwk()}
    claims = {
        "jti": uuid.uuid4().hex,
        "htm": method,
        "htu": htu,
        "iat": int(time.time()),
        "ath": ath(token),
    }
    return sign_compact(
        PROOF_KEY, b64url(compact_json(header).encode()), b64url(compact_json(claims).encode())
    )


def hmac_headers(method: str, target: str) -> list[tuple[str, str]]:
    path = target.partition("?")[0] or "/"
    # A fresh nonce: hypothesis re-runs an example within the same second (replay otherwise).
    nonce = uuid.uuid4().hex
    params = f'("@method" "@path");created={int(time.time())};keyid="{HMAC_KEYID}";nonce="{nonce}"'
    base = f'"@method": {method}\n"@path": {path}\n"@signature-params": {params}'
    mac = hmac.new(HMAC_SECRET, base.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return [
        ("Signature-Input", f"sig1={params}"),
        ("Signature", f"sig1=:{base64.b64encode(mac.digest()).decode()}:"),
    ]


def header_safe(value: str) -> str:
    """No line break: framing attacks are the smuggling corpus' job, not this fuzzer's."""
    return value.replace("\r", "").replace("\n", "")


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    host: str | None  # None: the real authority of the listener
    kind: str
    fault: str
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def valid(self) -> bool:
        # (aiohttp's parser refuses a lower-case method: 400 before the gateway sees it.)
        return (
            self.fault == "none"
            and self.kind not in ("none", "random")
            and self.host is None
            and self.method.isupper()
        )


KINDS = ("none", "bearer", "dpop", "basic", "api_key", "hmac", "random")


@st.composite
def cases(draw: st.DrawFn) -> Case:
    method = draw(mostly("GET", st.sampled_from(["POST", "DELETE", "get", "PROPFIND"])))
    prefix = draw(mostly("/flights/", st.sampled_from(["/public/", "", "/"])))
    target = prefix + draw(paths).lstrip("/")
    target += draw(st.sampled_from(["", "", "?q=1", "?api_key=x&b=%zz", "?" + "a" * 50]))
    host = draw(
        mostly(
            None,
            st.sampled_from(["gw.fuzz.test", "", "a/b", "[::1", "127.0.0.1:1", "ä"])
            | st.text(max_size=8).map(header_safe),
        )
    )
    kind = draw(st.sampled_from(KINDS))
    fault = draw(faults) if kind in ("bearer", "dpop") else draw(st.sampled_from(["none", "text"]))
    extra: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)) == 0:  # a second credential field of the same name
        extra.append(draw(st.sampled_from([("Authorization", "Bearer x"), ("DPoP", "x")])))
    return Case(method, target, host, kind, fault, tuple(extra))


def forwarded_path(target: str) -> str:
    raw_path = target.partition("?")[0]
    try:
        return normalize_path(raw_path)
    except InvalidPath:
        return raw_path


def valid_headers(case: Case, host: str) -> list[tuple[str, str]]:
    """Correct credentials of ``case.kind`` for this request, made now (they carry a time)."""
    if case.kind == "basic":
        return [("Authorization", "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode())]
    if case.kind == "api_key":
        return [("X-API-Key", API_KEY)]
    if case.kind == "hmac":
        return hmac_headers(case.method, case.target)
    if case.kind == "bearer":
        return [("Authorization", f"Bearer {signed_token()}")]
    assert case.kind == "dpop"
    token = signed_token(cnf={"jkt": JKT})
    htu = f"http://{host}{forwarded_path(case.target)}"
    return [("Authorization", f"DPoP {token}"), ("DPoP", dpop_proof(case.method, htu, token))]


def credential_headers(data: st.DataObject, case: Case, host: str) -> list[tuple[str, str]]:
    """Headers for ``case``, built at send time (tokens and proofs carry the current time)."""
    if case.kind == "none":
        return []
    if case.fault == "none" and case.kind != "random":
        return valid_headers(case, host)
    if case.kind == "random":
        name = data.draw(st.sampled_from(["Authorization", "DPoP", "Signature-Input", "X-API-Key"]))
        value = data.draw(st.text(max_size=40).map(header_safe), label="value")
        return [(name, value)]
    if case.kind == "basic":
        user = "ops:" + PASSWORD
        if case.fault != "none":
            user = data.draw(mutated_text(user), label="user")
        return [("Authorization", "Basic " + base64.b64encode(user.encode()).decode())]
    if case.kind == "api_key":
        key = API_KEY if case.fault == "none" else data.draw(mutated_text(API_KEY), label="key")
        return [("X-API-Key", header_safe(key))]
    if case.kind == "hmac":
        headers = hmac_headers(case.method, case.target)
        if case.fault != "none":
            i = data.draw(st.integers(0, 1), label="which")
            name, value = headers[i]
            headers[i] = (name, header_safe(data.draw(mutated_text(value), label="field")))
        return headers
    cnf = {"cnf": {"jkt": JKT}} if case.kind == "dpop" else {}
    token, _ = data.draw(
        jws_tokens(TOKEN_KEY, TOKEN_HEADER, access_token_claims(**cnf), fault=case.fault),
        label="token",
    )
    if case.kind == "bearer":
        return [("Authorization", f"Bearer {token}")]
    htu = f"http://{host}{forwarded_path(case.target)}"
    return [("Authorization", f"DPoP {token}"), ("DPoP", dpop_proof(case.method, htu, token))]


def check(stack: Stack, case: Case, headers: list[tuple[str, str]]) -> int:
    host = case.host if case.host is not None else stack.host
    hits = len(stack.upstream.hits)
    status, response = stack.send(request(case.method, case.target, host, headers))
    assert status in ALLOWED, response[:300]
    path_ok = True
    try:
        normalize_path(case.target.partition("?")[0])
    except InvalidPath:
        path_ok = False
    if case.valid and not case.extra and path_ok and case.target.startswith("/flights/"):
        # Valid credentials on an acceptable request: authenticated (the policy decides).
        assert status not in (400, 401), response[:300]
    if status == 200 and len(stack.upstream.hits) > hits:
        received = {name.lower() for name, _ in stack.upstream.hits[-1].headers}
        assert not received.intersection(CREDENTIAL_HEADERS), received
    return status


@fuzz(300, deadline_ms=2000)
@given(cases(), st.data())
def test_requests_through_the_gateway(stack: Stack, case: Case, data: st.DataObject) -> None:
    host = case.host if case.host is not None else stack.host
    status = check(stack, case, credential_headers(data, case, host) + list(case.extra))
    event(f"{case.kind}/{case.fault}{'/extra' if case.extra else ''}: {status}")


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("bearer", "/flights/42"),
        ("dpop", "/flights/a/../%34%32"),
        ("hmac", "/flights/1?x=1"),
        ("api_key", "/flights/"),
        ("basic", "/flights/x"),
    ],
)
def test_valid_credentials_of_each_kind_authenticate(stack: Stack, kind: str, target: str) -> None:
    """The fuzzer's valid credentials really are valid: each passes authentication."""
    case = Case("GET", target, None, kind, "none")
    assert check(stack, case, valid_headers(case, stack.host)) in (200, 403)
