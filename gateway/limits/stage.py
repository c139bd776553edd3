"""The limits stage: every rate limit a request meets, at the point where it can apply.

- :meth:`LimitsStage.before_authn`: the route's ``client``/``route`` limits, which need no
  identity, so that a flood is refused before it costs argon2 or JWKS work;
- :meth:`LimitsStage.after_authn`: the route's ``subject``/``agent`` limits;
- :meth:`LimitsStage.obligations`: the decision's ``obligations.rate_limit``, which the
  pipeline hands over as parsed by :func:`gateway.authz.decision.obligation_limit` (a
  malformed one has denied already, 403 ``obligation_invalid``).

Each raises :class:`gateway.state.ratelimit.RateLimited` (429 with ``RateLimit`` headers) on the
first refusal, or :class:`gateway.errors.ServiceUnavailable` when a shared store is down (fail
closed). The buckets themselves live in :mod:`gateway.state` (memory or Redis).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.context import Identity, RequestFacts
from gateway.routing import CompiledRoute
from gateway.settings.routes import RateLimit
from gateway.state import RateLimiter
from gateway.state.ratelimit import enforce, split


class LimitsStage:
    def __init__(self, limiter: RateLimiter, routes: Iterable[CompiledRoute]) -> None:
        self._limiter = limiter
        self._limits = {r.name: split(r.settings.rate_limits) for r in routes}

    async def before_authn(self, route: CompiledRoute, facts: RequestFacts) -> None:
        await enforce(self._limiter, route.name, self._limits[route.name][0], facts, None)

    async def after_authn(
        self, route: CompiledRoute, facts: RequestFacts, identity: Identity | None
    ) -> None:
        await enforce(self._limiter, route.name, self._limits[route.name][1], facts, identity)

    async def obligations(
        self,
        route: CompiledRoute,
        facts: RequestFacts,
        identity: Identity | None,
        limit: RateLimit | None,
    ) -> None:
        if limit is not None:
            key = route.name + "|obligation"
            await enforce(self._limiter, key, (limit,), facts, identity)
