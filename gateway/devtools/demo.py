"""``agentgate demo``: a self-contained tour on loopback.

It builds a throwaway agent domain in a working folder (default ``.demo/``) and walks
through it, printing what each hop received:

1. **Setup**: a dev CA with the gateway's server certificate, agent certificates
   (``travel``, ``billing``, ``rogue``) and a service certificate
   (``spiffe://example.org/service/booking``); a Txn-Token signing key; a dev token issuer
   (an ES256 key whose public JWKS the gateway reads from a file; the tour mints RFC 9068
   access tokens with it); the legacy backend's API key as a ``file:`` secret; a copy of the
   shipped policies with the demo's additions to ``data.json``; ``gateway.yaml``; three
   backends: ``flights`` (modern, verifies the Txn-Token), ``billing`` (legacy, wants an
   ``X-Billing-Key``) and an internal ``booking`` service behind ``/internal/``.
2. agent ``travel`` reads a flight for alice (mTLS + alice's certificate-bound token);
3. the flights backend calls the internal route as ``service/booking`` with the Txn-Token
   it received: a second Txn-Token of the same transaction;
4. agent ``billing`` reaches the legacy billing system, which gets the API key only the
   gateway holds;
5. denials: no role, a replayed token, no token, an expired token, spoofed headers, path
   tricks, no client certificate;
6. hot reload: alice's delegation is revoked in ``data.json``; ``Gateway.reload()`` flips
   the decision;
7. the audit record of one request and a ``/metrics`` excerpt.

Everything binds to 127.0.0.1 on free ports and is torn down at the end. Tokens are shown
as a short prefix plus their SHA-256 (never in full) and the backend's API key only as
"present, N chars". Each step checks what it claims; the exit code is 1 if one did not
behave as described, else 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import ssl
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app import Gateway
from gateway.devtools.devpki import CertFiles, DevPKI, init_dev_pki, issue_to_files
from gateway.jose.jws import b64url_encode, encode_compact
from gateway.private_files import write_atomic
from gateway.sdk.agent import AgentCredential, CredentialError
from gateway.sdk.heartbeat import ActionRecorder
from gateway.sdk.txn import TxnTokenError, TxnTokenVerifier, decode_unverified
from gateway.settings.loading import load_settings
from gateway.tokens.keys import signing_key, write_private_key

TRUST_DOMAIN = "example.org"
TD = f"spiffe://{TRUST_DOMAIN}"
AGENTS = ("travel", "billing", "rogue")
TRAVEL = f"{TD}/agent/travel"
FARE_CHECKER = f"{TRAVEL}/fare-checker"  # a sub-agent spawned by travel (issue 16)
BILLING = f"{TD}/agent/billing"
ROGUE = f"{TD}/agent/rogue"
BOOKING_SVC = f"{TD}/service/booking"
IDP_ISSUER = "https://idp.example.org"
API_AUDIENCE = "https://gateway.example.org"
TXN_ISSUER = "https://gateway.example.org"
BILLING_HEADER = "X-Billing-Key"
MCP_RESOURCE = "https://gateway.example.org/tools"  # the MCP route's RFC 8707 resource
MCP_TOOLS = ("get_fare", "book_flight", "cancel_all")

_INDENT = "   "


class DemoError(Exception):
    """The tour cannot run (e.g. the shipped policies are missing)."""


@contextlib.contextmanager
def _captured(logger: str) -> Iterator[list[str]]:
    """The messages ``logger`` emits meanwhile, shown in the tour instead of on stderr."""
    lines: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    target = logging.getLogger(logger)
    handler, propagate = _Keep(), target.propagate
    target.addHandler(handler)
    target.propagate = False
    try:
        yield lines
    finally:
        target.removeHandler(handler)
        target.propagate = propagate


def _say(text: str = "") -> None:
    print(text, flush=True)


def _heading(text: str) -> None:
    _say(f"\n== {text}")


# --------------------------------------------------------------------------- display


def short_token(token: str) -> str:
    """A token as the tour shows it: a prefix, its length and a SHA-256 prefix."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:12]
    return f"{token[:12]}... ({len(token)} chars, sha256 {digest})"


def _act_chain(act: Any) -> str:
    subs: list[str] = []
    while isinstance(act, dict) and len(subs) < 10:
        subs.append(str(act.get("sub")))
        act = act.get("act")
    return " <- ".join(subs) if subs else "(none)"


