"""Micro-benchmarks for token authentication (run: python bench/bench_authn_tokens.py).

Prints the median µs/op over several runs of:

* raw ``cryptography`` ES256 verify (the floor: one ECDSA P-256 verification);
* first-time ES256 bearer validation through ``JWTBearerAuthenticator`` with the verified-token
  cache off (target: within 1.3x of the raw verify);
* a repeat presentation of the same token, cache on (target: <= 20 µs);
* a DPoP proof check (``DPoPVerifier.verify_request``: parse, verify, htu, replay store);
* a full DPoP-bound request: cached token plus a fresh proof.

Everything runs in one process on one event loop, with keys from a JWKS file, so the numbers
measure our code and the crypto, not the network. Time is the thread's CPU time
(``time.thread_time_ns``), not wall time: on a shared machine wall time mostly measures how
often the process was preempted. Each figure is the median over several runs; the first-time
ratio is the median of per-run ratios, with raw and first-time runs interleaved.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.authn.dpop import DPoPVerifier
from gateway.authn.jwt_bearer import JWTBearerAuthenticator
from gateway.context import RequestFacts
from gateway.jose.jwk import jwk_thumbprint
from gateway.settings import BearerMethod, DPoPSettings, Issuer
from gateway.state.memory import MemoryReplayCache

RUNS = 7
ISS, AUD, HOST = "https://idp.example.org", "https://gateway.example.org", "gw.example.org"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(nums.x.to_bytes(32, "big")),
        "y": b64(nums.y.to_bytes(32, "big")),
    }


def access_token(key: ec.EllipticCurvePrivateKey, **extra: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISS, "sub": "alice", "aud": AUD, "exp": now + 3600, "iat": now,
        "jti": secrets.token_urlsafe(8), "client_id": "travel-agent",
        "scope": "flights.read flights.write", "auth_time": now - 60, "acr": "mfa",
    } | extra  # fmt: skip
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "es-1", "typ": "at+jwt"})


def mocked(token: str, scheme: str = "Bearer", proof: str | None = None) -> Any:
    headers = CIMultiDict([("Host", HOST), ("Authorization", f"{scheme} {token}")])
    if proof is not None:
        headers["DPoP"] = proof
    return make_mocked_request("GET", "/flights/42", headers=headers)


def facts_for(method: str = "GET") -> RequestFacts:
    return RequestFacts(
        request_id="bench", method=method, scheme="https", host=HOST, path="/flights/42",
        raw_query="", client_address="127.0.0.1", peer_address="127.0.0.1",
        forwarded_for="127.0.0.1", forwarded_proto="https", forwarded_host=HOST, peer=None,
        time_ns=time.time_ns(),
    )  # fmt: skip


def proof(key: ec.EllipticCurvePrivateKey, token: str) -> str:
    body = {
        "jti": secrets.token_urlsafe(12), "htm": "GET", "htu": f"https://{HOST}/flights/42",
        "iat": int(time.time()), "ath": b64(hashlib.sha256(token.encode()).digest()),
    }  # fmt: skip
    return jwt.encode(body, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": ec_jwk(key)})


async def measure(op: Callable[[int], Awaitable[object]], n: int, runs: int = RUNS) -> float:
    """Median µs/op over ``runs`` runs of n calls each (after one warm-up run)."""
    results = []
    for run in range(runs + 1):
        gc.collect()
        gc.disable()
        start = time.thread_time_ns()
        for i in range(n):
            await op(run * n + i)
        elapsed = time.thread_time_ns() - start
        gc.enable()
        if run:
            results.append(elapsed / n / 1000)
    return statistics.median(results)


def sync_op(fn: Callable[[], object]) -> Callable[[int], Awaitable[object]]:
    async def op(_: int) -> object:
        return fn()

    return op


async def main() -> None:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    tmp = Path(tempfile.mkdtemp())
    (tmp / "jwks.json").write_text(json.dumps({"keys": [ec_jwk(issuer_key) | {"kid": "es-1"}]}))
    issuer = Issuer.model_validate(
        {"name": "corp", "issuer": ISS, "audience": AUD, "jwks_file": str(tmp / "jwks.json")}
    )

    def bearer(**cfg: Any) -> JWTBearerAuthenticator:
        return JWTBearerAuthenticator(
            "bearer", BearerMethod(issuers=("corp",), **cfg), [issuer],
            MemoryReplayCache(1_000_000), trust_domain="example.org",
        )  # fmt: skip

    token = access_token(issuer_key)
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub, signing_input = issuer_key.public_key(), f"{head}.{payload}".encode()
    ecdsa = ec.ECDSA(hashes.SHA256())
    n = 2000
    facts = facts_for()

    uncached = bearer(verified_cache_entries=0)
    await uncached.start()
    req = mocked(token)
    # Interleave the two so that machine load hits both alike; the ratio is per pair of runs.
    raw_runs, first_runs = [], []
    for _ in range(RUNS):
        raw_runs.append(await measure(sync_op(lambda: pub.verify(der, signing_input, ecdsa)), n, 1))
        first_runs.append(await measure(lambda _: uncached.authenticate(req, facts), n, 1))
    raw_us, first_us = statistics.median(raw_runs), statistics.median(first_runs)

    def jws_floor() -> None:
        # The least any JWS verifier does: decode the signature, R || S -> DER, verify.
        sig = base64.urlsafe_b64decode(token[token.rindex(".") + 1 :] + "==")
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        pub.verify(encode_dss_signature(r, s), token[: token.rindex(".")].encode(), ecdsa)

    floor_us = await measure(sync_op(jws_floor), n)
    ratio = statistics.median(f / r for f, r in zip(first_runs, raw_runs, strict=True))

    cached = bearer()
    await cached.start()
    await cached.authenticate(req, facts)
    repeat_us = await measure(lambda _: cached.authenticate(req, facts), 20 * n)

    # Each proof is single-use, so every DPoP call needs its own request object; aiohttp's
    # make_mocked_request costs ~2 ms, so these two use fewer calls per run.
    bound = access_token(issuer_key, cnf={"jkt": jwk_thumbprint(ec_jwk(client_key))})
    jkt, m = jwk_thumbprint(ec_jwk(client_key)), 300
    verifier = DPoPVerifier(DPoPSettings(), MemoryReplayCache(1_000_000))
    reqs = [mocked(bound, "DPoP", proof(client_key, bound)) for _ in range((RUNS + 1) * m)]
    dpop_us = await measure(
        lambda i: verifier.verify_request(reqs[i], facts, access_token=bound, jkt=jkt), m
    )
    full = bearer()
    await full.start()
    reqs = [mocked(bound, "DPoP", proof(client_key, bound)) for _ in range((RUNS + 1) * m)]
    full_us = await measure(lambda i: full.authenticate(reqs[i], facts), m)

    print(f"{'operation':<48} {'CPU µs/op':>12}")
    print(f"{'raw cryptography ES256 verify':<48} {raw_us:12.1f}")
    print(f"{'  + base64url and R||S->DER (JWS floor)':<48} {floor_us:12.1f}")
    print(f"{'bearer ES256 first-time validation (cache off)':<48} {first_us:12.1f}"
          f"   ({ratio:.2f}x raw, median of paired runs; target <= 1.30x)")  # fmt: skip
    print(f"{'bearer repeat presentation (cache on)':<48} {repeat_us:12.1f}"
          f"   (target <= 20 µs)")  # fmt: skip
    print(f"{'DPoP proof check (verify_request)':<48} {dpop_us:12.1f}")
    print(f"{'DPoP-bound request (cached token + proof)':<48} {full_us:12.1f}")
    for auth in (uncached, cached, full):
        await auth.close()


if __name__ == "__main__":
    asyncio.run(main())
