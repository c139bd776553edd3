"""``agent_credentials``: root keys and limits of agent credentials (gateway.agents, issue 16).

The section is needed by an ``agent_credential`` authentication method and by a route of
``kind: agent_credentials`` (genesis, ``POST /agents/credentials``).
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from gateway.settings.base import SecretRef, Strict

MIN_ROOT_KEY_BYTES = 32


class RootKey(Strict):
    """One root key: ``id`` goes into block 0 (``kid``); the secret never leaves the gateway."""

    id: str = Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]{1,64}$")
    secret: SecretRef

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretRef) -> SecretRef:
        # SECURITY: an HMAC root key shorter than the hash output weakens every chain.
        if len(value.reveal()) < MIN_ROOT_KEY_BYTES:
            raise ValueError(f"{value.ref}: a root key needs at least {MIN_ROOT_KEY_BYTES} bytes")
        return value


class AgentCredentialSettings(Strict):
    issuer: str = Field("agentgate", pattern=r"^[\x21\x23-\x5b\x5d-\x7e]{1,255}$")
    # The first key mints; every listed key verifies (rotation: add a new key first, move it
    # to the top, drop the old one after max_ttl_s).
    keys: tuple[RootKey, ...]
    ttl_s: int = Field(300, ge=1, le=3600)
    max_ttl_s: int = Field(3600, ge=1, le=86400)
    max_depth: int = Field(4, ge=0, le=7)
    max_skew_s: float = Field(30.0, gt=0, le=600)
    # Verified chains kept (keyed by the exact header): a sub-agent's next call costs one MAC.
    cache_entries: int = Field(10_000, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if not self.keys:
            raise ValueError("keys: at least one root key is needed")
        ids = [key.id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("keys: duplicate key id")
        if self.ttl_s > self.max_ttl_s:
            raise ValueError("ttl_s must not exceed max_ttl_s")
        return self