def _claim_lines(claims: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    lines = []
    for name in names:
        if name not in claims:
            continue
        value = claims[name]
        if name == "act":
            shown = _act_chain(value)
        elif name == "cnf" and isinstance(value, dict):
            shown = ", ".join(f"{k}={str(v)[:12]}..." for k, v in value.items())
        elif name in ("iat", "exp"):
            shown = f"{value} ({int(value) - int(time.time()):+d} s)"
        elif isinstance(value, dict | list):
            shown = json.dumps(value, separators=(",", ":"))
        else:
            shown = str(value)
        lines.append(f"{name:<9} {shown}")
    return lines


ACCESS_CLAIMS = ("iss", "sub", "aud", "client_id", "scope", "act", "cnf", "exp")
TXN_CLAIMS = ("txn", "sub", "scope", "act", "req_wl", "aud", "iss", "exp", "tctx", "rctx")


# --------------------------------------------------------------------------- backends


@dataclass
class Seen:
    """What a backend received, already reduced to what may be shown."""

    backend: str
    method: str
    path: str
    headers: list[tuple[str, str]]
    txn_claims: dict[str, Any] | None = None
    txn_note: str = "absent"
    billing_key: str = "absent"
    next_hop: dict[str, Any] | None = None


_SHOWN_HEADERS = (
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-request-id",
    "traceparent",
    "x-evil",
    "x_user",
    "connection",
)


class Backend:
    """A demo backend. ``kind`` is ``modern`` (verifies the Txn-Token it gets),
    ``legacy`` (knows nothing of tokens; wants its API key) or ``internal``."""

    def __init__(self, name: str, kind: str, *, api_key: bytes | None = None) -> None:
        self.name = name
        self.kind = kind
        self._api_key = api_key
        self.seen: dict[str, Seen] = {}
        self.hits = 0
        self.verifier: TxnTokenVerifier | None = None
        # The flights backend's own identity for calls into the domain (set by the tour).
        self.outbound: aiohttp.ClientSession | None = None
        self.gateway_base = ""
        self.next_hops: dict[str, str] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        if server is None:
            raise DemoError("server is missing")
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await request.read()
        shown = [(k, v) for k, v in request.headers.items() if k.lower() in _SHOWN_HEADERS]
        seen = Seen(self.name, request.method, request.raw_path, shown)
        request_id = request.headers.get("X-Request-Id", f"none-{self.hits}")
        self.seen[request_id] = seen
        tokens = request.headers.getall("Txn-Token", [])
        if len(tokens) > 1:
            seen.txn_note = f"{len(tokens)} Txn-Token headers (expected exactly one)"
        elif tokens:
            await self._check_txn_token(tokens[0], seen)
        if self.kind == "legacy":
            return self._legacy(request, seen)
        if self.kind == "mcp":
            return self._mcp(await request.read())
        hop = self.next_hops.get(request.raw_path)
        if hop is not None and tokens:
            seen.next_hop = await self._call_next(
                hop, tokens[0], request.headers.get("traceparent")
            )
        return web.json_response({"backend": self.name, "ok": True})

    async def _check_txn_token(self, token: str, seen: Seen) -> None:
        if self.verifier is None or self.kind == "legacy":
            seen.txn_note = f"present, {short_token(token)}; not inspected (legacy)"
            return
        try:
            seen.txn_claims = await self.verifier.verify(token)
        except TxnTokenError as exc:
            seen.txn_note = f"INVALID ({exc.code})"
            return
        header, _ = decode_unverified(token)
        seen.txn_note = (
            f"{short_token(token)}\n{_INDENT * 3}verified against the gateway's "
            f"/.well-known/jwks.json (typ {header.get('typ')}, "
            f"kid {str(header.get('kid'))[:10]}...)"
        )

    def _mcp(self, body: bytes) -> web.Response:
        """A minimal MCP server (Streamable HTTP, JSON responses): three travel tools."""
        try:
            message = json.loads(body)
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        method, rid = message.get("method"), message.get("id")
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "demo-travel-tools", "version": "1"},
            }
            response = web.json_response({"jsonrpc": "2.0", "id": rid, "result": result})
            response.headers["Mcp-Session-Id"] = secrets.token_urlsafe(16)
            return response
        if method == "tools/list":
            tools = [{"name": n, "inputSchema": {"type": "object"}} for n in MCP_TOOLS]
            result = {"tools": tools}
        elif method == "tools/call":
            name = message.get("params", {}).get("name")
            result = {"content": [{"type": "text", "text": f"{name}: done"}]}
        else:
            result = {}
        return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result})

    def _legacy(self, request: web.Request, seen: Seen) -> web.Response:
        """A legacy system: an API key in a header, compared in constant time."""
        presented = request.headers.getall(BILLING_HEADER, [])
        if len(presented) != 1 or self._api_key is None:
            seen.billing_key = "absent" if not presented else f"{len(presented)} values"
            return web.json_response({"error": "api key required"}, status=401)
        value = presented[0].encode()
        matches = hmac.compare_digest(value, self._api_key)
        seen.billing_key = (
            f"present, {len(value)} chars, matches the key on file: {'yes' if matches else 'no'}"
        )
        if not matches:
            return web.json_response({"error": "wrong api key"}, status=401)
        return web.json_response({"backend": self.name, "invoices": 3})

    async def _call_next(
        self, path: str, txn_token: str, traceparent: str | None
    ) -> dict[str, Any]:
        """Call the internal route through the gateway with the Txn-Token just received
        (and the trace context, so both hops are one trace)."""
        if self.outbound is None:
            raise DemoError("self.outbound is missing")
        headers = {"Txn-Token": txn_token}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        async with self.outbound.get(self.gateway_base + path, headers=headers) as resp:
            await resp.read()
            return {
                "path": path,
                "status": resp.status,
                "request_id": resp.headers.get("X-Request-Id", ""),
                "sent_token": short_token(txn_token),
            }


def _show_seen(seen: Seen | None, *, with_claims: Iterable[str] = TXN_CLAIMS) -> None:
    if seen is None:
        _say(f"{_INDENT}(the backend received nothing)")
        return
    _say(f"{_INDENT}{seen.backend} backend received {seen.method} {seen.path}")
    names = {k.lower() for k, _ in seen.headers}
    if "authorization" not in names:
        _say(f"{_INDENT * 2}authorization: (absent)")
    for key, value in seen.headers:
        if key.lower() == "authorization":
            value = f"PRESENT ({value.split(' ', 1)[0]} ...)"  # never the credential itself
        _say(f"{_INDENT * 2}{key.lower()}: {value}")
    if seen.backend == "billing":
        _say(f"{_INDENT * 2}{BILLING_HEADER.lower()}: {seen.billing_key}")
    _say(f"{_INDENT * 2}txn-token: {seen.txn_note}")
    if seen.txn_claims is not None:
        for line in _claim_lines(seen.txn_claims, with_claims):
            _say(f"{_INDENT * 3}{line}")


# --------------------------------------------------------------------------- the dev IdP


@dataclass
class DevIssuer:
    """A development token issuer: an ES256 key; its public JWKS goes to a file."""

    key: ec.EllipticCurvePrivateKey
    kid: str
    jwks_file: Path

    @classmethod
    def create(cls, jwks_file: Path) -> DevIssuer:
        key = ec.generate_private_key(ec.SECP256R1())
        public = signing_key(key)  # RFC 7638 kid, public members only
        jwks_file.parent.mkdir(parents=True, exist_ok=True)
        jwks_file.write_text(json.dumps({"keys": [dict(public.public_jwk)]}, indent=2) + "\n")
        return cls(key, public.kid, jwks_file)

    def access_token(
        self,
        sub: str,
        client_id: str,
        scope: str,
        *,
        act: str | None = None,
        bind_to: Path | None = None,
        lifetime_s: int = 300,
        issued_at: int | None = None,
        audience: str | list[str] = API_AUDIENCE,
    ) -> tuple[str, dict[str, Any]]:
        """An RFC 9068 access token (``typ: at+jwt``) and its claims."""
        now = int(time.time()) if issued_at is None else issued_at
        claims: dict[str, Any] = {
            "iss": IDP_ISSUER,
            "sub": sub,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": str(uuid.uuid4()),
        }
        if act is not None:
            claims["act"] = {"sub": act}  # RFC 8693 §4.1: the agent acts for sub
        if bind_to is not None:
            claims["cnf"] = {"x5t#S256": cert_thumbprint(bind_to)}  # RFC 8705 §3.1
        header = {"alg": "ES256", "kid": self.kid, "typ": "at+jwt"}
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return encode_compact(header, payload, self.key), claims


