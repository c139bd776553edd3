"""Genesis: ``POST /agents/credentials`` mints a root agent credential (issue 16).

A route of ``kind: agent_credentials`` runs the normal pipeline up to the decision
(route limits, its authn tree, revocation, enrichment), then, instead of minting a Txn-Token
and forwarding, this module answers:

1. :meth:`Genesis.read` parses the JSON body (all members optional)::

       {"scope": "a b", "ttl_s": 300, "depth": 2, "task": "T-1",
        "routes": [..], "segments": [..], "tools": [..], "methods": [..]}

   and fixes who the credential is for. The **root agent** is the caller's SPIFFE ID (its
   client certificate, or an agent principal whose subject is a SPIFFE ID); without one, 400.
   The **genesis** is the user when the subject is a user (``{type: user, sub, iss}``);
   otherwise the agent acts alone and names its ``task`` (``{type: task, sub: task}``).
   A scoped subject (a token's ``scope``) can only ask for scopes it holds (400
   ``invalid_scope``). 400 ``invalid_request`` for a body that is not such an object.
2. The pipeline asks the PDP with ``input.action = "credential.issue"`` and
   ``input.credential`` = :meth:`IssueRequest.as_input`; anything but allow is refused there.
3. :meth:`Genesis.issue` mints block 0 with the first root key: scope = the requested scope
   narrowed by the decision's ``scopes``; ``exp`` = now + ``ttl_s`` (default
   ``agent_credentials.ttl_s``, at most ``max_ttl_s``), never after the subject's own
   credential expires. Answer 201 ``application/json``, ``Cache-Control: no-store``::

       {"credential": <holder form: secret>, "credential_id", "agent", "genesis",
        "scope": "a b", "expires_at", "expires_in", "depth", "key_id", "token_type"}

The holder form contains the chain's tag; it is never logged. Only the credential id goes to
the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.context import Identity, Inbound, RequestFacts
from gateway.errors import BadRequest
from gateway.jose.errors import JOSEError
from gateway.jose.jws import strict_json_value
from gateway.sdk.agent import RESTRICTIONS, CredentialError, mint_root
from gateway.settings.agents import AgentCredentialSettings

MAX_BODY_BYTES = 16 * 1024
TOKEN_TYPE = "agent-credential"  # noqa: S105 - a token type name, not a secret
_MEMBERS = frozenset({"scope", "ttl_s", "depth", "task", *RESTRICTIONS})


def bad_request(description: str, error: str = "invalid_request") -> BadRequest:
    return BadRequest(description, reason="invalid_request", public=f"{error}: {description}")


@dataclass(frozen=True, slots=True)
class IssueRequest:
    agent: str
    genesis: Mapping[str, str]
    scope: tuple[str, ...]
    ttl_s: int
    depth: int
    restrictions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "agent": self.agent,
            "genesis": dict(self.genesis),
            "scope": list(self.scope),
            "ttl_s": self.ttl_s,
            "depth": self.depth,
        }
        out.update({name: list(values) for name, values in self.restrictions.items()})
        return out


class Genesis:
    def __init__(self, cfg: AgentCredentialSettings) -> None:
        self._cfg = cfg

    def __repr__(self) -> str:
        return f"Genesis(issuer={self._cfg.issuer!r}, key={self._cfg.keys[0].id!r})"

    async def read(
        self, request: Inbound, facts: RequestFacts, identity: Identity | None
    ) -> IssueRequest:
        if identity is None:  # settings requires authn on this route; never unauthenticated
            raise bad_request("authentication required")
        body = await request.body.read()
        if len(body) > MAX_BODY_BYTES:
            raise bad_request(f"body larger than {MAX_BODY_BYTES} bytes")
        members = _object(body)
        principal = identity.principal
        agent = _root_agent(facts, identity)
        task = members.get("task")
        if principal.subject_type == "user":
            if task is not None:
                raise bad_request("task names the genesis of an agent acting alone")
            genesis = {"type": "user", "sub": principal.subject}
            if principal.issuer:
                genesis["iss"] = principal.issuer
        else:
            if not isinstance(task, str) or not task:
                raise bad_request("an agent acting alone must name its task")
            genesis = {"type": "task", "sub": task}
        scope = _scope(members.get("scope"), principal.scopes if identity.scoped else None)
        ttl_s = _int(members.get("ttl_s", self._cfg.ttl_s), "ttl_s", 1, self._cfg.max_ttl_s)
        depth = _int(members.get("depth", self._cfg.max_depth), "depth", 0, self._cfg.max_depth)
        restrictions = {
            name: tuple(_strings(members[name], name)) for name in RESTRICTIONS if name in members
        }
        return IssueRequest(agent, genesis, scope, ttl_s, depth, restrictions)

    def issue(
        self, asked: IssueRequest, identity: Identity, decided_scopes: Sequence[str] | None
    ) -> web.Response:
        scope = asked.scope
        if decided_scopes is not None:
            allowed = set(decided_scopes)
            scope = tuple(s for s in scope if s in allowed)
        now = int(time.time())
        ttl_s = asked.ttl_s
        expires = identity.principal.expires_at
        if expires is not None:
            # SECURITY: a root credential never outlives the credential that asked for it.
            ttl_s = max(1, min(ttl_s, int(expires) - now))
        key = self._cfg.keys[0]
        try:
            credential = mint_root(
                key.secret.reveal(),
                kid=key.id,
                issuer=self._cfg.issuer,
                genesis=asked.genesis,
                agent=asked.agent,
                scope=scope,
                ttl_s=ttl_s,
                depth=asked.depth,
                restrictions=asked.restrictions,
                now=now,
            )
        except CredentialError as exc:
            raise bad_request(str(exc)) from None
        document = {
            "credential": credential.serialize(),
            "credential_id": credential.credential_id,
            "token_type": TOKEN_TYPE,
            "agent": asked.agent,
            "genesis": dict(asked.genesis),
            "scope": " ".join(sorted(scope)),
            "expires_at": credential.expires_at,
            "expires_in": credential.expires_at - now,
            "depth": asked.depth,
            "key_id": key.id,
        }
        return web.json_response(
            document, status=201, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )


def _root_agent(facts: RequestFacts, identity: Identity) -> str:
    peer = facts.peer
    if peer is not None and peer.spiffe_id:
        return peer.spiffe_id
    for result in identity.results.values():
        if result.subject_type == "agent" and result.subject.startswith("spiffe://"):
            return result.subject
    raise bad_request("a root agent credential needs the caller's SPIFFE ID (mTLS)")


def _object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        # The one strict JSON reader (duplicate members, NaN, 1e400 refused: gateway.jose).
        members = strict_json_value(body)
    except JOSEError:
        raise bad_request("body is not JSON") from None
    if not isinstance(members, dict):
        raise bad_request("body must be a JSON object")
    unknown = sorted(set(members) - _MEMBERS)
    if unknown:
        raise bad_request(f"unknown member {unknown[0][:32]!r}")
    return members


def _scope(value: Any, held: Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return tuple(sorted(set(held or ())))
    if not isinstance(value, str):
        raise bad_request("scope must be a space-delimited string")
    asked = sorted(set(value.split()))
    if held is not None and not set(asked) <= set(held):
        raise bad_request("scope exceeds the subject's scope", "invalid_scope")
    return tuple(asked)


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"{name} must be an integer in {low}..{high}")
    return value


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name} must be a list of strings")
    return value
