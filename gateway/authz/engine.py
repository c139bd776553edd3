"""The policy decision point: one interface over two engines, plus the fail-closed wrapper.

Contract:

- A :class:`PDP` engine (:class:`gateway.authz.opa.OPAClient`,
  :class:`gateway.authz.embedded.EmbeddedPDP`) evaluates the configured decision document for
  an input and returns ``(raw_result, decision_id)``; ``raw_result`` is :data:`UNDEFINED` when
  the document is undefined. It raises :class:`PDPError` for anything that is not an answer
  (unreachable, HTTP error, malformed JSON, evaluation error). Nothing else escapes an engine.
- :meth:`PolicyDecisionPoint.decide` is what the pipeline calls. It returns a
  :class:`~gateway.context.Decision` (allow or deny; undefined -> deny with reason
  ``policy_undefined``) or raises :class:`gateway.errors.ServiceUnavailable` with reason
  ``pdp_unavailable`` (HTTP 503) when the engine fails or exceeds ``timeout_s``: fail closed,
  never allow. It applies the decision cache and writes the decision log.
- :func:`build_pdp` constructs the whole thing from :class:`gateway.settings.PDPSettings`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

from gateway.authz.cache import DecisionCache, cache_key
from gateway.authz.decision import REASON_UNDEFINED, parse_decision
from gateway.authz.decision_log import DecisionLog
from gateway.authz.pdp import PDP, UNDEFINED, PDPError
from gateway.context import Decision
from gateway.errors import ServiceUnavailable
from gateway.settings.authz import PDPSettings

REASON_UNAVAILABLE = "pdp_unavailable"


class PolicyDecisionPoint:
    """Cache + timeout + fail-closed mapping + decision log around one :class:`PDP`."""

    def __init__(
        self,
        engine: PDP,
        *,
        timeout_s: float,
        cache: DecisionCache | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.cache = cache if cache is not None and cache.enabled else None
        self.decision_log = decision_log or DecisionLog("off")
        self._engine_generation = engine.generation

    async def start(self) -> None:
        self.decision_log.start()
        await self.engine.start()
        self._engine_generation = self.engine.generation

    async def close(self) -> None:
        await self.engine.close()
        self.decision_log.close()

    def ready(self) -> bool:
        return self.engine.ready()

    async def reload(self) -> None:
        """Reload the engine's policy and data when it can (embedded), and drop the cache."""
        reload = getattr(self.engine, "reload", None)
        if reload is not None:
            await reload()
        self._sync_generation()
        if self.cache is not None:
            self.cache.invalidate()

    async def decide(
        self,
        input: dict[str, Any],
        subject_scopes: Sequence[str] | None,
        *,
        reserved_headers: Collection[str] = (),
    ) -> Decision:
        """Decide ``input``; see the module docstring and :func:`parse_decision`.

        ``subject_scopes``: the scopes the subject holds, or None when its credential has no
        notion of scope (the policy's ``scopes`` are then kept as they are).
        ``reserved_headers``: lowercase header names this route's decision may not set on top
        of :data:`gateway.authz.decision.GATEWAY_OWNED_HEADERS` (e.g. the header its backend
        credential is written to). Both depend only on the route and the subject, which the
        input (and so the cache key) already holds.
        """
        started = time.perf_counter()
        self._sync_generation()
        key = b""
        if self.cache is not None:
            key = cache_key(input, subject_scopes)
            hit = self.cache.get(key)
            if hit is not None:
                self._log(input, hit, started, cached=True)
                return hit
        generation = self.cache.generation if self.cache is not None else 0
        try:
            async with asyncio.timeout(self.timeout_s):
                raw, decision_id = await self.engine.evaluate(input)
        except TimeoutError:
            self._log_error(input, started, "timeout")
            raise ServiceUnavailable(
                f"{self.engine.name} PDP gave no decision within {self.timeout_s}s",
                reason=REASON_UNAVAILABLE,
            ) from None
        except PDPError as exc:
            self._log_error(input, started, str(exc))
            raise ServiceUnavailable(
                f"{self.engine.name} PDP failed: {exc}", reason=REASON_UNAVAILABLE
            ) from None
        if raw is UNDEFINED:
            decision = Decision(allow=False, decision_id=decision_id, reason=REASON_UNDEFINED)
        else:
            decision = parse_decision(
                raw, decision_id, subject_scopes, reserved_headers=reserved_headers
            )
        if self.cache is not None:
            self.cache.put(key, decision, generation=generation)
        self._log(input, decision, started, cached=False)
        return decision

    def _sync_generation(self) -> None:
        # An engine that reloaded by itself (e.g. EmbeddedPDP.reload called directly) must not
        # keep serving decisions of the old policy from the cache.
        if self.engine.generation != self._engine_generation:
            self._engine_generation = self.engine.generation
            if self.cache is not None:
                self.cache.invalidate()

    def _log(self, input: dict[str, Any], decision: Decision, started: float, cached: bool) -> None:
        self.decision_log.record(
            decision_id=decision.decision_id,
            input=input,
            engine=self.engine.name,
            result="allow" if decision.allow else "deny",
            reason=decision.reason,
            cached=cached,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _log_error(self, input: dict[str, Any], started: float, detail: str) -> None:
        self.decision_log.record(
            decision_id=None,
            input=input,
            engine=self.engine.name,
            result="error",
            reason=f"{REASON_UNAVAILABLE}: {detail}",
            cached=False,
            latency_ms=(time.perf_counter() - started) * 1000,
        )


def build_pdp(
    settings: PDPSettings,
    *,
    timeout_s: float,
    decision_log: Literal["stdout", "off"] | Path = "off",
    offload_embedded: bool = False,
) -> PolicyDecisionPoint:
    """The configured engine wrapped in a :class:`PolicyDecisionPoint` (not yet started).

    ``timeout_s`` is ``server.timeouts.pdp_s``; ``decision_log`` is
    ``telemetry.decision_log``. Engines are imported lazily so that a gateway using OPA never
    loads the regopy shared library.
    """
    engine: PDP
    if settings.engine == "opa":
        from gateway.authz.opa import OPAClient

        engine = OPAClient(settings.url, settings.decision)
    else:
        from gateway.authz.embedded import EmbeddedPDP

        if settings.policies is None:  # settings validation already refuses this
            raise ValueError("pdp.policies is required for the embedded engine")
        engine = EmbeddedPDP(
            settings.policies, settings.data, settings.decision, offload=offload_embedded
        )
    return PolicyDecisionPoint(
        engine,
        timeout_s=timeout_s,
        cache=DecisionCache(settings.cache.ttl_s, settings.cache.max_entries),
        decision_log=DecisionLog(decision_log),
    )