def cert_thumbprint(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return b64url_encode(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


# --------------------------------------------------------------------------- policies


def shipped_policies() -> Path:
    """The shipped ``policies/`` folder (source tree, working folder, or the image's)."""
    here = Path(__file__).resolve().parents[1] / "policies"
    for candidate in (here, Path.cwd() / "policies", Path("/usr/share/agentgate/policies")):
        if (candidate / "agentgate" / "authz" / "authz.rego").is_file() and (
            candidate / "data.json"
        ).is_file():
            return candidate
    raise DemoError("cannot find the shipped policies/ folder (run from the source tree)")


def demo_data(shipped: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The shipped ``data.json`` plus what the tour's internal hop needs, and why."""
    data: dict[str, Any] = json.loads(json.dumps(shipped))
    notes: list[str] = []
    data["rbac"]["roles"]["traveller"].append(
        {"methods": ["GET"], "paths": ["/internal/bookings/**"], "scopes": ["flights.read"]}
    )
    notes.append("+ role traveller may GET /internal/bookings/** (scope flights.read)")
    data["delegations"]["alice"][TRAVEL]["routes"].append("internal")
    notes.append("+ alice's delegation to agent travel also covers route internal")
    data["delegations"].setdefault(TRAVEL, {})[BOOKING_SVC] = {
        "routes": ["internal"],
        "scopes": ["flights.read"],
    }
    notes.append("+ agent travel may hand on to service/booking on route internal")
    data["delegations"]["alice"][TRAVEL]["routes"].append("agent-credentials")
    notes.append("+ alice's delegation to agent travel covers route agent-credentials (genesis)")
    data["delegations"][TRAVEL][FARE_CHECKER] = {"routes": ["flights"], "scopes": ["flights.read"]}
    notes.append("+ agent travel may hand on to its sub-agent fare-checker on route flights")
    data["rbac"]["roles"]["traveller"].append(
        {"methods": ["GET", "POST", "DELETE"], "paths": ["/tools", "/tools/**"],
         "scopes": ["flights.read"]}
    )  # fmt: skip
    data["delegations"]["alice"][TRAVEL]["routes"].append("tools")
    data.setdefault("mcp", {"routes": {}})["routes"]["tools"] = {
        "tools": {
            "get_fare": {"scopes": ["flights.read"], "read_only": True},
            "book_flight": {"scopes": ["flights.book"], "arguments": {"price": {"max": 1000}}},
        }
    }
    notes.append("+ MCP route tools: get_fare, book_flight (price <= 1000); cancel_all unlisted")
    internal = data["abac"]["routes"].get("internal", {})
    if internal.pop("hours_utc", None) is not None:
        notes.append("- route internal: no UTC hour window (the tour must not depend on the clock)")
    billing = data["abac"]["routes"].get("billing-legacy", {})
    if billing.pop("require_attestation", None) is not None:
        notes.append("- route billing-legacy: no attestation requirement (no verifier in the demo)")
    return data, notes


def copy_policies(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    for rego in sorted(source.rglob("*.rego")):
        if rego.name.endswith("_test.rego"):
            continue
        dest = target / rego.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rego, dest)


def _write_json(path: Path, document: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- setup


@dataclass
class World:
    workdir: Path
    pki: DevPKI
    booking_cert: CertFiles
    idp: DevIssuer
    billing_key_file: Path
    agent_root_key_file: Path
    data_file: Path
    config_path: Path
    backends: dict[str, Backend]
    gateway: Gateway | None = None
    base: str = ""
    admin: str = ""
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.workdir)

    def expect(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            _say(f"{_INDENT}!! unexpected: {what}")
        return ok

    def client_context(self, files: CertFiles | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        if files is not None:
            ctx.load_cert_chain(str(files.cert), str(files.key))
        return ctx


def _config(world: World) -> dict[str, Any]:
    pki, rel = world.pki, world.rel
    backends = world.backends
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "trust_domain": TRUST_DOMAIN,
            "tls": {
                "cert": rel(pki.server.cert),
                "key": rel(pki.server.key),
                "client_ca": rel(pki.ca.cert),
                "client_cert": "required",
            },
            "timeouts": {"drain_s": 1, "upstream_total_s": 10},
        },
        "issuers": [
            {
                "name": "demo-idp",
                "issuer": IDP_ISSUER,
                "jwks_file": rel(world.idp.jwks_file),
                "audience": API_AUDIENCE,
                "algorithms": ["ES256"],
            }
        ],
        "authn": {
            "mtls": {},
            "bearer": {"issuers": ["demo-idp"], "require_typ": "at+jwt"},
            "txn_token": {},
            "subagents": {"type": "agent_credential"},
        },
        "agent_credentials": {
            "issuer": f"{TD}/gateway",
            "keys": [{"id": "demo-1", "secret": f"file:{rel(world.agent_root_key_file)}"}],
            "ttl_s": 300,
            "max_depth": 2,
        },
        "continuous_auth": {"heartbeat_interval_s": 30},
        "pdp": {
            "engine": "embedded",
            "policies": rel(world.data_file.parent),
            "data": rel(world.data_file),
        },
        "txn_tokens": {
            "issuer": TXN_ISSUER,
            "ttl_s": 60,
            "signing_key": "keys/txn-signing.pem",
            "token_service_clients": [f"{TD}/service/"],
        },
        "telemetry": {"audit_log": "audit.log", "decision_log": "off"},
        "routes": [
            {
                "name": "agent-credentials",
                "kind": "agent_credentials",
                "match": {"path_prefix": "/agents/credentials", "methods": ["POST"]},
                "authn": {"all_of": ["mtls", "bearer"]},
                "segment": "booking",  # where agent travel may reach (agentgate.segments)
            },
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/", "methods": ["GET", "POST"]},
                # an agent with its user's token, or a sub-agent with its agent credential
                "authn": {"any_of": [{"all_of": ["mtls", "bearer"]}, "subagents"]},
                "upstream": backends["flights"].url,
                "segment": "booking",
                "credential": {"type": "txn_token"},
            },
            {
                "name": "billing-legacy",
                "match": {"path_prefix": "/billing/"},
                "authn": {"all_of": ["mtls", "bearer"]},
                "upstream": backends["billing"].url,
                "segment": "finance",
                "credential": {
                    "type": "api_key",
                    "header": BILLING_HEADER,
                    "secret": f"file:{rel(world.billing_key_file)}",
                },
            },
            {
                "name": "heartbeat",
                "kind": "agent_heartbeat",  # sub-agents report what they did (issue 18)
                "match": {"path_prefix": "/agents/heartbeat", "methods": ["POST"]},
                "authn": "subagents",
            },
            {
                # An MCP server: policy per tool, tools/list filtered (agentgate.mcp).
                "name": "tools",
                "kind": "mcp",
                "match": {"path_prefix": "/tools"},
                "authn": {"all_of": ["mtls", "bearer"]},
                "upstream": backends["tools"].url,
                "segment": "booking",
                "mcp": {
                    "resource": MCP_RESOURCE,
                    "arguments": {"book_flight": ["price"]},
                    "authorization_servers": [IDP_ISSUER],
                    "scopes_supported": ["flights.read", "flights.book"],
                },
            },
            {
                "name": "internal",
                "match": {"path_prefix": "/internal/"},
                "authn": {"all_of": ["mtls", "txn_token"]},
                "upstream": backends["booking"].url,
                "segment": "internal",
            },
        ],
    }


def prepare(workdir: Path) -> World:
    """Every file of the tour (blocking I/O, before anything listens)."""
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = init_dev_pki(workdir / "pki", trust_domain=TRUST_DOMAIN, agents=AGENTS)
    booking = issue_to_files(
        workdir / "pki" / "services",
        pki.ca.cert,
        pki.ca.key,
        name="booking",
        spiffe_id=BOOKING_SVC,
        server=False,
    )
    txn_key = write_private_key(workdir / "keys" / "txn-signing.pem", "ES256", overwrite=True)
    idp = DevIssuer.create(workdir / "idp" / "jwks.json")
    key_file = workdir / "secrets" / "billing.key"
    api_key = secrets.token_urlsafe(18)  # 24 characters
    # SECURITY: 0600 whatever the umask, also when a previous run left a wider file behind.
    write_atomic(key_file, (api_key + "\n").encode())
    root_key_file = workdir / "secrets" / "agent-root.key"
    write_atomic(root_key_file, (secrets.token_urlsafe(32) + "\n").encode())
    shipped = shipped_policies()
    policy_dir = workdir / "policies"
    copy_policies(shipped, policy_dir)
    data, notes = demo_data(json.loads((shipped / "data.json").read_text()))
    data_file = policy_dir / "data.json"
    _write_json(data_file, data)
    (workdir / "audit.log").unlink(missing_ok=True)
    world = World(
        workdir=workdir,
        pki=pki,
        booking_cert=booking,
        idp=idp,
        billing_key_file=key_file,
        agent_root_key_file=root_key_file,
        data_file=data_file,
        config_path=workdir / "gateway.yaml",
        backends={
            "flights": Backend("flights", "modern"),
            "billing": Backend("billing", "legacy", api_key=api_key.encode()),
            "booking": Backend("booking", "internal"),
            "tools": Backend("tools", "mcp"),
        },
    )

    rel = world.rel
    _say(f"working folder      {workdir}")
    _say(f"dev CA              {rel(pki.ca.cert)} (trust domain {TRUST_DOMAIN})")
    _say(f"gateway cert        {rel(pki.server.cert)}  {pki.server.spiffe_id}, DNS localhost")
    for files in pki.agents.values():
        _say(f"agent cert          {rel(files.cert)}  {files.spiffe_id}")
    _say(f"service cert        {rel(booking.cert)}  {booking.spiffe_id}")
    _say(f"Txn-Token key       {rel(txn_key.path or workdir)} (ES256, kid {txn_key.kid[:10]}...)")
    _say(
        f"dev token issuer    {IDP_ISSUER}: ES256 key in memory, public JWKS in "
        f"{rel(idp.jwks_file)}"
    )
    _say(
        f"billing API key     file:{rel(key_file)} (mode 0600, {len(api_key)} chars): "
        "only the gateway and the billing backend read it"
    )
    _say(f"agent root key      file:{rel(root_key_file)} (mode 0600): mints agent credentials")
    _say(f"policies            {rel(policy_dir)}/ (shipped Rego; data.json = shipped + demo):")
    for note in notes:
        _say(f"{_INDENT * 2}{note}")
    return world


def write_config(world: World) -> None:
    header = "# written by `agentgate demo`; paths are relative to this file\n"
    text = header + yaml.safe_dump(_config(world), sort_keys=False)
    write_atomic(world.config_path, text.encode())  # it says where every secret lives
    _say(f"config              {world.rel(world.config_path)}")


async def start(world: World) -> None:
    """Backends, then the gateway (from the config file), then the clients."""
    for name, backend in world.backends.items():
        await backend.start()
        _say(f"backend             {name:<8} ({backend.kind}) {backend.url}")
    write_config(world)
    gateway = Gateway(load_settings(world.config_path), config_path=world.config_path)
    await gateway.start()
    world.gateway = gateway
    if gateway.main_address is None:
        raise DemoError("gateway.main_address is missing")
    if gateway.admin_address is None:
        raise DemoError("gateway.admin_address is missing")
    world.base = f"https://127.0.0.1:{gateway.main_address[1]}"
    world.admin = f"http://127.0.0.1:{gateway.admin_address[1]}"
    _say(gateway.describe())

    pki = world.pki
    certs: dict[str, CertFiles | None] = {
        **pki.agents,
        "booking": world.booking_cert,
        "nobody": None,
    }
    for name, cert in certs.items():
        connector = aiohttp.TCPConnector(ssl=world.client_context(cert))
        world.sessions[name] = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=10)
        )
    async with aiohttp.ClientSession() as plain, plain.get(world.admin + "/readyz") as resp:
        ready = await resp.json()
    world.expect(resp.status == 200, f"/readyz answered {resp.status}: {ready}")
    _say(f"readyz              {resp.status} {json.dumps(ready['checks'], sort_keys=True)}")

    # The modern and internal backends verify Txn-Tokens against the gateway's JWKS, fetched
    # over mTLS as the booking service; the flights backend also calls on as that workload.
    for name in ("flights", "booking"):
        world.backends[name].verifier = TxnTokenVerifier(
            world.base + "/.well-known/jwks.json",
            audience=TRUST_DOMAIN,
            issuer=TXN_ISSUER,
            session=world.sessions["booking"],
        )
    flights = world.backends["flights"]
    flights.outbound = world.sessions["booking"]
    flights.gateway_base = world.base
    flights.next_hops = {"/flights/42": "/internal/bookings/42"}


