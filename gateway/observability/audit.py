"""The audit trail: one JSON line per request (DESIGN.md §2 "audit").

Two parts, split because one is pure and the other does I/O:

* :meth:`AuditRecord.build` — pure: a mapping of what the pipeline learnt about a
  request (``AuditInput``) in, the JSON-ready record out. No clock, no I/O, no
  globals; table-tested.
* :class:`AuditSink` — writes records as JSON lines to stdout or a file (append,
  line-buffered, created ``0600``), or nowhere (``off``). ``emit`` never blocks and
  never raises: records go into a bounded queue drained by one background task,
  which hands batches to a dedicated writer thread, so a slow disk or a stalled
  stdout pipe never stalls the event loop. When the queue is full the record is
  dropped and counted (``dropped``, and ``on_drop`` — wire it to
  ``Metrics.audit_dropped``). Records still queued at ``close()`` are written
  (bounded by a timeout); a crash loses at most the queue.

Nothing secret is ever written: no token, credential, header or query string (a
query may carry an API key); the principal is what verification established.

Record schema, version 1: every key is always present, in this order; ``null`` when unknown.

| field            | type         | meaning                                                        |
|------------------|--------------|----------------------------------------------------------------|
| `v`              | int          | schema version, `1`                                            |
| `ts`             | string       | arrival, RFC 3339 UTC with ms: `2026-05-01T12:00:00.123Z`      |
| `request_id`     | string       | the response's `X-Request-Id`                                  |
| `decision_id`    | string/null  | PDP decision id (OPA `decision_id`) when the PDP was asked     |
| `txn`            | string/null  | `txn` of the Txn-Token minted (or verified, east-west)         |
| `trace_id`       | string/null  | W3C trace id (32 hex) the upstream received in `traceparent`   |
| `span_id`        | string/null  | the gateway's server span id (16 hex); null when not sampled   |
| `method`         | string/null  | HTTP method                                                    |
| `path`           | string/null  | normalised path, as the PDP and upstream saw it; never a query |
| `route`          | string/null  | matched route name; null for 404 and earlier refusals          |
| `status`         | int          | status sent to the caller                                      |
| `latency_ms`     | number       | gateway handling time in ms (3 decimals)                       |
| `decision`       | string       | `allow`/`deny`: PDP verdict; with none, `allow` iff forwarded  |
| `reason`         | string       | stable reason code (`Reason`): `ok`, `authn_missing`...        |
| `policy_reason`  | string/null  | the decision's `reason` (internal; never sent to the caller)   |
| `principal`      | object/null  | `{"id", "type", "issuer", "client_id"}` of the subject         |
| `actors`         | array        | delegation chain `[{"sub", "iss"}]`, current actor first       |
| `caller`         | string/null  | `human_browser`, `human_api`, `agent` or `device`              |
| `mode`           | string/null  | `obo_user`, `self` or `obo_agent`                              |
| `authn`          | array        | names of the authentication methods that succeeded            |
| `agent`          | string/null  | the agent key of the behaviour windows                         |
| `peer_spiffe_id` | string/null  | SPIFFE ID of the verified mTLS client certificate              |
| `client_address` | string/null  | client address (after `forwarded.trusted_hops`)                |
| `peer_address`   | string/null  | TCP peer address                                               |
| `rpc`            | object       | `kind: mcp`/`a2a` only: `protocol`, `method`, `target`       |
| `quarantine`     | object       | when the decision quarantined the agent: `agent`, `reason`   |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, TypedDict

from gateway.context import Decision, Identity, RequestFacts
from gateway.errors import Reason
from gateway.private_files import open_private_append
from gateway.settings.telemetry import TelemetrySettings

__all__ = ["AuditInput", "AuditRecord", "AuditSink"]

log = logging.getLogger("agentgate.audit")

SCHEMA_VERSION = 1
_MAX_PATH = 2048  # a refused request's raw path is attacker-sized; keep the log bounded


class AuditInput(TypedDict, total=False):
    """What the pipeline hands to :meth:`AuditRecord.build`; every key is optional but
    ``request_id``, ``status``, ``reason`` and ``latency_s``."""

    request_id: str
    facts: RequestFacts  # absent when the request was refused before the facts existed
    method: str  # fallbacks when ``facts`` is absent
    path: str
    time_ns: int
    route: str
    identity: Identity
    decision: Decision
    forwarded: bool  # the request was sent to the upstream
    txn: str
    trace_id: str
    span_id: str
    agent: str
    rpc: Mapping[str, str | None]  # JSON-RPC routes: protocol, method, tool / skill
    quarantine: Mapping[str, str]  # the request's decision quarantined its agent
    status: int
    reason: str
    latency_s: float


_ts_second: list[Any] = [None, ""]  # [epoch second, its "YYYY-MM-DDTHH:MM:SS." prefix]


def _ts(time_ns: int | None) -> str | None:
    if time_ns is None:
        return None
    # strftime once per second, not once per record (it was ~5 % of a pass-through request).
    second, rest = divmod(time_ns, 1_000_000_000)
    if _ts_second[0] != second:
        moment = datetime.fromtimestamp(second, tz=UTC)
        _ts_second[0], _ts_second[1] = second, moment.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_ts_second[1]}{rest // 1_000_000:03d}Z"


class AuditRecord:
    """The record schema (module docstring) and its pure builder."""

    FIELDS = (
        "v",
        "ts",
        "request_id",
        "decision_id",
        "txn",
        "trace_id",
        "span_id",
        "method",
        "path",
        "route",
        "status",
        "latency_ms",
        "decision",
        "reason",
        "policy_reason",
        "principal",
        "actors",
        "caller",
        "mode",
        "authn",
        "agent",
        "peer_spiffe_id",
        "client_address",
        "peer_address",
    )
    # Present only on JSON-RPC routes (kind mcp / a2a): {"protocol", "method", "target"}.
    # ``quarantine``: {"agent", "reason"} when this request's decision quarantined its agent.
    OPTIONAL_FIELDS = ("rpc", "quarantine")

    @staticmethod
    def build(event: AuditInput | Mapping[str, Any]) -> dict[str, Any]:
        facts: RequestFacts | None = event.get("facts")
        identity: Identity | None = event.get("identity")
        decision: Decision | None = event.get("decision")
        # str(): a Reason member is written as its bare value, like a code given as a literal.
        reason = str(event.get("reason") or Reason.INTERNAL_ERROR)
        if decision is not None:
            verdict = "allow" if decision.allow else "deny"
        else:
            verdict = "allow" if event.get("forwarded") else "deny"
        path = facts.path if facts is not None else event.get("path")
        principal = identity.principal if identity is not None else None
        peer = facts.peer if facts is not None else None
        record: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "ts": _ts(facts.time_ns if facts is not None else event.get("time_ns")),
            "request_id": event.get("request_id") or (facts.request_id if facts else None),
            "decision_id": decision.decision_id if decision is not None else None,
            "txn": event.get("txn"),
            "trace_id": event.get("trace_id"),
            "span_id": event.get("span_id"),
            "method": facts.method if facts is not None else event.get("method"),
            "path": path[:_MAX_PATH] if isinstance(path, str) else None,
            "route": event.get("route"),
            "status": int(event.get("status", 500)),
            "latency_ms": round(float(event.get("latency_s", 0.0)) * 1000.0, 3),
            "decision": verdict,
            "reason": reason,
            "policy_reason": (decision.reason or None) if decision is not None else None,
            "principal": (
                {
                    "id": principal.subject,
                    "type": principal.subject_type,
                    "issuer": principal.issuer,
                    "client_id": principal.client_id,
                }
                if principal is not None
                else None
            ),
            "actors": [a.as_input() for a in principal.actors] if principal is not None else [],
            "caller": identity.caller if identity is not None else None,
            "mode": identity.mode if identity is not None else None,
            "authn": list(identity.methods) if identity is not None else [],
            "agent": event.get("agent"),
            "peer_spiffe_id": peer.spiffe_id if peer is not None else None,
            "client_address": facts.client_address if facts is not None else None,
            "peer_address": facts.peer_address if facts is not None else None,
        }
        for name in AuditRecord.OPTIONAL_FIELDS:
            value = event.get(name)
            if isinstance(value, Mapping):
                record[name] = dict(value)
        return record


_STOP: Any = object()


def _open_append(path: Path) -> IO[str]:
    # SECURITY: audit lines name principals and paths: 0600 whatever the umask, and an
    # existing file with wider bits is narrowed (gateway.private_files).
    return open_private_append(path)


class AuditSink:
    """A bounded, non-blocking JSON-lines writer (see the module docstring)."""

    def __init__(
        self,
        target: Literal["stdout", "off"] | Path,
        *,
        max_queue: int = 10_000,
        max_batch: int = 512,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.enabled = target != "off"
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_queue)
        self._max_batch = max_batch
        self._on_drop = on_drop
        self._file: IO[str] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: TelemetrySettings, *, on_drop: Callable[[], None] | None = None
    ) -> AuditSink:
        target = settings.audit_log
        return cls(target if target in ("stdout", "off") else Path(target), on_drop=on_drop)

    async def start(self) -> None:
        """Open the file (raises ``OSError``) and start the drain task."""
        if not self.enabled or self._task is not None:
            return
        if isinstance(self.target, Path):
            self._file = _open_append(self.target)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentgate-audit")
        self._task = asyncio.create_task(self._drain(), name="agentgate-audit")

    def emit(self, record: Mapping[str, Any]) -> None:
        """Queue one record (built by :meth:`AuditRecord.build`; not mutated afterwards)."""
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout_s``), then release the file."""
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._queue.put(_STOP)
                    await task
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._file is not None:
            self._file.close()
            self._file = None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            lost = await loop.run_in_executor(self._executor, self._write, batch)
            if lost:
                self.dropped += lost
                if self._on_drop is not None:
                    for _ in range(lost):
                        self._on_drop()

    def _write(self, batch: list[Mapping[str, Any]]) -> int:
        """Runs on the writer thread: serialise and write one batch; returns records lost."""
        data = "".join(
            json.dumps(r, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
            for r in batch
        )
        stream = self._file if self._file is not None else sys.stdout
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: stream closed under us
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 1000 == 0:
                log.warning("audit write failed (%s); %d record(s) lost", exc, len(batch))
            return len(batch)
        self.written += len(batch)
        return 0
