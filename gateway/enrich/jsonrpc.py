"""The JSON-RPC stage of ``kind: mcp`` and ``kind: a2a`` routes: body -> ``input.mcp``/``a2a``.

Contract. :meth:`JSONRPCStage.read` runs after authentication. For a ``POST`` it reads the
body (bounded by the route's ``max_body_bytes``: 413 beyond it), parses it with
:mod:`gateway.protocols.jsonrpc` and returns an :class:`RPCCall`: one policy fact per message
(``input.mcp`` from :mod:`gateway.protocols.mcp`, ``input.a2a`` from
:mod:`gateway.protocols.a2a`), the request ids and which of them list tools. A body that is not
JSON-RPC 2.0 raises :class:`gateway.errors.JSONRPCRefused` (HTTP 400, a JSON-RPC error
object with code -32700, -32600 or -32602), never a 500. A ``GET`` (the MCP event stream) or
``DELETE`` (end of session) carries no body: one fact with ``method: null``. The body bytes
stay in :class:`gateway.protocols.body.RequestBody`, so the forwarder sends exactly what the
client sent.

:meth:`JSONRPCStage.check_session` binds ``Mcp-Session-Id`` to the authenticated subject
(``routes[].mcp.session_binding``): a session id the gateway did not see the upstream issue,
or one bound to another subject, is refused with 404 ``session_not_found`` (what an MCP
server answers for an unknown session, so the client starts a new one; a thief learns
nothing). :meth:`bind` records the id an upstream issues in its response.

:func:`check_audience` is RFC 8707 audience binding: every bearer token of the request must
name the route's resource in ``aud`` (401 ``invalid_token`` otherwise), so a token minted
for another resource server cannot be replayed here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.context import Identity, Inbound, RequestFacts
from gateway.errors import Forbidden, GatewayError, JSONRPCRefused, NotFound, invalid_token
from gateway.protocols import a2a, jsonrpc, mcp
from gateway.settings.routes import JSONRPCRoute, Route
from gateway.state import SessionBindings

SESSION_HEADER = "Mcp-Session-Id"
# Listing methods whose results the gateway filters by policy (MCP).
LISTING = {"tools/list": "tool"}
# JSON-RPC's implementation-defined "server error" range (-32000..-32099): MCP defines none
# at -32001; A2A uses -32001..-32009 for its own errors, so its denials take -32050.
FORBIDDEN_CODE = -32001
A2A_FORBIDDEN_CODE = -32050

Protocol = Literal["mcp", "a2a"]


@dataclass(frozen=True, slots=True)
class RPCCall:
    """What the stage found in one request."""

    protocol: Protocol
    facts: tuple[dict[str, Any], ...]  # one input.mcp / input.a2a per decided message
    ids: tuple[jsonrpc.Id | None, ...]  # the message id of each fact (None: notification)
    batch: bool = False
    session: str | None = None
    listings: Mapping[jsonrpc.Id, str] = field(default_factory=dict)  # id -> listing method

    @property
    def tools(self) -> tuple[str, ...]:
        """The tools this request calls (MCP ``tools/call``), in order."""
        return tuple(f["tool"] for f in self.facts if f.get("tool"))

    @property
    def labels(self) -> tuple[str, str | None]:
        """``(method, tool or skill)`` of the first message, for audit, spans and metrics."""
        if not self.facts:
            return "-", None
        first = self.facts[0]
        return first.get("method") or "-", first.get("tool") or first.get("skill")

    @property
    def _code(self) -> int:
        return FORBIDDEN_CODE if self.protocol == "mcp" else A2A_FORBIDDEN_CODE

    def _denied(self, message_id: jsonrpc.Id, decision_id: str, reason: str) -> dict[str, Any]:
        facts = {"decision_id": decision_id, "reason": reason}
        if self.protocol == "mcp":
            return jsonrpc.error_object(message_id, FORBIDDEN_CODE, "forbidden by policy", facts)
        # A2A v1.0 error details are google.rpc.ErrorInfo objects (string metadata); its
        # SDK drops any other data and reads -32001..-32009 as its own errors.
        error = jsonrpc.error_object(message_id, A2A_FORBIDDEN_CODE, "forbidden by policy")
        error["error"]["data"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "FORBIDDEN_BY_POLICY",
                "domain": "agentgate",
                "metadata": facts,
            }
        ]
        return error

    def refusal(
        self,
        errors: Mapping[int, tuple[str, str]],
        *,
        others: str = "batch refused: another message was denied",
    ) -> GatewayError:
        """HTTP 200 with a JSON-RPC error per request message; ``errors`` maps a fact's index
        to (decision id, public reason); the batch's other requests get ``others``. A batch of
        notifications only has nobody to answer in JSON-RPC: HTTP 403."""
        objects = []
        for index, message_id in enumerate(self.ids):
            if message_id is None:
                continue  # a notification gets no response (JSON-RPC 2.0 §4.1)
            if index in errors:
                objects.append(self._denied(message_id, *errors[index]))
            else:
                objects.append(jsonrpc.error_object(message_id, self._code, others))
        first = next(iter(errors.values()))[0] if errors else None
        if not objects:
            return Forbidden("policy denied JSON-RPC notifications", decision_id=first)
        return JSONRPCRefused(
            jsonrpc.error_body(objects, self.batch),
            "policy denied a JSON-RPC message",
            reason="policy_denied",
            status=200,
            decision_id=first,
        )


def owner(identity: Identity | None) -> str:
    """The subject a session belongs to: method, issuer and subject of the principal."""
    if identity is None:
        return "anonymous"
    p = identity.principal
    return f"{p.method}\x00{p.issuer or ''}\x00{p.subject}"


def resource_for(settings: Route, facts: RequestFacts) -> str:
    """The route's resource indicator: configured, else this gateway's URL of the prefix."""
    section = settings.jsonrpc
    if section is not None and section.resource is not None:
        return section.resource
    prefix = settings.match.path_prefix.rstrip("/")
    return f"{facts.forwarded_proto}://{facts.forwarded_host}{prefix}"


WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known path goes between the host and the resource's path."""
    scheme, _, rest = resource.partition("://")
    host, slash, path = rest.partition("/")
    path = (slash + path).rstrip("/") if slash else ""
    return f"{scheme}://{host}{WELL_KNOWN}{path}"


