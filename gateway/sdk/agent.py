"""Agent credentials with provenance: the wire format, the chain rules, derive and sign.

An agent credential is a chain of **blocks** (compact JSON objects) closed by a MAC that only
the gateway holding the root key can start and that anyone holding the credential can extend:

    root key K (per ``kid``, the gateway's)
    K'     = HMAC-SHA256(b"macaroons-key-generator", K)         libmacaroons' key derivation
    tag_0  = HMAC-SHA256(K', block_0)                           minted by the gateway
    tag_i  = HMAC-SHA256(tag_{i-1}, block_i)                    appended offline by a holder

This is the macaroon construction (SPECS.md §14.1, reproduced by the §14.2 libmacaroons vector
in the tests) with structured caveats. HMAC is one-way, so nobody can drop, reorder or change a
block and recompute a tag without K; the chain rules below stop a holder from *adding* a block
that widens what its parent held.

**The tag never travels.** It is the holder's secret (proof of possession): a request carries
the blocks in ``Agent-Credential: ac1.<b64url block_0>.<b64url block_1>...`` and an RFC 9421
``hmac-sha256`` signature keyed by ``HKDF-SHA256(tag_n, info=SIGNING_INFO)`` over ``@method``,
``@target-uri``, ``content-digest`` (when a body is sent) and ``created``, with ``keyid`` the
last block's ``cid``. The gateway recomputes ``tag_n`` from K and checks the signature; a stolen
header alone signs nothing. The holder form (what the gateway issues and :func:`derive`
writes) is a libmacaroons **v2 binary macaroon**, base64url: identifier = block 0, one
first-party caveat per later block, signature = the tag. Any libmacaroons port can read and
attenuate it; keep it like a private key.

Blocks (closed registries: an unknown member refuses the whole credential)::

    block 0 (root)  v=1, kid, cid, iss, genesis {type: user|task, sub, iss?}, agent,
                    scope [..], iat, exp, depth   + optional routes, segments, tools, methods
    block i > 0     cid, agent, scope [..], iat, exp, depth + the same optional restrictions

Chain rules (:func:`check_chain`, shared by :func:`derive` and the gateway's verifier): a child
block's ``scope`` is a subset of its parent's, its ``exp`` is no later, its ``depth`` (how many
further delegations it allows) is below its parent's, which must be at least 1; a restriction
list is a subset of the parent's list when the parent has one. ``cid`` values are unique in a
chain; a child agent stays in the root agent's SPIFFE trust domain. At most
:data:`MAX_BLOCKS` blocks.

This module is dependency-light (stdlib plus :mod:`gateway.jose`'s strict base64url/JSON and
:mod:`gateway.httpsig`) so that agents can vendor it. Errors are :class:`CredentialError`
with a message fit for an ``error_description``; no message contains a tag or a key.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.httpsig import Request, signature_base
from gateway.httpsig.digest import content_digest
from gateway.httpsig.fields import field_values
from gateway.httpsig.hmac_sha256 import ALGORITHM, sign
from gateway.httpsig.sfv import InnerList, Item
from gateway.jose.errors import JOSEError
from gateway.jose.jws import b64url_decode, b64url_encode, strict_json_object

HEADER = "Agent-Credential"
PREFIX = "ac1"
SIGNATURE_LABEL = "agent"
# RFC 5869 "info" of the request-signing key: binds the key to this use and version.
SIGNING_INFO = b"agentgate agent-credential v1 request-signature"
# libmacaroons' root-key derivation (SPECS.md §14.1).
KEY_GENERATOR = b"macaroons-key-generator"

MAX_BLOCKS = 8  # root + 7 delegations; also the Txn-Token act chain limit
MAX_BLOCK_BYTES = 2048
MAX_HEADER_CHARS = 16 * 1024
MAX_LIST_ITEMS = 32
MAX_NAME_CHARS = 255
MIN_ROOT_KEY_BYTES = 32

RESTRICTIONS = ("routes", "segments", "tools", "methods")
GENESIS_TYPES = ("user", "task")
ROOT_MEMBERS = frozenset(
    {"v", "kid", "cid", "iss", "genesis", "agent", "scope", "iat", "exp", "depth", *RESTRICTIONS}
)
CHILD_MEMBERS = frozenset({"cid", "agent", "scope", "iat", "exp", "depth", *RESTRICTIONS})
_REQUIRED_ROOT = ("v", "kid", "cid", "iss", "genesis", "agent", "scope", "iat", "exp", "depth")
_REQUIRED_CHILD = ("cid", "agent", "scope", "iat", "exp", "depth")

_CID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Printable ASCII without '"' and '\\': a name needs no JSON escaping (see _child_json).
_NAME = re.compile(rf"[\x21\x23-\x5b\x5d-\x7e]{{1,{MAX_NAME_CHARS}}}")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 §3.3 scope-token
_METHOD = re.compile(r"[A-Z]{1,16}")


class CredentialError(ValueError):
    """A credential that is malformed or breaks a chain rule; the text is safe to show."""


# --------------------------------------------------------------------------- blocks


@dataclass(slots=True, eq=False)
class Block:
    """One parsed block; ``raw`` is the exact JSON bytes the chain MACs. Treat as read-only
    (not ``frozen``: a frozen dataclass's ``__init__`` costs more than a derivation's MAC)."""

    raw: bytes
    cid: str
    agent: str
    scope: frozenset[str]
    iat: int
    exp: int
    depth: int
    restrictions: Mapping[str, frozenset[str]]
    parsed: Mapping[str, Any] | None = None

    @property
    def members(self) -> Mapping[str, Any]:
        """Every member of the block as JSON has it."""
        if self.parsed is None:
            self.parsed = strict_json_object(self.raw)
        return self.parsed

    def as_input(self) -> dict[str, Any]:
        """The block as ``input.provenance.chain[i]`` shows it (lists sorted)."""
        out: dict[str, Any] = {
            "agent": self.agent,
            "credential_id": self.cid,
            "scope": sorted(self.scope),
            "iat": self.iat,
            "exp": self.exp,
            "depth": self.depth,
        }
        for name, values in self.restrictions.items():
            out[name] = sorted(values)
        return out


def encode_block(members: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a block (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def parse_block(raw: bytes, index: int) -> Block:
    """Parse and type-check block ``index``; raises :class:`CredentialError`."""
    if len(raw) > MAX_BLOCK_BYTES:
        raise CredentialError(f"block {index} is larger than {MAX_BLOCK_BYTES} bytes")
    try:
        members = strict_json_object(raw)
    except JOSEError:
        raise CredentialError(f"block {index} is not a JSON object") from None
    allowed, required = (
        (ROOT_MEMBERS, _REQUIRED_ROOT) if index == 0 else (CHILD_MEMBERS, _REQUIRED_CHILD)
    )
    if not members.keys() <= allowed:
        # SECURITY: a caveat the verifier does not know is false (SPECS.md §14.1): deny.
        unknown = sorted(members.keys() - allowed)[0]
        raise CredentialError(f"block {index} has unknown member {unknown[:32]!r}")
    for name in required:
        if name not in members:
            raise CredentialError(f"block {index} lacks {name!r}")
    if index == 0:
        if type(members["v"]) is not int or members["v"] != 1:  # not true, not 1.0
            raise CredentialError("block 0 has an unsupported version")
        _name(members["kid"], 0, "kid")
        _name(members["iss"], 0, "iss")
        _genesis(members["genesis"])
    cid = members["cid"]
    if type(cid) is not str or not _CID.fullmatch(cid):
        raise CredentialError(f"block {index} has a malformed cid")
    restrictions = {}
    if len(members) > len(required):  # only then can a restriction be present
        for name in RESTRICTIONS:
            if name in members:
                pattern = _METHOD if name == "methods" else _NAME
                restrictions[name] = _strings(members[name], index, name, pattern)
    return Block(
        raw,
        cid,
        _name(members["agent"], index, "agent"),
        _strings(members["scope"], index, "scope", _SCOPE),
        _int(members["iat"], index, "iat"),
        _int(members["exp"], index, "exp"),
        _int(members["depth"], index, "depth", upper=MAX_BLOCKS - 1),
        restrictions,
        members,
    )


# The checks below build their error text only when they fail: a verifier parses every block
# of every new chain, and formatting "block 3 scope" eagerly costs more than the check.


def _name(value: Any, index: int, what: str) -> str:
    if type(value) is not str or not _NAME.fullmatch(value):
        raise CredentialError(
            f"block {index} {what} must be 1..{MAX_NAME_CHARS} printable ASCII characters,"
            " no quote or backslash"
        )
    return value


def _int(value: Any, index: int, what: str, *, upper: int = 2**53) -> int:
    if type(value) is not int or not 0 <= value <= upper:  # type(...) is: not a bool
        raise CredentialError(f"block {index} {what} must be an integer in 0..{upper}")
    return value


def _strings(value: Any, index: int, what: str, pattern: re.Pattern[str]) -> frozenset[str]:
    if type(value) is not list or len(value) > MAX_LIST_ITEMS:
        raise CredentialError(
            f"block {index} {what} must be a list of at most {MAX_LIST_ITEMS} strings"
        )
    match = pattern.fullmatch
    for entry in value:
        if type(entry) is not str or not match(entry):
            raise CredentialError(f"block {index} {what} holds a malformed entry")
    out = frozenset(value)
    if len(out) != len(value):
        raise CredentialError(f"block {index} {what} repeats an entry")
    return out


def _genesis(value: Any) -> None:
    if type(value) is not dict or not value.keys() <= {"type", "sub", "iss"}:
        raise CredentialError("block 0 genesis must be {type, sub, iss?}")
    if value.get("type") not in GENESIS_TYPES:
        raise CredentialError("block 0 genesis type must be 'user' or 'task'")
    _name(value.get("sub"), 0, "genesis sub")
    if "iss" in value:
        _name(value["iss"], 0, "genesis iss")


def trust_domain(agent: str) -> str | None:
    """The trust domain of a SPIFFE ID (``spiffe://td/...``), else None."""
    if not agent.startswith("spiffe://"):
        return None
    return agent[len("spiffe://") :].partition("/")[0] or None


# --------------------------------------------------------------------------- the chain rules


def check_chain(blocks: Sequence[Block]) -> None:
    """Raise :class:`CredentialError` unless every block only narrows its parent's grant."""
    if not blocks:
        raise CredentialError("credential has no blocks")
    if len(blocks) > MAX_BLOCKS:
        raise CredentialError(f"credential has more than {MAX_BLOCKS} blocks")
    root = blocks[0]
    if root.exp < root.iat:
        raise CredentialError("block 0 expires before it was issued")
    domain = trust_domain(root.agent)
    seen = {root.cid}
    for index in range(1, len(blocks)):
        check_child(blocks[index - 1], blocks[index], index, domain)
        if blocks[index].cid in seen:
            raise CredentialError(f"block {index} repeats a credential id")
        seen.add(blocks[index].cid)


def check_child(parent: Block, child: Block, index: int, domain: str | None) -> None:
    """The narrowing rules for one appended block (see the module docstring)."""
    if parent.depth < 1:
        raise CredentialError(f"block {index}: delegation depth exhausted")
    if child.depth > parent.depth - 1:
        raise CredentialError(f"block {index} widens depth")
    if child.exp > parent.exp:
        raise CredentialError(f"block {index} extends expiry")
    if not child.scope <= parent.scope:
        raise CredentialError(f"block {index} widens scope")
    for name, held in parent.restrictions.items():
        asked = child.restrictions.get(name)
        if asked is None:
            raise CredentialError(f"block {index} drops the {name} restriction")
        if not asked <= held:
            raise CredentialError(f"block {index} widens {name}")
    if domain is not None and trust_domain(child.agent) != domain:
        raise CredentialError(f"block {index} agent is outside the trust domain {domain}")


# --------------------------------------------------------------------------- MACs


_SHA256 = hashlib.sha256()  # copied, never updated: a copy skips OpenSSL's digest lookup
_INNER = bytes(x ^ 0x36 for x in range(256))
_OUTER = bytes(x ^ 0x5C for x in range(256))
_ZEROS = bytes(64)


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), equal to ``hmac.digest(key, message, "sha256")``.

    Written out over :mod:`hashlib` because OpenSSL 3's ``HMAC()`` spends most of a short
    message's time setting up its context: this form is ~2x faster, and a chain is nothing
    but HMACs. ``tests/unit/sdk/test_agent.py`` checks it against :mod:`hmac`.
    """
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key += _ZEROS[len(key) :]
    inner = _SHA256.copy()
    inner.update(key.translate(_INNER))
    inner.update(message)
    outer = _SHA256.copy()
    outer.update(key.translate(_OUTER))
    outer.update(inner.digest())
    return outer.digest()


def derived_root_key(root_key: bytes) -> bytes:
    """libmacaroons' K' = HMAC-SHA256("macaroons-key-generator", K)."""
    return mac(KEY_GENERATOR, root_key)


def chain_tag(root_key: bytes, raw_blocks: Iterable[bytes]) -> bytes:
    """tag_n of the blocks: one HMAC-SHA256 per block, from the derived root key."""
    tag = derived_root_key(root_key)
    for raw in raw_blocks:
        tag = mac(tag, raw)
    return tag


def signing_key(tag: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the final tag, zero salt, :data:`SIGNING_INFO`, 32 bytes."""
    prk = mac(b"\x00" * 32, tag)  # extract
    return mac(prk, SIGNING_INFO + b"\x01")  # expand, one block


