"""gateway.sdk.agent: the MAC chain, the holder form, the wire format's refusals, signing.

What is proved here:

* the chain is the macaroon construction: the SPECS.md §14.2 libmacaroons vector comes out of
  :func:`chain_tag`, and pymacaroons reads, verifies and attenuates our credentials (and we
  read what it appends);
* the hand-written primitives equal the library ones: :func:`mac` = :func:`hmac.digest` for
  every key length around the block size, :func:`signing_key` = ``cryptography``'s HKDF;
* every malformed or widening credential is a :class:`CredentialError` (never another
  exception) with a precise message, in the header form, the holder form and ``derive``;
* no ``repr``/``inspect`` shows the tag; ``sign`` produces an RFC 9421 signature that
  :mod:`gateway.httpsig` parses and that verifies with ``signing_key(tag)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymacaroons import Macaroon, Verifier
from pymacaroons.exceptions import MacaroonInvalidSignatureException

from gateway.httpsig import Request, signature_base
from gateway.httpsig.errors import InvalidSignature
from gateway.httpsig.fields import parse_signature_fields
from gateway.httpsig.hmac_sha256 import verify
from gateway.jose.jws import b64url_decode, b64url_encode
from gateway.sdk import agent as sdk
from gateway.sdk.agent import AgentCredential, CredentialError
from tests.unit.sdk import (
    ISSUER,
    NOW,
    ROOT_AGENT,
    ROOT_KEY,
    SUB_AGENT,
    child_members,
    header_of,
    holder_form,
    raws,
    root,
)

# --------------------------------------------------------------------------- the MAC chain

# SPECS.md §14.2: the libmacaroons vector (root key, identifier, then three caveats).
VECTOR_KEY = b"this is our super secret key; only we should know it"
VECTOR = [
    (b"we used our secret key", "e3d9e02908526c4c0039ae15114115d97fdd68bf2ba379b342aaf0f617d0552f"),
    (b"account = 3735928559", "1efe4763f290dbce0c1d08477367e11f4eee456a64933cf662d79772dbb82128"),
    (
        b"time < 2020-01-01T00:00",
        "b5f06c8c8ef92f6c82c6ff282cd1f8bd1849301d09a2db634ba182536a611c49",
    ),
    (
        b"email = alice@example.org",
        "ddf553e46083e55b8d71ab822be3d8fcf21d6bf19c40d617bb9fb438934474b6",
    ),
]


@pytest.mark.parametrize("steps", range(1, len(VECTOR) + 1), ids=lambda n: f"{n}-blocks")
def test_chain_tag_reproduces_the_libmacaroons_vector(steps: int) -> None:
    messages = [message for message, _ in VECTOR[:steps]]
    assert sdk.chain_tag(VECTOR_KEY, messages).hex() == VECTOR[steps - 1][1]


def test_the_vector_with_pymacaroons_gives_the_same_signatures() -> None:
    # The same vector through the library: our derivation and pymacaroons' agree step by step.
    m = Macaroon(location="http://mybank/", identifier=VECTOR[0][0], key=VECTOR_KEY)
    assert m.signature == VECTOR[0][1]
    for message, expected in VECTOR[1:]:
        m = m.add_first_party_caveat(message)
        assert m.signature == expected


@pytest.mark.parametrize("key_len", range(131), ids=lambda n: f"key-{n}")
def test_mac_equals_hmac_digest(key_len: int) -> None:
    key = hashlib.sha512(key_len.to_bytes(2, "big")).digest() * 3
    key = key[:key_len]
    for message in (b"", b"x", bytes(range(256)) * 5):
        assert sdk.mac(key, message) == hmac.digest(key, message, "sha256")


@pytest.mark.parametrize("tag", [bytes(32), bytes(range(32)), b"\xff" * 32, b"\x01" * 64])
def test_signing_key_is_rfc5869_hkdf_sha256(tag: bytes) -> None:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=sdk.SIGNING_INFO)
    assert sdk.signing_key(tag) == hkdf.derive(tag)


def test_the_hkdf_steps_reproduce_rfc5869_test_case_3() -> None:
    # RFC 5869 A.3 (zero-length salt = HashLen zero bytes, empty info): signing_key's extract
    # step is mac(zeros, ikm) and its expand step mac(prk, info || 0x01); with A.3's inputs
    # they give A.3's PRK and the first 32 bytes of its OKM.
    ikm = b"\x0b" * 22
    prk = sdk.mac(b"\x00" * 32, ikm)
    assert prk.hex() == "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"
    okm = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    assert sdk.mac(prk, b"" + b"\x01").hex() == okm[:64]


def test_the_tag_is_the_chain_of_the_raw_blocks() -> None:
    cred = root().derive(SUB_AGENT, now=NOW).derive("spiffe://example.org/pay", now=NOW)
    assert cred._tag == sdk.chain_tag(ROOT_KEY, raws(cred))


# --------------------------------------------------------------------------- pymacaroons


def test_pymacaroons_deserialises_and_verifies_what_we_mint_and_derive() -> None:
    cred = root().derive(SUB_AGENT, scope=["flights.read"], now=NOW)
    cred = cred.derive("spiffe://example.org/seat", now=NOW)
    m = Macaroon.deserialize(cred.serialize())
    assert m.version == 2
    assert m.location == ISSUER
    assert m.identifier_bytes == cred.blocks[0].raw
    assert [c.caveat_id_bytes for c in m.caveats] == raws(cred)[1:]
    assert bytes.fromhex(m.signature) == cred._tag
    seen: list[str] = []
    verifier = Verifier()
    verifier.satisfy_general(lambda caveat: seen.append(caveat) is None)
    assert verifier.verify(m, ROOT_KEY)
    assert len(seen) == 2
    # ... and refuses it under another root key: the tag really is the root key's chain.
    with pytest.raises(MacaroonInvalidSignatureException):
        verifier.verify(m, b"another root key of thirty-two b")


def test_we_parse_what_pymacaroons_appends() -> None:
    parent = root(restrictions={"tools": ["search", "book"]})
    block = child_members(parent.blocks[0], scope=["flights.read"], tools=["search"], depth=2)
    raw = sdk.encode_block(block)
    m = Macaroon.deserialize(parent.serialize()).add_first_party_caveat(raw)
    cred = AgentCredential.parse(m.serialize())
    assert [b.raw for b in cred.blocks] == [parent.blocks[0].raw, raw]
    assert cred._tag == sdk.chain_tag(ROOT_KEY, [parent.blocks[0].raw, raw])
    assert cred.blocks[1].restrictions == {"tools": frozenset({"search"})}


def test_the_holder_form_round_trips() -> None:
    cred = root(restrictions={"routes": ["flights"], "methods": ["GET", "POST"]})
    cred = cred.derive(SUB_AGENT, scope=["flights.read"], ttl_s=60, depth=2, now=NOW)
    again = AgentCredential.parse(cred.serialize())
    assert raws(again) == raws(cred)
    assert again._tag == cred._tag
    assert again.location == cred.location == ISSUER
    assert again.serialize() == cred.serialize()
    assert again.inspect() == cred.inspect()


def test_the_holder_form_without_location_round_trips() -> None:
    cred = root()
    text = b64url_encode(sdk._to_macaroon("", raws(cred), cred._tag))
    assert AgentCredential.parse(text).location == ""


# --------------------------------------------------------------------------- _child_json


CHILD_SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("empty-scope", {"scope": []}),
    (
        "every-restriction",
        {"routes": ["a", "b"], "segments": ["s"], "tools": ["t~!"], "methods": ["GET"]},
    ),
    ("empty-restriction", {"tools": []}),
    ("odd-names", {"agent": "spiffe://example.org/a#b{c}[d]", "scope": ["x:y", "a/b", "~"]}),
    ("max-ints", {"iat": 2**53, "exp": 2**53, "depth": 7}),
]


@pytest.mark.parametrize(("shape"), [s for _, s in CHILD_SHAPES], ids=[i for i, _ in CHILD_SHAPES])
def test_child_json_and_parse_block_agree_both_ways(shape: dict[str, Any]) -> None:
    members = {
        "cid": "c" * 22,
        "agent": SUB_AGENT,
        "scope": ["flights.read"],
        "iat": NOW,
        "exp": NOW + 5,
        "depth": 1,
        **shape,
    }
    # encode_block -> parse_block -> _child_json -> parse_block: the same values ...
    canonical = sdk.encode_block(
        {k: sorted(v) if isinstance(v, list) else v for k, v in members.items()}
    )
    block = sdk.parse_block(canonical, 1)
    written = sdk._child_json(block)
    again = sdk.parse_block(written, 1)
    assert (again.cid, again.agent, again.scope, again.iat, again.exp, again.depth) == (
        block.cid,
        block.agent,
        block.scope,
        block.iat,
        block.exp,
        block.depth,
    )
    assert again.restrictions == block.restrictions
    # ... and the JSON members equal the canonical encoding's (lists sorted, nothing escaped).
    assert json.loads(written) == json.loads(canonical) == again.members
    assert written.isascii()
    assert b" " not in written


def test_derive_writes_the_canonical_json_without_restrictions() -> None:
    raw = root().derive(SUB_AGENT, scope=["pay"], now=NOW).blocks[-1].raw
    assert sdk.encode_block(json.loads(raw)) == raw


def test_derive_writes_the_canonical_json_with_restrictions() -> None:
    cred = root(restrictions={"routes": ["r"], "tools": ["b", "a"]})
    raw = cred.derive(SUB_AGENT, tools=["a"], now=NOW).blocks[-1].raw
    assert sdk.encode_block(json.loads(raw)) == raw


# --------------------------------------------------------------------------- attacks


def _root_members(**overrides: Any) -> dict[str, Any]:
    members = dict(json.loads(root().blocks[0].raw))
    for name, value in overrides.items():
        if value is None:
            members.pop(name)
        else:
            members[name] = value
    return members


def _root_raw(**overrides: Any) -> bytes:
    return sdk.encode_block(_root_members(**overrides))


def _chain(parent: AgentCredential, **overrides: Any) -> str:
    """The header of ``parent`` plus one hand-built child block."""
    child = sdk.encode_block(child_members(parent.blocks[-1], **overrides))
    return header_of([*raws(parent), child])


def _non_canonical() -> str:
    raw = root().blocks[0].raw
    while len(b64url_encode(raw)) % 4 == 0:
        raw += b" "  # JSON whitespace: still the same object
    seg = b64url_encode(raw)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The next character differs only in bits the decoder drops: the same bytes, spelt twice.
    return "ac1." + seg[:-1] + alphabet[alphabet.index(seg[-1]) + 1]


def _b64(raw: bytes) -> str:
    return "ac1." + b64url_encode(raw)


def _deep(blocks: int) -> str:
    cred = root(depth=7)
    for i in range(blocks - 1):
        cred = cred.derive(f"spiffe://example.org/a{i}", now=NOW)
    extra = sdk.encode_block(child_members(cred.blocks[-1], depth=0))
    return header_of([*raws(cred), extra])


RESTRICTED = root(restrictions={"tools": ["search", "book"], "routes": ["flights"]})
FLAT = root(depth=0)
BASE = root()

HEADER_ATTACKS: list[tuple[str, Callable[[], str], str]] = [
    # malformed
    ("bad-prefix", lambda: "ac2." + b64url_encode(BASE.blocks[0].raw), "must start with ac1."),
    ("no-prefix", lambda: b64url_encode(BASE.blocks[0].raw), "must start with ac1."),
    ("no-blocks", lambda: "ac1.", "must start with ac1."),
    ("empty", lambda: "", "must start with ac1."),
    ("not-base64url", lambda: "ac1.eyJ+/w", "block 0 is not base64url"),
    ("padded", lambda: _b64(b"{}") + "=", "block 0 is not base64url"),
    ("non-ascii", lambda: "ac1.é", "block 0 is not base64url"),
    ("empty-block", lambda: header_of(raws(BASE)) + ".", "block 1 is not a JSON object"),
    ("non-canonical-base64", _non_canonical, "block 0 is not base64url"),
    ("not-json", lambda: _b64(b"not json"), "block 0 is not a JSON object"),
    ("json-array", lambda: _b64(b"[1]"), "block 0 is not a JSON object"),
    ("not-utf8", lambda: _b64(b'{"v":"\xff"}'), "block 0 is not a JSON object"),
    ("trailing-data", lambda: _b64(BASE.blocks[0].raw + b"{}"), "block 0 is not a JSON object"),
    (
        "duplicate-member",
        lambda: _b64(BASE.blocks[0].raw[:-1] + b',"depth":7}'),
        "block 0 is not a JSON object",
    ),
    (
        "duplicate-member-child",
        lambda: header_of(
            [*raws(BASE), sdk.encode_block(child_members(BASE.blocks[0]))[:-1] + b',"depth":9}']
        ),
        "block 1 is not a JSON object",
    ),
    ("unknown-member-root", lambda: _b64(_root_raw(aud="x")), "block 0 has unknown member 'aud'"),
    (
        "root-member-in-child",
        lambda: _chain(BASE, kid="2026-12"),
        "block 1 has unknown member 'kid'",
    ),
    ("unknown-member-child", lambda: _chain(BASE, max_calls=3), "unknown member 'max_calls'"),
    ("missing-exp", lambda: _b64(_root_raw(exp=None)), "block 0 lacks 'exp'"),
    ("missing-genesis", lambda: _b64(_root_raw(genesis=None)), "block 0 lacks 'genesis'"),
    ("missing-v", lambda: _b64(_root_raw(v=None)), "block 0 lacks 'v'"),
    ("missing-cid-child", lambda: _chain(BASE, cid=None), "block 1 lacks 'cid'"),
    ("missing-scope-child", lambda: _chain(BASE, scope=None), "block 1 lacks 'scope'"),
    ("version-2", lambda: _b64(_root_raw(v=2)), "unsupported version"),
    ("scope-string", lambda: _b64(_root_raw(scope="a b")), "block 0 scope must be a list"),
    ("scope-int-entry", lambda: _b64(_root_raw(scope=["a", 1])), "scope holds a malformed entry"),
    ("scope-repeated", lambda: _b64(_root_raw(scope=["a", "a"])), "scope repeats an entry"),
    ("scope-space", lambda: _b64(_root_raw(scope=["a b"])), "scope holds a malformed entry"),
    (
        "scope-too-long",
        lambda: _b64(_root_raw(scope=[f"s{i}" for i in range(33)])),
        "scope must be a list of at most 32",
    ),
    ("exp-string", lambda: _b64(_root_raw(exp="1767225900")), "block 0 exp must be an integer"),
    ("exp-float", lambda: _b64(_root_raw(exp=1767225900.5)), "block 0 exp must be an integer"),
    ("exp-huge", lambda: _b64(_root_raw(exp=2**53 + 1)), "block 0 exp must be an integer"),
    ("iat-negative", lambda: _b64(_root_raw(iat=-1)), "block 0 iat must be an integer"),
    ("depth-bool", lambda: _b64(_root_raw(depth=True)), "block 0 depth must be an integer"),
    ("iat-bool", lambda: _b64(_root_raw(iat=False)), "block 0 iat must be an integer"),
    ("child-depth-bool", lambda: _chain(BASE, depth=True), "block 1 depth must be an integer"),
    ("depth-over-7", lambda: _b64(_root_raw(depth=8)), "block 0 depth must be an integer in 0..7"),
    ("cid-short", lambda: _b64(_root_raw(cid="abc")), "block 0 has a malformed cid"),
    ("cid-int", lambda: _chain(BASE, cid=12345678901234567890), "block 1 has a malformed cid"),
    ("cid-bad-chars", lambda: _chain(BASE, cid="a" * 20 + "=="), "block 1 has a malformed cid"),
    ("agent-int", lambda: _chain(BASE, agent=7), "block 1 agent must be 1..255 printable ASCII"),
    ("agent-empty", lambda: _chain(BASE, agent=""), "block 1 agent must be"),
    (
        "agent-too-long",
        lambda: _chain(BASE, agent="spiffe://example.org/" + "a" * 250),
        "block 1 agent must be",
    ),
    (
        "agent-quote",
        lambda: _chain(BASE, agent='spiffe://example.org/a"b'),
        "no quote or backslash",
    ),
    (
        "agent-backslash",
        lambda: _chain(BASE, agent="spiffe://example.org/a\\b"),
        "no quote or backslash",
    ),
    ("agent-space", lambda: _chain(BASE, agent="spiffe://example.org/a b"), "block 1 agent must"),
    ("agent-non-ascii", lambda: _chain(BASE, agent="spiffe://example.org/é"), "block 1 agent must"),
    (
        "root-agent-quote",
        lambda: _b64(_root_raw(agent='spiffe://example.org/"')),
        "block 0 agent must be",
    ),
    ("kid-quote", lambda: _b64(_root_raw(kid='k"1')), "block 0 kid must be"),
    ("iss-backslash", lambda: _b64(_root_raw(iss="spiffe://example.org\\gw")), "block 0 iss must"),
    ("genesis-list", lambda: _b64(_root_raw(genesis=["user", "alice"])), "genesis must be"),
    (
        "genesis-extra",
        lambda: _b64(_root_raw(genesis={"type": "user", "sub": "a", "x": 1})),
        "genesis must be",
    ),
    (
        "genesis-type",
        lambda: _b64(_root_raw(genesis={"type": "robot", "sub": "a"})),
        "genesis type must be",
    ),
    ("genesis-no-sub", lambda: _b64(_root_raw(genesis={"type": "user"})), "genesis sub must be"),
    (
        "genesis-sub-quote",
        lambda: _b64(_root_raw(genesis={"type": "user", "sub": 'a"'})),
        "genesis sub must be",
    ),
    (
        "genesis-iss-int",
        lambda: _b64(_root_raw(genesis={"type": "task", "sub": "t", "iss": 1})),
        "genesis iss must be",
    ),
    (
        "tools-quote",
        lambda: _chain(RESTRICTED, tools=['sea"rch']),
        "block 1 tools holds a malformed",
    ),
    (
        "methods-lowercase",
        lambda: _chain(BASE, methods=["get"]),
        "block 1 methods holds a malformed",
    ),
    ("tools-not-list", lambda: _chain(BASE, tools="search"), "block 1 tools must be a list"),
    (
        "oversize-block",
        lambda: _b64(b"{" + b" " * sdk.MAX_BLOCK_BYTES + b"}"),
        "block 0 is larger than 2048 bytes",
    ),
    ("oversize-header", lambda: "ac1." + "A" * sdk.MAX_HEADER_CHARS, "longer than 16384"),
    ("too-many-parts", lambda: "ac1." + ".".join(["e30"] * 9), "more than 8 blocks"),
    ("too-many-blocks-valid-macs", lambda: _deep(8), "more than 8 blocks"),
    (
        "root-expires-before-issued",
        lambda: _b64(_root_raw(exp=NOW - 1)),
        "block 0 expires before it was issued",
    ),
    # widening (each child block carries a valid MAC: only the chain rules refuse it)
    (
        "widened-scope",
        lambda: _chain(BASE, scope=["admin", "flights.read"]),
        "block 1 widens scope",
    ),
    ("widened-depth", lambda: _chain(BASE, depth=4), "block 1 widens depth"),
    ("widened-depth-max", lambda: _chain(BASE, depth=7), "block 1 widens depth"),
    ("extended-expiry", lambda: _chain(BASE, exp=BASE.expires_at + 1), "block 1 extends expiry"),
    (
        "widened-tools",
        lambda: _chain(RESTRICTED, tools=["book", "pay", "search"]),
        "block 1 widens tools",
    ),
    (
        "widened-routes",
        lambda: _chain(RESTRICTED, routes=["flights", "payments"]),
        "block 1 widens routes",
    ),
    (
        "dropped-tools",
        lambda: _chain(RESTRICTED, tools=None),
        "block 1 drops the tools restriction",
    ),
    ("dropped-routes", lambda: _chain(RESTRICTED, routes=None), "drops the routes restriction"),
    ("exhausted-depth", lambda: _chain(FLAT, depth=0), "block 1: delegation depth exhausted"),
    (
        "repeated-cid-root",
        lambda: _chain(BASE, cid=BASE.credential_id),
        "block 1 repeats a credential id",
    ),
    (
        "repeated-cid-grandparent",
        lambda: _chain(BASE.derive(SUB_AGENT, now=NOW), cid=BASE.credential_id),
        "block 2 repeats a credential id",
    ),
    (
        "other-trust-domain",
        lambda: _chain(BASE, agent="spiffe://evil.example/flights"),
        "block 1 agent is outside the trust domain example.org",
    ),
    ("not-a-spiffe-id", lambda: _chain(BASE, agent="flights"), "outside the trust domain"),
    (
        "trust-domain-prefix",
        lambda: _chain(BASE, agent="spiffe://example.org.evil/x"),
        "outside the trust domain",
    ),
    (
        "trust-domain-userinfo",
        lambda: _chain(BASE, agent="spiffe://example.org@evil/x"),
        "outside the trust domain",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"),
    [(build, message) for _, build, message in HEADER_ATTACKS],
    ids=[name for name, _, _ in HEADER_ATTACKS],
)
def test_parse_header_refuses(build: Callable[[], str], message: str) -> None:
    with pytest.raises(CredentialError) as caught:
        sdk.parse_header(build())
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (b, m)
        for name, b, m in HEADER_ATTACKS
        if name.startswith(
            (
                "widened",
                "extended",
                "dropped",
                "exhausted",
                "repeated",
                "other",
                "agent-",
                "unknown",
                "missing-c",
            )
        )
    ],
    ids=[
        n
        for n, _, _ in HEADER_ATTACKS
        if n.startswith(
            (
                "widened",
                "extended",
                "dropped",
                "exhausted",
                "repeated",
                "other",
                "agent-",
                "unknown",
                "missing-c",
            )
        )
    ],
)
def test_the_holder_form_refuses_the_same_chains(build: Callable[[], str], message: str) -> None:
    # The same blocks in a v2 macaroon with a valid tag: parse applies the same chain rules.
    blocks = [b64url_decode(part) for part in build().split(".")[1:]]
    with pytest.raises(CredentialError) as caught:
        AgentCredential.parse(holder_form(blocks))
    assert message in str(caught.value)


@pytest.mark.parametrize("version", [True, 1.0], ids=["bool", "float"])
def test_version_must_be_the_integer_1(version: Any) -> None:
    with pytest.raises(CredentialError, match="unsupported version"):
        sdk.parse_header(_b64(_root_raw(v=version)))


def test_a_valid_chain_parses() -> None:
    cred = RESTRICTED.derive(SUB_AGENT, tools=["search"], scope=["flights.read"], now=NOW)
    blocks = sdk.parse_header(cred.header())
    assert [b.raw for b in blocks] == raws(cred)
    assert blocks[1].restrictions["tools"] == frozenset({"search"})


def _field(kind: int, data: bytes) -> bytes:
    return sdk._field(kind, data)


def _macaroon(*sections: bytes, tag: bytes = bytes(32)) -> str:
    return b64url_encode(bytes([2]) + b"".join(sections) + b"\x00" + _field(6, tag))


R0 = BASE.blocks[0].raw
HEAD = _field(1, ISSUER.encode()) + _field(2, R0) + b"\x00"
C1 = sdk.encode_block(child_members(BASE.blocks[0]))

HOLDER_ATTACKS: list[tuple[str, Callable[[], str], str]] = [
    ("not-base64url", lambda: "AgE+/w", "credential is not base64url"),
    ("padded", lambda: BASE.serialize() + "=", "credential is not base64url"),
    ("empty", lambda: "", "not a v2 macaroon"),
    (
        "v1-text-macaroon",
        lambda: b64url_encode(b"0024location http://mybank/\n"),
        "not a v2 macaroon",
    ),
    (
        "third-party-caveat",
        lambda: _macaroon(HEAD, _field(2, C1) + _field(4, b"v" * 40) + b"\x00"),
        "third-party caveats are not supported",
    ),
    (
        "third-party-caveat-with-location",
        lambda: _macaroon(
            HEAD, _field(1, b"https://tp/") + _field(2, C1) + _field(4, b"v") + b"\x00"
        ),
        "third-party caveats are not supported",
    ),
    (
        "caveat-without-identifier",
        lambda: _macaroon(HEAD, _field(1, b"https://x/") + b"\x00"),
        "third-party caveats are not supported",
    ),
    (
        "vid-in-head",
        lambda: _macaroon(_field(2, R0) + _field(4, b"v") + b"\x00"),
        "malformed credential",
    ),
    ("no-identifier", lambda: _macaroon(_field(1, b"loc") + b"\x00"), "malformed credential"),
    (
        "repeated-identifier",
        lambda: _macaroon(_field(2, R0) + _field(2, R0) + b"\x00"),
        "malformed credential",
    ),
    (
        "unknown-field",
        lambda: _macaroon(_field(2, R0) + _field(3, b"x") + b"\x00"),
        "malformed credential",
    ),
    (
        "signature-in-section",
        lambda: _macaroon(_field(2, R0) + _field(6, bytes(32)) + b"\x00"),
        "malformed credential",
    ),
    ("short-tag", lambda: _macaroon(HEAD, tag=bytes(31)), "malformed credential"),
    ("long-tag", lambda: _macaroon(HEAD, tag=bytes(33)), "malformed credential"),
    (
        "trailing-byte",
        lambda: b64url_encode(b64url_decode(BASE.serialize()) + b"\x00"),
        "malformed credential",
    ),
    (
        "wrong-final-field",
        lambda: b64url_encode(bytes([2]) + HEAD + b"\x00" + _field(2, bytes(32))),
        "malformed credential",
    ),
    ("varint-overflow", lambda: b64url_encode(bytes([2]) + b"\xff" * 8), "malformed credential"),
    ("length-past-end", lambda: b64url_encode(bytes([2, 2, 0x7F]) + b"{}"), "malformed credential"),
    (
        "block-not-json",
        lambda: _macaroon(_field(2, b"we used our secret key") + b"\x00"),
        "block 0 is not a JSON object",
    ),
    (
        "too-many-blocks",
        lambda: holder_form([b64url_decode(p) for p in _deep(8).split(".")[1:]]),
        "more than 8 blocks",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"),
    [(build, message) for _, build, message in HOLDER_ATTACKS],
    ids=[name for name, _, _ in HOLDER_ATTACKS],
)
def test_parse_refuses_a_bad_holder_form(build: Callable[[], str], message: str) -> None:
    with pytest.raises(CredentialError) as caught:
        AgentCredential.parse(build())
    assert message in str(caught.value)


def test_every_truncation_of_the_holder_form_is_a_credential_error() -> None:
    data = b64url_decode(RESTRICTED.derive(SUB_AGENT, now=NOW).serialize())
    for cut in range(len(data)):
        with pytest.raises(CredentialError):
            AgentCredential.parse(b64url_encode(data[:cut]))


DERIVE_ATTACKS: list[tuple[str, AgentCredential, dict[str, Any], str]] = [
    ("widened-scope", BASE, {"scope": ["admin"]}, "block 1 widens scope"),
    ("malformed-scope", BASE, {"scope": ["a b"]}, "block 1 scope holds a malformed entry"),
    ("repeated-scope", BASE, {"scope": ["pay", "pay"]}, "block 1 scope repeats an entry"),
    ("widened-depth", BASE, {"depth": 4}, "block 1 widens depth"),
    ("negative-depth", BASE, {"depth": -1}, "block 1 depth must be an integer"),
    ("bool-depth", BASE, {"depth": True}, "block 1 depth must be an integer"),
    ("exhausted-depth", FLAT, {}, "block 1: delegation depth exhausted"),
    ("widened-tools", RESTRICTED, {"tools": ["pay"]}, "block 1 widens tools"),
    ("unknown-restriction", BASE, {"max_calls": ["3"]}, "unknown restriction 'max_calls'"),
    ("lowercase-method", BASE, {"methods": ["get"]}, "block 1 methods holds a malformed entry"),
    ("quote-in-tool", BASE, {"tools": ['a"']}, "block 1 tools holds a malformed entry"),
]


@pytest.mark.parametrize(
    ("parent", "kwargs", "message"),
    [(p, k, m) for _, p, k, m in DERIVE_ATTACKS],
    ids=[name for name, _, _, _ in DERIVE_ATTACKS],
)
def test_derive_refuses(parent: AgentCredential, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CredentialError) as caught:
        parent.derive(SUB_AGENT, now=NOW, **kwargs)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "agent",
    ["spiffe://evil.example/x", "flights", 'spiffe://example.org/"', "spiffe://example.org/\\", ""],
    ids=["other-domain", "not-spiffe", "quote", "backslash", "empty"],
)
def test_derive_refuses_a_bad_agent(agent: str) -> None:
    with pytest.raises(CredentialError, match="block 1 agent"):
        BASE.derive(agent, now=NOW)


def test_derive_refuses_a_ninth_block() -> None:
    cred = root(depth=7)
    for i in range(7):
        cred = cred.derive(f"spiffe://example.org/a{i}", now=NOW)
    assert len(cred.blocks) == sdk.MAX_BLOCKS
    with pytest.raises(CredentialError, match="more than 8 blocks"):
        cred.derive(SUB_AGENT, now=NOW)


def test_derive_defaults_and_clamps() -> None:
    cred = RESTRICTED.derive(SUB_AGENT, ttl_s=10**6, now=NOW)
    child = cred.blocks[-1]
    assert child.exp == RESTRICTED.expires_at  # a longer ttl is clamped, not an error
    assert child.scope == RESTRICTED.blocks[0].scope
    assert child.depth == RESTRICTED.blocks[0].depth - 1
    assert child.restrictions == RESTRICTED.blocks[0].restrictions
    assert RESTRICTED.derive(SUB_AGENT, ttl_s=5, now=NOW).expires_at == NOW + 5


def test_mint_root_refuses_a_short_key() -> None:
    with pytest.raises(CredentialError, match="at least 32 bytes"):
        sdk.mint_root(
            bytes(31),
            kid="k",
            issuer=ISSUER,
            genesis={"type": "task", "sub": "t"},
            agent=ROOT_AGENT,
            scope=[],
            ttl_s=1,
            depth=0,
        )


# --------------------------------------------------------------------------- no tag shown


def _spellings(tag: bytes) -> list[str]:
    return [
        tag.hex(),
        tag.hex().upper(),
        b64url_encode(tag),
        base64.b64encode(tag).decode().rstrip("="),
        repr(tag)[2:-1],
    ]


@pytest.mark.parametrize("depth", [0, 1, 3], ids=lambda d: f"depth-{d}")
def test_repr_and_inspect_never_show_the_tag(depth: int) -> None:
    cred = RESTRICTED
    for i in range(depth):
        cred = cred.derive(f"spiffe://example.org/a{i}", now=NOW)
    shown = [
        repr(cred),
        str(cred),
        json.dumps(cred.inspect()),
        repr(cred.inspect()),
        repr(cred.blocks),
        cred.header(),
    ]
    for text in shown:
        for spelling in _spellings(cred._tag) + _spellings(sdk.signing_key(cred._tag)):
            assert spelling not in text
    assert "tag=<redacted>" in repr(cred)


def test_inspect_describes_the_chain() -> None:
    cred = RESTRICTED.derive(SUB_AGENT, tools=["search"], ttl_s=30, now=NOW)
    view = cred.inspect()
    assert view["issuer"] == ISSUER
    assert view["key_id"] == "2026-12"
    assert view["genesis"] == {"type": "user", "sub": "alice", "iss": "https://idp.example.org"}
    assert view["depth"] == 1
    assert view["credential_id"] == cred.credential_id
    assert [link["agent"] for link in view["chain"]] == [ROOT_AGENT, SUB_AGENT]
    assert view["chain"][1]["tools"] == ["search"]
    assert view["chain"][1]["exp"] == NOW + 30


# --------------------------------------------------------------------------- signing


@pytest.mark.parametrize(
    ("method", "url", "body", "authority", "target"),
    [
        ("get", "https://gw.example.org/flights?q=1", None, "gw.example.org", "/flights?q=1"),
        ("POST", "https://gw.example.org:8443/pay", b'{"eur":3}', "gw.example.org:8443", "/pay"),
        ("PUT", "https://gw.example.org", b"", "gw.example.org", "/"),
    ],
    ids=["get-no-body", "post-body", "empty-body-no-path"],
)
def test_sign_verifies_with_the_signing_key_of_the_tag(
    method: str, url: str, body: bytes | None, authority: str, target: str
) -> None:
    cred = BASE.derive(SUB_AGENT, now=NOW).derive("spiffe://example.org/pay", now=NOW)
    headers = cred.sign(method, url, body=body, created=NOW, nonce="n-1")
    assert headers[sdk.HEADER] == cred.header()
    assert ("Content-Digest" in headers) is (body is not None)
    fields = parse_signature_fields([headers["Signature-Input"]], [headers["Signature"]])
    assert fields.label == sdk.SIGNATURE_LABEL
    expected = ("@method", "@target-uri") + (("content-digest",) if body is not None else ())
    assert fields.covered == expected
    assert fields.params == {
        "created": NOW,
        "nonce": "n-1",
        "keyid": cred.credential_id,
        "alg": "hmac-sha256",
    }
    if body is not None:
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        assert headers["Content-Digest"] == f"sha-256=:{digest}:"
    request = Request(
        method=method.upper(),
        scheme="https",
        authority=authority,
        target=target,
        fields=lambda name: [headers[name.title()]] if name.title() in headers else (),
    )
    base = signature_base(fields.params_list, request.component)
    # The gateway's view: the tag recomputed from the root key, never sent.
    key = sdk.signing_key(
        sdk.chain_tag(ROOT_KEY, [b.raw for b in sdk.parse_header(headers[sdk.HEADER])])
    )
    verify(key, base, fields.signature)
    assert fields.signature == hmac.digest(key, base, "sha256")
    # The parent's key (a thief holding the parent's header only) does not verify it.
    with pytest.raises(InvalidSignature):
        verify(sdk.signing_key(BASE._tag), base, fields.signature)


def test_sign_draws_a_fresh_nonce_and_the_current_time() -> None:
    first, second = BASE.sign("GET", "https://gw/x"), BASE.sign("GET", "https://gw/x")
    assert first["Signature-Input"] != second["Signature-Input"]
    params = parse_signature_fields([first["Signature-Input"]], [first["Signature"]]).params
    assert isinstance(params["created"], int)
    assert params["created"] > NOW


@pytest.mark.parametrize("url", ["/relative", "gw.example.org/x", "https://"], ids=str)
def test_sign_refuses_a_relative_url(url: str) -> None:
    with pytest.raises(CredentialError, match="url must be absolute"):
        BASE.sign("GET", url)
