"""``continuous_auth``: heartbeats, baselines and quarantine (issue 18).

With the section, every request of an identified agent gets a sequence number
(``Agentgate-Action: seq=<n>``) and an entry in the agent's observed-action chain, the agent's
baseline learns from it, and ``input.behavior`` gains ``heartbeat``, ``drift`` and
``baseline_age``. A route of ``kind: agent_heartbeat`` (``POST /agents/heartbeat``) takes the
agents' heartbeats. A decision with the obligation ``quarantine: true`` quarantines the agent
for ``quarantine_ttl_s`` (a revocation of kind ``quarantine``, lifted through the admin API).
"""

from __future__ import annotations

from pydantic import Field

from gateway.settings.base import Strict


class DriftSettings(Strict):
    window_s: float = Field(3600, ge=60, le=7 * 86400)
    min_calls: int = Field(50, ge=1, le=100_000)
    min_age_s: float = Field(300, ge=0, le=86400)
    max_agents: int = Field(10_000, ge=1, le=1_000_000)


class ContinuousAuthSettings(Strict):
    heartbeat_interval_s: float = Field(30, gt=0, le=3600)
    # A heartbeat older than interval x grace makes the agent ``stale``.
    heartbeat_grace: float = Field(2.0, ge=1, le=10)
    max_actions: int = Field(4096, ge=16, le=65_536)  # per agent, the oldest dropped
    drift: DriftSettings = DriftSettings()
    quarantine_ttl_s: float = Field(3600, gt=0, le=30 * 86400)
