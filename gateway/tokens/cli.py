"""``agentgate keys ...`` and ``agentgate token ...`` (DESIGN.md §3).

``gateway.cli`` calls :func:`add_subcommands` with its sub-parser collection and
:func:`dispatch` for the ``keys`` and ``token`` commands:

* ``keys generate --alg ES256|EdDSA --out PATH [--force]``: a PKCS#8 PEM, mode 0600;
  prints the ``kid``.
* ``keys jwks KEY.pem...``: the public JWKS of those keys (first = active).
* ``token inspect TOKEN|-``: header and claims, **UNVERIFIED**, clearly labelled.
* ``token verify TOKEN|- --jwks URL|FILE --audience A [--issuer I] [--leeway S]``.
* ``token mint --key PEM --sub S --scope ... --aud A [...]``: a dev issuer for tests and
  demos (never the gateway's production key path: it signs whatever it is told).

Exit codes: 0 ok, 1 the token is invalid / the keys could not be fetched, 2 usage error.
A token may be passed as ``-`` to read it from stdin (keeps it out of ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from gateway.tokens.keys import KeyRing, KeyRingError, load_private_key, write_private_key
from gateway.tokens.txn_token import dev_claims, sign_claims
from gateway.txn import TxnTokenError, TxnTokenVerifier, decode_unverified, strict_json_loads

COMMANDS = ("keys", "token")


def add_subcommands(subparsers: Any) -> None:
    """Register ``keys`` and ``token`` on an ``argparse`` sub-parser collection."""
    keys = subparsers.add_parser("keys", help="Txn-Token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write a new private key (PKCS#8 PEM, 0600)")
    gen.add_argument("--alg", choices=("ES256", "EdDSA"), default="ES256")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--force", action="store_true", help="replace an existing file")
    jwks = keys_sub.add_parser("jwks", help="print the public JWKS of key files")
    jwks.add_argument("key", type=Path, nargs="+")

    token = subparsers.add_parser("token", help="inspect, verify or mint Txn-Tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    inspect = token_sub.add_parser("inspect", help="decode WITHOUT verifying")
    inspect.add_argument("token", help="the token, or - for stdin")
    verify = token_sub.add_parser("verify", help="verify signature and claims")
    verify.add_argument("token", help="the token, or - for stdin")
    verify.add_argument("--jwks", required=True, help="JWKS URL or file")
    verify.add_argument("--audience", required=True, help="the trust domain")
    verify.add_argument("--issuer", default=None)
    verify.add_argument("--leeway", type=float, default=5.0)
    mint = token_sub.add_parser("mint", help="mint a dev Txn-Token")
    mint.add_argument("--key", type=Path, required=True)
    mint.add_argument("--sub", required=True)
    mint.add_argument(
        "--scope", action="extend", nargs="+", default=[], help="scopes (space or repeated)"
    )
    mint.add_argument("--aud", required=True, help="the trust domain")
    mint.add_argument("--iss", default="https://agentgate.dev.invalid")
    mint.add_argument("--ttl", type=int, default=60, help="seconds, at most 300")
    mint.add_argument("--txn", default=None)
    mint.add_argument("--req-wl", default="spiffe://dev/agentgate-cli")
    mint.add_argument(
        "--subject-type", default="user", choices=("user", "agent", "service", "device")
    )
    mint.add_argument("--actor", action="append", default=[], help="act chain, current first")
    mint.add_argument("--tctx", default=None, help="JSON object")
    mint.add_argument("--rctx", default=None, help="JSON object")


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "keys":
            return _keys(args)
        if args.command == "token":
            if args.token_command == "inspect":  # noqa: S105
                return _inspect(_token_arg(args.token))
            if args.token_command == "verify":  # noqa: S105
                return _verify(args)
            return _mint(args)
    except (KeyRingError, OSError, ValueError) as exc:
        _err(f"agentgate {args.command}: {exc}")
        return 2
    return 2


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def _token_arg(value: str) -> str:
    return sys.stdin.read().strip() if value == "-" else value.strip()


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "generate":
        key = write_private_key(args.out, args.alg, overwrite=args.force)
        print(f"{args.out}: {key.alg} key, kid {key.kid} (mode 0600)")
        return 0
    ring = KeyRing(args.key)
    print(json.dumps(ring.jwks(), indent=2))
    return 0


def _when(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        when = dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
        delta = int(value - dt.datetime.now(dt.UTC).timestamp())
        return f"{when} ({'in ' if delta >= 0 else ''}{abs(delta)}s{'' if delta >= 0 else ' ago'})"
    return repr(value)


def _inspect(token: str) -> int:
    try:
        header, claims = decode_unverified(token)
    except TxnTokenError as exc:
        _err(f"agentgate token inspect: {exc}")
        return 1
    print("UNVERIFIED — the signature and claims have NOT been checked; do not trust this.")
    print("header:", json.dumps(header, indent=2, sort_keys=True))
    print("claims:", json.dumps(claims, indent=2, sort_keys=True))
    for name in ("iat", "exp"):
        if name in claims:
            print(f"{name}: {_when(claims[name])}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    token = _token_arg(args.token)
    source: Any = args.jwks
    if not str(args.jwks).startswith(("http://", "https://")):
        source = strict_json_loads(Path(args.jwks).read_bytes())

    async def run() -> dict[str, Any]:
        async with TxnTokenVerifier(
            source, audience=args.audience, issuer=args.issuer, leeway_s=args.leeway
        ) as verifier:
            return await verifier.verify(token)

    try:
        claims = asyncio.run(run())
    except TxnTokenError as exc:
        _err(f"agentgate token verify: INVALID ({exc.code}): {exc}")
        return 1
    print("VERIFIED")
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0


def _json_arg(value: str | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    parsed = strict_json_loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(f"--{name} must be a JSON object")
    return parsed


def _mint(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    scopes = [s for part in args.scope for s in part.split()]
    claims = dev_claims(
        sub=args.sub,
        scopes=scopes,
        audience=args.aud,
        issuer=args.iss,
        ttl_s=args.ttl,
        txn=args.txn,
        req_wl=args.req_wl,
        subject_type=args.subject_type,
        tctx=_json_arg(args.tctx, "tctx"),
        rctx=_json_arg(args.rctx, "rctx"),
        actors=args.actor,
    )
    print(sign_claims(key, claims))
    return 0
