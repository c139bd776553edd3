"""Turn rego-cpp's error sequences into ``file:line: message`` lines (pure).

``regopy`` raises :class:`regopy.RegoError` whose text is rego-cpp's s-expression dump of
the error nodes, with length-prefixed strings and byte offsets into the module source::

    (rego-errorseq
      (error 24:agentgate/rbac/rbac.rego|2365|2
        (errormsg 16:this is unclosed)
        (errorast |2365|2)))

:func:`locate` reads that dump and maps each error to the module's file and line, so a
refused policy is reported as OPA reports it (``policies/x.rego:85: this is unclosed``)
instead of the first line of the dump. Text that is not such a dump comes back as one
problem without a location.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_ERROR = re.compile(r"\(error (\d+):")
_SPAN = re.compile(r"\|(\d+)\|(\d+)")
_MESSAGE = re.compile(r"\(errormsg (\d+):")


@dataclass(frozen=True, slots=True)
class RegoProblem:
    module: str | None  # the module name given to ``add_module``, or None
    line: int | None
    message: str


def _prefixed(text: str, start: int, length: int) -> str:
    return text[start : start + length]


def parse(text: str) -> list[tuple[str | None, int | None, str]]:
    """(module, byte offset, message) for each error in a rego-cpp error dump."""
    out: list[tuple[str | None, int | None, str]] = []
    for match in _ERROR.finditer(text):
        module = _prefixed(text, match.end(), int(match.group(1)))
        rest = match.end() + len(module)
        span = _SPAN.match(text, rest)
        offset = int(span.group(1)) if span else None
        message_at = _MESSAGE.search(text, rest)
        if message_at is None:
            continue
        message = _prefixed(text, message_at.end(), int(message_at.group(1)))
        out.append((module or None, offset, message.strip()))
    return out


def locate(text: str, sources: Mapping[str, str]) -> list[RegoProblem]:
    """Problems of one ``RegoError`` text, with lines from ``sources`` (module name -> text)."""
    problems = []
    for module, offset, message in parse(text):
        line = None
        source = sources.get(module) if module is not None else None
        if source is not None and offset is not None:
            line = source.encode("utf-8")[:offset].count(b"\n") + 1
        problems.append(RegoProblem(module, line, message))
    if not problems:
        first = text.strip().splitlines()[0] if text.strip() else "unknown error"
        problems.append(RegoProblem(None, None, first))
    # rego-cpp reports a parse error at the offending token and again where the enclosing
    # construct began ("this is unclosed" twice): keep both, earliest line first, like OPA.
    return sorted(problems, key=lambda p: (p.module or "", p.line or 0))
