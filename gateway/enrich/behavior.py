"""Behaviour enrichment: the agent's sliding-window snapshot as ``input.behavior``.

Contract: :meth:`BehaviorEnricher.enrich` returns an :class:`gateway.context.Enrichment` whose
``agent`` is the key the finished request is recorded under
(:func:`gateway.observability.behavior.agent_key`; None when the caller is not an agent and
has no peer certificate) and whose ``behavior`` is that agent's snapshot. It raises
:class:`gateway.errors.ServiceUnavailable` when a shared store is down (fail closed: policy
that reads behaviour must not decide on an empty window it did not ask for).
"""

from __future__ import annotations

from gateway.context import NO_ENRICHMENT, Enrichment, Identity, RequestFacts
from gateway.observability.behavior import BehaviorStore, agent_key


class BehaviorEnricher:
    def __init__(self, store: BehaviorStore) -> None:
        self.store = store

    async def enrich(self, facts: RequestFacts, identity: Identity | None) -> Enrichment:
        agent = agent_key(identity, facts.peer)
        if agent is None:
            return NO_ENRICHMENT
        return Enrichment(agent=agent, behavior=await self.store.snapshot(agent))
