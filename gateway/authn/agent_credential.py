"""``agent_credential``: agent credentials with provenance (issue 16, gateway.sdk.agent).

Contract:

* No ``Agent-Credential`` header: ``None`` (not mine).
* Otherwise the request is accepted only when all of these hold; each failure is a 401
  ``invalid_token`` (``AgentCredential`` challenge) whose ``error_description`` names it:

  ============================  ===============================================================
  malformed                     ``agent credential: <what>`` (prefix, base64url, JSON, members,
                                sizes; :mod:`gateway.sdk.agent`)
  widened / over-deep           ``agent credential: block <i> widens scope`` (``depth``,
                                ``expiry``, a restriction), ``...: delegation depth exhausted``
  reordered                     a child block in position 0 is ``block 0 lacks 'v'``; any
                                other order breaks a chain rule or the MAC (below)
  other issuer / unknown key    ``agent credential from another issuer``,
                                ``agent credential key unknown``
  expired / not yet valid       ``agent credential expired``, ``... not yet valid``
  unsigned                      ``agent credential without a request signature``
  signature                     ``keyid`` must be the last block's ``cid``; ``alg``
                                ``hmac-sha256``; covers ``@method``, ``@target-uri``,
                                ``content-digest`` when a body is sent; ``created`` within
                                ``max_skew_s``
  truncated / forged            ``agent credential signature mismatch``: the gateway recomputes
                                the chain's final tag from the root key, so a header with a
                                block removed, changed or reordered keys a different MAC
  wrong body                    ``content digest mismatch``
  method restriction            ``agent credential does not allow this method``
  replayed                      ``signature replayed`` (same signature within the window,
                                shared replay store)
  ============================  ===============================================================

  Revocation of any ``cid`` or agent in the chain, and the route/segment/tool restrictions,
  are checked after authentication (``gateway.state.revocation``, ``gateway.agents.caveats``).
* 503 when the replay store is unusable; 413 when a covered body exceeds ``max_body_bytes``.

Principal: ``subject`` = the genesis ``sub`` (``user``, or ``service`` for a task genesis),
``actors`` = the chain's agents, current (leaf) first, ``scopes`` = the leaf's scope
(``scoped``: a policy may only narrow them), ``client_id`` = the leaf agent, ``token_id`` = the
leaf ``cid``, ``amr = ("swk",)`` (RFC 8176: proof of possession of a software key),
``provenance`` = :class:`gateway.context.Provenance`.

A chain is cached by its exact header (``agent_credentials.cache_entries``), with the
request-signing key derived from it, once a request signed with that key has verified; a
sub-agent's next call then costs one MAC. The chain's parent is kept too, so a new child of a
known chain (a planner's next sub-agent) parses and MACs its own block only. Expiry,
signature, replay and revocation are still checked on every request.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Self

from gateway.authn.base import invalid_token
from gateway.authn.hmac_signature import message
from gateway.authn.registry import BuildEnv, register
from gateway.context import Actor, Inbound, Principal, Provenance, RequestFacts
from gateway.errors import GatewayError, ServiceUnavailable, Unauthorized
from gateway.httpsig import (
    ComponentUnavailable,
    InvalidSignature,
    MalformedSignature,
    SignatureFields,
    digest,
    hmac_sha256,
    parse_signature_fields,
    signature_base,
)
from gateway.jose.errors import JOSEError
from gateway.jose.jws import b64url_decode
from gateway.sdk.agent import (
    HEADER,
    MAX_BLOCKS,
    MAX_HEADER_CHARS,
    RESTRICTIONS,
    Block,
    CredentialError,
    check_child,
    derived_root_key,
    mac,
    parse_block,
    parse_header,
    signing_key,
    trust_domain,
)
from gateway.settings.agents import AgentCredentialSettings
from gateway.settings.authn import AgentCredentialMethod
from gateway.state import ReplayCache

SCHEME = "AgentCredential"
AMR = ("swk",)  # RFC 8176 §2
REQUIRED = ("@method", "@target-uri")


def refused(description: str, detail: str = "") -> Unauthorized:
    return invalid_token(
        description, scheme=SCHEME, detail=detail, reason="agent_credential_invalid"
    )


@dataclass(frozen=True, slots=True, repr=False)
class KnownChain:
    """Blocks whose final ``tag`` the gateway computed from its root key, with what the
    policy input makes of them; a child of a known chain costs one block and one MAC."""

    blocks: tuple[Block, ...]
    tag: bytes  # SECURITY: the holder's secret for these blocks; never logged
    inputs: tuple[Mapping[str, Any], ...]  # Block.as_input(), root first
    actors: tuple[Actor, ...]  # leaf first

    def __repr__(self) -> str:
        return f"KnownChain({self.blocks[-1].agent!r}, tag=<redacted>)"


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """What a verified header yields; the key is the holder's request-signing key."""

    key: bytes
    principal: Principal
    not_before: int
    expires_at: int
    methods: frozenset[str] | None
    known: KnownChain
    parent: KnownChain | None  # the chain minus its last block, when computed on the way

    def __repr__(self) -> str:
        return f"VerifiedChain({self.principal.client_id!r}, key=<redacted>)"


