"""Shared material for the agent SDK tests: a root key, a root credential, hand-built blocks.

Everything is real: credentials are minted with :func:`gateway.sdk.agent.mint_root` and derived
with :meth:`~gateway.sdk.agent.AgentCredential.derive`; attacks are built by hand as the bytes
an attacker would send (blocks encoded with :func:`~gateway.sdk.agent.encode_block`, MACs
chained with the parent's tag so that only the chain rules stand in the way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.jose.jws import b64url_encode
from gateway.sdk import agent as sdk

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
ROOT_KEY = bytes(range(32))
ISSUER = "spiffe://example.org/gateway"
ROOT_AGENT = "spiffe://example.org/planner"
SUB_AGENT = "spiffe://example.org/flights"


def root(
    *,
    scope: Sequence[str] = ("flights.read", "flights.write", "pay"),
    ttl_s: int = 300,
    depth: int = 4,
    restrictions: Mapping[str, Sequence[str]] | None = None,
    agent: str = ROOT_AGENT,
) -> sdk.AgentCredential:
    return sdk.mint_root(
        ROOT_KEY,
        kid="2026-12",
        issuer=ISSUER,
        genesis={"type": "user", "sub": "alice", "iss": "https://idp.example.org"},
        agent=agent,
        scope=scope,
        ttl_s=ttl_s,
        depth=depth,
        restrictions=restrictions,
        now=NOW,
    )


def child_members(parent: sdk.Block, **overrides: Any) -> dict[str, Any]:
    """The members of a valid child of ``parent``; ``overrides`` change or (None) drop one."""
    members: dict[str, Any] = {
        "cid": sdk.new_credential_id(),
        "agent": SUB_AGENT,
        "scope": sorted(parent.scope),
        "iat": NOW,
        "exp": parent.exp,
        "depth": max(parent.depth - 1, 0),
    }
    for name, values in parent.restrictions.items():
        members[name] = sorted(values)
    for name, value in overrides.items():
        if value is None:
            members.pop(name, None)
        else:
            members[name] = value
    return members


def header_of(raw_blocks: Sequence[bytes]) -> str:
    return sdk.header_value(list(raw_blocks))


def holder_form(raw_blocks: Sequence[bytes], *, location: str = ISSUER) -> str:
    """A v2 macaroon of ``raw_blocks`` with the tag the root key gives them (a valid MAC)."""
    raws = list(raw_blocks)
    return b64url_encode(sdk._to_macaroon(location, raws, sdk.chain_tag(ROOT_KEY, raws)))


def raws(cred: sdk.AgentCredential) -> list[bytes]:
    return [block.raw for block in cred.blocks]
