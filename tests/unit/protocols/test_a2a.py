"""gateway.protocols.a2a: input.a2a for both method-name sets; agent cards filtered and signed.

Signatures are cross-checked both ways with a2a-sdk's own signer and verifier
(``a2a.utils.signing``, PyJWT underneath): nobody here wrote either.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from a2a.types import AgentCard
from a2a.utils.signing import (
    InvalidSignaturesError,
    create_agent_card_signer,
    create_signature_verifier,
)
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf.json_format import MessageToDict, ParseDict

from gateway.jose.errors import JOSEError
from gateway.jose.jws import b64url_decode, b64url_encode, encode_json
from gateway.protocols import a2a
from gateway.protocols.jsonrpc import Message, parse


def _request(method: str, params: dict[str, Any]) -> Message:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    (message,) = parse(json.dumps(body).encode()).messages
    return message


MSG = {
    "messageId": "m-1",
    "role": "ROLE_USER",
    "taskId": "t-1",
    "contextId": "c-1",
    "parts": [{"text": "hi"}],
    "metadata": {"skill": "book-flight"},
}
MSG_V03 = {**MSG, "kind": "message", "role": "user", "parts": [{"kind": "text", "text": "hi"}]}


def _a2a(method: str, skill: Any = None, task_id: Any = None, context_id: Any = None) -> Any:
    return {"method": method, "skill": skill, "task_id": task_id, "context_id": context_id}


FACTS = [
    # v0.3 names (a2a-sdk compat/v0_3)
    ("v03-message-send", "message/send", {"message": MSG_V03}, ("book-flight", "t-1", "c-1")),
    ("v03-message-stream", "message/stream", {"message": MSG_V03}, ("book-flight", "t-1", "c-1")),
    ("v03-tasks-get", "tasks/get", {"id": "t-9", "historyLength": 2}, (None, "t-9", None)),
    ("v03-tasks-cancel", "tasks/cancel", {"id": "t-9"}, (None, "t-9", None)),
    ("v03-tasks-resubscribe", "tasks/resubscribe", {"id": "t-9"}, (None, "t-9", None)),
    (
        "v03-push-set",
        "tasks/pushNotificationConfig/set",
        {"taskId": "t-9", "pushNotificationConfig": {"url": "https://h"}},
        (None, "t-9", None),
    ),
    (
        "v03-push-get",
        "tasks/pushNotificationConfig/get",
        {"id": "t-9", "pushNotificationConfigId": "p"},
        (None, "t-9", None),
    ),
    ("v03-push-list", "tasks/pushNotificationConfig/list", {"id": "t-9"}, (None, "t-9", None)),
    (
        "v03-push-delete",
        "tasks/pushNotificationConfig/delete",
        {"id": "t-9", "pushNotificationConfigId": "p"},
        (None, "t-9", None),
    ),
    ("v03-extended-card", "agent/getAuthenticatedExtendedCard", {}, (None, None, None)),
    # v1.0 names (a2a-sdk server/routes/jsonrpc_dispatcher.py METHOD_TO_MODEL)
    ("v10-send", "SendMessage", {"message": MSG}, ("book-flight", "t-1", "c-1")),
    ("v10-stream", "SendStreamingMessage", {"message": MSG}, ("book-flight", "t-1", "c-1")),
    ("v10-get-task", "GetTask", {"id": "t-9"}, (None, "t-9", None)),
    ("v10-get-task-by-name", "GetTask", {"name": "tasks/t-9"}, (None, "t-9", None)),
    ("v10-cancel", "CancelTask", {"id": "t-9"}, (None, "t-9", None)),
    ("v10-subscribe", "SubscribeToTask", {"id": "t-9"}, (None, "t-9", None)),
    ("v10-list-tasks", "ListTasks", {"contextId": "c-2"}, (None, None, "c-2")),
    (
        "v10-push-create",
        "CreateTaskPushNotificationConfig",
        {"taskId": "t-9", "id": "p", "url": "https://h"},
        (None, "t-9", None),
    ),
    (
        "v10-push-get",
        "GetTaskPushNotificationConfig",
        {"taskId": "t-9", "id": "p"},
        (None, "t-9", None),
    ),
    ("v10-push-list", "ListTaskPushNotificationConfigs", {"taskId": "t-9"}, (None, "t-9", None)),
    (
        "v10-push-delete",
        "DeleteTaskPushNotificationConfig",
        {"taskId": "t-9", "id": "p"},
        (None, "t-9", None),
    ),
    ("v10-extended-card", "GetExtendedAgentCard", {}, (None, None, None)),
    # where the values come from
    (
        "snake-case-proto-names",
        "SendMessage",
        {"message": {"task_id": "t-1", "context_id": "c-1"}},
        (None, "t-1", "c-1"),
    ),
    (
        "skill-from-params-metadata",
        "SendMessage",
        {"message": {"messageId": "m"}, "metadata": {"skill": "s2"}},
        ("s2", None, None),
    ),
    (
        "message-metadata-skill-wins",
        "SendMessage",
        {"message": MSG, "metadata": {"skill": "s2"}},
        ("book-flight", "t-1", "c-1"),
    ),
    (
        "non-string-values-are-null",
        "SendMessage",
        {"message": {"taskId": 5, "contextId": ["c"], "metadata": {"skill": {"id": "x"}}}},
        (None, None, None),
    ),
    ("message-not-an-object", "message/send", {"message": "hi"}, (None, None, None)),
    ("task-name-not-a-task", "GetTask", {"name": "projects/p"}, (None, None, None)),
    ("task-name-nested", "GetTask", {"name": "tasks/t/x"}, (None, None, None)),
    ("unknown-method", "tasks/other", {"id": "t-9"}, (None, None, None)),
]


@pytest.mark.parametrize(
    ("method", "params", "expected"), [f[1:] for f in FACTS], ids=[f[0] for f in FACTS]
)
def test_facts(method: str, params: dict[str, Any], expected: tuple[Any, ...]) -> None:
    assert a2a.facts(_request(method, params)) == _a2a(method, *expected)


def test_facts_with_array_params() -> None:
    message = parse(b'{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":["t"]}').messages[0]
    assert a2a.facts(message) == _a2a("tasks/get")


# --------------------------------------------------------------------------- cards

CARD: dict[str, Any] = {
    "name": "Travel agent",
    "description": "Books trips — ünïcode too",
    "version": "1.0.0",
    "supportedInterfaces": [
        {"url": "https://agent.example/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ],
    "capabilities": {"streaming": True, "pushNotifications": False},
    "defaultInputModes": ["text/plain"],
    "defaultOutputModes": ["text/plain", "application/json"],
    "skills": [
        {"id": "book-flight", "name": "Book", "description": "d", "tags": ["travel"]},
        {"id": "cancel-flight", "name": "Cancel", "description": "d", "tags": ["travel"]},
        {"name": "no id", "description": "d", "tags": []},
        "garbage",
    ],
}


def test_card_skills_ignores_malformed_entries() -> None:
    assert a2a.card_skills(CARD) == ["book-flight", "cancel-flight"]
    assert a2a.card_skills({"skills": "x"}) == []


def test_filter_card_drops_disallowed_and_malformed_skills_and_signatures() -> None:
    signed = {**CARD, "signatures": [{"protected": "x", "signature": "y"}]}
    out = a2a.filter_card(signed, {"cancel-flight", "no id"})
    assert out["skills"] == [CARD["skills"][1]]
    assert "signatures" not in out
    assert {k: v for k, v in out.items() if k != "skills"} == {
        k: v for k, v in CARD.items() if k != "skills"
    }
    assert len(signed["skills"]) == 4  # input untouched


CANONICAL = [
    ("sorted-compact", {"b": 1, "a": [1, "x"]}, b'{"a":[1,"x"],"b":1}'),
    ("signatures-dropped", {"a": 1, "signatures": [{"x": 1}]}, b'{"a":1}'),
    ("empty-values-dropped", {"a": "", "b": [], "c": {}, "d": {"e": [""]}, "f": 0}, b'{"f":0}'),
    ("false-zero-kept-null-dropped", {"t": False, "n": 0, "z": None}, b'{"n":0,"t":false}'),
    ("utf16-key-order", {"\U0001f600": 1, "\ufb01": 2}, '{"😀":1,"ﬁ":2}'.encode()),
    ("number-format", {"x": 1.0, "y": 1e21, "z": 0.000001}, b'{"x":1,"y":1e+21,"z":0.000001}'),
    ("utf8-literal", {"s": "é\u2028"}, '{"s":"é\u2028"}'.encode()),
]


@pytest.mark.parametrize(
    ("card", "expected"), [c[1:] for c in CANONICAL], ids=[c[0] for c in CANONICAL]
)
def test_canonical(card: dict[str, Any], expected: bytes) -> None:
    assert a2a.canonical(card) == expected


@pytest.mark.parametrize(
    "card",
    [{"n": 2**60}, {"s": "\ud800"}],
    ids=["int-beyond-2**53", "lone-surrogate"],
)
def test_canonical_refusals(card: dict[str, Any]) -> None:
    with pytest.raises(JOSEError):
        a2a.canonical(card)


def test_canonical_refuses_deep_nesting() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(200):
        deep = {"x": deep}
    with pytest.raises(JOSEError, match="deep"):
        a2a.canonical(deep)


def test_canonical_matches_the_sdk() -> None:
    """Our canonical bytes are what a2a-sdk signs for the same card (its proto round trip)."""
    from a2a.utils.signing import _canonicalize_agent_card

    card = {k: v for k, v in CARD.items() if k != "skills"} | {"skills": CARD["skills"][:2]}
    proto = ParseDict(card, AgentCard())
    assert a2a.canonical(card) == _canonicalize_agent_card(proto).encode()


def _keys() -> list[tuple[str, Any, str]]:
    return [
        ("ES256", ec.generate_private_key(ec.SECP256R1()), "p256"),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate(), "ed"),
    ]


def _sdk_card(card: dict[str, Any]) -> AgentCard:
    return ParseDict(card, AgentCard())


@pytest.mark.parametrize(("alg", "key", "kid"), _keys(), ids=["ES256", "EdDSA"])
def test_our_signature_verifies_with_the_sdk_and_with_us(alg: str, key: Any, kid: str) -> None:
    card = a2a.filter_card(CARD, {"book-flight"})
    signed = a2a.sign_card(card, key, kid, alg, jku="https://agent.example/jwks.json")
    (entry,) = signed["signatures"]
    assert json.loads(b64url_decode(entry["protected"])) == {
        "alg": alg,
        "kid": kid,
        "typ": "JOSE",
        "jku": "https://agent.example/jwks.json",
    }
    a2a.verify_card(signed, {kid: key.public_key()})
    verifier = create_signature_verifier(lambda k, jku: key.public_key(), [alg])
    verifier(_sdk_card(signed))  # raises InvalidSignaturesError if it does not verify


@pytest.mark.parametrize(("alg", "key", "kid"), _keys(), ids=["ES256", "EdDSA"])
def test_an_sdk_signature_verifies_with_us(alg: str, key: Any, kid: str) -> None:
    proto = _sdk_card(a2a.filter_card(CARD, {"book-flight", "cancel-flight"}))
    signer = create_agent_card_signer(key, {"kid": kid, "alg": alg, "jku": None, "typ": "JOSE"})
    signed = MessageToDict(signer(proto))
    a2a.verify_card(signed, {kid: key.public_key()})


def test_the_sdk_refuses_our_signature_once_a_skill_is_added() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = a2a.sign_card(a2a.filter_card(CARD, {"book-flight"}), key, "k")
    tampered = {**signed, "skills": [*signed["skills"], CARD["skills"][1]]}
    verifier = create_signature_verifier(lambda k, jku: key.public_key(), ["ES256"])
    with pytest.raises(InvalidSignaturesError):
        verifier(_sdk_card(tampered))
    with pytest.raises(JOSEError, match="no agent card signature verifies"):
        a2a.verify_card(tampered, {"k": key.public_key()})


def test_sign_card_appends_to_existing_signatures() -> None:
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    card = a2a.sign_card(a2a.sign_card(CARD, k1, "one"), k2, "two", "EdDSA")
    assert len(card["signatures"]) == 2
    a2a.verify_card(card, {"one": k1.public_key()})
    a2a.verify_card(card, {"two": k2.public_key()})


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "EdDSA"),
        (ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (ec.generate_private_key(ec.SECP384R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate(), "ES256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "HS256"),
    ],
    ids=["p256-as-eddsa", "es384-not-allowed", "p384-as-es256", "ed-as-es256", "rsa", "hs256"],
)
def test_sign_card_refuses_other_algorithms(key: Any, alg: str) -> None:
    with pytest.raises(JOSEError) as info:
        a2a.sign_card(CARD, key, "k", alg)
    assert info.value.code == "alg_refused"


KEY = ec.generate_private_key(ec.SECP256R1())
SIGNED = a2a.sign_card(CARD, KEY, "k")
PUBLIC = {"k": KEY.public_key()}


def _with_signature(**entry: Any) -> dict[str, Any]:
    return {**CARD, "signatures": [entry]}


def _protected(header: dict[str, Any]) -> str:
    return encode_json(header)


_GOOD = SIGNED["signatures"][0]
VERIFY_REFUSALS = [
    ("unsigned", CARD, PUBLIC, "bad_signature"),
    ("empty-signatures", {**CARD, "signatures": []}, PUBLIC, "bad_signature"),
    ("unknown-kid", SIGNED, {"other": KEY.public_key()}, "bad_signature"),
    (
        "wrong-key",
        SIGNED,
        {"k": ec.generate_private_key(ec.SECP256R1()).public_key()},
        "bad_signature",
    ),
    ("changed-card", {**SIGNED, "name": "Evil agent"}, PUBLIC, "bad_signature"),
    (
        "alg-none",
        _with_signature(protected=_protected({"alg": "none", "kid": "k"}), signature="AA"),
        PUBLIC,
        "bad_signature",
    ),
    (
        "hs256-with-public-key-bytes",
        _with_signature(protected=_protected({"alg": "HS256", "kid": "k"}), signature="AA"),
        PUBLIC,
        "bad_signature",
    ),
    (
        "header-says-eddsa-for-p256-key",
        _with_signature(
            protected=_protected({"alg": "EdDSA", "kid": "k"}), signature=_GOOD["signature"]
        ),
        PUBLIC,
        "bad_signature",
    ),
    (
        "crit",
        _with_signature(
            protected=_protected({"alg": "ES256", "kid": "k", "crit": ["x"], "x": 1}),
            signature=_GOOD["signature"],
        ),
        PUBLIC,
        "bad_signature",
    ),
    ("not-an-object", {**CARD, "signatures": ["x"]}, PUBLIC, "bad_signature"),
    (
        "protected-not-base64url",
        _with_signature(protected="e30=", signature=_GOOD["signature"]),
        PUBLIC,
        "bad_signature",
    ),
    ("too-many", {**SIGNED, "signatures": [_GOOD] * 17}, PUBLIC, "malformed"),
]


@pytest.mark.parametrize(
    ("card", "keys", "code"), [v[1:] for v in VERIFY_REFUSALS], ids=[v[0] for v in VERIFY_REFUSALS]
)
def test_verify_card_refusals(card: dict[str, Any], keys: dict[str, Any], code: str) -> None:
    with pytest.raises(JOSEError) as info:
        a2a.verify_card(card, keys)
    assert info.value.code == code


def test_one_good_signature_among_bad_ones_verifies() -> None:
    bad = {"protected": _GOOD["protected"], "signature": b64url_encode(b"\x01" * 64)}
    a2a.verify_card({**SIGNED, "signatures": ["x", bad, _GOOD]}, PUBLIC)


def test_our_signature_verifies_with_joserfc_as_a_detached_jws() -> None:
    """A second, independent JOSE implementation: RFC 7515 Appendix F detached content."""
    from cryptography.hazmat.primitives import serialization
    from joserfc import jws
    from joserfc.jwk import ECKey

    key = ec.generate_private_key(ec.SECP256R1())
    signed = a2a.sign_card(CARD, key, "k")
    (entry,) = signed["signatures"]
    token = f"{entry['protected']}.{b64url_encode(a2a.canonical(signed))}.{entry['signature']}"
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    obj = jws.deserialize_compact(token, ECKey.import_key(pem), algorithms=["ES256"])
    assert obj.payload == a2a.canonical(CARD)
    assert obj.protected == {"alg": "ES256", "kid": "k", "typ": "JOSE"}


def test_a_response_message_gives_empty_facts() -> None:
    (message,) = parse(b'{"jsonrpc":"2.0","id":9,"result":{"id":"t-1"}}').messages
    assert a2a.facts(message) == _a2a(None)