class ChainVerifier:
    """Header -> :class:`VerifiedChain`: parse, chain rules, issuer, root key, MAC (cached).

    Two bounded caches, both filled only by :meth:`remember` (after a request signature made
    with the chain's key verified): verified headers, and known chains by header, whose
    children are verified from the parent's tag (a thousand sub-agents of one planner parse
    and MAC one block each, not the whole chain).
    """

    def __init__(self, cfg: AgentCredentialSettings, method_name: str) -> None:
        self._issuer = cfg.issuer
        self._keys = {key.id: key.secret for key in cfg.keys}
        self._method = method_name
        self._max = cfg.cache_entries
        self._cache: OrderedDict[str, VerifiedChain] = OrderedDict()
        self._known: OrderedDict[str, KnownChain] = OrderedDict()

    def __repr__(self) -> str:
        return f"ChainVerifier(issuer={self._issuer!r}, keys={sorted(self._keys)})"

    def verify(self, header: str) -> VerifiedChain:
        chain = self._cache.get(header)
        if chain is not None:
            return chain
        if len(header) > MAX_HEADER_CHARS:
            raise refused(
                f"agent credential: Agent-Credential is longer than {MAX_HEADER_CHARS} characters"
            )
        value = header.strip()
        prefix, _, last = value.rpartition(".")
        parent = self._known.get(prefix)
        try:
            if parent is not None:
                known, before = self._extend(parent, last), None
            else:
                known, before = self._compute(parse_header(value))
        except CredentialError as exc:
            raise refused(f"agent credential: {exc}") from None
        blocks = known.blocks
        return VerifiedChain(
            key=signing_key(known.tag),
            principal=self._principal(known),
            not_before=blocks[0].iat,
            expires_at=min(block.exp for block in blocks),
            methods=_effective(blocks).get("methods"),
            known=known,
            parent=before,
        )

    def _compute(self, blocks: list[Block]) -> tuple[KnownChain, KnownChain | None]:
        """A whole chain from the root key; also its parent, for the parent's other children."""
        root = blocks[0].members
        if root["iss"] != self._issuer:
            raise refused("agent credential from another issuer")
        secret = self._keys.get(root["kid"])
        if secret is None:
            raise refused("agent credential key unknown", f"agent_credential: kid {root['kid']!r}")
        inputs = tuple(MappingProxyType(block.as_input()) for block in blocks)
        actors = tuple(Actor(block.agent, self._issuer) for block in reversed(blocks))
        tag = derived_root_key(secret.reveal())
        for block in blocks[:-1]:
            tag = mac(tag, block.raw)
        parent = None
        if len(blocks) > 1:
            parent = KnownChain(tuple(blocks[:-1]), tag, inputs[:-1], actors[1:])
        known = KnownChain(tuple(blocks), mac(tag, blocks[-1].raw), inputs, actors)
        return known, parent

    def _extend(self, parent: KnownChain, part: str) -> KnownChain:
        """A known chain plus one block: the same rules :func:`parse_header` applies."""
        index = len(parent.blocks)
        if index >= MAX_BLOCKS:
            raise CredentialError(f"credential has more than {MAX_BLOCKS} blocks")
        try:
            raw = b64url_decode(part)
        except JOSEError:
            raise CredentialError(f"block {index} is not base64url") from None
        child = parse_block(raw, index)
        check_child(parent.blocks[-1], child, index, trust_domain(parent.blocks[0].agent))
        if any(block.cid == child.cid for block in parent.blocks):
            raise CredentialError(f"block {index} repeats a credential id")
        return KnownChain(
            (*parent.blocks, child),
            mac(parent.tag, raw),
            (*parent.inputs, MappingProxyType(child.as_input())),
            (Actor(child.agent, self._issuer), *parent.actors),
        )

    def remember(self, header: str, chain: VerifiedChain) -> None:
        """Cache a chain (and its parent) once a request signed with its key has verified.

        SECURITY: only then: a forged header (any blocks, no valid MAC) must not take a cache
        slot, or an attacker could evict real chains and fill memory with 16 KiB headers.
        """
        if not self._max or header in self._cache:
            return
        _put(self._cache, header, chain, self._max)
        value = header.strip()
        _put(self._known, value, chain.known, self._max)
        if chain.parent is not None:
            _put(self._known, value.rpartition(".")[0], chain.parent, self._max)

    def _principal(self, known: KnownChain) -> Principal:
        blocks = known.blocks
        root, leaf = blocks[0], blocks[-1]
        genesis = dict(root.members["genesis"])
        provenance = Provenance(
            genesis=MappingProxyType(genesis),
            issuer=self._issuer,
            chain=known.inputs,
            restrictions=MappingProxyType(_effective(blocks)),
        )
        return Principal(
            method=self._method,
            subject=genesis["sub"],
            subject_type="user" if genesis["type"] == "user" else "service",
            issuer=self._issuer,
            scopes=tuple(sorted(leaf.scope)),
            client_id=leaf.agent,
            actors=known.actors,
            amr=AMR,
            claims=MappingProxyType({"credential_id": leaf.cid, "depth": len(blocks) - 1}),
            expires_at=float(min(block.exp for block in blocks)),
            token_id=leaf.cid,
            provenance=provenance,
        )


