"""``state``: where shared state lives (memory or Redis)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    Field,
    model_validator,
)

from gateway.settings.base import SecretRef, Strict


class StateSettings(Strict):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: SecretRef | None = None  # a reference: the URL may carry a password
    key_prefix: str = "agentgate:"
    timeout_s: float = Field(0.25, gt=0, le=5)
    revocation_poll_s: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _url(self) -> Self:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("redis_url is required for the redis backend")
        return self