async def teardown(world: World) -> None:
    for backend in world.backends.values():
        if backend.verifier is not None:
            await backend.verifier.close()
    for session in world.sessions.values():
        await session.close()
    if world.gateway is not None:
        await world.gateway.stop()
    for backend in world.backends.values():
        await backend.stop()


# --------------------------------------------------------------------------- calls


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    error: str | None = None

    @property
    def request_id(self) -> str:
        return self.headers.get("X-Request-Id", "")

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


async def call(
    world: World,
    who: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    show_sent: Iterable[str] = (),
    token: tuple[str, Mapping[str, Any]] | None = None,
    body: str | None = None,
) -> Answer:
    """One request as ``who``; prints the request line, what was sent, and the status."""
    sent = dict(headers or {})
    _say(f"{_INDENT}{who} -> gateway  {method} {path}")
    if token is not None:
        _show_access_token(*token)
    for name in show_sent:
        _say(f"{_INDENT * 2}sent {name}: {sent[name]}")
    try:
        async with world.sessions[who].request(
            method, world.base + path, headers=headers, data=body, allow_redirects=False
        ) as resp:
            answer = Answer(resp.status, resp.headers.copy(), await resp.read())
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as exc:
        _say(f"{_INDENT}<- refused at the TLS layer ({type(exc).__name__}): no HTTP exchange")
        return Answer(0, {}, b"", error=type(exc).__name__)
    _say(f"{_INDENT}<- {answer.status}  X-Request-Id {answer.request_id}")
    return answer


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _show_access_token(token: str, claims: Mapping[str, Any]) -> None:
    _say(f"{_INDENT * 2}Authorization: Bearer {short_token(token)}")
    _say(f"{_INDENT * 3}typ       at+jwt (RFC 9068), signed by the dev issuer")
    for line in _claim_lines(claims, ACCESS_CLAIMS):
        _say(f"{_INDENT * 3}{line}")


