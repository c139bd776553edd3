"""The PDP engine interface: what an engine is, what it returns, what it raises.

A leaf module (it imports nothing of the gateway) so that the engines
(:mod:`gateway.authz.opa`, :mod:`gateway.authz.embedded`) and the fail-closed wrapper
(:mod:`gateway.authz.engine`) all depend on it and never on each other.

- A :class:`PDP` evaluates the configured decision document for an input and returns
  ``(raw_result, decision_id)``; ``raw_result`` is :data:`UNDEFINED` when the document is
  undefined.
- It raises :class:`PDPError` for anything that is not an answer (unreachable, HTTP error,
  malformed JSON, evaluation error). Nothing else escapes an engine.
- Loading or compiling policies raises :class:`PolicyLoadError` with ``file:line`` problems.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Protocol


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()
"""The decision document does not exist for this input (OPA: no ``result`` key)."""


_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_]+")


def decision_ref(decision: str) -> tuple[str, ...]:
    """``agentgate/authz/decision`` (slashes or dots) -> ``("agentgate", "authz", "decision")``."""
    segments = tuple(re.split(r"[/.]", decision.strip("/")))
    if not all(_PATH_SEGMENT.fullmatch(s) for s in segments):
        raise ValueError(f"invalid decision path {decision!r}")
    return segments


class PDPError(Exception):
    """The engine gave no usable answer. The message is for logs, never for callers."""


class PolicyLoadError(Exception):
    """The policies or data could not be loaded or compiled.

    ``problems`` holds ``(where, message)`` pairs, ``where`` being ``file:line``, a file, or
    empty; :meth:`lines` renders them one per line, as config errors are.
    """

    def __init__(self, problems: str | Sequence[tuple[str, str]]) -> None:
        self.problems = [("", problems)] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{where}: {message}" if where else message for where, message in self.problems]


class PDP(Protocol):
    name: str
    generation: int  # bumped whenever the engine's policy or data changed

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def evaluate(self, input: dict[str, Any]) -> tuple[object, str]: ...

    def ready(self) -> bool: ...
