"""Continuous authentication (issue 18): the observed-action chain, heartbeats, drift, quarantine.

Contract. One :class:`ContinuousAuth` per runtime, built from ``continuous_auth`` settings,
over the shared :class:`gateway.state.actions.ActionLog` (memory or Redis) and the gateway's
:class:`gateway.agents.baseline.BaselineStore` (both outlive reloads). The pipeline calls,
for a request of an identified agent (the behaviour key):

* :meth:`begin` before deciding: the request's sequence number in the agent's log (the
  response carries it as ``Agentgate-Action: seq=<n>``), and the additions to
  ``input.behavior``: ``heartbeat`` (``healthy | mismatch | stale | unknown``), ``drift``
  (``{score, features}``) and ``baseline_age`` (seconds);
* :meth:`finish` when the status is known: the canonical action goes into the chain and the
  call into the baseline;
* :meth:`heartbeat` for ``POST /agents/heartbeat``: the agent's ``{count, digest, window}``
  against the gateway's chain over the same window (:func:`gateway.agents.heartbeat.compare`);
  the verdict is what ``input.behavior.heartbeat`` says from then on;
* :meth:`quarantine` when a decision carries the obligation ``quarantine: true``.

Every store failure raises :class:`gateway.state.StateUnavailable` (503): a policy that reads
heartbeats must not decide on a status the gateway could not read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.agents.baseline import BaselineStore
from gateway.agents.heartbeat import (
    Comparison,
    Heartbeat,
    canonical_action,
    compare,
    parse_heartbeat,
    status,
)
from gateway.settings.continuous import ContinuousAuthSettings
from gateway.state import RevocationStore
from gateway.state.actions import ActionLog

ACTION_HEADER = "Agentgate-Action"
# How long a heartbeat waits for actions of its window that are still in flight.
PENDING_WAIT_S = 1.0
_PENDING_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Started:
    seq: int
    behavior: dict[str, Any]  # the additions to input.behavior


class ContinuousAuth:
    def __init__(
        self,
        settings: ContinuousAuthSettings,
        log: ActionLog,
        revocations: RevocationStore,
        baselines: BaselineStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.log = log
        self.revocations = revocations
        self.baselines = baselines  # outlives reloads, like the behaviour windows
        self._clock = clock

    async def begin(self, agent: str, route: str, tool: str | None, method: str) -> Started:
        seq = await self.log.reserve(agent)
        now = self._clock()
        beat = await self.log.last_beat(agent)
        at, verdict = (beat[0], beat[1]) if beat is not None else (None, None)
        s = self.settings
        drift = self.baselines.drift(agent, now, route, tool, method)
        behavior = {
            "heartbeat": status(at, verdict, now, s.heartbeat_interval_s, s.heartbeat_grace),
            **self.baselines.as_input(drift),
        }
        return Started(seq, behavior)

    async def finish(
        self,
        agent: str,
        seq: int,
        *,
        request_id: str,
        method: str,
        status: int,
        route: str,
        tool: str | None,
        denied: bool,
    ) -> None:
        await self.log.record(agent, seq, canonical_action(seq, request_id, method, status))
        self.baselines.observe(agent, self._clock(), route, tool, method, status, denied)

    async def heartbeat(self, agent: str, body: bytes) -> tuple[Heartbeat, Comparison]:
        """Raises :class:`gateway.agents.heartbeat.HeartbeatInvalid` for a malformed body
        and ``PermissionError`` for a heartbeat about another agent."""
        beat = parse_heartbeat(body)
        if beat.agent != agent:
            raise PermissionError("heartbeat for another agent")
        previous = await self.log.last_beat(agent)
        # SECURITY: each window starts where the previous heartbeat's ended (whatever its
        # verdict), so no call can fall between two windows unseen.
        expected_first = previous[2] if previous is not None else 0
        # SECURITY: nor can a window reach past what was reserved (later windows would skip).
        head = await self.log.head(agent)
        records, missing = await self.log.window(agent, beat.first, beat.last)
        deadline = time.monotonic() + PENDING_WAIT_S
        while missing and time.monotonic() < deadline:
            # A request of the window is still in flight: its action lands when it is done.
            await asyncio.sleep(_PENDING_POLL_S)
            records, missing = await self.log.window(agent, beat.first, beat.last)
        result = compare(beat, records, missing, expected_first=expected_first, head=head)
        await self.log.beat(agent, self._clock(), result.verdict, beat.last)
        return beat, result

    async def quarantine(self, agent: str, *, why: str) -> None:
        """``why`` (the policy's reason) is kept as the revocation's reason, for operators."""
        await self.revocations.revoke(
            "quarantine", agent, ttl_s=self.settings.quarantine_ttl_s, reason=why[:200]
        )
