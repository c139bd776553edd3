"""MCP (Model Context Protocol, https://modelcontextprotocol.io/specification) request facts and
list filtering.

Contract: pure functions over :mod:`gateway.protocols.jsonrpc` values, no I/O.

* :func:`facts` gives the policy input ``input.mcp`` of one request or notification:
  ``{method, tool, arguments, resource, prompt, session}``. ``tool`` is ``params.name`` of
  ``tools/call``, ``prompt`` is ``params.name`` of ``prompts/get``, ``resource`` is
  ``params.uri`` of ``resources/read|subscribe|unsubscribe``; each is ``None`` for every other
  method. ``arguments`` holds ONLY the allowlisted keys of ``params.arguments`` (the tool's or
  prompt's own list plus the ``"*"`` list), values copied as they are (the PDP input converter
  bounds them). One of those methods without its string ``name``/``uri`` (or with ``params``
  that is not an object) raises :class:`~gateway.protocols.jsonrpc.InvalidJSONRPC` ``-32602``.
  A response message (the client answering a server request) gives ``method`` None, the rest
  empty.
* Listing responses (``tools/list``, ``prompts/list``, ``resources/list``) are filtered in two
  steps so that the caller can ask the PDP in between: :func:`scan` parses a response body (a
  JSON body or one SSE event's data) and names what each pending listing offers; then
  :func:`rewrite` drops what the caller may not see. :func:`filter_response` does both for a
  fixed allow-set. When nothing is dropped the *same* bytes object comes back (``out is body``),
  so the relay can send the original bytes.

SECURITY: filtering fails closed. A listing entry without a string ``name`` (``uri`` for
resources) is dropped; a listing result that is not an object becomes an empty listing; a body
that is not JSON, once a listing is pending, raises :class:`UnfilterableResponse` (the relay must
not pass it through unfiltered).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.jose.errors import JOSEError
from gateway.jose.jws import strict_json_value
from gateway.protocols.jsonrpc import INVALID_PARAMS, Id, InvalidJSONRPC, Message, is_id

WILDCARD: Final = "*"
_RESOURCE_METHODS: Final = frozenset(
    {"resources/read", "resources/subscribe", "resources/unsubscribe"}
)

# A listing method -> (the result member holding the list, the entry member naming an entry).
LISTINGS: Final[Mapping[str, tuple[str, str]]] = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
}


class UnfilterableResponse(Exception):
    """A response to a pending listing that cannot be read, so cannot be filtered (fail closed)."""


# --------------------------------------------------------------------------- requests


def facts(
    message: Message, *, arguments: Mapping[str, frozenset[str]], session: str | None
) -> dict[str, Any]:
    """``input.mcp`` for one request/notification (see module docstring)."""
    method = message.method
    out: dict[str, Any] = {
        "method": method,
        "tool": None,
        "arguments": {},
        "resource": None,
        "prompt": None,
        "session": session,
    }
    if method == "tools/call":
        out["tool"] = name = _required(message, "name")
        out["arguments"] = _allowed_arguments(message, name, arguments)
    elif method == "prompts/get":
        out["prompt"] = name = _required(message, "name")
        out["arguments"] = _allowed_arguments(message, name, arguments)
    elif method in _RESOURCE_METHODS:
        out["resource"] = _required(message, "uri")
    return out


def _required(message: Message, member: str) -> str:
    params = message.params
    value = params.get(member) if isinstance(params, Mapping) else None
    if type(value) is not str:
        raise InvalidJSONRPC(INVALID_PARAMS, id=message.id)
    return value


def _allowed_arguments(
    message: Message, name: str, allowlists: Mapping[str, frozenset[str]]
) -> dict[str, Any]:
    params = message.params
    given = params.get("arguments") if isinstance(params, Mapping) else None
    if not isinstance(given, Mapping) or not given:
        return {}
    allowed = allowlists.get(name, frozenset()) | allowlists.get(WILDCARD, frozenset())
    # SECURITY: only allowlisted keys reach the policy input (and the decision log): tool
    # arguments can carry secrets and personal data the operator never meant to record.
    return {key: given[key] for key in allowed if key in given}


# --------------------------------------------------------------------------- listings


def listed(result: Any, method: str = "tools/list") -> list[str]:
    """The names (uris for resources) a listing result offers; malformed entries are ignored."""
    member, key = LISTINGS[method]
    entries = result.get(member) if isinstance(result, Mapping) else None
    if not isinstance(entries, list):
        return []
    return [e[key] for e in entries if isinstance(e, Mapping) and type(e.get(key)) is str]


def listed_tools(result: Any) -> list[str]:
    """The tool names in a ``tools/list`` result (ignores malformed entries)."""
    return listed(result, "tools/list")


def filter_listing(
    result: Any, allowed: Collection[str], method: str = "tools/list"
) -> dict[str, Any]:
    """``result`` without the entries not in ``allowed``, nor malformed ones; other members kept."""
    member, key = LISTINGS[method]
    if not isinstance(result, Mapping):
        return {member: []}
    entries = result.get(member)
    kept = [
        e
        for e in (entries if isinstance(entries, list) else ())
        if isinstance(e, Mapping) and type(e.get(key)) is str and e[key] in allowed
    ]
    return {**result, member: kept}


def filter_tools(result: Mapping[str, Any], allowed: Collection[str]) -> dict[str, Any]:
    """A ``tools/list`` result keeping ``nextCursor`` etc. and only the allowed tools."""
    return filter_listing(result, allowed, "tools/list")


@dataclass(frozen=True, slots=True)
class Scan:
    """What :func:`scan` found in one response body; hand it to :func:`rewrite` unchanged."""

    body: bytes
    names: Mapping[Id, list[str]]  # pending id -> the names its listing offers
    _value: Any  # the parsed body (None when no pending listing is answered in it)
    _pending: Mapping[Id, str]


def scan(body: bytes, pending: Mapping[Id, str]) -> Scan:
    """Parse a response body (JSON, or one SSE event's data as UTF-8) for pending listings.

    ``pending`` maps the id of each listing request the client sent to its method (a key of
    :data:`LISTINGS`). ``names`` holds, per pending id answered with a result in ``body``, what
    the listing offers; ids not answered here are absent.
    """
    if not pending:
        return Scan(body, {}, None, pending)
    if not set(pending.values()) <= LISTINGS.keys():
        raise ValueError("pending methods must be listing methods")
    try:
        value = strict_json_value(body)
    except JOSEError:
        raise UnfilterableResponse("response is not JSON") from None
    names = {
        response["id"]: listed(response["result"], pending[response["id"]])
        for response in (value if isinstance(value, list) else (value,))
        if _answers(response, pending)
    }
    return Scan(body, names, value if names else None, pending)


def rewrite(scanned: Scan, allowed: Mapping[Id, Collection[str]]) -> bytes:
    """The body with each scanned listing cut down to ``allowed[id]`` (absent: nothing allowed).

    Returns ``scanned.body`` itself when nothing is dropped; otherwise compact JSON. The scan
    is not changed: it may be rewritten again with another allow-set.
    """
    if not scanned.names:
        return scanned.body
    value, pending = scanned._value, scanned._pending
    out: list[Any] = []
    changed = False
    for response in value if isinstance(value, list) else (value,):
        if _answers(response, pending):
            method = pending[response["id"]]
            before = response["result"]
            after = filter_listing(before, allowed.get(response["id"], ()), method)
            member = LISTINGS[method][0]
            if not isinstance(before, Mapping) or after[member] != before.get(member):
                response = {**response, "result": after}
                changed = True
        out.append(response)
    if not changed:
        return scanned.body
    return _dump(out if isinstance(value, list) else out[0])


def filter_response(
    body: bytes, pending: Mapping[Id, str], allowed: Mapping[Id, Collection[str]]
) -> bytes:
    """:func:`scan` then :func:`rewrite` with a fixed allow-set per pending id."""
    return rewrite(scan(body, pending), allowed)


def _answers(response: Any, pending: Mapping[Id, str]) -> bool:
    """Whether ``response`` (one element of a body) is the result of a pending listing."""
    return (
        isinstance(response, dict)
        and "result" in response
        and is_id(response.get("id"))  # SECURITY: never let `true` match the pending id 1
        and response["id"] in pending
    )


def _dump(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800") parses but has no UTF-8 form: escape everything instead.
        return json.dumps(value, separators=(",", ":")).encode("ascii")
