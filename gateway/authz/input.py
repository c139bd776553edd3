"""The policy input document (DESIGN.md §7), built by one pure function.

Contract: :func:`build_input` turns what earlier stages *verified* into the JSON-ready ``input``
the PDP evaluates. It does no I/O, raises only ``TypeError`` for a value that cannot be
represented in JSON (a bug in the caller), and never sees a raw credential: a
:class:`~gateway.context.Principal` records what was proved, not the token that proved it, and
caller-supplied headers enter only through ``headers``, which the caller has already reduced to
the route's ``policy_headers`` allowlist with :func:`policy_headers`.

Shape (every key is always present, so a policy never has to guess between "absent" and
"empty"; ``null`` marks a fact that does not exist for this request)::

    request     {id, method, path, query: {name: [values]}, host, headers, time_ns}
    source      {address, segment, peer: Peer.as_input() | null}
    route       {name, upstream, segment, tags}
    subject     {id, type, issuer, scopes, client_id, roles, claims} | null (unauthenticated)
    actors      [{sub, iss?}]  the RFC 8693 ``act`` chain, outermost (current) actor first
    mode        "obo_user" | "self" | "obo_agent" | null
    caller      "human_browser" | "human_api" | "agent" | "device" | null
    authn       {methods, results: {method: summary}, sender_constrained}
    agent, attestation, behavior   enrichment objects, {} when absent
    provenance  {genesis, issuer, chain: [{agent, credential_id, scope, iat, exp, depth, ...}]
                (root first), depth, credential_id} of an agent credential
                (:class:`gateway.context.Provenance`), {} otherwise
    txn         the verified transaction of a Txn-Token the request authenticated with
                ({id, sub, scope, iss, req_wl, actors, tctx, rctx}, see
                :func:`gateway.authn.txn_token.transaction_of`), {} otherwise

Additions to DESIGN.md §7 (additive, nothing renamed): ``subject.roles`` (roles from a verified
credential record, e.g. an API-key or basic-auth file; RBAC needs them) and the fields of each
``authn.results`` summary: ``subject, type, issuer, client_id, scopes, roles, amr,
sender_constraint``. A summary deliberately leaves out ``token_id`` (jti) and ``expires_at``:
they identify one token rather than describe the caller, and would make every decision-cache
key unique. ``subject`` also carries the attributes an issuer's ``claims`` mapping names
(``subject.username``, ...; ``roles`` merge into ``subject.roles``); they never replace the
keys above.

``txn`` comes from the principal (or, failing that, any successful method) that carries a
``transaction``; an explicit ``txn=`` argument wins.

``source.segment`` is the caller's network segment for ``agentgate.segments``. The enrich stage
may pass it explicitly (``source_segment=``); otherwise :func:`derive_segment` derives it,
first match wins:

1. ``agent["segment"]`` when the agent-registry record names one;
2. the first path segment of the peer certificate's SPIFFE ID
   (``spiffe://example.org/agent/travel`` -> ``"agent"``);
3. ``"external"``: no client certificate, or one without a SPIFFE ID.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from gateway.context import Identity, Peer, Principal, RequestFacts

if TYPE_CHECKING:  # typing only: stage packages do not import each other at run time
    from gateway.routing import CompiledRoute

EXTERNAL_SEGMENT = "external"

# SECURITY: header fields that carry credentials never enter the policy input, even when a
# route's policy_headers allowlist names them (DESIGN.md §7: "the raw token never does").
CREDENTIAL_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "dpop",
        "txn-token",
        "workload-identity-token",
        "x-api-key",
        "signature",
        "signature-input",
        "x-forwarded-client-cert",
        "client-cert",
        "client-cert-chain",
    }
)


def policy_headers(
    request_headers: Mapping[str, str] | Iterable[tuple[str, str]],
    allowlist: Iterable[str],
    *,
    never: Iterable[str] = (),
) -> dict[str, str]:
    """The request headers a policy may see: allowlisted names only, lowercased.

    ``request_headers`` may be a multidict (or any iterable of ``(name, value)`` pairs):
    repeated fields are joined with ``", "`` in arrival order (RFC 9110 §5.3). ``never`` adds
    names to :data:`CREDENTIAL_HEADERS`, e.g. a route's configured API-key header.
    """
    allowed = {name.lower() for name in allowlist}
    if not allowed:
        return {}
    allowed -= CREDENTIAL_HEADERS | {name.lower() for name in never}
    pairs = request_headers.items() if isinstance(request_headers, Mapping) else request_headers
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in allowed:
            out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def query_params(raw_query: str) -> dict[str, list[str]]:
    """``request.query``: every parameter as a list of its values, blank values kept."""
    return parse_qs(raw_query, keep_blank_values=True) if raw_query else {}


def derive_segment(peer: Peer | None, agent: Mapping[str, Any] | None = None) -> str:
    """Derive ``source.segment`` as described in the module docstring."""
    if agent is not None and isinstance(agent.get("segment"), str) and agent["segment"]:
        return str(agent["segment"])
    if peer is not None and peer.spiffe_id is not None:
        _, _, path = peer.spiffe_id.removeprefix("spiffe://").partition("/")
        first = path.split("/", 1)[0]
        if first:
            return first
    return EXTERNAL_SEGMENT


def build_input(
    facts: RequestFacts,
    route: CompiledRoute,
    identity: Identity | None,
    headers: Mapping[str, str],
    query: Mapping[str, Sequence[str]],
    *,
    agent: Mapping[str, Any] | None = None,
    attestation: Mapping[str, Any] | None = None,
    behavior: Mapping[str, Any] | None = None,
    txn: Mapping[str, Any] | None = None,
    source_segment: str | None = None,
) -> dict[str, Any]:
    """Return the DESIGN.md §7 ``input`` document for one request (see module docstring)."""
    settings = route.settings
    principal = identity.principal if identity is not None else None
    return {
        "request": {
            "id": facts.request_id,
            "method": facts.method,
            "path": facts.path,
            "query": {str(k): [str(v) for v in values] for k, values in query.items()},
            "host": facts.host,
            "headers": {
                k.lower(): str(v) for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS
            },
            "time_ns": facts.time_ns,
        },
        "source": {
            "address": facts.client_address,
            "segment": source_segment or derive_segment(facts.peer, agent),
            "peer": facts.peer.as_input() if facts.peer is not None else None,
        },
        "route": {
            "name": settings.name,
            "upstream": settings.upstream,
            "segment": settings.segment,
            "tags": list(settings.tags),
        },
        "subject": _subject(principal) if principal is not None else None,
        "actors": [actor.as_input() for actor in principal.actors] if principal else [],
        "mode": identity.mode if identity is not None else None,
        "caller": identity.caller if identity is not None else None,
        "authn": _authn(identity),
        "agent": _plain(agent) if agent is not None else {},
        "attestation": _plain(attestation) if attestation is not None else {},
        "behavior": _plain(behavior) if behavior is not None else {},
        "txn": _plain(txn if txn is not None else _transaction(identity)),
        "provenance": _provenance(identity),
    }


def _provenance(identity: Identity | None) -> dict[str, Any]:
    if identity is None:
        return {}
    for result in (identity.principal, *identity.results.values()):
        if result.provenance is not None:
            return _plain(result.provenance.as_input())  # type: ignore[no-any-return]
    return {}


def _transaction(identity: Identity | None) -> Mapping[str, Any]:
    if identity is None:
        return {}
    if identity.principal.transaction is not None:
        return identity.principal.transaction
    for result in identity.results.values():
        if result.transaction is not None:
            return result.transaction
    return {}


def _subject(principal: Principal) -> dict[str, Any]:
    subject = {
        "id": principal.subject,
        "type": principal.subject_type,
        "issuer": principal.issuer,
        "scopes": list(principal.scopes),
        "client_id": principal.client_id,
        "roles": list(principal.roles),
        "claims": _plain(principal.claims),
    }
    for name, value in principal.attributes.items():
        # SECURITY: a mapped attribute never overrides a verified key (settings refuses the
        # names too; this keeps the function safe for any caller).
        subject.setdefault(str(name), _plain(value))
    return subject


def _summary(principal: Principal) -> dict[str, Any]:
    return {
        "subject": principal.subject,
        "type": principal.subject_type,
        "issuer": principal.issuer,
        "client_id": principal.client_id,
        "scopes": list(principal.scopes),
        "roles": list(principal.roles),
        "amr": list(principal.amr),
        "sender_constraint": principal.sender_constraint,
    }


def _authn(identity: Identity | None) -> dict[str, Any]:
    if identity is None:
        return {"methods": [], "results": {}, "sender_constrained": "none"}
    return {
        "methods": list(identity.methods),
        "results": {name: _summary(p) for name, p in identity.results.items()},
        "sender_constrained": identity.sender_constrained,
    }


def _plain(value: Any) -> Any:
    """A JSON-ready deep copy: mappings -> dicts (str keys), sequences -> lists."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise TypeError(f"policy input cannot hold a {type(value).__name__}")