def check_audience(
    settings: Route, facts: RequestFacts, identity: Identity | None, bearer: Collection[str]
) -> None:
    section = settings.jsonrpc
    if section is None or not section.audience_binding or identity is None:
        return
    resource = resource_for(settings, facts)
    for result in (identity.principal, *identity.results.values()):
        if result.method not in bearer:
            continue
        audience = result.claims.get("aud")
        names = [audience] if isinstance(audience, str) else audience
        # SECURITY: RFC 8707 §2 / MCP authorization: a token for another resource is refused.
        if not isinstance(names, list) or resource not in names:
            raise invalid_token(
                "token audience does not include this resource",
                detail=f"aud {audience!r} lacks {resource}",
                reason="audience_mismatch",
            )


class JSONRPCStage:
    def __init__(self, sessions: SessionBindings) -> None:
        self._sessions = sessions
        # Per route: the argument allowlists as frozensets, built on a route's first request
        # (a reload builds a new stage, so a changed route is never served a stale one).
        self._allowlists: dict[str, Mapping[str, frozenset[str]]] = {}

    def _allowlist(self, settings: Route, section: JSONRPCRoute) -> Mapping[str, frozenset[str]]:
        allow = self._allowlists.get(settings.name)
        if allow is None:
            allow = {tool: frozenset(keys) for tool, keys in section.arguments.items()}
            self._allowlists[settings.name] = allow
        return allow

    async def read(self, settings: Route, inbound: Inbound) -> RPCCall:
        section = settings.jsonrpc
        if section is None:  # pragma: no cover - the pipeline calls this for JSON-RPC routes
            raise RuntimeError("not a JSON-RPC route")
        protocol: Protocol = "mcp" if settings.kind == "mcp" else "a2a"
        session = _session(inbound) if protocol == "mcp" else None
        if inbound.method != "POST" or not inbound.body.exists:
            fact: dict[str, Any] = {"method": None}
            if protocol == "mcp":
                fact.update(tool=None, arguments={}, resource=None, prompt=None, session=session)
            else:
                fact.update(skill=None, task_id=None, context_id=None)
            return RPCCall(protocol, (fact,), (None,), session=session)
        body = await inbound.body.read()
        try:
            envelope = jsonrpc.parse(body, max_batch=section.max_batch)
            return _call(protocol, envelope, self._allowlist(settings, section), session)
        except jsonrpc.InvalidJSONRPC as exc:
            error = jsonrpc.error_object(exc.id, exc.code, exc.message)
            raise JSONRPCRefused(
                jsonrpc.error_body([error], exc.batch), f"JSON-RPC {exc.code}: {exc.message}"
            ) from None

    async def check_session(
        self, settings: Route, call: RPCCall, identity: Identity | None
    ) -> None:
        section = settings.mcp
        if call.session is None or section is None or not section.session_binding:
            return
        held = await self._sessions.owned_by(_key(settings, call.session), owner(identity))
        if held is not True:
            # SECURITY: a session is usable only by the subject it was created for.
            raise NotFound(
                "session unknown or bound to another subject"
                if held is None
                else "session bound to another subject",
                reason="session_not_found",
                public="session not found",
            )

    async def bind(self, settings: Route, session: str, identity: Identity | None) -> bool:
        """Bind a session id the upstream issued; False if another subject holds it."""
        section = settings.mcp
        if section is None or not section.session_binding:
            return True
        return await self._sessions.claim(
            _key(settings, session), owner(identity), section.session_ttl_s
        )

    async def release(self, settings: Route, session: str, identity: Identity | None) -> None:
        if settings.mcp is not None and settings.mcp.session_binding:
            await self._sessions.release(_key(settings, session), owner(identity))


