"""Access log: one readable line per request (``telemetry.access_log``).

``telemetry.access_log`` is ``off`` (the default), ``stdout``, ``stderr`` or a file path.

The audit record (:mod:`gateway.observability.audit`) is the complete, machine-readable
account of a request; this is the line an operator reads in a terminal, shaped by
``telemetry.access_log_format``, a ``str.format`` template over the fields of
:data:`FIELDS`. The default::

    {time} {client} "{method} {path}" {status} {duration_ms}ms route={route}
    subject={subject} reason={reason} request_id={request_id}

(one line; wrapped here).

Contract: :meth:`AccessLog.write` never raises and never blocks the event loop (a queue and a
writer thread, as the decision log). Values are the gateway's verified view: the normalised
path without its query (a query may carry a credential), the subject the credential proved,
never a header. A value a client influences (the path, a token's ``sub``) is escaped, so no
line can be split or forged: control characters, quotes, backslashes and spaces become
``\\xNN``; an absent value is ``-``. A file is created ``0600`` (it names subjects).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from gateway.authz.decision_log import _PrivateFileHandler
from gateway.settings import ACCESS_LOG_FIELDS, ACCESS_LOG_FORMAT

FIELDS = ACCESS_LOG_FIELDS
DEFAULT_FORMAT = ACCESS_LOG_FORMAT
Target = Literal["off", "stdout", "stderr"] | Path | str


def _escape(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    if text.isprintable() and not any(c in text for c in ' "\\'):
        return text
    # SECURITY: a client-chosen value must not start a new line or fake a field.
    return "".join(c if c.isprintable() and c not in ' "\\' else f"\\x{ord(c):02x}" for c in text)


class AccessLog:
    def __init__(self, target: Target, template: str = DEFAULT_FORMAT) -> None:
        self.enabled = target != "off"
        self._target = target
        self._template = template  # checked by TelemetrySettings
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener: logging.handlers.QueueListener | None = None

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

    def format(self, fields: Mapping[str, object]) -> str:
        values = {name: _escape(fields.get(name)) for name in FIELDS}
        if values["time"] == "-":
            values["time"] = (
                datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
        return self._template.format_map(values)

    def write(self, fields: Mapping[str, object]) -> None:
        if self._listener is None:
            return
        line = self.format(fields)
        self._queue.put(
            logging.LogRecord("agentgate.access", logging.INFO, "", 0, line, None, None)
        )