def _problem(answer: Answer) -> None:
    body = answer.json()
    www = answer.headers.get("WWW-Authenticate")
    if www:
        _say(f"{_INDENT * 2}WWW-Authenticate: {www}")
    if body:
        kept = {k: body[k] for k in ("title", "detail", "decision_id", "request_id") if k in body}
        _say(f"{_INDENT * 2}{answer.headers.get('Content-Type', '')}: {json.dumps(kept)}")


# --------------------------------------------------------------------------- the tour


async def step_flights(world: World) -> tuple[Answer, dict[str, Any] | None]:
    _heading("2. Agent 'travel' reads a flight for alice (mTLS + alice's access token)")
    travel = world.pki.agents["travel"]
    token, claims = world.idp.access_token(
        "alice",
        "travel-agent",
        "flights.read flights.book",
        act=TRAVEL,
        bind_to=travel.cert,
    )
    _say(f"{_INDENT}the agent presents certificate {travel.spiffe_id} and alice's token;")
    _say(f"{_INDENT}act says the agent acts for alice, cnf binds the token to the agent's cert")
    answer = await call(
        world, "travel", "GET", "/flights/42", headers=_bearer(token), token=(token, claims)
    )
    seen = world.backends["flights"].seen.get(answer.request_id)
    _show_seen(seen)
    world.expect(answer.status == 200, f"flights call answered {answer.status}, not 200")
    txn = seen.txn_claims if seen is not None else None
    if world.expect(txn is not None, "the flights backend got no valid Txn-Token"):
        if txn is None:
            raise DemoError("txn is missing")
        if seen is None:
            raise DemoError("seen is missing")
        has_auth = any(k.lower() == "authorization" for k, _ in seen.headers)
        world.expect(not has_auth, "the flights backend received an Authorization header")
        world.expect(txn.get("sub") == "alice", "Txn-Token sub is not alice")
        narrowed = set(str(txn.get("scope")).split()) < set(claims["scope"].split())
        _say(f"{_INDENT}scope narrowed by the decision: {claims['scope']!r} -> {txn['scope']!r}")
        world.expect(narrowed, "the Txn-Token scope was not narrowed")
        world.expect(_act_chain(txn.get("act")) == TRAVEL, "act chain is not the travel agent")
    return answer, txn


async def step_second_hop(world: World, first: Answer, txn1: dict[str, Any] | None) -> str | None:
    """Returns the X-Request-Id of the second hop."""
    _heading("3. Second hop: the flights backend calls the internal booking service")
    flights = world.backends["flights"].seen.get(first.request_id)
    hop = flights.next_hop if flights is not None else None
    if not world.expect(hop is not None, "the flights backend made no second hop"):
        return None
    if hop is None:
        raise DemoError("hop is missing")
    _say(f"{_INDENT}flights backend, as {BOOKING_SVC} (mTLS), -> gateway  GET {hop['path']}")
    _say(f"{_INDENT * 2}sent Txn-Token: the one it received, {hop['sent_token']}")
    _say(f"{_INDENT}<- {hop['status']}  X-Request-Id {hop['request_id']}")
    _say(f"{_INDENT}the gateway verified that Txn-Token and asked the PDP again for this hop")
    seen = world.backends["booking"].seen.get(hop["request_id"])
    _show_seen(seen)
    world.expect(hop["status"] == 200, f"the internal hop answered {hop['status']}, not 200")
    txn2 = seen.txn_claims if seen is not None else None
    if not world.expect(txn1 is not None and txn2 is not None, "no Txn-Token on one of the hops"):
        return str(hop["request_id"])
    if txn1 is None:
        raise DemoError("txn1 is missing")
    if txn2 is None:
        raise DemoError("txn2 is missing")
    same = txn1["txn"] == txn2["txn"]
    s1, s2 = set(str(txn1["scope"]).split()), set(str(txn2["scope"]).split())
    _say(f"{_INDENT}same txn on both hops: {'yes' if same else 'NO'} ({txn2['txn']})")
    _say(
        f"{_INDENT}scope hop 2 {txn2['scope']!r} within hop 1 {txn1['scope']!r}: "
        f"{'yes' if s2 <= s1 else 'NO'}"
    )
    _say(f"{_INDENT}actor chain hop 2: {_act_chain(txn2.get('act'))}")
    world.expect(same, "the second hop started a new transaction")
    world.expect(s2 <= s1, "the second hop widened the scope")
    world.expect(txn2.get("sub") == "alice", "the second hop changed the subject")
    return str(hop["request_id"])