def _key(settings: Route, session: str) -> str:
    return f"{settings.name}\x00{session}"


def _session(inbound: Inbound) -> str | None:
    values = inbound.headers.getall(SESSION_HEADER, ())
    if len(values) > 1:
        raise JSONRPCRefused(
            jsonrpc.error_body(
                [jsonrpc.error_object(None, -32600, "one Mcp-Session-Id header at most")], False
            ),
            "repeated Mcp-Session-Id",
        )
    return values[0] if values else None


def _call(
    protocol: Protocol,
    envelope: jsonrpc.Envelope,
    allow: Mapping[str, frozenset[str]],
    session: str | None,
) -> RPCCall:
    facts: list[dict[str, Any]] = []
    ids: list[jsonrpc.Id | None] = []
    listings: dict[jsonrpc.Id, str] = {}
    for message in envelope.messages:
        if message.kind == "response":
            # A client's answer to a server request (sampling, elicitation): decided as a
            # message without a method, so a policy can refuse such answers too.
            fact = _response_fact(protocol, session)
        elif protocol == "mcp":
            fact = mcp.facts(message, arguments=allow, session=session)
        else:
            fact = a2a.facts(message)
        facts.append(fact)
        ids.append(message.id if message.kind == "request" else None)
        if message.kind == "request" and message.method in LISTING and message.id is not None:
            listings[message.id] = message.method
    return RPCCall(protocol, tuple(facts), tuple(ids), envelope.batch, session, listings)


def _response_fact(protocol: Protocol, session: str | None) -> dict[str, Any]:
    if protocol == "mcp":
        fact: dict[str, Any] = {"method": None, "tool": None, "arguments": {}}
        fact.update(resource=None, prompt=None, session=session)
        return fact
    return {"method": None, "skill": None, "task_id": None, "context_id": None}


def listing_fact(call: RPCCall, name: str) -> dict[str, Any]:
    """The fact a policy sees when asked whether ``name`` may appear in a listing: the call
    of that tool (skill) with no arguments, marked ``listing: true``."""
    if call.protocol == "mcp":
        return {
            "method": "tools/call",
            "tool": name,
            "arguments": {},
            "resource": None,
            "prompt": None,
            "session": call.session,
            "listing": True,
        }
    return {
        "method": "message/send",
        "skill": name,
        "task_id": None,
        "context_id": None,
        "listing": True,
    }