def _put(cache: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    if key in cache:
        cache.move_to_end(key)
    elif len(cache) >= limit:
        cache.popitem(last=False)
    cache[key] = value


def _effective(blocks: Sequence[Block]) -> dict[str, frozenset[str]]:
    """The innermost restriction lists (each block's are a subset of its parent's)."""
    out: dict[str, frozenset[str]] = {}
    for block in blocks:
        for name in RESTRICTIONS:
            if name in block.restrictions:
                out[name] = block.restrictions[name]
    return out


@register
class AgentCredentialAuthenticator:
    type_id: ClassVar[str] = "agent_credential"
    config_model: ClassVar[type[AgentCredentialMethod]] = AgentCredentialMethod
    primary_rank: ClassVar[int] = 1  # the genesis subject beats a peer certificate
    scoped: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, name: str, cfg: AgentCredentialMethod, env: BuildEnv) -> Self:
        section = env.settings.agent_credentials
        if section is None:  # settings refuses this first
            raise ValueError(f"authn.{name}: agent_credential needs agent_credentials")
        return cls(name, section, env.replay, env.settings.server.limits.max_body_bytes)

    def __init__(
        self, name: str, cfg: AgentCredentialSettings, replay: ReplayCache, max_body: int
    ) -> None:
        self.name = name
        self.chains = ChainVerifier(cfg, name)
        self._replay = replay
        self._skew = cfg.max_skew_s
        self._max_body = max_body

    def __repr__(self) -> str:
        return f"AgentCredentialAuthenticator({self.name!r})"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def challenge(self) -> str | None:
        return None

    def credential_headers(self) -> tuple[str, ...]:
        return (HEADER, "Signature", "Signature-Input")

    def credential_query_params(self) -> tuple[str, ...]:
        return ()

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        values = request.headers.getall(HEADER, ())
        if not values:
            return None
        if len(values) > 1:
            raise refused("more than one Agent-Credential header")
        chain = self.chains.verify(values[0])
        now = facts.time_ns / 1e9
        if now >= chain.expires_at:
            raise refused("agent credential expired")
        if chain.not_before > now + self._skew:
            raise refused("agent credential not yet valid")
        if chain.methods is not None and request.method not in chain.methods:
            raise refused("agent credential does not allow this method")
        parsed = self._fields(request, chain, now)
        try:
            base = signature_base(
                parsed.params_list, message(request, facts).component, parsed.params_text
            )
            hmac_sha256.verify(chain.key, base, parsed.signature)
        except ComponentUnavailable:
            raise refused("covered component missing or unsupported") from None
        except InvalidSignature:
            raise refused("agent credential signature mismatch") from None
        self.chains.remember(values[0], chain)
        if "content-digest" in parsed.covered:
            await self._check_digest(request)
        await self._first_use(chain, parsed, now)
        return chain.principal

    def _fields(self, request: Inbound, chain: VerifiedChain, now: float) -> SignatureFields:
        inputs = request.headers.getall("Signature-Input", ())
        signatures = request.headers.getall("Signature", ())
        if not inputs or not signatures:
            raise refused("agent credential without a request signature")
        try:
            parsed = parse_signature_fields(inputs, signatures)
        except (MalformedSignature, InvalidSignature) as exc:
            raise refused(f"request signature: {exc}") from None
        if parsed.params.get("keyid") != chain.principal.token_id:
            raise refused("signature keyid is not the credential's id")
        alg = parsed.params.get("alg")
        if alg is not None and alg != hmac_sha256.ALGORITHM:
            raise refused("unsupported signature algorithm")
        missing = [c for c in REQUIRED if c not in parsed.covered]
        if _has_body(request) and "content-digest" not in parsed.covered:
            missing.append("content-digest")
        if missing:
            raise refused(f"signature does not cover {missing[0]}")
        created = parsed.params.get("created")
        if not isinstance(created, int):
            raise refused("signature lacks created")
        # SECURITY: a bounded freshness window keeps the replay store finite (RFC 9421 §7.2.2).
        if abs(now - created) > self._skew:
            raise refused("signature created outside the allowed clock skew")
        return parsed

    async def _check_digest(self, request: Inbound) -> None:
        try:
            wanted = digest.wanted_digests(request.headers.getall("Content-Digest", ()))
        except (MalformedSignature, InvalidSignature) as exc:
            raise refused(str(exc)) from None
        body = await request.body.read()
        try:
            digest.check_digests(body, wanted)
        except InvalidSignature as exc:
            raise refused(str(exc)) from None

    async def _first_use(self, chain: VerifiedChain, parsed: SignatureFields, now: float) -> None:
        created = parsed.params["created"]
        ttl = max(1.0, float(created) + self._skew - now + 1.0)
        key = f"agentcred:{chain.principal.token_id}:{hashlib.sha256(parsed.signature).hexdigest()}"
        try:
            first = await self._replay.first_use(key, ttl)
        except GatewayError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                f"replay store error: {type(exc).__name__}", reason="state_unavailable"
            ) from None
        if not first:
            raise refused("signature replayed")


def _has_body(request: Inbound) -> bool:
    length = request.headers.get("Content-Length")
    return "Transfer-Encoding" in request.headers or (length is not None and length != "0")


__all__ = ["AgentCredentialAuthenticator", "ChainVerifier", "VerifiedChain", "refused"]
