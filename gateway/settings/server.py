"""``server``: listeners, TLS, limits and timeouts (DESIGN.md §4)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.settings.base import FilePath, Listen, Strict


class TLSSettings(Strict):
    cert: FilePath
    key: FilePath
    client_ca: FilePath | None = None
    client_cert: Literal["required", "optional", "off"] = "required"
    crl: FilePath | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # agentgate_server_certificate_expiring turns 1 this long before notAfter.
    expiry_warning_days: float = Field(14.0, ge=0, le=365)

    @model_validator(mode="after")
    def _ca_needed(self) -> Self:
        if self.client_cert != "off" and self.client_ca is None:
            raise ValueError("client_ca is required unless client_cert is 'off'")
        return self


class Limits(Strict):
    max_header_bytes: int = Field(16384, ge=1024, le=1 << 20)
    max_headers: int = Field(100, ge=8, le=1000)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    # Open connections per listener (per worker); past it a new connection's first request
    # gets 503 + Connection: close, and past that plus 32 it is closed on accept.
    max_connections: int = Field(1024, ge=1, le=1_000_000)


class Timeouts(Strict):
    header_read_s: float = Field(10.0, gt=0)
    idle_s: float = Field(75.0, gt=0)  # keep-alive: an idle connection is closed after this
    # Longest gap between two request body reads while the gateway waits for the body (408).
    body_read_s: float = Field(30.0, gt=0)
    # Longest a response write may wait for a caller that does not read (connection aborted).
    send_s: float = Field(30.0, gt=0)
    upstream_connect_s: float = Field(2.0, gt=0)
    # Non-stream routes: the whole exchange, response body included. Stream routes: unused.
    upstream_total_s: float = Field(30.0, gt=0)
    upstream_headers_s: float = Field(30.0, gt=0)  # request sent -> response head received
    upstream_idle_s: float = Field(30.0, gt=0)  # longest gap between body chunks / ws frames
    pdp_s: float = Field(0.5, gt=0)
    drain_s: float = Field(15.0, ge=0)


class Forwarded(Strict):
    trusted_hops: int = Field(0, ge=0, le=16)


class ServerSettings(Strict):
    listen: Listen = "127.0.0.1:8443"
    tls: TLSSettings | None = None
    admin_listen: Listen = "127.0.0.1:9901"
    trust_domain: str = "example.org"
    spiffe_id: str | None = None  # the gateway's own identity; default spiffe://<td>/gateway
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    forwarded: Forwarded = Forwarded()
    strip_headers: tuple[str, ...] = ()  # extra identity headers never forwarded

    @field_validator("strip_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)

    @property
    def gateway_spiffe_id(self) -> str:
        return self.spiffe_id or f"spiffe://{self.trust_domain}/gateway"
