"""Decision log: one JSON line per policy decision (``pdp.decision_log``: stdout | off | path).

Contract: :meth:`DecisionLog.record` never raises and never blocks the event loop: lines go
through a queue to a writer thread (:class:`logging.handlers.QueueListener`). Each line holds
``ts`` (RFC 3339 UTC), ``decision_id``, ``request_id``, ``route``, ``subject``, ``engine``,
``result`` (``allow`` | ``deny`` | ``error``), ``reason``, ``cached``, ``latency_ms`` and the
``input``. The input is safe to log by construction (:mod:`gateway.authz.input` never holds a
raw credential), so no masking policy is needed here, unlike OPA's own decision logs
(SPECS.md §15.4). It does hold claims, so a log file is created ``0600`` whatever the umask,
and an existing one with wider bits is narrowed (:mod:`gateway.private_files`).
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gateway.private_files import open_private_append


class _PrivateFileHandler(logging.FileHandler):
    """A ``FileHandler`` whose file is ``0600`` whatever the umask (it holds policy input)."""

    def _open(self) -> io.TextIOWrapper:
        # SECURITY: logging.FileHandler would create the file 0666 & ~umask.
        return open_private_append(self.baseFilename)


class QueuedLines:
    """One line per ``put``, written by a thread (``stdout``, ``stderr`` or a 0600 file).

    Never blocks the event loop: lines go through a queue to a
    :class:`logging.handlers.QueueListener`. ``off`` writes nothing.
    """

    def __init__(self, target: Literal["stdout", "stderr", "off"] | Path | str) -> None:
        self.enabled = target != "off"
        self._target = target
        self._listener: logging.handlers.QueueListener | None = None
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()

    @property
    def started(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        if not self.enabled or self._listener is not None:
            return
        handler: logging.Handler
        if self._target == "stdout":
            handler = logging.StreamHandler(sys.stdout)
        elif self._target == "stderr":
            handler = logging.StreamHandler(sys.stderr)
        else:
            handler = _PrivateFileHandler(Path(self._target), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._listener.start()

    def close(self) -> None:
        if self._listener is None:
            return
        self._listener.stop()  # drains the queue
        for handler in self._listener.handlers:
            handler.close()
        self._listener = None

    def put(self, text: str) -> None:
        if self._listener is not None:
            self._queue.put(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))


class DecisionLog(QueuedLines):
    def __init__(self, target: Literal["stdout", "off"] | Path | str) -> None:
        super().__init__(target)

    def record(
        self,
        *,
        decision_id: str | None,
        input: dict[str, Any],
        engine: str,
        result: Literal["allow", "deny", "error"],
        reason: str,
        cached: bool,
        latency_ms: float,
    ) -> None:
        if not self.started:
            return
        request = input.get("request") or {}
        subject = input.get("subject") or {}
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "decision_id": decision_id,
            "request_id": request.get("id"),
            "route": (input.get("route") or {}).get("name"),
            "subject": subject.get("id"),
            "engine": engine,
            "result": result,
            "reason": reason,
            "cached": cached,
            "latency_ms": round(latency_ms, 3),
            "input": input,
        }
        try:
            text = json.dumps(line, separators=(",", ":"), default=str)
        except (TypeError, ValueError):  # an unserialisable input is a bug, not an outage
            logging.getLogger("agentgate.authz").exception("decision log line dropped")
            return
        self.put(text)