async def step_subagent(world: World) -> AgentCredential | None:
    _heading("4b. Agent 'travel' spawns a sub-agent offline; it calls with its own credential")
    travel = world.pki.agents["travel"]
    token, _ = world.idp.access_token(
        "alice", "travel-agent", "flights.read flights.book", act=TRAVEL, bind_to=travel.cert
    )
    _say(f"{_INDENT}genesis: travel (mTLS) and alice (token) ask for a root agent credential")
    answer = await call(
        world,
        "travel",
        "POST",
        "/agents/credentials",
        headers={**_bearer(token), "Content-Type": "application/json"},
        body=json.dumps({"scope": "flights.read flights.book", "ttl_s": 120, "depth": 2}),
    )
    issued = answer.json()
    if not world.expect(answer.status == 201, f"genesis answered {answer.status}, not 201"):
        _problem(answer)
        return None
    try:
        root = AgentCredential.parse(str(issued["credential"]))
        child = root.derive(FARE_CHECKER, scope=["flights.read"], ttl_s=30)
    except (CredentialError, KeyError) as exc:
        world.expect(False, f"the issued credential does not derive: {exc}")
        return None
    _say(f"{_INDENT * 2}root {issued['credential_id']}: genesis {issued['genesis']}, scope")
    lifetime = f"expires in {issued['expires_in']} s, depth {issued['depth']}"
    _say(f"{_INDENT * 2}{issued['scope']!r}, {lifetime}")
    _say(f"{_INDENT}travel derives {FARE_CHECKER} offline (one HMAC, no call):")
    _say(f"{_INDENT * 2}scope ['flights.read'], 30 s; the chain tag stays with the sub-agent")
    url = world.base + "/flights/42"
    signed = child.sign("GET", url)
    answer = await call(
        world, "travel", "GET", "/flights/42", headers=signed, show_sent=("Signature-Input",)
    )
    seen = world.backends["flights"].seen.get(answer.request_id)
    _show_seen(seen)
    world.expect(answer.status == 200, f"the sub-agent's call answered {answer.status}, not 200")
    txn = seen.txn_claims if seen is not None else None
    if world.expect(txn is not None, "the flights backend got no Txn-Token for the sub-agent"):
        chain = _act_chain((txn or {}).get("act"))
        _say(f"{_INDENT}act chain in the Txn-Token: {chain}")
        world.expect(chain == f"{FARE_CHECKER} <- {TRAVEL}", f"unexpected act chain {chain}")
        provenance = (txn or {}).get("tctx", {}).get("provenance", {})
        world.expect(
            provenance.get("genesis", {}).get("sub") == "alice", "tctx.provenance lacks alice"
        )
    replay = await call(world, "travel", "GET", "/flights/42", headers=signed)
    _say(f"{_INDENT}the same signed request again: {replay.status} (replayed)")
    world.expect(replay.status == 401, "a replayed sub-agent request was not refused")
    header_only = await call(
        world, "travel", "GET", "/flights/42", headers={"Agent-Credential": child.header()}
    )
    _say(f"{_INDENT}the header without the holder's signature: {header_only.status}")
    world.expect(header_only.status == 401, "an unsigned agent credential was accepted")
    return root


async def _beat(world: World, agent: AgentCredential, recorder: ActionRecorder) -> dict[str, Any]:
    url = world.base + "/agents/heartbeat"
    body = json.dumps(recorder.heartbeat())
    headers = {**agent.sign("POST", url, body=body.encode()), "Content-Type": "application/json"}
    answer = await call(world, "travel", "POST", "/agents/heartbeat", headers=headers, body=body)
    verdict = answer.json()
    recorder.acknowledge(verdict)
    return verdict


async def step_hijack(world: World, root: AgentCredential | None) -> None:
    _heading("4d. A stolen sub-agent credential: the next heartbeat catches it")
    with _captured("agentgate.pipeline") as warnings:
        await _hijack(world, root)
    for line in warnings:  # the gateway's own log lines, shown here rather than on stderr
        _say(f"{_INDENT}gateway log: {line}")


async def _hijack(world: World, root: AgentCredential | None) -> None:
    if root is None:
        world.expect(False, "no root credential from step 4b")
        return
    agent = root.derive(f"{TRAVEL}/itinerary", scope=["flights.read"], ttl_s=120)
    recorder = ActionRecorder(agent.agent)
    url = world.base + "/flights/42"
    for _ in range(2):
        answer = await call(world, "travel", "GET", "/flights/42", headers=agent.sign("GET", url))
        recorder.observe("GET", answer.status, answer.headers)
    _say(f"{_INDENT}the sub-agent keeps its own record (Agentgate-Action: seq=<n> per answer)")
    verdict = await _beat(world, agent, recorder)
    _say(f"{_INDENT}heartbeat: {verdict.get('verdict')} ({verdict.get('agent_count')} calls)")
    world.expect(verdict.get("verdict") == "healthy", f"first heartbeat: {verdict}")
    _say(f"{_INDENT}a thief (here: agent billing's host) with a copy of the credential calls:")
    stolen = await call(world, "billing", "GET", "/flights/42", headers=agent.sign("GET", url))
    world.expect(stolen.status == 200, "the thief's call was not let through (it must be)")
    answer = await call(world, "travel", "GET", "/flights/42", headers=agent.sign("GET", url))
    recorder.observe("GET", answer.status, answer.headers)
    verdict = await _beat(world, agent, recorder)
    _say(
        f"{_INDENT}heartbeat: {verdict.get('verdict')}: the gateway saw "
        f"{verdict.get('gateway_count')} calls, the agent made {verdict.get('agent_count')}"
    )
    world.expect(verdict.get("verdict") == "mismatch", f"the hijack was not caught: {verdict}")
    answer = await call(world, "travel", "GET", "/flights/42", headers=agent.sign("GET", url))
    world.expect(answer.status == 403, f"the hijacked agent's call answered {answer.status}")
    if world.gateway is None:
        raise DemoError("world.gateway is missing")
    listed = await world.gateway.state.revocations.list()
    reasons = {r.value: r.reason for r in listed if r.kind == "quarantine"}
    if world.expect(agent.agent in reasons, "the hijacked agent was not quarantined"):
        _say(f"{_INDENT}quarantined: {agent.agent} ({reasons[agent.agent]}): it now speaks from")
        _say(f"{_INDENT}segment quarantine on every node until an operator lifts it")


def _rpc(method: str, rid: int, **params: Any) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params:
        message["params"] = params
    return json.dumps(message)


