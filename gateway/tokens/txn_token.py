"""Minting Transaction Tokens (draft-ietf-oauth-transaction-tokens-10 §9; SPECS.md §1, §2.2).

Inputs: the verified :class:`gateway.context.Identity`, the request facts, the route name
and the scopes the pipeline already narrowed (decision scopes ∩ subject scopes). Output: a
compact JWS. Nothing here does I/O; errors are :class:`ExchangeError` (the TTS maps its
``error`` to an RFC 6749 §5.2 code), :class:`gateway.errors.Forbidden` for an actor chain
deeper than 8 (SPECS.md §2.2 rule 3), or ``ValueError`` for a programming error.

Token layout (JOSE header ``{"alg","kid","typ":"txntoken+jwt"}``)::

    iss, iat, exp            exp = iat + ttl_s (ttl_s <= 300); never later than the parent's
    aud                      the trust domain
    txn                      UUIDv4, fresh per inbound transaction; kept by continuations
    sub                      the verified subject; never changes within a transaction
    scope                    space-delimited; only ever narrows within a transaction
    req_wl                   the workload that requested the token: the gateway's SPIFFE ID,
                             or the TTS client for POST /token
    act                      RFC 8693 §4.1 actor chain, current actor outermost (SPECS §2.2)
    tctx                     immutable for the whole transaction (set once, then only added to):
      route, method, path      the inbound request that started the transaction
      subject_type             user | agent | service | device
      mode, caller             obo_user|self|obo_agent, human_browser|human_api|agent|device
      a2a, ...                 keys added from TTS ``request_details`` (never overwriting)
    rctx                     environmental, per hop:
      req_ip                   the original client address (kept by continuations)
      authn                    RFC 8176 AMR values of the original authentication (list)
      transport                the listener scheme (https | http)
      request_id               this hop's X-Request-Id (joins the audit record)
      a2a: {hop, caller_agent} hop number (1 at ingress) and the calling agent's SPIFFE ID
      request: {route, method, path}   this hop's request, on continuation hops only
      req_wl_chain             earlier requesters, oldest first (TTS replacements only)

Continuation (``mint(txn=...)``): an east-west request authenticated by a Txn-Token keeps
that token's ``txn``, ``sub``, ``tctx`` and original ``rctx`` facts; its scope can only
shrink and its ``exp`` never passes the parent's, so a transaction lives at most ``ttl_s``
from its first token, however many hops or replacements it takes (§13.15 SHOULD limit
lifetime extension: we allow none).

Signing runs inline on the event loop: a thread hop costs more than the signature.
Measured with ``bench/bench_txn_tokens.py`` (one pinned core, CPU time; AMD EPYC, 2 shared
vCPUs at load ~9, OpenSSL 3.0, cryptography 50): an ES256 signature is ~24 µs, a whole
``mint`` (claims, txn, JSON, base64url, signature, DER -> r||s) ~47 µs, i.e. ~21,000 mints
per CPU-second (pyjwt's ``encode`` of ready-made claims: ~52-59 µs). On a running loop an
inline mint took ~100 µs wall against ~375 µs through ``run_in_executor``, whose bare hop
alone was ~140 µs. EdDSA is slower here (~37 µs to sign, ~50-57 µs per mint).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from gateway.context import Actor, Identity, RequestFacts
from gateway.errors import Forbidden
from gateway.jose.jws import b64url_encode, sign
from gateway.sdk.txn import MAX_LIFETIME_S, TXN_TOKEN_TYP
from gateway.tokens.keys import KeyRing, SigningKey

MAX_ACTORS: Final = 8  # SPECS.md §2.2 rule 3
MAX_REPLACEMENTS: Final = 16  # length cap of rctx.req_wl_chain (token size stays bounded)

# Top-level claim names a TTS caller may never smuggle in through request_details/context.
RESERVED_CLAIMS: Final = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "txn",
        "scope",
        "req_wl",
        "act",
        "tctx",
        "rctx",
        "cnf",
        "may_act",
        "client_id",
    }
)
# rctx members only the gateway writes.
_RCTX_OWN: Final = frozenset({"req_wl_chain", "request_id", "request"})

# Built once: json.dumps(..., separators=...) would construct a new encoder per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
# RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class ExchangeError(ValueError):
    """A token request the TTS must refuse; ``error`` is the RFC 6749 §5.2 code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


# --------------------------------------------------------------------------- signing


def header_segment(key: SigningKey) -> str:
    header = {"alg": key.alg, "kid": key.kid, "typ": TXN_TOKEN_TYP}
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))


