"""A2A (Agent2Agent, https://a2a-protocol.org) request facts, and agent-card filtering and signing.

Contract: pure functions, no I/O; method names and parameter members follow a2a-sdk 1.3.0 (its
``server/routes/jsonrpc_dispatcher.py`` for v1.0, ``compat/v0_3`` for v0.3).

* :func:`facts` gives ``input.a2a = {method, skill, task_id, context_id}`` for one request of
  either name set (v0.3 ``message/send``, ``tasks/get``... and v1.0 ``SendMessage``,
  ``GetTask``...). ``task_id``/``context_id`` come from ``params.message`` (``taskId``/
  ``contextId``, or the snake_case proto names), from ``params.id`` (or a ``tasks/<id>``
  resource ``params.name``) for the task methods, from ``params.taskId`` for the v1.0
  push-notification-config methods; ``context_id`` falls back to ``params.contextId`` (as
  ``ListTasks`` sends it). Every value is a string or ``None``: anything else reads as ``None``.
  A response message (``method`` None) gives all four as ``None``.
  A2A has no standard skill field on a message: the gateway reads the metadata convention
  ``params.message.metadata.skill`` (then ``params.metadata.skill``); ``skill`` is None otherwise,
  so a policy that needs a skill must deny when it is null.
* :func:`card_skills` / :func:`filter_card`: the skill ids of an agent card, and the card without
  the skills a caller may not see. A filtered card loses ``signatures`` (they no longer verify).
* :func:`canonical` / :func:`sign_card` / :func:`verify_card`: A2A v1.0 ``AgentCardSignature``
  ``{protected, signature, header?}``, a JWS (RFC 7515 §7.2 JSON serialization, detached
  payload) over the RFC 8785 canonical form of the card without ``signatures``. As a2a-sdk does
  (proto3 JSON omits empty fields), empty strings, arrays and objects are removed, recursively,
  before canonicalizing, so a card signed here verifies with the SDK's verifier and back.
  Signing and verification use :mod:`gateway.jose.jws` with the allowlist ``ES256``/``EdDSA``;
  :func:`verify_card` raises :class:`~gateway.jose.errors.JOSEError` unless one signature
  verifies with a configured key (``jku`` is never fetched: RFC 8725 §3.10).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from gateway.jose.errors import JOSEError
from gateway.jose.jws import (
    PrivateKey,
    PublicKey,
    VerificationKey,
    b64url_decode,
    b64url_encode,
    check_alg,
    check_header,
    encode_json,
    sign,
    strict_json_object,
)
from gateway.protocols.jsonrpc import Message

CARD_ALGS: Final = frozenset({"ES256", "EdDSA"})
MAX_CARD_DEPTH: Final = 64
_MAX_SIGNATURES: Final = 16

# Methods whose params name one task by `id` (v0.3 and v1.0), or by a `tasks/<id>` `name`.
_TASK_BY_ID: Final = frozenset(
    {
        "tasks/get",
        "tasks/cancel",
        "tasks/resubscribe",
        "tasks/pushNotificationConfig/get",
        "tasks/pushNotificationConfig/list",
        "tasks/pushNotificationConfig/delete",
        "GetTask",
        "CancelTask",
        "SubscribeToTask",
    }
)
# Methods whose params name the task by `taskId` (v0.3 set; v1.0 push-notification configs).
_TASK_BY_TASK_ID: Final = frozenset(
    {
        "tasks/pushNotificationConfig/set",
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
    }
)


# --------------------------------------------------------------------------- requests


def facts(message: Message) -> dict[str, Any]:
    """``input.a2a`` for one request/notification (see module docstring)."""
    method = message.method
    params = message.params if isinstance(message.params, Mapping) else {}
    msg = params.get("message")
    msg = msg if isinstance(msg, Mapping) else {}
    task_id = _str(msg, "taskId", "task_id")
    context_id = _str(msg, "contextId", "context_id") or _str(params, "contextId", "context_id")
    if method in _TASK_BY_ID:
        task_id = _str(params, "id") or _task_resource(params.get("name"))
    elif method in _TASK_BY_TASK_ID:
        task_id = _str(params, "taskId", "task_id")
        if method == "tasks/pushNotificationConfig/set" and task_id is None:
            # v0.3 TaskPushNotificationConfig: {taskId, pushNotificationConfig}; older SDKs: {id}.
            task_id = _str(params, "id")
    return {
        "method": method,
        "skill": _skill(msg) or _skill(params),
        "task_id": task_id,
        "context_id": context_id,
    }


def _str(obj: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = obj.get(name)
        if type(value) is str:
            return value
    return None


def _task_resource(name: Any) -> str | None:
    """``tasks/<id>`` (a v1.0 draft's resource name) -> ``<id>``."""
    if type(name) is str and name.startswith("tasks/") and "/" not in name[6:] and name[6:]:
        return name[6:]
    return None


def _skill(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    return _str(metadata, "skill") if isinstance(metadata, Mapping) else None


# --------------------------------------------------------------------------- agent cards


def card_skills(card: Mapping[str, Any]) -> list[str]:
    """The ``id`` of every well-formed skill of an agent card."""
    skills = card.get("skills")
    if not isinstance(skills, list):
        return []
    return [s["id"] for s in skills if isinstance(s, Mapping) and type(s.get("id")) is str]


def filter_card(card: Mapping[str, Any], allowed: Collection[str]) -> dict[str, Any]:
    """The card with only the allowed (well-formed) skills, and without ``signatures``."""
    skills = card.get("skills")
    kept = [
        s
        for s in (skills if isinstance(skills, list) else ())
        if isinstance(s, Mapping) and type(s.get("id")) is str and s["id"] in allowed
    ]
    # SECURITY: the old signatures cover the unfiltered card; a verifier must not see them
    # next to content they do not cover (the gateway re-signs with its own key).
    out = {k: v for k, v in card.items() if k != "signatures"}
    out["skills"] = kept
    return out


def canonical(card: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) bytes of the card without ``signatures`` and without empty values."""
    cleaned = _clean({k: v for k, v in card.items() if k != "signatures"}, 1)
    try:
        return rfc8785.dumps(cleaned if cleaned is not None else {})
    except rfc8785.CanonicalizationError:
        # Integers beyond 2**53, NaN, lone surrogates: no interoperable canonical form.
        raise JOSEError("agent card has no canonical form") from None


def _clean(value: Any, depth: int) -> Any:
    """a2a-sdk's ``_clean_empty``: drop "", [] and {} recursively (None when all is empty)."""
    if isinstance(value, Mapping | list) and depth > MAX_CARD_DEPTH:
        # SECURITY: extension params nest freely; bound the recursion.
        raise JOSEError("agent card nested too deeply")
    if isinstance(value, Mapping):
        pairs = {k: c for k, v in value.items() if (c := _clean(v, depth + 1)) is not None}
        return pairs or None
    if isinstance(value, list):
        items = [c for v in value if (c := _clean(v, depth + 1)) is not None]
        return items or None
    if value == "" and type(value) is str:
        return None
    return value


def _alg_of(key: PublicKey | PrivateKey) -> str:
    """The one card algorithm a key may use: ES256 for P-256, EdDSA for Ed25519/Ed448."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name == "secp256r1":
            return "ES256"
    elif isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PrivateKey
        | ed448.Ed448PublicKey,
    ):
        return "EdDSA"
    raise JOSEError("key not usable for agent card signatures", "alg_refused")


def sign_card(
    card: Mapping[str, Any],
    key: PrivateKey,
    kid: str,
    alg: str = "ES256",
    jku: str | None = None,
) -> dict[str, Any]:
    """The card with one more ``AgentCardSignature`` made with ``key`` (protected kid/alg/typ)."""
    check_alg(alg, CARD_ALGS)
    if _alg_of(key) != alg:
        raise JOSEError("algorithm does not match the key", "alg_refused")
    header: dict[str, Any] = {"alg": alg, "kid": kid, "typ": "JOSE"}
    if jku is not None:
        header["jku"] = jku
    check_header(header)
    protected = encode_json(header)
    signing_input = f"{protected}.{b64url_encode(canonical(card))}".encode("ascii")
    signature = {"protected": protected, "signature": b64url_encode(sign(key, alg, signing_input))}
    previous = card.get("signatures")
    kept = list(previous) if isinstance(previous, list) else []
    return {**card, "signatures": [*kept, signature]}


def verify_card(card: Mapping[str, Any], keys: Mapping[str, PublicKey]) -> None:
    """Raise :class:`JOSEError` unless one of the card's signatures verifies with ``keys[kid]``."""
    signatures = card.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise JOSEError("agent card is not signed", "bad_signature")
    if len(signatures) > _MAX_SIGNATURES:
        raise JOSEError("too many agent card signatures")
    payload = b64url_encode(canonical(card))
    for entry in signatures:
        try:
            _verify_one(entry, payload, keys)
            return
        except JOSEError:
            continue
    raise JOSEError("no agent card signature verifies", "bad_signature")


def _verify_one(entry: Any, payload: str, keys: Mapping[str, PublicKey]) -> None:
    if not isinstance(entry, Mapping):
        raise JOSEError("malformed agent card signature")
    protected, signature = entry.get("protected"), entry.get("signature")
    if type(protected) is not str or type(signature) is not str:
        raise JOSEError("malformed agent card signature")
    alg, kid, _ = check_header(strict_json_object(b64url_decode(protected)))
    check_alg(alg, CARD_ALGS)
    key = keys.get(kid) if kid is not None else None
    if key is None:
        raise JOSEError("unknown key", "unknown_kid")
    # SECURITY: the key decides its algorithm (RFC 8725 §3.1), never the header.
    verifier = VerificationKey(kid, frozenset({_alg_of(key)}), key)
    verifier.verify(alg, f"{protected}.{payload}".encode("ascii"), b64url_decode(signature))