async def step_mcp(world: World) -> None:
    _heading("4c. Agent 'travel' uses an MCP server: tools filtered and decided one by one")
    travel = world.pki.agents["travel"]
    token, _ = world.idp.access_token(
        "alice",
        "travel-agent",
        "flights.read flights.book",
        act=TRAVEL,
        bind_to=travel.cert,
        audience=[API_AUDIENCE, MCP_RESOURCE],  # RFC 8707: the token names the MCP server
    )
    headers = {**_bearer(token), "Content-Type": "application/json"}
    init = await call(world, "travel", "POST", "/tools", headers=headers, body=_rpc(
        "initialize", 1, protocolVersion="2025-06-18", capabilities={},
        clientInfo={"name": "demo", "version": "1"}))  # fmt: skip
    world.expect(init.status == 200, f"initialize answered {init.status}, not 200")
    session = init.headers.get("Mcp-Session-Id", "")
    headers["Mcp-Session-Id"] = session
    listing = await call(world, "travel", "POST", "/tools", headers=headers,
                         body=_rpc("tools/list", 2))  # fmt: skip
    shown = [t.get("name") for t in listing.json().get("result", {}).get("tools", [])]
    _say(f"{_INDENT}the MCP server offers {list(MCP_TOOLS)}; the agent is shown {shown}")
    world.expect(shown == ["get_fare", "book_flight"], f"tools/list not filtered: {shown}")
    allowed = await call(world, "travel", "POST", "/tools", headers=headers, body=_rpc(
        "tools/call", 3, name="get_fare", arguments={"flight": "42"}))  # fmt: skip
    world.expect("result" in allowed.json(), "tools/call get_fare was not allowed")
    _say(f"{_INDENT}get_fare -> {json.dumps(allowed.json().get('result'))}")
    expensive = {"flight": "42", "price": 5000}
    denied = await call(world, "travel", "POST", "/tools", headers=headers, body=_rpc(
        "tools/call", 4, name="book_flight", arguments=expensive))  # fmt: skip
    error = denied.json().get("error", {})
    _say(f"{_INDENT}book_flight with price 5000 -> JSON-RPC error {json.dumps(error)}")
    world.expect(
        error.get("code") == -32001 and bool(error.get("data", {}).get("decision_id")),
        "tools/call book_flight over the price limit was not denied with a decision id",
    )
    seen = world.backends["tools"].seen
    world.expect(denied.request_id not in seen, "the denied tool call reached the MCP server")
    stolen = {**_bearer(token), "Content-Type": "application/json", "Mcp-Session-Id": "guess"}
    guessed = await call(world, "travel", "POST", "/tools", headers=stolen,
                         body=_rpc("tools/list", 5))  # fmt: skip
    _say(f"{_INDENT}a session id the gateway never saw issued: {guessed.status}")
    world.expect(guessed.status == 404, "an unknown MCP session id was accepted")


async def step_billing(world: World) -> None:
    _heading("4. Legacy billing: agent 'billing' reaches /billing/invoices")
    billing = world.pki.agents["billing"]
    token, claims = world.idp.access_token(
        BILLING, "billing-agent", "billing.read", bind_to=billing.cert
    )
    _say(f"{_INDENT}the agent holds its certificate and its own token, never the billing key;")
    _say(f"{_INDENT}it sends no {BILLING_HEADER} header")
    answer = await call(
        world, "billing", "GET", "/billing/invoices", headers=_bearer(token), token=(token, claims)
    )
    seen = world.backends["billing"].seen.get(answer.request_id)
    _show_seen(seen, with_claims=())
    world.expect(answer.status == 200, f"billing call answered {answer.status}, not 200")
    world.expect(
        seen is not None and seen.billing_key.startswith("present, 24 chars, matches"),
        "the billing backend did not get the gateway's key",
    )


async def _denied(
    world: World, title: str, answer: Answer, status: int, *, contains: str = ""
) -> None:
    _problem(answer)
    world.expect(answer.status == status, f"{title}: answered {answer.status}, not {status}")
    if contains:
        text = answer.headers.get("WWW-Authenticate", "") + answer.body.decode(errors="replace")
        world.expect(contains in text, f"{title}: {contains!r} not in the answer")


async def step_denials(world: World) -> None:
    _heading("5. Denials and hygiene")
    hits = {name: b.hits for name, b in world.backends.items()}
    idp = world.idp

    _say("\n-- the rogue agent (valid certificate and token, no role) -> 403 from the policy")
    token, _ = idp.access_token(ROGUE, "rogue-agent", "flights.read")
    answer = await call(world, "rogue", "GET", "/flights/42", headers=_bearer(token))
    await _denied(world, "rogue", answer, 403, contains="decision_id")
    record = await _audit(world, answer.request_id)
    reason = record.get("policy_reason") if record else None
    _say(f"{_INDENT}policy reason (audit log only, never sent to the caller): {reason}")
    world.expect(reason == "rbac:no_permission", f"rogue denied for {reason}")

    _say("\n-- the rogue agent replays alice's token (bound to travel's certificate) -> 401")
    alice, _ = idp.access_token(
        "alice", "travel-agent", "flights.read", act=TRAVEL, bind_to=world.pki.agents["travel"].cert
    )
    answer = await call(world, "rogue", "GET", "/flights/42", headers=_bearer(alice))
    await _denied(world, "replay", answer, 401, contains="invalid_token")

    _say("\n-- agent 'travel' with its certificate but no token -> 401 with a challenge")
    answer = await call(world, "travel", "GET", "/flights/42")
    await _denied(world, "no token", answer, 401, contains='Bearer realm="agentgate"')

    _say("\n-- an expired token -> 401 invalid_token")
    now = int(time.time())
    expired, _ = idp.access_token(
        "alice",
        "travel-agent",
        "flights.read",
        act=TRAVEL,
        bind_to=world.pki.agents["travel"].cert,
        issued_at=now - 3900,
        lifetime_s=300,
    )
    answer = await call(world, "travel", "GET", "/flights/42", headers=_bearer(expired))
    await _denied(world, "expired", answer, 401, contains='error="invalid_token"')

    _say("\n-- spoofed headers are stripped; the path is normalised once")
    spoofed = {
        **_bearer(alice_for(world)),
        "Txn-Token": "forged-by-the-client",
        "X-Forwarded-For": "10.6.6.6",
        "X-Forwarded-Client-Cert": "By=spiffe://example.org/agent/admin",
        "X_User": "admin",
        "Connection": "X-Evil",
        "X-Evil": "hop-by-hop",
    }
    shown = [k for k in spoofed if k != "Authorization"]
    answer = await call(
        world, "travel", "GET", "/flights/./a/../7", headers=spoofed, show_sent=shown
    )
    seen = world.backends["flights"].seen.get(answer.request_id)
    _show_seen(seen, with_claims=("txn", "sub", "scope"))
    world.expect(answer.status == 200, f"spoofed-header call answered {answer.status}")
    if seen is not None:
        names = {k.lower(): v for k, v in seen.headers}
        world.expect(seen.path == "/flights/7", f"backend saw path {seen.path}")
        world.expect(names.get("x-forwarded-for") == "127.0.0.1", "X-Forwarded-For kept")
        for name in ("x-evil", "x-forwarded-client-cert", "x_user"):
            world.expect(name not in names, f"{name} reached the backend")
        world.expect(seen.txn_claims is not None, "the forged Txn-Token reached the backend")
        _say(f"{_INDENT}stripped: Txn-Token (replaced), X-Forwarded-*, XFCC, X_User, X-Evil")

    _say("\n-- an encoded slash in the path -> 400 before anything else runs")
    answer = await call(world, "travel", "GET", "/flights/%2e%2e%2fadmin")
    await _denied(world, "encoded slash", answer, 400)

    _say("\n-- a client without a certificate")
    with _captured("agentgate.tls") as refusals:
        answer = await call(world, "nobody", "GET", "/flights/42")
        for _ in range(100):  # the server side may log a moment after the client gave up
            if refusals:
                break
            await asyncio.sleep(0.01)
    world.expect(answer.error is not None, f"a client without a cert got HTTP {answer.status}")
    world.expect(any("no_client_cert" in line for line in refusals), f"gateway logged {refusals}")
    for line in refusals:
        _say(f"{_INDENT}gateway log: {line}")

    after = {name: b.hits for name, b in world.backends.items()}
    expected = dict(hits, flights=hits["flights"] + 1)  # only the spoofed-header call
    reached = "only the allowed call reached a backend" if after == expected else str(after)
    _say(f"\n{_INDENT}{reached}")
    world.expect(after == expected, f"denied requests reached a backend: {after} vs {expected}")