def sign_claims(key: SigningKey, claims: Mapping[str, Any], header_b64: str | None = None) -> str:
    """Compact JWS of ``claims`` with ``key`` (:func:`gateway.jose.jws.sign`: raw r||s)."""
    head = header_b64 if header_b64 is not None else header_segment(key)
    body = b64url_encode(_COMPACT_JSON.encode(claims).encode("ascii"))
    signing_input = f"{head}.{body}".encode("ascii")
    return f"{head}.{body}.{b64url_encode(sign(key.private_key, key.alg, signing_input))}"


# --------------------------------------------------------------------------- helpers


def new_txn() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` but at half the cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def clean_scopes(scopes: Iterable[str]) -> list[str]:
    """Deduplicated scope tokens in order; malformed ones are dropped, which can only
    narrow (SECURITY: a "scope" with a space inside would otherwise become two)."""
    out: list[str] = []
    for scope in scopes:
        if isinstance(scope, str) and _SCOPE_TOKEN.fullmatch(scope) and scope not in out:
            out.append(scope)
    return out


def parse_scope(value: str) -> list[str]:
    """A space-delimited scope parameter; raises ExchangeError(invalid_scope) if malformed."""
    parts = value.split(" ")
    if any(not _SCOPE_TOKEN.fullmatch(p) for p in parts):
        raise ExchangeError("invalid_scope", "malformed scope")
    return clean_scopes(parts)


def act_claim(actors: Sequence[Actor]) -> dict[str, Any] | None:
    """RFC 8693 §4.1 nesting of ``actors`` (outermost = current actor first)."""
    if len(actors) > MAX_ACTORS:
        raise Forbidden("actor chain deeper than 8", reason="actor_chain_too_deep")
    nested: dict[str, Any] | None = None
    for actor in reversed(actors):
        node: dict[str, Any] = {"sub": actor.sub}
        if actor.iss is not None:
            node["iss"] = actor.iss
        if nested is not None:
            node["act"] = nested
        nested = node
    return nested


def actors_from_act(act: Any) -> tuple[Actor, ...]:
    """The inverse of :func:`act_claim`; malformed or over-deep chains raise ValueError."""
    out: list[Actor] = []
    while act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
            raise ValueError("malformed act claim")
        iss = act.get("iss")
        out.append(Actor(act["sub"], iss if isinstance(iss, str) else None))
        if len(out) > MAX_ACTORS:
            raise ValueError("act chain deeper than 8")
        act = act.get("act")
    return tuple(out)


def _amr(identity: Identity) -> list[str]:
    out: list[str] = []
    for principal in (identity.principal, *identity.results.values()):
        for value in principal.amr:
            if value not in out:
                out.append(value)
    return out


def _json_copy(value: Mapping[str, Any]) -> dict[str, Any]:
    # A deep copy that also proves the value is JSON (claims must stay serialisable).
    out: dict[str, Any] = json.loads(json.dumps(value))
    return out


def _add_tctx(tctx: dict[str, Any], additions: Mapping[str, Any] | None) -> None:
    """Add keys; never change one (SPECS.md §1.8 PROJECT: tctx only grows)."""
    for key, value in (additions or {}).items():
        if key in RESERVED_CLAIMS:
            raise ExchangeError("invalid_request", f"request_details may not set {key!r}")
        if key in tctx:
            if tctx[key] != value:
                raise ExchangeError("invalid_request", f"tctx member {key!r} cannot change")
            continue
        tctx[key] = value


def _add_rctx(rctx: dict[str, Any], additions: Mapping[str, Any] | None) -> None:
    """Caller-supplied context fills gaps only: values already present always win."""
    for key, value in (additions or {}).items():
        if key in RESERVED_CLAIMS or key in _RCTX_OWN:
            raise ExchangeError("invalid_request", f"request_context may not set {key!r}")
        rctx.setdefault(key, value)


# --------------------------------------------------------------------------- the minter


class TxnTokenMinter:
    """Mints Txn-Tokens for ingress requests and builds the TTS's replacements."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        ttl_s: float,
        gateway_spiffe_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < ttl_s <= MAX_LIFETIME_S:
            # SECURITY: SPECS.md §1.6 hard maximum.
            raise ValueError(f"ttl_s must be in (0, {MAX_LIFETIME_S}]")
        if not audience or not issuer or not gateway_spiffe_id:
            raise ValueError("issuer, audience and gateway_spiffe_id are required")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = int(ttl_s) if ttl_s >= 1 else 1
        self.gateway_spiffe_id = gateway_spiffe_id
        self._clock = clock
        self._header: tuple[str, str] = ("", "")  # (kid, header segment) of the active key

    def now(self) -> int:
        """The minter's clock, in whole seconds (what ``iat`` will say)."""
        return int(self._clock())

    def sign(self, claims: Mapping[str, Any]) -> str:
        key = self.keys.active
        kid, head = self._header
        if kid != key.kid:
            head = header_segment(key)
            self._header = (key.kid, head)
        return sign_claims(key, claims, head)

    # ------------------------------------------------------------------ ingress

    def mint(
        self,
        *,
        identity: Identity,
        facts: RequestFacts,
        route_name: str,
        scopes: Sequence[str],
        txn: str | None = None,
    ) -> str:
        return self.sign(
            self.mint_claims(
                identity=identity, facts=facts, route_name=route_name, scopes=scopes, txn=txn
            )
        )

    def mint_claims(
        self,
        *,
        identity: Identity,
        facts: RequestFacts,
        route_name: str,
        scopes: Sequence[str],
        txn: str | None = None,
    ) -> dict[str, Any]:
        principal = identity.principal
        now = int(self._clock())
        exp = now + self.ttl_s
        granted = clean_scopes(scopes)
        a2a: dict[str, Any] = {"hop": 1}
        if identity.caller == "agent" and facts.peer is not None and facts.peer.spiffe_id:
            a2a["caller_agent"] = facts.peer.spiffe_id
        rctx: dict[str, Any] = {
            "req_ip": facts.client_address,
            "authn": _amr(identity),
            "transport": facts.scheme,
            "request_id": facts.request_id,
            "a2a": a2a,
        }
        if txn is None:
            txn = new_txn()
            tctx: dict[str, Any] = {
                "route": route_name,
                "method": facts.method,
                "path": facts.path,
                "subject_type": principal.subject_type,
                "mode": identity.mode,
                "caller": identity.caller,
            }
            if principal.provenance is not None:
                # The agent-credential chain the transaction started from (issue 16).
                tctx["provenance"] = {
                    "genesis": dict(principal.provenance.genesis),
                    "agents": list(principal.provenance.agents),
                    "credential_id": principal.provenance.credential_id,
                }
        else:
            parent = principal.claims
            if parent.get("txn") != txn or parent.get("sub") != principal.subject:
                raise ValueError("a continuation needs the verified parent Txn-Token")
            # SECURITY: within a transaction scope only narrows, exp never extends.
            held = set(str(parent.get("scope", "")).split())
            granted = [s for s in granted if s in held]
            exp = min(exp, int(parent["exp"]))
            tctx = _json_copy(parent.get("tctx") or {})
            parent_rctx = parent.get("rctx") or {}
            for name in ("req_ip", "authn"):
                if name in parent_rctx:
                    rctx[name] = parent_rctx[name]
            # SPECS.md §1.8: keep the requester chain of the presented token; a token that
            # a workload obtained from POST /token adds that workload to it.
            chain = parent_rctx.get("req_wl_chain")
            chain = [str(x) for x in chain] if isinstance(chain, list) else []
            if parent.get("req_wl") != self.gateway_spiffe_id:
                chain.append(str(parent.get("req_wl", "")))
            if chain:
                rctx["req_wl_chain"] = chain[-(MAX_REPLACEMENTS + 1) :]
            hop = (parent_rctx.get("a2a") or {}).get("hop")
            a2a["hop"] = (hop if isinstance(hop, int) and not isinstance(hop, bool) else 1) + 1
            rctx["request"] = {"route": route_name, "method": facts.method, "path": facts.path}
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": now,
            "exp": exp,
            "aud": self.audience,
            "txn": txn,
            "sub": principal.subject,
            "scope": " ".join(granted),
            "req_wl": self.gateway_spiffe_id,
        }
        act = act_claim(principal.actors)
        if act is not None:
            claims["act"] = act
        claims["tctx"] = tctx
        claims["rctx"] = rctx
        return claims

    # ------------------------------------------------------------------ TTS

    def replace(
        self,
        claims: Mapping[str, Any],
        *,
        requester: str,
        scope: Sequence[str] | None,
        tctx_add: Mapping[str, Any] | None,
        rctx_add: Mapping[str, Any] | None = None,
    ) -> str:
        return self.sign(
            self.replace_claims(
                claims, requester=requester, scope=scope, tctx_add=tctx_add, rctx_add=rctx_add
            )
        )

    def replace_claims(
        self,
        claims: Mapping[str, Any],
        *,
        requester: str,
        scope: Sequence[str] | None,
        tctx_add: Mapping[str, Any] | None,
        rctx_add: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A replacement for the *verified* Txn-Token ``claims`` (SPECS.md §1.8).

        Same ``txn``/``sub``/``aud``/``act``; ``scope`` only narrows (``invalid_scope``
        otherwise); ``tctx`` only gains keys; ``exp`` = min(now + ttl, the subject's
        ``exp``); an expired subject is ``invalid_grant``; the prior ``req_wl`` is
        appended to ``rctx.req_wl_chain``.
        """
        now = int(self._clock())
        old_exp = claims.get("exp")
        if isinstance(old_exp, bool) or not isinstance(old_exp, int | float) or now >= old_exp:
            # SECURITY: §13.15 MUST NOT replace an expired Txn-Token.
            raise ExchangeError("invalid_grant", "subject token expired")
        if claims.get("aud") != self.audience:
            raise ExchangeError("invalid_grant", "subject token is for another trust domain")
        held = str(claims.get("scope", "")).split()
        if scope is None:
            new_scope = clean_scopes(held)
        else:
            new_scope = clean_scopes(scope)
            if not set(new_scope) <= set(held):
                raise ExchangeError("invalid_scope", "a replacement may only narrow scope")
        tctx = _json_copy(claims.get("tctx") or {})
        _add_tctx(tctx, tctx_add)
        rctx = _json_copy(claims.get("rctx") or {})
        chain = rctx.get("req_wl_chain")
        chain = list(chain) if isinstance(chain, list) else []
        if len(chain) >= MAX_REPLACEMENTS:
            raise ExchangeError("invalid_grant", "too many replacements in this transaction")
        chain.append(str(claims.get("req_wl", "")))
        rctx["req_wl_chain"] = chain
        _add_rctx(rctx, rctx_add)
        out: dict[str, Any] = {
            "iss": self.issuer,
            "iat": now,
            "exp": min(now + self.ttl_s, int(old_exp)),
            "aud": self.audience,
            "txn": claims["txn"],
            "sub": claims["sub"],
            "scope": " ".join(new_scope),
            "req_wl": requester,
        }
        if isinstance(claims.get("act"), dict):
            out["act"] = _json_copy(claims["act"])
        out["tctx"] = tctx
        out["rctx"] = rctx
        return out

    def exchange_claims(
        self,
        identity: Identity,
        *,
        requester: str,
        scopes: Sequence[str],
        tctx_add: Mapping[str, Any] | None,
        rctx_add: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """A new transaction's first token for a validated inbound access token (§11.3).

        The raw access token is never copied into the result (§13.4).
        """
        principal = identity.principal
        now = int(self._clock())
        tctx: dict[str, Any] = {
            "subject_type": principal.subject_type,
            "mode": identity.mode,
            "caller": identity.caller,
        }
        _add_tctx(tctx, tctx_add)
        rctx: dict[str, Any] = {}
        amr = _amr(identity)
        if amr:
            rctx["authn"] = amr
        _add_rctx(rctx, rctx_add)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": now,
            "exp": now + self.ttl_s,
            "aud": self.audience,
            "txn": new_txn(),
            "sub": principal.subject,
            "scope": " ".join(clean_scopes(scopes)),
            "req_wl": requester,
        }
        act = act_claim(principal.actors)
        if act is not None:
            claims["act"] = act
        claims["tctx"] = tctx
        claims["rctx"] = rctx
        return claims


def dev_claims(
    *,
    sub: str,
    scopes: Sequence[str],
    audience: str,
    issuer: str,
    ttl_s: int = 60,
    txn: str | None = None,
    req_wl: str = "spiffe://dev/agentgate-cli",
    subject_type: str = "user",
    tctx: Mapping[str, Any] | None = None,
    rctx: Mapping[str, Any] | None = None,
    actors: Sequence[str] = (),
    now: float | None = None,
) -> dict[str, Any]:
    """Claims for ``agentgate token mint`` (a dev issuer for tests and demos)."""
    if not 0 < ttl_s <= MAX_LIFETIME_S:
        raise ValueError(f"ttl must be in (0, {MAX_LIFETIME_S}]")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "iat": issued,
        "exp": issued + ttl_s,
        "aud": audience,
        "txn": txn or new_txn(),
        "sub": sub,
        "scope": " ".join(clean_scopes(scopes)),
        "req_wl": req_wl,
    }
    act = act_claim([Actor(a) for a in actors])
    if act is not None:
        claims["act"] = act
    claims["tctx"] = {"subject_type": subject_type, **(tctx or {})}
    claims["rctx"] = dict(rctx or {})
    return claims