# --------------------------------------------------------------------------- header form


def header_value(raw_blocks: Sequence[bytes]) -> str:
    return ".".join((PREFIX, *(b64url_encode(raw) for raw in raw_blocks)))


def parse_header(value: str) -> list[Block]:
    """The blocks of an ``Agent-Credential`` value, parsed and chain-checked."""
    if len(value) > MAX_HEADER_CHARS:
        raise CredentialError(f"Agent-Credential is longer than {MAX_HEADER_CHARS} characters")
    prefix, _, rest = value.strip().partition(".")
    if prefix != PREFIX or not rest:
        raise CredentialError(f"Agent-Credential must start with {PREFIX}.")
    parts = rest.split(".")
    if len(parts) > MAX_BLOCKS:
        raise CredentialError(f"credential has more than {MAX_BLOCKS} blocks")
    blocks = []
    for index, part in enumerate(parts):
        try:
            raw = b64url_decode(part)
        except JOSEError:
            raise CredentialError(f"block {index} is not base64url") from None
        blocks.append(parse_block(raw, index))
    check_chain(blocks)
    return blocks


# --------------------------------------------------------------------------- holder form
# libmacaroons v2 binary format: version 2, then fields (type varint, length varint, data).

_V2 = 2
_EOS, _LOCATION, _IDENTIFIER, _VID, _SIGNATURE = 0, 1, 2, 4, 6


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(kind: int, data: bytes) -> bytes:
    return _uvarint(kind) + _uvarint(len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varint(self) -> int:
        shift = value = 0
        while True:
            if self.pos >= len(self.data) or shift > 28:
                raise CredentialError("malformed credential")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def field(self) -> tuple[int, bytes]:
        kind = self.varint()
        if kind == _EOS:
            return kind, b""
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise CredentialError("malformed credential")
        data, self.pos = self.data[self.pos : end], end
        return kind, data

    def section(self) -> dict[int, bytes]:
        fields: dict[int, bytes] = {}
        while True:
            kind, data = self.field()
            if kind == _EOS:
                return fields
            if kind in fields or kind not in (_LOCATION, _IDENTIFIER, _VID):
                raise CredentialError("malformed credential")
            fields[kind] = data


def _to_macaroon(location: str, raw_blocks: Sequence[bytes], tag: bytes) -> bytes:
    out = bytearray([_V2])
    if location:
        out += _field(_LOCATION, location.encode())
    out += _field(_IDENTIFIER, raw_blocks[0]) + b"\x00"
    for raw in raw_blocks[1:]:
        out += _field(_IDENTIFIER, raw) + b"\x00"
    out += b"\x00" + _field(_SIGNATURE, tag)
    return bytes(out)


def _from_macaroon(data: bytes) -> tuple[str, list[bytes], bytes]:
    if not data or data[0] != _V2:
        raise CredentialError("not a v2 macaroon")
    reader = _Reader(data)
    reader.pos = 1
    head = reader.section()
    if _IDENTIFIER not in head or _VID in head:
        raise CredentialError("malformed credential")
    raw_blocks = [head[_IDENTIFIER]]
    while True:
        if reader.pos < len(data) and data[reader.pos] == _EOS:
            reader.pos += 1
            break
        caveat = reader.section()
        if _VID in caveat or _IDENTIFIER not in caveat:
            # A third-party caveat (vid) cannot be discharged by this gateway: refuse it.
            raise CredentialError("third-party caveats are not supported")
        raw_blocks.append(caveat[_IDENTIFIER])
    kind, tag = reader.field()
    if kind != _SIGNATURE or len(tag) != 32 or reader.pos != len(data):
        raise CredentialError("malformed credential")
    location = head.get(_LOCATION, b"").decode("utf-8", "replace")
    return location, raw_blocks, tag


# --------------------------------------------------------------------------- the credential


class AgentCredential:
    """A held credential: its blocks and the secret final tag (never in ``repr``)."""

    __slots__ = ("_domain", "_tag", "blocks", "location")

    def __init__(self, blocks: Sequence[Block], tag: bytes, location: str = "") -> None:
        self.blocks = tuple(blocks)
        self._tag = tag
        self.location = location
        self._domain = trust_domain(self.blocks[0].agent)

    def __repr__(self) -> str:
        return (
            f"AgentCredential(agent={self.agent!r}, depth={len(self.blocks) - 1}, tag=<redacted>)"
        )

    @classmethod
    def parse(cls, text: str) -> AgentCredential:
        """Read the holder form (a base64url v2 macaroon); chain rules checked, not the MAC."""
        try:
            data = b64url_decode(text.strip())
        except JOSEError:
            raise CredentialError("credential is not base64url") from None
        location, raw_blocks, tag = _from_macaroon(data)
        if len(raw_blocks) > MAX_BLOCKS:
            raise CredentialError(f"credential has more than {MAX_BLOCKS} blocks")
        blocks = [parse_block(raw, i) for i, raw in enumerate(raw_blocks)]
        check_chain(blocks)
        return cls(blocks, tag, location)

    def serialize(self) -> str:
        """The holder form: keep it secret (it holds the tag)."""
        return b64url_encode(_to_macaroon(self.location, [b.raw for b in self.blocks], self._tag))

    @property
    def agent(self) -> str:
        return self.blocks[-1].agent

    @property
    def credential_id(self) -> str:
        return self.blocks[-1].cid

    @property
    def expires_at(self) -> int:
        return self.blocks[-1].exp

    def header(self) -> str:
        """The ``Agent-Credential`` value: the blocks only, safe to send."""
        return header_value([b.raw for b in self.blocks])

    def inspect(self) -> dict[str, Any]:
        """What the blocks say (nothing secret): genesis, issuer, the chain root first."""
        root = self.blocks[0].members
        return {
            "issuer": root["iss"],
            "key_id": root["kid"],
            "genesis": dict(root["genesis"]),
            "depth": len(self.blocks) - 1,
            "credential_id": self.credential_id,
            "chain": [b.as_input() for b in self.blocks],
        }

    def derive(
        self,
        agent: str,
        *,
        scope: Iterable[str] | None = None,
        ttl_s: int | None = None,
        depth: int | None = None,
        now: int | None = None,
        **restrictions: Iterable[str],
    ) -> AgentCredential:
        """A child credential for ``agent``, offline: one block, one HMAC.

        ``scope``/``depth``/restrictions default to the parent's (depth one less); ``ttl_s``
        bounds the child's expiry below the parent's. Raises :class:`CredentialError` for
        anything the gateway would refuse (widening, exhausted depth, unknown restriction).
        """
        parent = self.blocks[-1]
        index = len(self.blocks)
        if index >= MAX_BLOCKS:
            raise CredentialError(f"credential has more than {MAX_BLOCKS} blocks")
        issued = int(time.time()) if now is None else now
        granted = parent.scope if scope is None else _strings(list(scope), index, "scope", _SCOPE)
        limits = parent.restrictions
        if restrictions:
            limits = dict(limits)
            for name, values in restrictions.items():
                if name not in RESTRICTIONS:
                    raise CredentialError(f"unknown restriction {name[:32]!r}")
                pattern = _METHOD if name == "methods" else _NAME
                limits[name] = _strings(list(values), index, name, pattern)
        child = Block(
            b"",
            new_credential_id(),
            _name(agent, index, "agent"),
            granted,
            issued,
            parent.exp if ttl_s is None else min(parent.exp, issued + int(ttl_s)),
            parent.depth - 1 if depth is None else _int(depth, index, "depth"),
            limits,
        )
        check_child(parent, child, index, self._domain)
        raw = child.raw = _child_json(child)
        # Not through __init__: the trust domain is the parent's (the root's), known already.
        derived = object.__new__(AgentCredential)
        derived.blocks = (*self.blocks, child)
        derived._tag = mac(self._tag, raw)
        derived.location = self.location
        derived._domain = self._domain
        return derived

    def sign(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        created: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """The headers of one request: ``Agent-Credential``, ``Signature-Input``,
        ``Signature`` and, with a body, ``Content-Digest`` (RFC 9530, sha-256).

        ``url`` is the absolute target URI as the gateway will see it
        (``https://host[:port]/path?query``, RFC 9421 §2.2.2).
        """
        scheme, sep, rest = url.partition("://")
        if not sep or not rest:
            raise CredentialError("url must be absolute (https://host/path)")
        authority, slash, path = rest.partition("/")
        target = slash + path if slash else "/"
        headers = {HEADER: self.header()}
        components = ["@method", "@target-uri"]
        if body is not None:
            headers["Content-Digest"] = content_digest(body)
            components.append("content-digest")
        request = Request(
            method=method.upper(),
            scheme=scheme,
            authority=authority,
            target=target,
            fields=lambda name: [headers["Content-Digest"]] if name == "content-digest" else (),
        )
        params = InnerList(
            tuple(Item(c) for c in components),
            (
                ("created", int(time.time()) if created is None else created),
                ("nonce", nonce or secrets.token_urlsafe(12)),
                ("keyid", self.credential_id),
                ("alg", ALGORITHM),
            ),
        )
        signature = sign(signing_key(self._tag), signature_base(params, request.component))
        headers["Signature-Input"], headers["Signature"] = field_values(
            SIGNATURE_LABEL, params, signature
        )
        return headers


def _list(values: Iterable[str]) -> str:
    return '["' + '","'.join(sorted(values)) + '"]' if values else "[]"


def _child_json(block: Block) -> bytes:
    """A child block's JSON, written directly (sorted keys, no whitespace, as
    :func:`encode_block` writes it): every string in it was checked against a pattern without
    '"', '\\' or control characters, so none needs escaping."""
    text = (
        f'{{"agent":"{block.agent}","cid":"{block.cid}","depth":{block.depth},'
        f'"exp":{block.exp},"iat":{block.iat}'
    )
    limits = block.restrictions
    if "methods" in limits:
        text += ',"methods":' + _list(limits["methods"])
    if "routes" in limits:
        text += ',"routes":' + _list(limits["routes"])
    text += ',"scope":' + _list(block.scope)
    if "segments" in limits:
        text += ',"segments":' + _list(limits["segments"])
    if "tools" in limits:
        text += ',"tools":' + _list(limits["tools"])
    return (text + "}").encode()


def new_credential_id() -> str:
    """128 random bits, base64url without padding (22 characters)."""
    return binascii.b2a_base64(os.urandom(16), newline=False)[:22].translate(_URLSAFE).decode()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def mint_root(
    root_key: bytes,
    *,
    kid: str,
    issuer: str,
    genesis: Mapping[str, str],
    agent: str,
    scope: Iterable[str],
    ttl_s: int,
    depth: int,
    restrictions: Mapping[str, Iterable[str]] | None = None,
    now: int | None = None,
    location: str = "",
) -> AgentCredential:
    """The root credential (block 0). Only the gateway holds ``root_key``."""
    if len(root_key) < MIN_ROOT_KEY_BYTES:
        raise CredentialError(f"a root key needs at least {MIN_ROOT_KEY_BYTES} bytes")
    issued = int(time.time()) if now is None else now
    members: dict[str, Any] = {
        "v": 1,
        "kid": kid,
        "cid": new_credential_id(),
        "iss": issuer,
        "genesis": dict(genesis),
        "agent": agent,
        "scope": sorted(set(scope)),
        "iat": issued,
        "exp": issued + ttl_s,
        "depth": depth,
    }
    for name, values in (restrictions or {}).items():
        members[name] = sorted(set(values))
    raw = encode_block(members)
    block = parse_block(raw, 0)
    return AgentCredential((block,), chain_tag(root_key, [raw]), location or issuer)


__all__ = [
    "HEADER",
    "MAX_BLOCKS",
    "AgentCredential",
    "Block",
    "CredentialError",
    "chain_tag",
    "check_chain",
    "mint_root",
    "parse_header",
    "signing_key",
]
