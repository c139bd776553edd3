"""``telemetry``: tracing, audit/decision/access logs, behaviour windows."""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
)

from gateway.settings.base import AnyPath, Strict


class BehaviorSettings(Strict):
    """Per-agent sliding windows exposed to policy as ``input.behavior``."""

    enabled: bool = True
    window_s: float = Field(60.0, gt=0, le=3600)
    max_agents: int = Field(100_000, ge=1)


# The fields of telemetry.access_log_format (gateway.observability.access_log fills them).
ACCESS_LOG_FIELDS = frozenset(
    {
        "time",  # RFC 3339 UTC, milliseconds
        "client",  # the client address (after forwarded.trusted_hops)
        "peer",  # the TCP peer address
        "method",
        "path",  # normalised, no query (a query may carry a credential)
        "host",
        "status",
        "reason",  # the stable reason code: ok, policy_denied, ...
        "duration_ms",
        "route",
        "subject",
        "agent",
        "decision_id",
        "request_id",
        "trace_id",
        "txn",
    }
)


ACCESS_LOG_FORMAT = (
    '{time} {client} "{method} {path}" {status} {duration_ms}ms route={route} '
    "subject={subject} reason={reason} request_id={request_id}"
)


class TelemetrySettings(Strict):
    service_name: str = "agentgate"
    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318 (OTLP/HTTP); None: no export
    sample_ratio: float = Field(1.0, ge=0, le=1)
    # Whether a caller's traceparent may start our trace. Internal callers presenting a
    # verified Txn-Token are always continued; external ones only when this is true.
    trust_inbound_trace: bool = False
    otlp_metrics: bool = False
    audit_log: Literal["stdout", "off"] | AnyPath = "stdout"
    decision_log: Literal["stdout", "off"] | AnyPath = "off"
    # One readable line per request (gateway.observability.access_log); off by default, as the
    # audit record already goes to stdout.
    access_log: Literal["stdout", "stderr", "off"] | AnyPath = "off"
    access_log_format: str = ACCESS_LOG_FORMAT
    behavior: BehaviorSettings = BehaviorSettings()

    @field_validator("audit_log", "decision_log", "access_log", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; that is what the operator meant.
        return "off" if value is False else value

    @field_validator("access_log_format")
    @classmethod
    def _access_log_fields(cls, value: str) -> str:
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"not a format template: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in ACCESS_LOG_FIELDS:
                known = ", ".join(sorted(ACCESS_LOG_FIELDS))
                raise ValueError(f"unknown field {{{name}}}; known: {known}")
            if spec or conversion:
                raise ValueError(f"{{{name}}}: no format spec or conversion")
        return value
