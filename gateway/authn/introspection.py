"""RFC 7662 token introspection for opaque access tokens of one issuer (SPECS.md §10).

Contract: :meth:`IntrospectionClient.introspect` POSTs ``token`` (form-encoded, RFC 7662 §2.1)
to the issuer's introspection endpoint, authenticating as the configured client with
``client_secret_basic`` (RFC 6749 §2.3.1: form-encoded id and secret inside HTTP Basic) or
``client_secret_post``, and returns the response members of an *active* token.

* ``active`` must be the JSON boolean ``true``; anything else raises :class:`InactiveToken`
  (a :class:`gateway.jose.errors.JOSEError`; the caller answers 401 ``invalid_token``).
* Members that are present are checked like a JWT's (RFC 7662 §4, SPECS.md §10.3): ``iss``
  equals the issuer, ``aud`` names one of our audiences, ``exp``/``nbf`` hold with the issuer's
  leeway. ``active: true`` alone is never authorization.
* A non-200 status, a timeout, a transport error, a body over 64 KiB, or a body that is not a
  JSON object raises :class:`IntrospectionUnavailable` (503, ``introspection_unavailable``):
  fail closed.
* Positive answers are cached in-process, keyed by SHA-256 of the token, for
  ``min(max_cache_s, exp - now)``; inactive answers and errors are never cached.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway.errors import ServiceUnavailable
from gateway.jose.errors import JOSEError
from gateway.jose.jws import numeric_date, strict_json_object
from gateway.net.outbound import client_session
from gateway.settings.issuers import Introspection, Issuer

log = logging.getLogger("agentgate.authn.introspection")

MAX_RESPONSE_BYTES = 64 * 1024


class InactiveToken(JOSEError):
    """The authorization server says the token is not active (RFC 7662 §2.2)."""


class IntrospectionUnavailable(ServiceUnavailable):
    reason = "introspection_unavailable"


class _Unusable(Exception):
    pass


class IntrospectionClient:
    """Introspects opaque tokens at one issuer; one aiohttp session, built in ``start()``."""

    def __init__(
        self,
        issuer: Issuer,
        *,
        timeout_s: float = 2.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if issuer.introspection is None:
            raise ValueError(f"issuer {issuer.name} has no introspection settings")
        self.issuer = issuer
        self._cfg: Introspection = issuer.introspection
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._max_entries = max_entries
        self._cache: dict[bytes, tuple[float, Mapping[str, Any]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # calls to the endpoint (metrics)

    async def start(self) -> None:
        if self._session is None:
            self._session = client_session(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def introspect(self, token: str) -> Mapping[str, Any]:
        """Members of an active, valid token; raises InactiveToken/JOSEError or 503."""
        key = hashlib.sha256(token.encode("utf-8")).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if now < cached[0]:
                return cached[1]
            del self._cache[key]
        claims = await self._call(token)
        check_introspected(claims, self.issuer, now)
        self._remember(key, claims, now)
        return claims

    def _remember(self, key: bytes, claims: Mapping[str, Any], now: float) -> None:
        until = now + self._cfg.max_cache_s
        exp = _number(claims, "exp")  # already validated by check_introspected
        if exp is not None:
            until = min(until, exp)  # SECURITY: a cache entry never outlives exp
        if until <= now or self._max_entries == 0:
            return
        if len(self._cache) >= self._max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (until, claims)

    async def _call(self, token: str) -> dict[str, Any]:
        if self._session is None:
            raise IntrospectionUnavailable(f"issuer {self.issuer.name}: client not started")
        form, headers = self._request(token)
        self.requests += 1
        try:
            body = await self._post(self._session, form, headers)
            answer = strict_json_object(body)
        except (_Unusable, JOSEError) as exc:
            log.warning("introspection at issuer %s failed: %s", self.issuer.name, exc)
            raise IntrospectionUnavailable(
                f"issuer {self.issuer.name}: introspection failed ({exc})"
            ) from None
        # SECURITY: only the JSON boolean true counts; "true", 1 or a missing member do not.
        if answer.get("active") is not True:
            raise InactiveToken("token is not active")
        return answer

    def _request(self, token: str) -> tuple[dict[str, str], dict[str, str]]:
        form = {"token": token, "token_type_hint": "access_token"}
        headers = {"Accept": "application/json"}
        secret = self._cfg.client_secret.reveal_str()
        if self._cfg.auth_method == "client_secret_post":
            form |= {"client_id": self._cfg.client_id, "client_secret": secret}
        else:
            # RFC 6749 §2.3.1: each part is form-urlencoded before the Basic encoding.
            pair = f"{quote(self._cfg.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return form, headers

    async def _post(
        self, session: aiohttp.ClientSession, form: dict[str, str], headers: dict[str, str]
    ) -> bytes:
        try:
            # SECURITY: a redirect is a failure (503); following a 307 would re-send the token
            # and the client secret to wherever the endpoint pointed (issue 12).
            async with session.post(
                self._cfg.endpoint, data=form, headers=headers, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise _Unusable(f"HTTP status {resp.status}")
                if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
                    raise _Unusable("response too large")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise _Unusable("response too large")
                return bytes(body)
        except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Session is closed" during shutdown.
            raise _Unusable(type(exc).__name__) from None


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    return numeric_date(value, name)


def check_introspected(claims: Mapping[str, Any], issuer: Issuer, now: float) -> None:
    """RFC 7662 §4: validate the members the server chose to return."""
    iss = claims.get("iss")
    if iss is not None and iss != issuer.issuer:
        raise JOSEError("token issuer mismatch")
    if "aud" in claims:
        check_audience(claims["aud"], issuer.audience)
    exp = _number(claims, "exp")
    if exp is not None and now >= exp + issuer.leeway_s:
        raise JOSEError("token expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + issuer.leeway_s:
        raise JOSEError("token not yet valid")


def check_audience(aud: Any, expected: str | tuple[str, ...]) -> None:
    """``aud`` (a string or an array of strings) must name one of ``expected`` (RFC 7519 §4.1.3)."""
    wanted = (expected,) if isinstance(expected, str) else expected
    if isinstance(aud, str):
        if aud in wanted:
            return
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        if any(a in wanted for a in aud):
            return
    else:
        raise JOSEError("malformed aud")
    raise JOSEError("token audience mismatch")
