"""``pdp``: the policy decision point (embedded rego or an OPA server) and its decision cache."""

from __future__ import annotations

from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.settings.base import DirPath, FilePath, Strict


class DecisionCache(Strict):
    ttl_s: float = Field(1.0, ge=0, le=60)
    max_entries: int = Field(10000, ge=0)


class PDPSettings(Strict):
    engine: Literal["embedded", "opa"] = "embedded"
    policies: DirPath | None = None
    data: FilePath | None = None
    url: str = "http://127.0.0.1:8181"
    decision: str = "agentgate/authz/decision"
    cache: DecisionCache = DecisionCache()

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError for a port that does not parse
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _engine(self) -> Self:
        if self.engine == "embedded" and self.policies is None:
            raise ValueError("policies is required for the embedded engine")
        return self
