"""``agentgate agent derive | inspect | headers``: agent credentials from the shell (issue 16).

``gateway.cli`` registers these with :func:`add_parser` and runs them with :func:`run`. They
are thin wrappers over :class:`gateway.sdk.agent.AgentCredential`; nothing here talks to a
gateway (derivation is offline, as in the SDK).

* ``derive --credential FILE|- --agent SPIFFE_ID [--scope "a b"] [--ttl-s N | --exp EPOCH]
  [--depth N] [--routes ..] [--segments ..] [--tools ..] [--methods ..] --out FILE|-``:
  appends one block (:meth:`AgentCredential.derive`) and writes the child's holder form.
  Scope, depth and restrictions default to the parent's (depth one less); the expiry to the
  parent's. ``--ttl-s`` is cut to the parent's remaining life (the SDK's rule); an ``--exp``
  later than the parent's is refused, as is anything else that would widen the parent.
* ``inspect --credential FILE|- [--format json|text]``: what the blocks say
  (:meth:`AgentCredential.inspect`, plus the leaf ``agent`` and ``expires_at``). The chain
  rules are checked, the MAC is not: only the gateway holds the root key.
* ``headers --credential FILE|- [--method GET] --url URL [--body FILE|-] [--out FILE|-]``:
  the headers of one signed request (:meth:`AgentCredential.sign`), one ``Name: value`` per
  line, the format of ``curl -H @FILE``.

A credential is read from a file holding the holder form, the holder form as a JSON string
(``jq .credential``), or the whole JSON answer of ``POST /agents/credentials`` (its
``credential`` member). **The holder form is a secret** (it holds the chain's tag): every file
written here is created ``0600`` through :func:`gateway.private_files.write_atomic`, a
credential file readable by others draws a warning, and no output or error text contains the
tag, the holder form or the signing key (``inspect`` and ``headers`` print only the blocks and
a signature).

Exit codes: 0 ok; 2 bad input (unreadable file, not a credential, a derivation that widens its
parent or exceeds its depth, a malformed SPIFFE ID or URL, an expired credential), with one
line ``agentgate agent: <reason>`` on stderr and nothing written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

from gateway.jose.errors import JOSEError
from gateway.jose.jws import strict_json_object, strict_json_value
from gateway.net.spiffe import InvalidSpiffeID, parse_spiffe_id
from gateway.private_files import write_atomic
from gateway.sdk.agent import RESTRICTIONS, AgentCredential, CredentialError

PROG = "agentgate agent"
STDIO = "-"
# The holder form of a full chain (8 blocks of <= 2 KiB, base64url) is well under this; the
# genesis answer adds a few hundred bytes. A larger file is not a credential: do not slurp it.
MAX_CREDENTIAL_BYTES = 64 * 1024
_METHOD = re.compile(r"[A-Za-z]{1,16}")

HEADERS_HELP = """\
Prints the headers of ONE request, one "Name: value" per line, for curl -H @FILE
(Agent-Credential, Signature-Input, Signature, and Content-Digest with --body).

A signature is single use: the gateway's replay store refuses a second request carrying it.
It is valid only within the gateway's clock-skew window (agent_credentials.max_skew_s,
default 30 s) of its creation, and only for this method and exact URL (scheme, host, port,
path, query). Make one right before each request. With --body, send exactly those bytes
(curl --data-binary @FILE; -d strips newlines and the digest no longer matches).
"""


class _BadInput(ValueError):
    """A reason to exit 2; the text is one line and never holds a secret."""


def add_parser(sub: Any) -> None:
    """Register ``agent`` and its sub-commands on an ``argparse`` sub-parser collection."""
    agent = sub.add_parser("agent", help="derive, inspect and sign with agent credentials")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)

    derive = agent_sub.add_parser(
        "derive",
        help="derive a narrower child credential for a sub-agent, offline",
        description="Append one block for a sub-agent: it can only narrow its parent.",
    )
    _credential_arg(derive)
    derive.add_argument("--agent", required=True, metavar="SPIFFE_ID", help="the sub-agent")
    derive.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        default=None,
        help="a subset of the parent's scopes (\"a b\" or repeated; default: the parent's)",
    )
    expiry = derive.add_mutually_exclusive_group()
    expiry.add_argument(
        "--ttl-s",
        type=int,
        default=None,
        metavar="N",
        help="lifetime in seconds, cut to the parent's remaining life (default: the parent's)",
    )
    expiry.add_argument(
        "--exp",
        type=int,
        default=None,
        metavar="EPOCH",
        help="expiry, Unix seconds, no later than the parent's",
    )
    derive.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="N",
        help="further delegations allowed below the child (default: the parent's minus one)",
    )
    for name in RESTRICTIONS:
        derive.add_argument(
            f"--{name}",
            action="extend",
            nargs="+",
            default=None,
            help=f"restrict to these {name} (a subset of the parent's, if it has a list)",
        )
    derive.add_argument(
        "--out", required=True, metavar="FILE|-", help="the child's holder form (a secret; 0600)"
    )

    inspect = agent_sub.add_parser(
        "inspect",
        help="show genesis, chain, depth, ids and expiry (never the secret)",
        description=(
            "Print what the blocks say. The chain rules are checked; the MAC is not (only the "
            "gateway holds the root key), so this says nothing about authenticity."
        ),
    )
    _credential_arg(inspect)
    inspect.add_argument("--format", choices=("json", "text"), default="json")

    headers = agent_sub.add_parser(
        "headers",
        help="sign one request (single use): header lines for curl -H @FILE",
        description=HEADERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _credential_arg(headers)
    headers.add_argument("--method", default="GET", help="the request method (default GET)")
    headers.add_argument(
        "--url",
        required=True,
        help="the absolute URL as the gateway sees it: https://host[:port]/path?query",
    )
    headers.add_argument(
        "--body", default=None, metavar="FILE|-", help="the exact request body (Content-Digest)"
    )
    headers.add_argument("--out", default=STDIO, metavar="FILE|-", help="default: stdout")


def _credential_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--credential",
        required=True,
        metavar="FILE|-",
        help="holder form, or the JSON answer of POST /agents/credentials; - for stdin",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``agentgate agent <command>``; 0 ok, 2 bad input (one line on stderr)."""
    try:
        if args.agent_command == "derive":
            return _derive(args)
        if args.agent_command == "inspect":
            return _inspect(args)
        if args.agent_command == "headers":
            return _headers(args)
    except (_BadInput, CredentialError) as exc:
        # SECURITY: every text raised here is built from block contents, file names and
        # option values, never from the holder form or the tag.
        _error(str(exc))
        return 2
    _error(f"unknown command {args.agent_command!r}")
    return 2


