"""Txn-Token mint and verify throughput on one core (medians of 5 runs).

    python bench/bench_txn_tokens.py [--seconds 1.0] [--runs 5] [--no-pin]

Compares, for ES256 and EdDSA:

* ``encode pyjwt`` -- ready-made claims through ``jwt.encode`` (the "before");
* ``encode ours``  -- the same claims through :func:`gateway.tokens.txn_token.sign_claims`
  (precomputed header segment, one reused compact JSON encoder, ``cryptography`` signing,
  DER -> raw r||s);
* ``mint ours``    -- a whole :meth:`gateway.tokens.txn_token.TxnTokenMinter.mint`: claims
  built from the identity and request facts, a fresh ``txn``, then ``encode ours``;
* ``sign only``    -- the bare ``cryptography`` signature over a token-sized input (the floor);
* ``verify pyjwt`` -- ``jwt.decode`` with audience/issuer/required claims;
* ``verify ours``  -- :func:`gateway.sdk.txn.verify_compact` (what the authn method and the kit run).

The process pins itself to one CPU (``os.sched_setaffinity``) unless ``--no-pin``; each figure
is the median of ``--runs`` runs of ``--seconds`` CPU-seconds each, as operations per CPU-second
(what one core sustains; robust to other load on a shared host) and per wall-second.
Target: >= 15,000 ES256 mints per second per core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from gateway.context import Actor, Identity, Peer, Principal, RequestFacts  # noqa: E402
from gateway.sdk.txn import Alg, verify_compact  # noqa: E402
from gateway.tokens.keys import KeyRing, write_private_key  # noqa: E402
from gateway.tokens.txn_token import TxnTokenMinter, header_segment, sign_claims  # noqa: E402

TD = "example.org"
ISSUER = "https://gateway.example.org"


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(ops per CPU-second, ops per wall-second) of ``fn`` over about ``seconds`` of CPU.

    CPU time (``time.thread_time``) is what "per core" means and is not inflated when
    other processes share the core; wall time is shown too.
    """
    done = 0
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        done += 200
        cpu = time.thread_time() - cpu0
        if cpu >= seconds:
            return done / cpu, done / (time.perf_counter() - wall0)


def median_rate(fn: Callable[[], object], seconds: float, runs: int) -> tuple[float, float]:
    """Medians over ``runs`` of (CPU rate, wall rate)."""
    for _ in range(50):  # warm up
        fn()
    results = [rate(fn, seconds) for _ in range(runs)]
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
    )


def fixtures() -> tuple[Identity, RequestFacts]:
    peer = Peer(
        spiffe_id=f"spiffe://{TD}/agent/planner",
        trust_domain=TD,
        cert_sha256="0" * 64,
        cert_x5t_s256="A" * 43,
        subject="CN=planner",
        issuer="CN=dev CA",
        not_after=0.0,
    )
    principal = Principal(
        method="bearer",
        subject="user-5c1d",
        subject_type="user",
        issuer="https://idp.example.org",
        scopes=("flights.read", "flights.book"),
        client_id="travel-agent",
        actors=(Actor(f"spiffe://{TD}/agent/planner"),),
        amr=("mfa",),
    )
    identity = Identity(
        principal=principal, results={"bearer": principal}, caller="agent", mode="obo_user"
    )
    facts = RequestFacts(
        request_id="5b6f0c3e-8d7e-4a53-9a8c-0d6b1f3e2a10",
        method="POST",
        scheme="https",
        host="gateway.example.org",
        path="/flights/42/book",
        raw_query="",
        client_address="203.0.113.9",
        peer_address="203.0.113.9",
        forwarded_for="203.0.113.9",
        forwarded_proto="https",
        forwarded_host="gateway.example.org",
        peer=peer,
        time_ns=0,
    )
    return identity, facts


def cases(
    alg: Alg, tmp: Path, identity: Identity, facts: RequestFacts
) -> list[tuple[str, Callable[[], object]]]:
    path = tmp / f"{alg}.pem"
    key = write_private_key(path, alg)
    ring = KeyRing([path])
    minter = TxnTokenMinter(
        ring, issuer=ISSUER, audience=TD, ttl_s=60, gateway_spiffe_id=f"spiffe://{TD}/gateway"
    )
    claims = minter.mint_claims(
        identity=identity, facts=facts, route_name="flights", scopes=["flights.read"]
    )
    headers = {"kid": key.kid, "typ": "txntoken+jwt"}
    token = minter.mint(
        identity=identity, facts=facts, route_name="flights", scopes=["flights.read"]
    )
    head = header_segment(key)
    private = key.private_key
    public = private.public_key()
    keys = ring.verification_keys()
    signing_input = token.rsplit(".", 1)[0].encode()
    ecdsa = ec.ECDSA(hashes.SHA256())

    def sign_only() -> object:
        if isinstance(private, ec.EllipticCurvePrivateKey):
            return private.sign(signing_input, ecdsa)
        return private.sign(signing_input)

    def mint_ours() -> object:
        return minter.mint(
            identity=identity, facts=facts, route_name="flights", scopes=["flights.read"]
        )

    def verify_pyjwt() -> object:
        return jwt.decode(
            token,
            public,
            algorithms=[alg],
            audience=TD,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud"]},
            leeway=3600,  # a long run on a loaded host must not see the token expire
        )

    def verify_ours() -> object:
        return verify_compact(
            token, keys, audience=TD, issuer=ISSUER, leeway_s=3600, now=time.time()
        )

    return [
        ("encode pyjwt", lambda: jwt.encode(claims, private, algorithm=alg, headers=headers)),
        ("encode ours", lambda: sign_claims(key, claims, head)),
        ("mint ours", mint_ours),
        ("sign only", sign_only),
        ("verify pyjwt", verify_pyjwt),
        ("verify ours", verify_ours),
    ]


async def _loop_costs(mint: Callable[[], object], n: int) -> tuple[float, float, float]:
    """Per-mint µs on a running event loop: inline, via run_in_executor, and the bare hop."""
    loop = asyncio.get_running_loop()

    def noop() -> None:
        return None

    async def inline() -> None:
        mint()

    async def hop() -> None:
        await loop.run_in_executor(None, mint)

    async def bare_hop() -> None:
        await loop.run_in_executor(None, noop)

    out = []
    for step in (inline, hop, bare_hop):
        for _ in range(50):
            await step()
        t0 = time.perf_counter()
        for _ in range(n):
            await step()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return out[0], out[1], out[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        print(f"pinned to CPU {core}")
    identity, facts = fixtures()
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'alg':6} {'operation':14} {'ops/CPU-s':>10} {'µs/op':>7} {'ops/wall-s':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        algs: tuple[Alg, ...] = ("ES256", "EdDSA")
        for alg in algs:
            for name, fn in cases(alg, Path(tmp), identity, facts):
                per_cpu, per_wall = median_rate(fn, args.seconds, args.runs)
                print(f"{alg:6} {name:14} {per_cpu:10,.0f} {1e6 / per_cpu:7.1f} {per_wall:11,.0f}")
                if name == "mint ours":
                    inline, hop, bare = asyncio.run(_loop_costs(fn, 3000))
                    print(
                        f"{alg:6} {'  on a loop':14} inline {inline:.1f} µs, "
                        f"run_in_executor {hop:.1f} µs (the hop alone {bare:.1f} µs), wall"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
