"""JSON-RPC 2.0 envelopes (https://www.jsonrpc.org/specification): bytes -> messages, and errors.

Contract: pure functions, no I/O. :func:`parse` turns a request body into an :class:`Envelope`
of :class:`Message` values or raises :class:`InvalidJSONRPC` (not a ``GatewayError``: the
pipeline maps it to a JSON-RPC error response, built with :func:`error_object` and
:func:`error_body`). The body itself is never rewritten here: the gateway forwards the bytes the
client sent.

What :func:`parse` enforces (every refusal names a spec section; public text never echoes input):

* strict JSON, UTF-8 only (§4 "Conventions", RFC 8259 §8.1): duplicate member names, ``NaN``,
  ``Infinity`` and numbers overflowing to infinity (``1e400``) are refused, as in
  :func:`gateway.jose.jws.strict_json_value`; a nesting too deep for the decoder (a 100k-deep
  ``[[[...``) is a parse error, not a crash. All of these are ``-32700``;
* the top level is an object, or an array of objects (§6 batch); ``[]`` and a batch longer than
  ``max_batch`` are ``-32600``;
* ``"jsonrpc"`` is exactly ``"2.0"`` (§4);
* a request/notification has a non-empty string ``method`` (§4); names starting with ``rpc.``
  are reserved for rpc-internal methods (§4) and refused with ``-32600`` (the spec has no code of
  its own for them; ``-32601`` means "not found", which is the server's answer, not ours);
  ``params``, when present, is an object or an array (§4.2);
* ``id``, when present, is a string or an integer (never a boolean, never a fraction: §4
  "Numbers SHOULD NOT contain fractional parts"). A *request* with ``"id": null`` is refused
  ``-32600``: §4 discourages it, and a response to it could not be told from the response to an
  unreadable request (§5). A message without ``id`` is a notification;
* a response (a message without ``method``; MCP clients send them, e.g. to elicitation) has an
  ``id`` (string, integer, or null with an ``error`` only) and exactly one of ``result`` and
  ``error``; ``error`` is an object with an integer ``code`` and a string ``message`` (§5, §5.1).

In a batch, one invalid element refuses the whole batch (the gateway forwards the body byte for
byte, so it cannot forward part of it): the error has ``batch=True`` and the element's id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.jose.errors import JOSEError
from gateway.jose.jws import strict_json_value

Id = str | int | None

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
DEFAULT_MAX_BATCH: Final = 64

_MESSAGES: Final[Mapping[int, str]] = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}


@dataclass(frozen=True, slots=True)
class Message:
    kind: Literal["request", "notification", "response"]
    id: Id  # None for notifications (and for a response to an unreadable request)
    method: str | None  # None for responses
    params: Mapping[str, Any] | Sequence[Any] | None
    result: Any = None  # responses only, raw as parsed
    error: Mapping[str, Any] | None = None  # responses only


@dataclass(frozen=True, slots=True)
class Envelope:
    messages: tuple[Message, ...]
    batch: bool


class InvalidJSONRPC(Exception):
    """A body that is not valid JSON-RPC 2.0; ``message`` is safe to send back (never input)."""

    code: int
    message: str
    id: Id
    batch: bool

    def __init__(
        self, code: int, message: str | None = None, id: Id = None, *, batch: bool = False
    ):
        self.code = code
        self.message = message if message is not None else _MESSAGES.get(code, "Server error")
        self.id = id
        # Whether the answer is a batch (§6: only once the body is known to be a non-empty array).
        self.batch = batch
        super().__init__(self.message)


def is_id(value: Any) -> bool:
    """A JSON-RPC id a request may carry: a string or an integer (``bool`` is not an int here)."""
    return type(value) is str or type(value) is int


def parse(body: bytes, *, max_batch: int = DEFAULT_MAX_BATCH) -> Envelope:
    """The messages of a JSON-RPC 2.0 body, or :class:`InvalidJSONRPC` (see module docstring)."""
    try:
        value = strict_json_value(body)
    except JOSEError:
        # SECURITY: duplicate members, NaN/Infinity, 1e400, bad UTF-8 and a recursion blow-up
        # all land here: two parsers (ours and the server's) must never see different values.
        raise InvalidJSONRPC(PARSE_ERROR) from None
    if isinstance(value, dict):
        return Envelope((_message(value),), batch=False)
    if not isinstance(value, list) or not value:
        raise InvalidJSONRPC(INVALID_REQUEST)
    if len(value) > max_batch:
        # SECURITY: a batch is N decisions for the price of one request; bound N.
        raise InvalidJSONRPC(INVALID_REQUEST, "Batch too large", batch=True)
    messages = []
    for element in value:
        try:
            messages.append(_message(element))
        except InvalidJSONRPC as exc:
            exc.batch = True
            raise
    return Envelope(tuple(messages), batch=True)


def _message(obj: Any) -> Message:
    if not isinstance(obj, dict):
        raise InvalidJSONRPC(INVALID_REQUEST)
    raw_id = obj.get("id")
    readable_id: Id = raw_id if is_id(raw_id) else None
    if obj.get("jsonrpc") != "2.0":
        raise InvalidJSONRPC(INVALID_REQUEST, id=readable_id)
    if "method" in obj:
        return _request(obj, readable_id)
    return _response(obj, readable_id)


def _request(obj: Mapping[str, Any], readable_id: Id) -> Message:
    method = obj["method"]
    if type(method) is not str or not method or method.startswith("rpc."):
        raise InvalidJSONRPC(INVALID_REQUEST, id=readable_id)
    params = obj.get("params")
    if "params" in obj and not isinstance(params, dict | list):
        raise InvalidJSONRPC(INVALID_REQUEST, id=readable_id)
    if "id" not in obj:
        return Message("notification", None, method, params)
    if not is_id(obj["id"]):
        # SECURITY: null, booleans, fractions, objects: refused rather than guessed at.
        raise InvalidJSONRPC(INVALID_REQUEST)
    return Message("request", obj["id"], method, params)


def _response(obj: Mapping[str, Any], readable_id: Id) -> Message:
    if "id" not in obj or not (obj["id"] is None or is_id(obj["id"])):
        raise InvalidJSONRPC(INVALID_REQUEST)
    if ("result" in obj) == ("error" in obj):
        raise InvalidJSONRPC(INVALID_REQUEST, id=readable_id)
    if obj["id"] is None and "result" in obj:
        # §5: a null id answers a request whose id could not be read, so only with an error.
        raise InvalidJSONRPC(INVALID_REQUEST)
    error = obj.get("error")
    if "error" in obj and not (
        isinstance(error, dict)
        and type(error.get("code")) is int
        and type(error.get("message")) is str
    ):
        raise InvalidJSONRPC(INVALID_REQUEST, id=readable_id)
    return Message("response", obj["id"], None, None, obj.get("result"), error)


def error_object(
    id: Id, code: int, message: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One JSON-RPC error response object (§5.1); ``data`` only when given."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = dict(data)
    return {"jsonrpc": "2.0", "id": id, "error": error}


def error_body(errors: Sequence[dict[str, Any]], batch: bool) -> bytes:
    """Compact UTF-8 JSON: the array of ``errors`` if ``batch``, else the single one (§6)."""
    if not batch and len(errors) != 1:
        raise ValueError("a non-batch answer is exactly one response object")
    value: Any = list(errors) if batch else errors[0]
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
