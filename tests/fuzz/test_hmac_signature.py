"""Fuzz gateway.httpsig (RFC 8941 dictionaries) and gateway.authn.hmac_signature (RFC 9421).

Documented errors: :func:`gateway.httpsig.sfv.parse_dictionary` raises only :class:`SFError`;
:func:`gateway.httpsig.parse_signature_fields` only ``MalformedSignature`` (a 400) or
``InvalidSignature`` (a 401);
:meth:`HMACSignatureAuthenticator.authenticate` only those two, ``PayloadTooLarge`` (413) and
``ServiceUnavailable`` (503, a replay store that fails: not the memory one used here).

Properties:

* a serialised dictionary parses back to itself, and what parses re-serialises to a fixed
  point (one canonical form, which is what the ``@signature-params`` line is built from);
* a request signed correctly (signature base computed here, independently) authenticates,
  and the same signature a second time is a replay;
* with one fault -- a changed request, a wrong MAC, an unknown key, a stale ``created``, an
  unsupported component, an edited field -- it never authenticates, unless the edit left the
  parsed fields unchanged (RFC 8941 allows more than one spelling of a value).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from hypothesis import event, example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.authn.hmac_signature import HMACSignatureAuthenticator
from gateway.context import Principal, RequestFacts
from gateway.errors import BadRequest, Unauthorized
from gateway.httpsig import InvalidSignature, MalformedSignature, parse_signature_fields
from gateway.httpsig.sfv import (
    BareItem,
    InnerList,
    Item,
    Params,
    SFError,
    Token,
    parse_dictionary,
    serialize_bare,
    serialize_inner_list,
    serialize_params,
)
from gateway.settings import HMACMethod
from gateway.state.memory import MemoryReplayCache
from tests.fuzz.strategies import fuzz, mostly, mutated_text, structured_paths
from tests.support import inbound

NOW = 1_767_225_600
SECRET = b"fuzz-shared-secret-0123456789abcdef!"
KEYID = "agent-7"
HOST = "gw.example.org"
DIGEST_EMPTY = "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"
SF_ALPHABET = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCXYZ[\\]^_`abcxyz{|}~\t\x00é"

# --------------------------------------------------------------------------- RFC 8941 values

keys = st.builds(str.__add__, st.sampled_from("abcz*"), st.text("abz09_.*-", max_size=5))
bare_items: st.SearchStrategy[BareItem] = st.one_of(
    st.integers(-999_999_999_999_999, 999_999_999_999_999),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.builds(
        str.__add__, st.sampled_from("aZ*"), st.text("!#$%&'*+.^_`|~09aZ:/-", max_size=6)
    ).map(Token),
    st.binary(max_size=12),
    st.booleans(),
)


def unique_params(pairs: list[tuple[str, BareItem]]) -> Params:
    seen: dict[str, BareItem] = {}
    for key, value in pairs:
        seen.setdefault(key, value)
    return tuple(seen.items())


params = st.lists(st.tuples(keys, bare_items), max_size=3).map(unique_params)
items = st.builds(Item, bare_items, params)
inner_lists = st.builds(InnerList, st.lists(items, max_size=4).map(tuple), params)
dictionaries = st.dictionaries(keys, items | inner_lists, max_size=4)


def serialize_dictionary(value: dict[str, Item | InnerList]) -> str:
    """RFC 8941 §4.1.2, written here from the RFC, apart from ``sfv.serialize_dictionary``."""
    members = []
    for key, member in value.items():
        if isinstance(member, InnerList):
            members.append(f"{key}={serialize_inner_list(member)}")
        elif member.value is True:
            members.append(f"{key}{serialize_params(member.params)}")
        else:
            members.append(f"{key}={serialize_bare(member.value)}{serialize_params(member.params)}")
    return ", ".join(members)


@fuzz(100)
@given(dictionaries)
def test_dictionaries_round_trip(value: dict[str, Item | InnerList]) -> None:
    assert parse_dictionary(serialize_dictionary(value)) == value


@fuzz(120)
@given(
    st.text(SF_ALPHABET, max_size=40)
    | dictionaries.map(serialize_dictionary).flatmap(lambda s: mutated_text(s, SF_ALPHABET))
)
@example("a=-1234567890123456")
@example('a=("x";y=:AA==:);created=1')
@example("a=?2")
@example("a=1.5")
def test_parse_dictionary_fixed_point(text: str) -> None:
    try:
        value = parse_dictionary(text)
    except SFError:
        return
    canonical = serialize_dictionary(value)
    assert parse_dictionary(canonical) == value
    assert serialize_dictionary(parse_dictionary(canonical)) == canonical


# --------------------------------------------------------------------------- RFC 9421


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hmac")
    (folder / "agent.secret").write_bytes(base64.b64encode(SECRET))
    keys_file = folder / "hmac-keys.yaml"
    record = {
        "id": KEYID,
        "secret": "file:agent.secret",
        "encoding": "base64",
        "subject": "legacy-agent-7",
        "roles": ["legacy"],
    }
    keys_file.write_text(yaml.safe_dump({"keys": [record]}))
    return keys_file


def make_method(keys_file: Path) -> HMACSignatureAuthenticator:
    """A fresh authenticator (and replay cache) per example: hypothesis replays examples."""
    cfg = HMACMethod(keys_file=keys_file, required_components=("@method", "created"))
    return HMACSignatureAuthenticator("hmac", cfg, MemoryReplayCache(), max_body_bytes=1024)


@pytest.fixture(scope="module")
def run() -> Iterator[Any]:
    with asyncio.Runner() as runner:
        yield runner.run


COMPONENTS = (
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "content-type",
    "content-digest",
    "x-agent-note",
)
# Components the verifier must refuse (unsupported, reserved, absent or not lowercase).
BAD_COMPONENTS = ("@signature-params", "@query-param", "@status", "x-absent", "Content-Type", "")


def component_value(name: str, method: str, target: str, host: str, scheme: str) -> str:
    """RFC 9421 §2.1-2.2, written from the RFC (not from the module under test)."""
    path, qmark, query = target.partition("?")
    authority = host.lower()
    for port, default in ((":443", "https"), (":80", "http")):
        if scheme == default and authority.endswith(port):
            authority = authority[: -len(port)]
    return {
        "@method": method,
        "@target-uri": f"{scheme}://{host}{target}",
        "@authority": authority,
        "@scheme": scheme,
        "@request-target": target,
        "@path": path or "/",
        "@query": "?" + query if qmark else "?",
        "content-type": "application/json",
        "content-digest": DIGEST_EMPTY,
        "x-agent-note": "a, b",
    }[name]


HEADERS = (
    ("Content-Type", "application/json"),
    ("Content-Digest", DIGEST_EMPTY),
    ("X-Agent-Note", "a"),
    ("X-Agent-Note", "b"),
)
FAULTS = (
    "none",
    "none",
    "none",
    "request",
    "mac",
    "keyid",
    "created",
    "expires",
    "alg",
    "component",
    "component-param",
    "label",
    "input-text",
    "signature-text",
    "types",
)


@st.composite
def signed_requests(draw: st.DrawFn) -> dict[str, Any]:
    fault = draw(st.sampled_from(FAULTS))
    method = draw(st.sampled_from(["GET", "POST", "DELETE"]))
    # RFC 9421 §2.5: a signature base is ASCII, so is the target of a request one can sign;
    # and a request line has no space or control character in its target.
    target = draw(
        structured_paths.filter(lambda p: p.isascii() and not set("#? \t\x00\x7f") & set(p))
    )
    target += draw(st.sampled_from(["", "?", "?a=1&b=%20"]))
    host = draw(mostly(HOST, st.sampled_from(["GW.example.org:443", "[::1]:8443", "h:80"])))
    covered = ["@method", *draw(st.lists(st.sampled_from(COMPONENTS), unique=True, max_size=5))]
    covered = list(dict.fromkeys(covered))
    sig_params: list[tuple[str, BareItem]] = [("created", NOW), ("keyid", KEYID)]
    if draw(st.booleans()):
        sig_params.append(("alg", "hmac-sha256"))
    if draw(st.booleans()):
        sig_params.append(("expires", NOW + 60))
    if draw(st.booleans()):
        sig_params.append(("nonce", draw(st.text("abc123", min_size=1, max_size=8))))
    label = draw(st.sampled_from(["sig1", "a", "*x.y-z_"]))
    item_params: dict[str, Params] = {}
    if fault == "keyid":
        sig_params[1] = ("keyid", draw(st.sampled_from(["agent-8", "", "AGENT-7", "agent-7 "])))
    elif fault == "created":
        sig_params[0] = ("created", NOW + draw(st.sampled_from([-31, 31, -(10**9), 10**14])))
    elif fault == "expires":
        sig_params.append(("expires", NOW - draw(st.sampled_from([1, 10**6]))))
    elif fault == "alg":
        sig_params.append(("alg", draw(st.sampled_from(["hmac-sha512", "HMAC-SHA256", "ed25519"]))))
    elif fault == "component":
        covered.append(draw(st.sampled_from(BAD_COMPONENTS)))
    elif fault == "component-param":
        item_params[covered[-1]] = draw(st.sampled_from([(("sf", True),), (("key", "a"),)]))
    elif fault == "types":
        name, value = draw(
            st.sampled_from(
                [
                    ("created", str(NOW)),
                    ("created", True),
                    ("keyid", Token("agent-7")),
                    ("keyid", KEYID.encode()),
                    ("expires", Token("never")),
                    ("nonce", 1),
                ]
            )
        )
        sig_params = [(k, v) for k, v in sig_params if k != name] + [(name, value)]
    params_list = InnerList(
        tuple(Item(c, item_params.get(c, ())) for c in covered), tuple(dict(sig_params).items())
    )
    lines = [
        f'"{c}": {component_value(c, method, target, host, "https")}'
        for c in covered
        if c in COMPONENTS
    ]
    lines.append(f'"@signature-params": {serialize_inner_list(params_list)}')
    secret = b"another-secret-0123456789abcdefghij" if fault == "mac" else SECRET
    mac = hmac.new(secret, "\n".join(lines).encode("ascii"), hashlib.sha256).digest()
    signature_input = f"{label}={serialize_inner_list(params_list)}"
    signature = f"{label}=:{base64.b64encode(mac).decode()}:"
    if fault == "label":
        signature = "other" + signature
    elif fault == "input-text":
        signature_input = draw(mutated_text(signature_input, SF_ALPHABET))
    elif fault == "signature-text":
        signature = draw(mutated_text(signature, SF_ALPHABET))
    if fault == "request":  # change a covered part of the request after signing
        changes = ["method"]
        if {"@target-uri", "@request-target", "@path"} & set(covered):
            changes.append("target")
        if {"@target-uri", "@authority"} & set(covered):
            changes.append("host")
        change = draw(st.sampled_from(changes))
        if change == "method":
            method = "PUT"
        elif change == "target":
            target = "/other" + target
        else:
            host = "attacker.example"
    return {
        "fault": fault,
        "method": method,
        "target": target,
        "host": host,
        "covered": covered,
        "input": signature_input,
        "signature": signature,
        "original_input": f"{label}={serialize_inner_list(params_list)}",
        "original_signature": f"{label}=:{base64.b64encode(mac).decode()}:",
    }


def facts(host: str) -> RequestFacts:
    return RequestFacts(
        request_id="fuzz",
        method="GET",
        scheme="https",
        host=host,
        path="/",
        raw_query="",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto="https",
        forwarded_host=host,
        peer=None,
        time_ns=NOW * 10**9,
    )


def authenticate(method: HMACSignatureAuthenticator, run: Any, case: dict[str, Any]) -> Any:
    headers = CIMultiDict(
        [
            ("Host", case["host"]),
            *HEADERS,
            ("Signature-Input", case["input"]),
            ("Signature", case["signature"]),
        ]
    )
    request = inbound(make_mocked_request(case["method"], case["target"], headers=headers))
    return run(method.authenticate(request, facts(case["host"])))


def same_fields(case: dict[str, Any]) -> bool:
    """Did a text edit leave both fields, as parsed, unchanged?"""
    try:
        return parse_dictionary(case["input"]) == parse_dictionary(
            case["original_input"]
        ) and parse_dictionary(case["signature"]) == parse_dictionary(case["original_signature"])
    except SFError:
        return False


@fuzz(200)
@given(signed_requests())
def test_signed_requests(keys_file: Path, run: Any, case: dict[str, Any]) -> None:
    method = make_method(keys_file)
    try:
        principal = authenticate(method, run, case)
    except (BadRequest, Unauthorized) as exc:
        event(f"{case['fault']}: {exc.status} {exc.detail}"[:70])
        refused = True
    else:
        refused = False
    if refused:
        assert case["fault"] != "none", "a correctly signed request was refused"
        return
    event(f"{case['fault']}: authenticated")
    assert isinstance(principal, Principal)
    assert principal.subject == "legacy-agent-7"
    assert case["fault"] == "none" or (
        case["fault"] in ("input-text", "signature-text") and same_fields(case)
    ), f"fault {case['fault']} authenticated"
    with pytest.raises(Unauthorized):  # the same signature again: a replay
        authenticate(method, run, case)


@fuzz(200)
@given(
    st.lists(st.text(SF_ALPHABET, max_size=30), min_size=1, max_size=2),
    st.lists(st.text(SF_ALPHABET, max_size=30), min_size=1, max_size=2),
)
@example(['sig1=("@method");keyid="k"'], ["sig1=:AA==:"])
@example(['sig1=("@method" "@method");keyid="k"'], ["sig1=:AA==:"])
@example(['sig1=("@method");keyid="k"', 'sig2=("@path");keyid="k"'], ["sig1=:AA==:"])
def test_parse_signature_fields(inputs: list[str], signatures: list[str]) -> None:
    try:
        parsed = parse_signature_fields(inputs, signatures)
    except (MalformedSignature, InvalidSignature):
        return
    assert isinstance(parsed.params["keyid"], str)
    assert len(set(parsed.covered)) == len(parsed.covered)
    assert "@signature-params" not in parsed.covered
