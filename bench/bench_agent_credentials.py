"""Agent credentials (issue 16) side by side with an ES256 JWT and an X.509 certificate.

    python bench/bench_agent_credentials.py [--seconds 1.0] [--runs 5] [--no-pin]

Each row is the cost of giving one sub-agent ``spiffe://example.org/agent/flights`` (parent
``spiffe://example.org/agent/travel``, scope ``flights.read``, 60 s) a credential, or of
checking one, in one process on one core:

* ``derive child (one-deep parent)`` -- :meth:`gateway.sdk.agent.AgentCredential.derive` on a
  credential of root + 1 delegation, with a narrower scope and a TTL: one block, one HMAC.
  Its ops/CPU-s is the "creations per second per core" figure; ``derive child, all
  defaults`` -- the same with scope, expiry and depth inherited (no list to check);
* ``mint root`` -- :func:`gateway.sdk.agent.mint_root` (block 0 checked, two HMACs);
* ``jwt ours (gateway.jose)`` / ``jwt pyjwt`` -- an ES256 JWS (P-256) for the same sub-agent,
  claims ``iss, sub, aud, scope, iat, exp, jti, act`` built fresh each time (new ``jti``,
  clock read), signed with :func:`gateway.jose.jws.encode_compact` (``cryptography``, DER ->
  raw r||s) and with ``jwt.encode``;
* ``cert keygen + sign`` -- an X.509 leaf from ``cryptography``: a fresh P-256 key pair, then a
  certificate (SPIFFE URI SAN, basicConstraints CA:false, keyUsage digitalSignature, random
  serial, 60 s validity) signed ecdsa-with-SHA256 by a CA key, DER-encoded;
  ``cert sign only (key ready)`` -- the same with a key pair generated beforehand;
* ``verify chain cold (miss)`` -- a 5-deep chain (root + 5 delegations) and its RFC 9421
  request signature through
  :meth:`gateway.authn.agent_credential.AgentCredentialAuthenticator.authenticate` on an
  :class:`gateway.context.Inbound`, each request with a new leaf under the same 4-deep
  parent (a new header: the verified-chain cache misses; the parent is a known chain after
  the first request, so the leaf's block is parsed and MACed from the parent's tag);
  ``verify chain warm (hit)`` -- the same chain each time (cache hit: one HKDF'd key already
  derived), each request with a fresh signature (new ``nonce``): the replay store is the real
  :class:`gateway.state.memory.MemoryReplayCache` and refuses none of them. Both include the
  signature check, expiry, method restriction, ``created`` window and the replay-store insert;
* ``floor mac()`` / ``floor hmac.digest`` -- one HMAC-SHA256 of a block-sized message (the
  derived child block, ~200 bytes) with :func:`gateway.sdk.agent.mac` and with
  :func:`hmac.digest`: what a derivation cannot go below.

Requests, leaves and signatures for the verify rows are made in batches of 200 **outside** the
timed loop (only the ``authenticate`` calls are timed). ``authenticate`` is a coroutine that
never suspends for a GET with the memory replay store; it is driven with ``coro.send(None)``
(no event-loop scheduling in the figure; the bench fails if it ever suspends). Any refusal
raises, so every timed verification succeeded.

The process pins itself to one CPU (``os.sched_setaffinity``) unless ``--no-pin``; each figure
is the median of ``--runs`` runs of ``--seconds`` CPU-seconds each (``time.thread_time``,
robust to other load on a shared host), as µs per operation, operations per CPU-second and
per wall-second. Issue 16 targets: derive <= 5 µs; verify 5-deep + signature <= 20 µs on one
core; >= 100,000 sub-agent credentials created per second per core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy  # noqa: E402

from gateway.authn.agent_credential import AgentCredentialAuthenticator  # noqa: E402
from gateway.context import Inbound, RequestFacts  # noqa: E402
from gateway.jose.jws import encode_compact  # noqa: E402
from gateway.sdk.agent import AgentCredential, mac, mint_root  # noqa: E402
from gateway.settings.agents import AgentCredentialSettings  # noqa: E402
from gateway.state.memory import MemoryReplayCache  # noqa: E402

TD = "example.org"
ISSUER = f"spiffe://{TD}/gateway"
PARENT = f"spiffe://{TD}/agent/travel"
AGENT = f"spiffe://{TD}/agent/flights"
AUDIENCE = "https://api.example.org"
HOST = "gw.example.org"
PATH = "/flights/42"
URL = f"https://{HOST}{PATH}"
ROOT_KEY = secrets.token_urlsafe(32)  # the env secret's text is the key
KID = "bench"
BATCH = 200
TARGETS = {"derive_us": 5.0, "verify_us": 20.0, "creations_per_s": 100_000}

Op = Callable[[], object]
ItemOp = Callable[[Any], object]
Batch = Callable[[int], Sequence[Any]]


# --------------------------------------------------------------------------- timing


def rate(op: Callable[..., object], batch: Batch | None, seconds: float) -> tuple[float, float]:
    """(ops per CPU-second, ops per wall-second) of ``op`` over about ``seconds`` of CPU.

    With ``batch``, ``op`` takes one item and the items of each round of :data:`BATCH` calls
    are made first, outside the timed section (only the calls are counted).
    """
    done, cpu, wall = 0, 0.0, 0.0
    while cpu < seconds:
        items = batch(BATCH) if batch is not None else None
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        if items is None:
            for _ in range(BATCH):
                op()
        else:
            for item in items:
                op(item)
        cpu += time.thread_time() - cpu0
        wall += time.perf_counter() - wall0
        done += BATCH
    return done / cpu, done / wall


def median_rate(
    op: Callable[..., object], batch: Batch | None, seconds: float, runs: int
) -> tuple[float, float]:
    """Medians over ``runs`` of (CPU rate, wall rate), after a short warm-up."""
    rate(op, batch, min(0.05, seconds))
    results = [rate(op, batch, seconds) for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its result, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("authenticate suspended: the figure would need an event loop")


# --------------------------------------------------------------------------- fixtures


def root_credential(depth: int) -> AgentCredential:
    return mint_root(
        ROOT_KEY.encode(),
        kid=KID,
        issuer=ISSUER,
        genesis={"type": "user", "sub": "alice"},
        agent=PARENT,
        scope=["flights.read", "flights.book", "hotels.read"],
        ttl_s=3600,
        depth=depth,
    )


def authenticator() -> AgentCredentialAuthenticator:
    os.environ["BENCH_AGENT_ROOT_KEY"] = ROOT_KEY
    cfg = AgentCredentialSettings.model_validate(
        {
            "issuer": ISSUER,
            "keys": [{"id": KID, "secret": "env:BENCH_AGENT_ROOT_KEY"}],
            "max_skew_s": 30,
        }
    )
    # Room for every signature of a run: the store must refuse none (each is fresh).
    replay = MemoryReplayCache(max_entries=5_000_000)
    return AgentCredentialAuthenticator("agents", cfg, replay, 1024 * 1024)


class _NoBody:
    """A GET's body: nothing (``authenticate`` reads a body only when a digest is covered)."""

    exists = False
    declared_length = 0
    buffered = b""

    async def read(self) -> bytes:
        return b""


