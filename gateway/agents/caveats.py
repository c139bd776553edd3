"""Route, segment and tool restrictions of an agent credential, checked after authentication.

Contract: :func:`check` takes the verified :class:`gateway.context.Identity` and the matched
route and raises a 401 ``invalid_token`` (reason ``agent_credential_restricted``) when the
credential's chain restricts ``routes`` (route names), ``segments`` (route segments) or
``tools`` and this request is outside them; it returns ``None`` otherwise, and for every
request without an agent credential. ``tools`` are the MCP tools a request calls (a batch may
call several), or ``None`` off MCP routes: there a credential restricted to tools allows no
request at all (an unknown caveat is false: SPECS.md §14.1). On an MCP route a message that
calls no tool (``initialize``, ``tools/list``) passes, and :func:`tool_allowed` hides the
tools outside the restriction from ``tools/list``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.context import Identity
from gateway.errors import invalid_token


def check(
    identity: Identity | None,
    route: str,
    segment: str,
    tools: Sequence[str] | None = None,
) -> None:
    if identity is None:
        return
    provenance = identity.principal.provenance
    if provenance is None:
        return
    limits = provenance.restrictions
    checks: list[tuple[str, str | None]] = [("routes", route), ("segments", segment)]
    checks += [("tools", None)] if tools is None else [("tools", tool) for tool in tools]
    for name, value in checks:
        allowed = limits.get(name)
        if allowed is not None and (value is None or value not in allowed):
            raise invalid_token(
                f"agent credential does not allow this {name[:-1]}",
                scheme="AgentCredential",
                reason="agent_credential_restricted",
            )


def tool_allowed(identity: Identity | None, tool: str) -> bool:
    """May this identity's agent credential call ``tool`` (True without a credential)?"""
    provenance = identity.principal.provenance if identity is not None else None
    if provenance is None:
        return True
    allowed = provenance.restrictions.get("tools")
    return allowed is None or tool in allowed
