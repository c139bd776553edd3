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
* ``token mint-access [-c CONFIG] [--issuer NAME] --sub S [--scope "a b"] [--act A]...
  [--client-id C] [--aud A] [--ttl S] [--dpop] [--cnf-cert PEM] [--headers --htu URL]``:
  an RFC 9068 access token from the config's development issuer (``dev_signing_key``,
  :mod:`gateway.devtools.devissuer`; the key is created 0600 if missing). ``--dpop`` binds it to the
  dev DPoP client key (``cnf.jkt``; ``--dpop-key``, default ``dev-dpop-client.pem`` next to
  the issuer key, created if missing); ``--cnf-cert`` binds it to a certificate
  (``cnf.x5t#S256``). ``--headers`` prints request header lines for ``curl -H @-``
  (``Authorization`` and, with ``--dpop``, a fresh ``DPoP`` proof for ``--htm``/``--htu``).
* ``token dpop-proof --htu URL [--htm GET] [--token T|-] [--nonce N]``: one fresh proof
  with the dev DPoP client key (``ath`` when a token is given).

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
from typing import TYPE_CHECKING, Any

from gateway.devtools.devissuer import (
    DPOP_KEY_NAME,
    MAX_TTL_S,
    access_token_claims,
    cert_thumbprint,
    dpop_proof,
    load_or_create,
    sign_access_token,
)
from gateway.errors import ConfigError
from gateway.sdk.txn import TxnTokenError, TxnTokenVerifier, decode_unverified, strict_json_loads
from gateway.tokens.keys import (
    KeyRing,
    KeyRingError,
    SigningKey,
    load_private_key,
    write_private_key,
)
from gateway.tokens.txn_token import dev_claims, sign_claims

if TYPE_CHECKING:
    from gateway.settings.issuers import Issuer

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
    _add_dev_access(token_sub)


def _add_dev_access(token_sub: Any) -> None:
    access = token_sub.add_parser(
        "mint-access", help="an RFC 9068 access token from the config's development issuer"
    )
    proof = token_sub.add_parser("dpop-proof", help="a DPoP proof with the dev DPoP client key")
    for parser in (access, proof):
        parser.add_argument("-c", "--config", type=Path, default=Path("config/gateway.yaml"))
        parser.add_argument("--issuer", default=None, help="the dev issuer's name")
        parser.add_argument(
            "--dpop-key",
            type=Path,
            default=None,
            help=f"default: {DPOP_KEY_NAME} by the issuer key",
        )
        parser.add_argument("--htm", default="GET", help="DPoP: the request method")
        parser.add_argument("--htu", default=None, help="DPoP: the request URL")
    access.add_argument("--sub", required=True)
    access.add_argument(
        "--scope", action="extend", nargs="+", default=[], help="scopes (space or repeated)"
    )
    access.add_argument("--act", action="append", default=[], help="act chain, current first")
    access.add_argument("--client-id", default=None, help="default: the current actor")
    access.add_argument("--aud", default=None, help="default: the issuer's audience")
    access.add_argument("--ttl", type=int, default=300, help="seconds, at most 3600")
    access.add_argument("--dpop", action="store_true", help="bind to the dev DPoP key (cnf.jkt)")
    access.add_argument("--cnf-cert", type=Path, default=None, help="bind to a PEM certificate")
    access.add_argument(
        "--headers", action="store_true", help="print request headers (for curl -H @-)"
    )
    proof.add_argument("--token", default=None, help="the access token (ath), or - for stdin")
    proof.add_argument("--nonce", default=None, help="a DPoP-Nonce the server sent")


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "keys":
            return _keys(args)
        if args.command == "token":
            if args.token_command == "inspect":  # noqa: S105
                return _inspect(_token_arg(args.token))
            if args.token_command == "verify":  # noqa: S105
                return _verify(args)
            if args.token_command == "mint-access":  # noqa: S105
                return _mint_access(args)
            if args.token_command == "dpop-proof":  # noqa: S105
                return _dpop_proof(args)
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


# --------------------------------------------------------------------------- dev access tokens


def _dev_issuer(args: argparse.Namespace) -> tuple[Issuer, Path]:
    """The config's development issuer and its key file: ``--issuer NAME``, else the only
    issuer with ``dev_signing_key``."""
    from gateway.settings.loading import load_settings

    def refuse(message: str) -> ConfigError:
        return ConfigError([("issuers", f"{args.config}: {message}")])

    issuers = load_settings(args.config).issuers
    if args.issuer is not None:
        chosen = [i for i in issuers if i.name == args.issuer]
        if not chosen:
            raise refuse(f"no issuer named {args.issuer!r}")
    else:
        chosen = [i for i in issuers if i.dev_signing_key is not None]
        if len(chosen) != 1:
            found = ", ".join(repr(i.name) for i in chosen) or "none"
            raise refuse(f"want one issuer with dev_signing_key (or --issuer), found {found}")
    issuer = chosen[0]
    if issuer.dev_signing_key is None:
        # SECURITY: only a key the config marks as development is ever signed with here.
        raise refuse(f"issuer {issuer.name!r} is not a development issuer (no dev_signing_key)")
    return issuer, issuer.dev_signing_key


def _dev_key(path: Path, algorithms: tuple[str, ...], what: str, note: str = "") -> SigningKey:
    key, created = load_or_create(path, algorithms)
    if created:
        _err(f"agentgate token: created the {what} {path} (mode 0600){note}")
    return key


def _dpop_key(args: argparse.Namespace, issuer_key: Path | None) -> SigningKey:
    path = args.dpop_key
    if path is None:
        issuer_key = issuer_key or _dev_issuer(args)[1]
        path = issuer_key.parent / DPOP_KEY_NAME
    return _dev_key(path, ("ES256",), "dev DPoP client key")


def _mint_access(args: argparse.Namespace) -> int:
    if args.htu is not None and not args.headers:
        raise ValueError("--htu goes with --headers (or use: agentgate token dpop-proof)")
    if args.dpop and args.headers and args.htu is None:
        raise ValueError("--dpop --headers needs --htu URL: the proof names the request")
    if not 0 < args.ttl <= MAX_TTL_S:
        raise ValueError(f"ttl must be 1..{MAX_TTL_S} seconds")
    # Everything that can be refused is checked before a key file is created.
    x5t = cert_thumbprint(args.cnf_cert) if args.cnf_cert is not None else None
    issuer, key_path = _dev_issuer(args)
    key = _dev_key(
        key_path,
        issuer.algorithms,
        "development issuer key",
        "; a gateway already running trusts it only after a restart or reload (SIGHUP)",
    )
    holder = _dpop_key(args, key_path) if args.dpop else None
    audience = issuer.audience if isinstance(issuer.audience, str) else issuer.audience[0]
    claims = access_token_claims(
        issuer=issuer.issuer,
        audience=args.aud or audience,
        sub=args.sub,
        scopes=args.scope,
        actors=args.act,
        client_id=args.client_id,
        ttl_s=args.ttl,
        jkt=holder.kid if holder is not None else None,  # kid is the RFC 7638 thumbprint
        x5t_s256=x5t,
    )
    token = sign_access_token(key, claims)
    if not args.headers:
        print(token)
    elif holder is None:
        print(f"Authorization: Bearer {token}")
    else:
        proof = dpop_proof(holder, htm=args.htm, htu=args.htu, access_token=token)
        print(f"Authorization: DPoP {token}\nDPoP: {proof}")
    return 0


def _dpop_proof(args: argparse.Namespace) -> int:
    if args.htu is None:
        raise ValueError("--htu URL is required")
    token = _token_arg(args.token) if args.token is not None else None
    holder = _dpop_key(args, None)
    print(dpop_proof(holder, htm=args.htm, htu=args.htu, access_token=token, nonce=args.nonce))
    return 0
