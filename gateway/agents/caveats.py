"""Route, segment and tool restrictions of an agent credential, checked after authentication.

Contract: :func:`check` takes the verified :class:`gateway.context.Identity` and the matched
route and raises a 401 ``invalid_token`` (reason ``agent_credential_restricted``) when the
credential's chain restricts ``routes`` (route names), ``segments`` (route segments) or
``tools`` and this request is outside them; it returns ``None`` otherwise, and for every
request without an agent credential. ``tool`` is the tool a request calls (MCP facts, later);
a credential restricted to tools allows no request that calls none (an unknown caveat is
false: SPECS.md §14.1). Pure: no I/O.
"""

from __future__ import annotations

from gateway.context import Identity
from gateway.errors import invalid_token


def check(identity: Identity | None, route: str, segment: str, tool: str | None = None) -> None:
    if identity is None:
        return
    provenance = identity.principal.provenance
    if provenance is None:
        return
    limits = provenance.restrictions
    for name, value in (("routes", route), ("segments", segment), ("tools", tool)):
        allowed = limits.get(name)
        if allowed is not None and (value is None or value not in allowed):
            raise invalid_token(
                f"agent credential does not allow this {name[:-1]}",
                scheme="AgentCredential",
                reason="agent_credential_restricted",
            )
