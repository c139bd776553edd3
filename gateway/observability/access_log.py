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

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from gateway.authz.decision_log import QueuedLines
from gateway.settings.telemetry import ACCESS_LOG_FIELDS, ACCESS_LOG_FORMAT

FIELDS = ACCESS_LOG_FIELDS
DEFAULT_FORMAT = ACCESS_LOG_FORMAT
Target = Literal["off", "stdout", "stderr"] | Path | str


def _escape(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    if text.isprintable() and not any(c in text for c in ' "\\'):
        return text
    # SECURITY: a client-chosen value must not start a new line or fake a field.
    return "".join(c if c.isprintable() and c not in ' "\\' else f"\\x{ord(c):02x}" for c in text)


class AccessLog(QueuedLines):
    def __init__(self, target: Target, template: str = DEFAULT_FORMAT) -> None:
        super().__init__(target)
        self._template = template  # checked by TelemetrySettings

    def format(self, fields: Mapping[str, object]) -> str:
        values = {name: _escape(fields.get(name)) for name in FIELDS}
        if values["time"] == "-":
            values["time"] = (
                datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
        return self._template.format_map(values)

    def write(self, fields: Mapping[str, object]) -> None:
        if self.started:
            self.put(self.format(fields))