_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


def inbound(headers: dict[str, str]) -> Inbound:
    """What the pipeline hands an authentication method (as ``tests.support.inbound``)."""
    fields = CIMultiDictProxy(CIMultiDict([*headers.items(), ("Host", HOST)]))
    return Inbound("GET", PATH, fields, _QUERY, _NoBody())


def facts() -> RequestFacts:
    return RequestFacts(
        request_id="5b6f0c3e-8d7e-4a53-9a8c-0d6b1f3e2a10",
        method="GET",
        scheme="https",
        host=HOST,
        path=PATH,
        raw_query="",
        client_address="203.0.113.9",
        peer_address="203.0.113.9",
        forwarded_for="203.0.113.9",
        forwarded_proto="https",
        forwarded_host=HOST,
        peer=None,
        time_ns=time.time_ns(),
    )


def jwt_claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": AGENT,
        "aud": AUDIENCE,
        "scope": "flights.read",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
        "act": {"sub": PARENT},
    }


def cases() -> list[tuple[str, Callable[..., object], Batch | None]]:
    one_deep = root_credential(depth=6).derive(PARENT + "/planner", scope=["flights.read"])
    root_args: dict[str, Any] = {
        "kid": KID,
        "issuer": ISSUER,
        "genesis": {"type": "user", "sub": "alice"},
        "agent": PARENT,
        "scope": ["flights.read", "flights.book"],
        "ttl_s": 300,
        "depth": 5,
    }
    key = ROOT_KEY.encode()

    def derive_child() -> object:
        return one_deep.derive(AGENT, scope=["flights.read"], ttl_s=60)

    # JWT: one P-256 key, the same header for both signers.
    jwt_key = ec.generate_private_key(ec.SECP256R1())
    jwt_header = {"alg": "ES256", "kid": KID, "typ": "JWT"}

    def jwt_ours() -> object:
        payload = json.dumps(jwt_claims(), separators=(",", ":")).encode()
        return encode_compact(jwt_header, payload, jwt_key)

    def jwt_pyjwt() -> object:
        return jwt.encode(jwt_claims(), jwt_key, algorithm="ES256", headers={"kid": KID})

    # X.509: a CA key and name; the sub-agent's key fresh each time or made beforehand.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentgate bench CA")])
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TD)])
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(AGENT)])
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    ready_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    sha256 = hashes.SHA256()

    def certificate(public: ec.EllipticCurvePublicKey) -> bytes:
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(seconds=60))
            .add_extension(san, critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(ca_key, sha256)
        )
        return cert.public_bytes(Encoding.DER)

    def cert_keygen() -> object:
        return certificate(ec.generate_private_key(ec.SECP256R1()).public_key())

    # Verify: root + 4 delegations; the 5th is the leaf (fresh per request when cold).
    method = authenticator()
    base = root_credential(depth=6)
    for name in ("planner", "flights", "booking", "payment"):
        base = base.derive(f"{PARENT}/{name}", scope=["flights.read", "flights.book"])
    warm_leaf = base.derive(f"{PARENT}/payment/card", scope=["flights.read"])
    if len(warm_leaf.blocks) != 6:
        raise RuntimeError("the warm chain is not 5-deep")

    def cold_batch(n: int) -> list[tuple[Inbound, RequestFacts]]:
        f = facts()
        return [
            (inbound(base.derive(f"{PARENT}/payment/card").sign("GET", URL)), f) for _ in range(n)
        ]

    def warm_batch(n: int) -> list[tuple[Inbound, RequestFacts]]:
        f = facts()
        return [(inbound(warm_leaf.sign("GET", URL)), f) for _ in range(n)]

    def verify(item: tuple[Inbound, RequestFacts]) -> object:
        return drive(method.authenticate(*item))

    principal = verify(cold_batch(1)[0])
    if principal is None or principal.claims["depth"] != 5:
        raise RuntimeError("the 5-deep chain did not verify")

    block = one_deep.derive(AGENT, scope=["flights.read"], ttl_s=60).blocks[-1].raw
    tag = secrets.token_bytes(32)

    return [
        ("derive child (one-deep parent)", derive_child, None),
        ("derive child, all defaults", lambda: one_deep.derive(AGENT), None),
        ("mint root", lambda: mint_root(key, **root_args), None),
        ("jwt ours (gateway.jose)", jwt_ours, None),
        ("jwt pyjwt", jwt_pyjwt, None),
        ("cert keygen + sign", cert_keygen, None),
        ("cert sign only (key ready)", lambda: certificate(ready_key), None),
        ("verify chain cold (miss)", verify, cold_batch),
        ("verify chain warm (hit)", verify, warm_batch),
        ("floor mac()", lambda: mac(tag, block), None),
        ("floor hmac.digest", lambda: hmac.digest(tag, block, "sha256"), None),
    ]


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
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("jwt = ES256 JWS (P-256); cert = X.509 leaf, P-256 key, ecdsa-with-SHA256 by a CA")
    print(f"{'operation':32} {'µs/op':>8} {'ops/CPU-s':>12} {'ops/wall-s':>12}")
    us: dict[str, float] = {}
    per_core: dict[str, float] = {}
    for name, op, batch in cases():
        per_cpu, per_wall = median_rate(op, batch, args.seconds, args.runs)
        us[name], per_core[name] = 1e6 / per_cpu, per_cpu
        print(f"{name:32} {1e6 / per_cpu:8.2f} {per_cpu:12,.0f} {per_wall:12,.0f}")

    derive = "derive child (one-deep parent)"
    print("- issue 16 targets, against this run:")
    checks = [
        ("derive a child", f"{us[derive]:.2f} µs", us[derive] <= TARGETS["derive_us"],
         f"<= {TARGETS['derive_us']:g} µs"),
        ("verify 5-deep + signature, cold", f"{us['verify chain cold (miss)']:.2f} µs",
         us["verify chain cold (miss)"] <= TARGETS["verify_us"], f"<= {TARGETS['verify_us']:g} µs"),
        ("verify 5-deep + signature, warm", f"{us['verify chain warm (hit)']:.2f} µs",
         us["verify chain warm (hit)"] <= TARGETS["verify_us"], f"<= {TARGETS['verify_us']:g} µs"),
        ("creations per second per core", f"{per_core[derive]:,.0f}",
         per_core[derive] >= TARGETS["creations_per_s"], f">= {TARGETS['creations_per_s']:,}"),
    ]  # fmt: skip
    for what, figure, met, target in checks:
        print(f"  - target: {what}: {figure} (target {target}): {'met' if met else 'NOT met'}")
    jwt_us = us["jwt ours (gateway.jose)"]
    cert_us = us["cert keygen + sign"]
    print(
        f"  - ratio: an ES256 JWT (ours) costs {jwt_us / us[derive]:,.1f}x a derived child, "
        f"an X.509 certificate with its key pair {cert_us / us[derive]:,.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
