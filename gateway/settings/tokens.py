"""``txn_tokens``: the Transaction Tokens the gateway mints (DESIGN.md §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import (
    Field,
    model_validator,
)

from gateway.settings.base import FilePath, Strict


class TxnTokenSettings(Strict):
    """Transaction Tokens minted by the gateway (DESIGN.md §8, SPECS.md §1)."""

    issuer: str = "https://gateway.example.org"
    ttl_s: float = Field(60.0, gt=0, le=300)  # SECURITY: hard max 300 s
    # PEM private keys; the first is the active signing key, the others are still
    # published (rotation). ``signing_key`` is the single-key shorthand.
    signing_key: FilePath | None = None
    keys: tuple[FilePath, ...] = ()
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    header: str = "Txn-Token"
    jwks_max_age_s: int = Field(300, ge=0, le=86400)
    # Workloads (SPIFFE IDs, exact or prefix ending in "/") allowed to call POST /token.
    token_service_clients: tuple[str, ...] = ()
    replay_check: bool = False  # east-west: refuse a (txn, route) pair seen before

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if (self.signing_key is None) == (not self.keys):
            raise ValueError("give exactly one of signing_key or keys")
        return self

    @property
    def key_files(self) -> tuple[Path, ...]:
        return (self.signing_key,) if self.signing_key is not None else self.keys
