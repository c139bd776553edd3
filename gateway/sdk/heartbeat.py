"""The agent side of heartbeats (issue 18): record what the gateway answered, prove it later.

Use. Give every response from the gateway to :meth:`ActionRecorder.observe` (method,
status, headers); responses without ``X-Request-Id`` and ``Agentgate-Action: seq=<n>`` are
ignored. Run :func:`heartbeat_loop` beside the agent with a ``send`` that POSTs the body to
``/agents/heartbeat`` signed with the agent's credential (RFC 9421 ``hmac-sha256`` covering
``content-digest``: the body is MACed with the credential key) and returns the JSON answer.

The body is ``{"agent", "count", "digest", "window": {"from", "to"}}`` over the recorded
actions with ``from < seq <= to``, digested exactly like the gateway does
(``gateway.agents.heartbeat``: ``h_n = SHA-256(h_{n-1} || canonical(action_n))`` from 32 zero
bytes, in seq order, so the order in which responses arrive does not matter). ``from`` is
the ``to`` of the last heartbeat the gateway judged (``healthy`` or ``mismatch``,
:meth:`acknowledge`), 0 at first; ``to`` is the highest seq observed. A ``mismatch`` moves
the window on too, so a later window can be healthy again; the gateway's status stays
``mismatch`` until then (and a quarantine until an operator lifts it).

Caveat: send heartbeats when no request of the agent is in flight. A request whose response
has not arrived yet has a seq the recorder does not know; if it is below ``to``, the gateway
(which waits briefly for it) counts it and the agent does not: ``mismatch``.

Only the standard library (the canonical form and chain are repeated here on purpose: the
SDK depends on no gateway module but ``gateway.jose`` and ``gateway.httpsig``); a test pins
them to the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

ACTION_HEADER = "Agentgate-Action"
REQUEST_ID_HEADER = "X-Request-Id"
GENESIS = bytes(32)
MAX_WINDOW = 4096  # as gateway.agents.heartbeat.MAX_WINDOW
_SEQ = re.compile(r"(?:^|[,;]\s*)seq=([1-9][0-9]{0,17})(?:\s*(?:[,;]|$))")


def canonical_action(seq: int, request_id: str, method: str, status: int) -> bytes:
    """The gateway's canonical action (compact, key-sorted, ASCII-escaped JSON)."""
    action = {"method": method, "request_id": request_id, "seq": seq, "status": status}
    return json.dumps(action, sort_keys=True, separators=(",", ":")).encode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up without regard to case
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


def action_seq(value: str | None) -> int | None:
    """The ``seq`` of an ``Agentgate-Action`` header value, or None."""
    if value is None:
        return None
    match = _SEQ.search(value.strip())
    return int(match.group(1)) if match else None


class ActionRecorder:
    """The agent's own record of its actions through the gateway, bounded."""

    def __init__(self, agent: str, max_actions: int = MAX_WINDOW) -> None:
        self.agent = agent
        self._max = max_actions
        self._actions: dict[int, bytes] = {}
        self._from = 0  # the ``to`` of the last healthy heartbeat
        self._sent: tuple[int, int] | None = None  # the window of the last heartbeat built

    def observe(self, method: str, status: int, headers: Mapping[str, str]) -> int | None:
        """Record one gateway response; its seq, or None when it carries none."""
        request_id = _header(headers, REQUEST_ID_HEADER)
        seq = action_seq(_header(headers, ACTION_HEADER))
        if seq is None or not request_id:
            return None
        if seq <= self._from:
            # The gateway's log started again (restart of a memory backend, expiry after a
            # long idle time): the old window is gone on its side too.
            self._actions.clear()
            self._from, self._sent = 0, None
        self._actions[seq] = canonical_action(seq, request_id, method.upper(), int(status))
        if len(self._actions) > self._max:
            del self._actions[min(self._actions)]
        return seq

    def heartbeat(self) -> dict[str, Any]:
        """The next heartbeat body (as a dict: ``json.dumps`` it, then sign and send)."""
        first = self._from
        last = min(max(self._actions, default=first), first + MAX_WINDOW)
        h = GENESIS
        count = 0
        for seq in sorted(s for s in self._actions if first < s <= last):
            h = hashlib.sha256(h + self._actions[seq]).digest()
            count += 1
        self._sent = (first, last)
        return {
            "agent": self.agent,
            "count": count,
            "digest": h.hex(),
            "window": {"from": first, "to": last},
        }

    def acknowledge(self, answer: Mapping[str, Any]) -> None:
        """Take the gateway's answer to the last heartbeat: after a verdict, move on.

        The answer's ``verdict`` must be ``healthy`` or ``mismatch`` (the gateway judged the
        window and starts the next one at its ``to``); its ``window.to``, when given, must be
        the one sent. Anything else (an error, no answer) leaves the recorder as it was
        (same ``from`` next time).
        """
        sent, self._sent = self._sent, None
        # A mismatch moves the window too: the gateway has recorded it (the agent's status
        # stays "mismatch" until a healthy heartbeat, and a quarantine until an operator
        # lifts it); re-sending a window the gateway already judged could never recover.
        if sent is None or answer.get("verdict") not in ("healthy", "mismatch"):
            return
        window = answer.get("window")
        if isinstance(window, Mapping) and window.get("to", sent[1]) != sent[1]:
            return
        last = sent[1]
        self._actions = {s: a for s, a in self._actions.items() if s > last}
        self._from = last


async def heartbeat_loop(
    send: Callable[[bytes], Awaitable[Mapping[str, Any]]],
    recorder: ActionRecorder,
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Send a heartbeat now and every ``interval_s`` until ``stop`` is set.

    A failed ``send`` is logged and retried at the next interval: the gateway reports the
    agent ``stale`` meanwhile, which is the truth.
    """
    while not stop.is_set():
        body = json.dumps(recorder.heartbeat(), separators=(",", ":")).encode()
        try:
            recorder.acknowledge(await send(body))
        except Exception as exc:  # the loop must outlive a bad network or a bad answer
            log.warning("heartbeat failed: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
