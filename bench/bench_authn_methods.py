"""Hot-path cost of the credential authentication methods (µs per request, medians of runs).

    python bench/bench_authn_methods.py [--runs 5] [--ops 2000]

Each line is the median (and min..max) over ``--runs`` runs of the time one
``authenticate(request, facts)`` call takes on the event loop, for:

* ``api_key``              -- SHA-256 of the key + dict lookup + constant-time confirm;
* ``basic cached``         -- a repeated correct Basic credential (success-cache hit);
* ``basic argon2id``       -- cache off, argon2id at argon2-cffi's default cost
                              (t=3, m=64 MiB, p=4), on the worker pool;
* ``basic bcrypt-12``      -- cache off, bcrypt cost 12;
* ``hmac no body``         -- RFC 9421 parse + signature base + HMAC + replay-cache insert;
* ``hmac 1 KiB body``      -- the same plus reading the body and checking Content-Digest;
* ``jwt_assertion ES256``  -- strict JWS parse + ES256 verify + claim checks + replay insert;
* ``jwt_assertion EdDSA``  -- the same with Ed25519.

Requests are built before the clock starts: every signature / assertion is distinct, because
the replay caches would (rightly) refuse a second use.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argon2  # noqa: E402
import bcrypt  # noqa: E402
import jwt  # noqa: E402
import yaml  # noqa: E402
from aiohttp import streams  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402
from multidict import CIMultiDict  # noqa: E402

from gateway.authn.api_key import APIKeyAuthenticator  # noqa: E402
from gateway.authn.basic import BasicAuthenticator  # noqa: E402
from gateway.authn.hmac_signature import HMACSignatureAuthenticator, message  # noqa: E402
from gateway.authn.jwt_assertion import JWTAssertionAuthenticator  # noqa: E402
from gateway.context import Inbound, RequestFacts  # noqa: E402
from gateway.httpsig import signature_base  # noqa: E402
from gateway.httpsig.sfv import InnerList, Item, serialize_inner_list  # noqa: E402
from gateway.protocols.body import RequestBody  # noqa: E402
from gateway.settings import (  # noqa: E402
    APIKeyMethod,
    BasicMethod,
    HMACMethod,
    JWTAssertionMethod,
)
from gateway.state.memory import MemoryReplayCache  # noqa: E402

NOW = int(time.time())
HOST = "gw.example.org"
AUDIENCE = "https://gw.example.org/"
API_KEY = "agk_" + "7f3c0e9b5d2a4e81b6c9d0f1a2b3c4d5"
PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark fixture
HMAC_SECRET = b"bench-shared-secret-0123456789abcdef0123"


def facts() -> RequestFacts:
    return RequestFacts(
        request_id="bench",
        method="POST",
        scheme="https",
        host=HOST,
        path="/p",
        raw_query="",
        client_address="127.0.0.1",
        peer_address="127.0.0.1",
        forwarded_for="127.0.0.1",
        forwarded_proto="https",
        forwarded_host=HOST,
        peer=None,
        time_ns=NOW * 10**9,
    )


class _Protocol:
    """Just enough of a protocol for a StreamReader fed in advance."""

    _reading_paused = False

    def pause_reading(self, **_: Any) -> None:
        return None

    def resume_reading(self, **_: Any) -> None:
        return None


def request(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> Any:
    """What the pipeline hands a method: an :class:`Inbound` over a mocked aiohttp request."""
    if not body:
        raw = make_mocked_request(method, target, headers=CIMultiDict(headers))
    else:
        reader = streams.StreamReader(_Protocol(), 1 << 20)  # type: ignore[arg-type]
        reader.feed_data(body)
        reader.feed_eof()
        raw = make_mocked_request(method, target, headers=CIMultiDict(headers), payload=reader)
    return Inbound(raw.method, raw.raw_path, raw.headers, raw.query, RequestBody(raw, 1 << 20))


async def measure(
    name: str,
    make: Callable[[int], Any],
    call: Callable[[Any], Awaitable[Any]],
    runs: int,
    ops: int,
) -> None:
    per_run: list[float] = []
    for run in range(runs):
        prepared = [make(run * ops + i) for i in range(ops)]
        start = time.perf_counter()
        for item in prepared:
            await call(item)
        per_run.append((time.perf_counter() - start) / ops * 1e6)
    med = statistics.median(per_run)
    print(f"{name:<24} {med:10.1f} µs/op   (runs {min(per_run):.1f} .. {max(per_run):.1f})")


def _constant(value: Any) -> Callable[[int], Any]:
    return lambda _: value


def _caller(method: Any, f: RequestFacts) -> Callable[[Any], Awaitable[Any]]:
    return lambda r: method.authenticate(r, f)


def write(folder: Path, name: str, data: Any) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


async def main(runs: int, ops: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        await bench_api_key(folder, runs, ops)
        await bench_basic(folder, runs, ops)
        await bench_hmac(folder, runs, ops)
        await bench_assertion(folder, runs, ops)


async def bench_api_key(folder: Path, runs: int, ops: int) -> None:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    keys = [{"id": "k", "sha256": digest, "subject": "s"}]
    keys += [{"id": f"k{i}", "sha256": f"{i:064x}", "subject": "s"} for i in range(1, 1000)]
    method = APIKeyAuthenticator(
        "api", APIKeyMethod(keys_file=write(folder, "k.yaml", {"keys": keys}))
    )
    req = request("GET", "/p", [("X-API-Key", API_KEY)])
    f = facts()
    await measure(
        "api_key (1000 keys)", lambda _: req, lambda r: method.authenticate(r, f), runs, ops
    )


async def bench_basic(folder: Path, runs: int, ops: int) -> None:
    header = "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    f = facts()
    for label, encoded, cache_s, n in [
        ("basic cached", argon2.PasswordHasher().hash(PASSWORD), 60.0, ops),
        ("basic argon2id", argon2.PasswordHasher().hash(PASSWORD), 0.0, 10),
        ("basic bcrypt-12", bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode(), 0.0, 10),
    ]:
        users = write(folder, "u.yaml", {"users": [{"username": "ops", "hash": encoded}]})
        method = BasicAuthenticator("basic", BasicMethod(users_file=users, success_cache_s=cache_s))
        await method.start()
        req = request("GET", "/p", [("Authorization", header)])
        await method.authenticate(req, f)  # warm the cache (and the worker pool)
        await measure(label, _constant(req), _caller(method, f), runs, n)
        await method.close()


async def bench_hmac(folder: Path, runs: int, ops: int) -> None:
    os.environ["AGENTGATE_BENCH_HMAC"] = HMAC_SECRET.decode()
    keys = {"keys": [{"id": "agent-7", "secret": "env:AGENTGATE_BENCH_HMAC", "subject": "a7"}]}
    method = HMACSignatureAuthenticator(
        "hmac",
        HMACMethod(keys_file=write(folder, "h.yaml", keys)),
        MemoryReplayCache(max_entries=1_000_000),
        max_body_bytes=1 << 20,
    )
    f = facts()

    def signed(body: bytes) -> Callable[[int], Any]:
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
        headers = [("Host", HOST), ("Content-Digest", digest), ("Content-Type", "application/json")]

        def make(i: int) -> Any:
            params = (("created", NOW), ("keyid", "agent-7"), ("nonce", f"n{i}"))
            components = ("@method", "@target-uri", "content-digest", "content-type")
            inner = InnerList(tuple(Item(c) for c in components), params)
            base = signature_base(inner, message(request("POST", "/p?x=1", headers), f).component)
            mac = base64.b64encode(hmac.new(HMAC_SECRET, base, hashlib.sha256).digest()).decode()
            sig = [
                ("Signature-Input", f"s={serialize_inner_list(inner)}"),
                ("Signature", f"s=:{mac}:"),
            ]
            return request("POST", "/p?x=1", headers + sig, body)

        return make

    call = lambda r: method.authenticate(r, f)  # noqa: E731
    await measure("hmac no body", signed(b""), call, runs, ops)
    await measure(
        "hmac 1 KiB body", signed(json.dumps({"d": "x" * 1000}).encode()), call, runs, ops
    )


async def bench_assertion(folder: Path, runs: int, ops: int) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()

    def jwk(key: Any, alg: str, kid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(key.public_key()))
        return {**data, "alg": alg, "kid": kid}

    agents = {
        "agents": [
            {
                "id": "planner",
                "jwks": {"keys": [jwk(ec_key, "ES256", "e"), jwk(ed_key, "EdDSA", "d")]},
            }
        ]
    }
    method = JWTAssertionAuthenticator(
        "assert",
        JWTAssertionMethod(agents_file=write(folder, "a.yaml", agents)),
        MemoryReplayCache(max_entries=1_000_000),
        gateway_audience=AUDIENCE,
    )
    f = facts()

    def minted(key: Any, alg: str, kid: str) -> Callable[[int], Any]:
        def make(i: int) -> Any:
            claims = {
                "iss": "planner",
                "sub": "planner",
                "aud": AUDIENCE,
                "iat": NOW,
                "exp": NOW + 60,
                "jti": f"{alg}-{i}",
            }
            token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
            return request("GET", "/p", [("Agent-Assertion", token)])

        return make

    call = lambda r: method.authenticate(r, f)  # noqa: E731
    await measure("jwt_assertion ES256", minted(ec_key, "ES256", "e"), call, runs, ops)
    await measure("jwt_assertion EdDSA", minted(ed_key, "EdDSA", "d"), call, runs, ops)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.runs} runs x {args.ops} ops (slow hashes: 10)")
    asyncio.run(main(args.runs, args.ops))
