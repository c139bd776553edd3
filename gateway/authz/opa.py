"""OPA over its REST Data API (SPECS.md §15.1-15.2): the production PDP engine.

Contract (the :class:`gateway.authz.engine.PDP` interface):

- :meth:`OPAClient.evaluate` sends ``POST {url}/v1/data/{decision}`` with body
  ``{"input": ...}`` and returns ``(result, decision_id)``. An HTTP 200 without a ``result``
  key means the document is undefined: ``(UNDEFINED, decision_id)``. Connection failures, any
  status other than 200 (OPA answers 400 for bad input, 500 for evaluation errors) and bodies
  that are not a JSON object raise :class:`gateway.authz.engine.PDPError`; no aiohttp
  exception leaves this module. The caller bounds the time (``asyncio.timeout``).
- ``decision_id`` is read from the response. OPA only returns one when decision logging is
  enabled (``decision_logs.console: true`` or a decision-log service); without it a UUID4 is
  generated here, which then exists only in *our* decision log, not in OPA's.
- :meth:`OPAClient.ready` reflects ``GET {url}/health`` (200 = ready), polled every
  ``health_interval_s`` by a background task, so ``/readyz`` follows PDP reachability. A
  transport failure on a decision marks the PDP not ready at once.

Why aiohttp directly rather than ``opa-python-client`` (3.0, ``AsyncOpaClient``): its async
client does pool one ``ClientSession``, and ``query_rule`` returns the whole response body
(``decision_id`` included), but

1. its timeout is one session-wide ``ClientTimeout``; there is no per-call budget;
2. it retries connection errors and 500/502/504 with exponential back-off *inside* the call
   (0.3 s, 0.6 s...), which would spend our whole ``pdp_s`` budget on sleeping and turn a fast
   503 into a slow one (``retries=0`` disables it, leaving little of the client in use);
3. it takes ``host``/``port`` rather than a URL, so an OPA behind a path prefix or a unix
   socket cannot be addressed, and it allows no per-request headers (``traceparent``);
4. ``raise_for_status`` and ``response.json`` leak aiohttp exceptions that would need mapping
   anyway, and the package pulls in ``aiofiles`` for features we never use.

One ``ClientSession`` with one keep-alive ``TCPConnector`` serves every decision; nothing is
built per request. It comes from :func:`gateway.net.outbound.client_session` and no call follows a
redirect: a 3xx from ``pdp.url`` is a PDP failure (503), never a reason to send the policy
input somewhere else (issue 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import aiohttp

from gateway.authz.pdp import UNDEFINED, PDPError, decision_ref
from gateway.net.outbound import client_session

log = logging.getLogger("agentgate.authz")

_JSON = {"Content-Type": "application/json"}


class OPAClient:
    name = "opa"
    generation = 0  # OPA reloads its own bundles; the decision cache's TTL bounds staleness

    def __init__(
        self,
        url: str,
        decision: str,
        *,
        health_interval_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        base = url.rstrip("/")
        self.data_url = base + "/v1/data/" + "/".join(decision_ref(decision))
        self.health_url = base + "/health"
        self._health_interval_s = health_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._ready = False

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=30, ttl_dns_cache=300
        )
        # The per-decision budget is the caller's asyncio.timeout; these bound only the parts
        # a stuck connection could otherwise hold forever.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s)
        self._session = client_session(
            connector=connector, timeout=timeout, auto_decompress=False, raise_for_status=False
        )
        await self._probe()
        self._health_task = asyncio.create_task(self._poll_health(), name="opa-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    async def evaluate(self, input: dict[str, Any]) -> tuple[object, str]:
        if self._session is None:
            raise PDPError("OPA client not started")
        try:
            body = json.dumps({"input": input}, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PDPError(f"policy input is not JSON: {exc}") from None
        try:
            # SECURITY: a redirect is a failure; following it would re-POST the input (307).
            async with self._session.post(
                self.data_url, data=body, headers=_JSON, allow_redirects=False
            ) as response:
                status = response.status
                payload = await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            self._ready = False
            raise PDPError(f"OPA unreachable: {type(exc).__name__}") from None
        if status != 200:
            raise PDPError(f"OPA answered HTTP {status}")
        try:
            document = json.loads(payload)
        except ValueError:
            raise PDPError("OPA answered malformed JSON") from None
        if not isinstance(document, dict):
            raise PDPError("OPA answered JSON that is not an object")
        decision_id = document.get("decision_id")
        if not isinstance(decision_id, str) or not decision_id:
            decision_id = str(uuid.uuid4())  # OPA decision logging is off: ours only
        if "result" not in document:
            return UNDEFINED, decision_id
        return document["result"], decision_id

    async def _probe(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            async with asyncio.timeout(self._health_interval_s):
                async with session.get(self.health_url, allow_redirects=False) as response:
                    await response.read()
                    healthy = response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            healthy = False
        if healthy != self._ready:
            log.info("OPA at %s is %s", self.health_url, "ready" if healthy else "NOT ready")
        self._ready = healthy

    async def _poll_health(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self._probe()