def _error(reason: str) -> None:
    print(f"{PROG}: {' '.join(reason.split())}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def _derive(args: argparse.Namespace) -> int:
    parent = _read_credential(args.credential)
    now = int(time.time())
    _not_expired(parent, now)
    try:
        parse_spiffe_id(args.agent)
    except InvalidSpiffeID as exc:
        raise _BadInput(f"--agent {args.agent[:120]!r} is not a SPIFFE ID: {exc}") from None
    ttl_s: int | None = args.ttl_s
    if ttl_s is not None and ttl_s < 1:
        raise _BadInput("--ttl-s must be at least 1")
    if args.exp is not None:
        if args.exp > parent.expires_at:
            raise _BadInput(
                f"--exp {args.exp} is later than the credential's expiry {parent.expires_at} "
                f"({_iso(parent.expires_at)}): a child cannot outlive its parent"
            )
        if args.exp <= now:
            raise _BadInput(f"--exp {args.exp} ({_iso(args.exp)}) is not in the future")
        ttl_s = args.exp - now
    restrictions = {
        name: _words(getattr(args, name), upper=name == "methods")
        for name in RESTRICTIONS
        if getattr(args, name) is not None
    }
    scope = None if args.scope is None else _words(args.scope)
    try:
        child = parent.derive(
            args.agent, scope=scope, ttl_s=ttl_s, depth=args.depth, now=now, **restrictions
        )
    except CredentialError as exc:
        raise _BadInput(f"cannot derive: {exc}") from None
    _write(args.out, child.serialize() + "\n")
    if args.out != STDIO:
        leaf = child.blocks[-1]
        print(
            f"{args.out}: {child.agent}, credential id {child.credential_id}, "
            f"block {len(child.blocks) - 1}, depth left {leaf.depth}, "
            f"expires {_iso(child.expires_at)} (mode 0600: it is a secret)"
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    credential = _read_credential(args.credential)
    document = {**credential.inspect(), "agent": credential.agent}
    document["expires_at"] = credential.expires_at
    if args.format == "json":
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(_text(document))
    return 0


def _headers(args: argparse.Namespace) -> int:
    if args.credential == STDIO and args.body == STDIO:
        raise _BadInput("--credential and --body cannot both be read from stdin")
    credential = _read_credential(args.credential)
    _not_expired(credential, int(time.time()))
    method = args.method.upper()
    if not _METHOD.fullmatch(args.method):
        raise _BadInput(f"--method {args.method[:20]!r} is not an HTTP method")
    allowed = credential.blocks[-1].restrictions.get("methods")
    if allowed is not None and method not in allowed:
        # The gateway would refuse it (401): say so before anything is sent.
        raise _BadInput(f"the credential does not allow {method} (methods: {sorted(allowed)})")
    _check_url(args.url)
    body = None if args.body is None else _read_bytes(args.body, limit=None)
    signed = credential.sign(method, args.url, body=body)
    _write(args.out, "".join(f"{name}: {value}\n" for name, value in signed.items()))
    return 0


# --------------------------------------------------------------------------- input


def _label(source: str) -> str:
    return "stdin" if source == STDIO else source


def _read_bytes(source: str, *, limit: int | None) -> bytes:
    try:
        if source == STDIO:
            stream = sys.stdin.buffer
            data = stream.read() if limit is None else stream.read(limit + 1)
        else:
            with open(source, "rb") as fh:
                data = fh.read() if limit is None else fh.read(limit + 1)
    except OSError as exc:
        raise _BadInput(
            f"cannot read {_label(source)}: {exc.strerror or type(exc).__name__}"
        ) from None
    if limit is not None and len(data) > limit:
        raise _BadInput(f"{_label(source)}: not a credential (larger than {limit} bytes)")
    return data


def _read_credential(source: str) -> AgentCredential:
    """The credential in ``source``: holder form, a JSON string of it, or the genesis answer."""
    data = _read_bytes(source, limit=MAX_CREDENTIAL_BYTES)
    label = _label(source)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _BadInput(f"{label}: not a credential (not text)") from None
    # SECURITY: the JSON parser's messages are generic ("malformed JSON"), and none of ours
    # quotes the input: a half-broken file must not leak its secret into a terminal or a log.
    if text.startswith("{"):
        try:
            answer = strict_json_object(text)
        except JOSEError:
            raise _BadInput(f"{label}: not a credential (malformed JSON)") from None
        text = answer.get("credential")  # type: ignore[assignment]
        if not isinstance(text, str):
            raise _BadInput(
                f"{label}: a JSON file must be the genesis answer, with a string 'credential'"
            )
    elif text.startswith('"'):  # `jq .credential` without -r
        try:
            text = strict_json_value(text)
        except JOSEError:
            raise _BadInput(f"{label}: not a credential (malformed JSON string)") from None
        if not isinstance(text, str):
            raise _BadInput(f"{label}: not a credential")
    try:
        credential = AgentCredential.parse(text)
    except CredentialError as exc:
        raise _BadInput(f"{label}: not a credential ({exc})") from None
    if source != STDIO:
        _warn_if_shared(source)  # only once it is known to hold a secret
    return credential


def _warn_if_shared(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and mode & 0o077:
        print(
            f"{PROG}: warning: {path} holds a secret but has mode {stat.S_IMODE(mode):04o}: "
            f"chmod 600 {path}",
            file=sys.stderr,
        )


def _words(values: list[str], *, upper: bool = False) -> list[str]:
    """``["a b", "c"]`` -> ``["a", "b", "c"]``: space-separated or repeated options."""
    words = [word for value in values for word in value.split()]
    return [w.upper() for w in words] if upper else words


def _not_expired(credential: AgentCredential, now: int) -> None:
    if credential.expires_at <= now:
        raise _BadInput(f"the credential expired at {_iso(credential.expires_at)}")


def _check_url(url: str) -> None:
    scheme, sep, rest = url.partition("://")
    if scheme not in ("https", "http") or not sep or not rest or rest.startswith("/"):
        raise _BadInput("--url must be absolute: https://host[:port]/path")
    if "#" in url or any(c.isspace() or not c.isprintable() for c in url):
        # curl never sends a fragment, and the signature covers the exact target URI.
        raise _BadInput("--url must not hold a fragment, spaces or control characters")


# --------------------------------------------------------------------------- output


def _write(target: str, text: str) -> None:
    if target == STDIO:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        write_atomic(Path(target), text.encode())  # SECURITY: 0600 from creation on
    except OSError as exc:
        raise _BadInput(f"cannot write {target}: {exc.strerror or type(exc).__name__}") from None


def _iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _when(epoch: int) -> str:
    delta = epoch - int(time.time())
    return f"{_iso(epoch)} ({f'in {delta}s' if delta >= 0 else f'expired {-delta}s ago'})"


def _text(document: dict[str, Any]) -> str:
    genesis = document["genesis"]
    lines = [
        "chain rules checked; MAC NOT verified (only the gateway holds the root key)",
        f"issuer:        {document['issuer']} (key {document['key_id']})",
        f"genesis:       {genesis['type']} {genesis['sub']}"
        + (f" (iss {genesis['iss']})" if "iss" in genesis else ""),
        f"agent:         {document['agent']}",
        f"credential id: {document['credential_id']}",
        f"depth:         {document['depth']} delegation(s)",
        f"expires:       {_when(document['expires_at'])}",
        "chain (root first):",
    ]
    for index, block in enumerate(document["chain"]):
        lines.append(f"  {index}. {block['agent']}")
        lines.append(f"     id {block['credential_id']}, depth left {block['depth']}")
        lines.append(f"     scope {' '.join(block['scope']) or '(none)'}")
        lines.append(f"     issued {_iso(block['iat'])}, expires {_iso(block['exp'])}")
        for name in RESTRICTIONS:
            if name in block:
                lines.append(f"     {name} {' '.join(block[name]) or '(none)'}")
    return "\n".join(lines) + "\n"