def alice_for(world: World) -> str:
    token, _ = world.idp.access_token(
        "alice",
        "travel-agent",
        "flights.read flights.book",
        act=TRAVEL,
        bind_to=world.pki.agents["travel"].cert,
    )
    return token


async def _audit(world: World, request_id: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """The audit record of ``request_id`` (the sink writes from a background thread)."""
    path = world.workdir / "audit.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record: dict[str, Any] = json.loads(line)
                if record.get("request_id") == request_id:
                    return record
        await asyncio.sleep(0.02)
    return None


async def step_reload(world: World) -> None:
    _heading("6. Hot reload: alice revokes the travel agent's delegation")
    if world.gateway is None:
        raise DemoError("world.gateway is missing")
    before = await call(world, "travel", "GET", "/flights/7", headers=_bearer(alice_for(world)))
    world.expect(before.status == 200, f"before the reload: {before.status}, not 200")
    data = json.loads(world.data_file.read_text())
    del data["delegations"]["alice"][TRAVEL]
    _write_json(world.data_file, data)
    _say(f'{_INDENT}edited {world.rel(world.data_file)}: removed delegations["alice"]["{TRAVEL}"]')
    ok = await world.gateway.reload()
    _say(f"{_INDENT}await gateway.reload() -> {ok} (reloads: {world.gateway.reloads})")
    world.expect(ok, "the reload was refused")
    after = await call(world, "travel", "GET", "/flights/7", headers=_bearer(alice_for(world)))
    record = await _audit(world, after.request_id)
    reason = record.get("policy_reason") if record else None
    decision_id = after.json().get("decision_id")
    _say(f"{_INDENT}decision_id {decision_id}; policy reason (audit log only): {reason}")
    _say(f"{_INDENT}decision flip: {before.status} -> {after.status}")
    world.expect(after.status == 403, f"after the reload: {after.status}, not 403")
    world.expect(reason == "rebac:not_delegated", f"after the reload the reason is {reason}")


async def step_observability(world: World, first: Answer, second: str | None) -> None:
    _heading("7. The audit record of the request in step 2, and a /metrics excerpt")
    record = await _audit(world, first.request_id)
    if world.expect(record is not None, "no audit record for the flights call"):
        if record is None:
            raise DemoError("record is missing")
        _say(f"{_INDENT}{world.rel(world.workdir / 'audit.log')}:")
        for line in json.dumps(record, indent=2).splitlines():
            _say(f"{_INDENT * 2}{line}")
        hop = await _audit(world, second) if second else None
        if world.expect(hop is not None, "no audit record for the internal hop"):
            if hop is None:
                raise DemoError("hop is missing")
            _say(
                f"{_INDENT}the internal hop's record ({hop['route']}, {hop['status']}, "
                f"principal {hop['principal']['id']}, peer {hop['peer_spiffe_id']}):"
            )
            _say(f"{_INDENT * 2}same txn: {'yes' if hop['txn'] == record['txn'] else 'NO'}")
            same_trace = hop["trace_id"] == record["trace_id"]
            _say(f"{_INDENT * 2}same trace_id: {'yes' if same_trace else 'no'}")
            world.expect(hop["txn"] == record["txn"], "the audit records disagree on txn")
    async with aiohttp.ClientSession() as plain, plain.get(world.admin + "/metrics") as resp:
        text = await resp.text()
    _say(f"\n{_INDENT}GET {world.admin}/metrics (excerpt)")
    wanted = (
        "agentgate_requests_total{",
        "agentgate_pdp_decisions_total{",
        "agentgate_txn_tokens_minted_total{",
    )
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    for line in sorted(lines):
        _say(f"{_INDENT * 2}{line}")
    world.expect(bool(lines), "/metrics has none of the expected series")


async def run_demo(workdir: Path) -> int:
    _say("agentgate demo: a scripted agent workflow through the gateway, hop by hop.")
    _heading("1. Setup (everything below runs on 127.0.0.1 and stops at the end)")
    try:
        world = prepare(workdir)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    try:
        await start(world)
        first, txn1 = await step_flights(world)
        second = await step_second_hop(world, first, txn1)
        await step_billing(world)
        root = await step_subagent(world)
        await step_mcp(world)
        await step_hijack(world, root)
        await step_denials(world)
        await step_reload(world)
        await step_observability(world, first, second)
    finally:
        await teardown(world)
    if world.failures:
        _say(f"\ndemo finished with {len(world.failures)} unexpected result(s):")
        for failure in world.failures:
            _say(f"{_INDENT}- {failure}")
        return 1
    _say("\ndemo finished: every step behaved as described; everything is stopped.")
    _say(f"the files are in {world.workdir} (config: {world.rel(world.config_path)}).")
    return 0
