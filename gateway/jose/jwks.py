"""JWK Sets (RFC 7517 §5) and the one cached JWKS fetcher.

:class:`JWKSet` turns a JWKS document into :class:`gateway.jose.jws.VerificationKey` values,
each usable only for the algorithm its JWK ``alg`` names (RFC 8725 §3.1). A JWK without
``alg`` gets the single algorithm its curve implies (EC P-256 -> ES256, P-384 -> ES384,
P-521 -> ES512, OKP -> EdDSA); an RSA JWK without ``alg`` may be used with the caller's
allowed RSA algorithms only. Symmetric (``oct``) keys, keys with private members,
``use: enc`` keys, keys whose ``key_ops`` exclude ``verify``, and keys for algorithms the
caller does not allow are skipped with a log line; a malformed key never fails the whole set;
at most ``MAX_KEYS`` keys are read.

:class:`JWKSCache` is the one JWKS fetcher, shared by the gateway's issuers
(:mod:`gateway.authn.jwks`) and the internal services' Txn-Token kit (:mod:`gateway.sdk.txn`).
The parsed key set type is the caller's (``parse`` turns a document into it). Rules:

* fetched with a bounded ``timeout_s``, **no redirects**, at most ``max_bytes``, HTTP 200
  with a JSON object without duplicate member names; a session is passed in (the gateway's
  own, :func:`gateway.net.outbound.client_session`) or built here with the same options
  (no proxy or netrc from the environment, no cookies): this module imports nothing of the
  gateway so that the kit stays standalone;
* fresh for ``Cache-Control: max-age`` clamped to ``[min_refresh_s, max_ttl_s]``
  (``default_ttl_s`` when absent, ``min_refresh_s`` on ``no-store``/``no-cache``; RFC 9111
  §5.2.2). When freshness ends, :meth:`JWKSCache.usable` either starts a background refresh
  and keeps serving the cached set (``background_refresh=True``, the gateway: a slow IdP never
  stalls requests) or waits for the refresh (the kit);
* after an attempt, the next expiry-driven attempt waits ``retry_s``, so an unreachable
  endpoint costs one timeout per interval, not one per request;
* an unknown ``kid`` triggers a refetch at most once per ``min_refresh_s``
  (:meth:`JWKSCache.refetch`); concurrent callers share one fetch (single flight), and a
  cancelled caller never cancels the fetch the others wait for;
* a failed refresh keeps the old set in service until it has been stale (past its TTL) for
  ``max_stale_s``; after that, or before any successful fetch, :class:`JWKSUnavailable`:
  fail closed (the caller answers 503).

Nothing from aiohttp's exception tree escapes this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sized
from typing import Any, Generic, TypeVar

import aiohttp

from gateway.jose.errors import JOSEError
from gateway.jose.jwk import check_signing_use, public_key_from_jwk
from gateway.jose.jws import RSA_ALGS, VerificationKey, strict_json_object

log = logging.getLogger("agentgate.jose.jwks")

MAX_JWKS_BYTES = 1 << 20
MAX_KEYS = 100
MAX_KID_CHARS = 256

K = TypeVar("K")


class UnknownKeyError(JOSEError):
    """No key of the set matches the token's ``kid`` and ``alg``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "unknown_kid")


class JWKSUnavailable(Exception):
    """No usable key set: never fetched (``never_fetched``) or stale beyond ``max_stale_s``."""

    def __init__(self, *, never_fetched: bool) -> None:
        super().__init__(
            "no JWKS fetched yet" if never_fetched else "JWKS stale beyond max_stale_s"
        )
        self.never_fetched = never_fetched


# --------------------------------------------------------------------------- key sets


class JWKSet:
    """The usable verification keys of one JWKS document, by ``kid``."""

    def __init__(self, document: Mapping[str, Any], *, allowed_algs: Collection[str]) -> None:
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise JOSEError("JWKS has no keys array", "bad_key")
        self._allowed = frozenset(allowed_algs)
        self._by_kid: dict[str | None, list[VerificationKey]] = {}
        for index, jwk in enumerate(keys[:MAX_KEYS]):
            try:
                key = self._key(jwk)
            except JOSEError as exc:
                log.warning("JWKS key #%d skipped: %s", index, exc)
                continue
            self._by_kid.setdefault(key.kid, []).append(key)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_kid.values())

    def kids(self) -> frozenset[str | None]:
        return frozenset(self._by_kid)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key for ``kid`` usable with ``alg``; None if ``kid`` is unknown.

        A token without ``kid`` matches only keys without ``kid``. A known ``kid`` whose keys
        do not allow ``alg`` raises :class:`UnknownKeyError` at once (no refetch helps).
        """
        candidates = self._by_kid.get(kid)
        if candidates is None:
            return None
        for key in candidates:
            if alg in key.algs:
                return key
        raise UnknownKeyError("no key for this algorithm")

    def _key(self, jwk: Any) -> VerificationKey:
        if not isinstance(jwk, dict):
            raise JOSEError("not a JSON object", "bad_key")
        check_signing_use(jwk)
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS):
            raise JOSEError("malformed kid", "bad_key")
        key, possible = public_key_from_jwk(jwk)
        algs = self._usable_algs(jwk.get("alg"), possible)
        return VerificationKey(kid=kid, algs=algs, key=key)

    def _usable_algs(self, alg: Any, possible: frozenset[str]) -> frozenset[str]:
        if alg is not None:
            if not isinstance(alg, str) or alg not in possible:
                raise JOSEError("alg does not fit the key type", "bad_key")
            usable = frozenset({alg})
        elif possible <= RSA_ALGS:
            # An RSA JWK without alg: only the RSA algorithms this caller is configured for.
            usable = possible
        else:
            usable = possible  # EC and OKP imply exactly one algorithm
        usable &= self._allowed
        if not usable:
            raise JOSEError("key algorithm not allowed for this issuer", "bad_key")
        return usable


def parse_cache_control(
    value: str | None, *, min_s: float, default_s: float, max_s: float
) -> float:
    """Freshness lifetime from ``Cache-Control`` (RFC 9111 §5.2.2), clamped to our bounds."""
    if not value:
        return max(min_s, min(default_s, max_s))
    ttl: float | None = None
    for directive in value.split(","):
        name, _, arg = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return min_s
        if name == "max-age":
            arg = arg.strip().strip('"')
            ttl = float(arg) if arg.isdigit() else None
    if ttl is None:
        ttl = default_s
    return max(min_s, min(ttl, max_s))


# --------------------------------------------------------------------------- the fetcher


class _FetchError(Exception):
    pass


class JWKSCache(Generic[K]):
    """One JWKS URL, fetched and cached; see the module docstring for the rules."""

    def __init__(
        self,
        url: str,
        parse: Callable[[dict[str, Any]], K],
        *,
        timeout_s: float,
        min_refresh_s: float,
        default_ttl_s: float,
        max_ttl_s: float,
        max_stale_s: float,
        retry_s: float | None = None,
        max_bytes: int = MAX_JWKS_BYTES,
        background_refresh: bool = True,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        label: str | None = None,
        logger: logging.Logger = log,
        on_fetch: Callable[[bool], None] | None = None,
    ) -> None:
        self.url = url
        self._parse = parse
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._min_refresh_s = min_refresh_s
        self._default_ttl_s = default_ttl_s
        self._max_ttl_s = max_ttl_s
        self._max_stale_s = max_stale_s
        self._retry_s = min_refresh_s if retry_s is None else retry_s
        self._max_bytes = max_bytes
        self._background = background_refresh
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._label = label or url
        self._log = logger
        self._on_fetch = on_fetch
        self.keys: K | None = None
        self._expires_at = 0.0  # end of freshness (clock time)
        self._last_attempt = -math.inf
        self._task: asyncio.Task[bool] | None = None
        self.fetches = 0  # attempts
        self.refreshes = 0  # successful fetches
        self.refresh_failures = 0

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ state

    def ready(self) -> bool:
        """Keys are loaded and not stale beyond ``max_stale_s``."""
        return self.keys is not None and not self._too_stale(self._clock())

    def fresh_keys(self) -> K | None:
        """The cached set while it is fresh, else None (never fetches: a sync fast path)."""
        if self.keys is None or self._clock() >= self._expires_at:
            return None
        return self.keys

    async def usable(self) -> K:
        """The set to verify with now (fetching first if needed); raises JWKSUnavailable."""
        now = self._clock()
        if self.keys is None or self._too_stale(now):
            if self._may_fetch(now, self._retry_s):
                await self.refresh()
        elif now >= self._expires_at and self._may_fetch(now, self._retry_s):
            if self._background:
                self._start_fetch()  # serve the cached set while refreshing
            else:
                await self.refresh()
        return self._usable()

    async def refetch(self) -> K | None:
        """Refetch for an unknown ``kid``, at most once per ``min_refresh_s`` (or join the
        fetch in flight); the set afterwards, or None if no fetch was allowed."""
        if not self._may_fetch(self._clock(), self._min_refresh_s):
            return None
        await self.refresh()
        return self._usable()

    def _usable(self) -> K:
        keys = self.keys
        if keys is None:
            raise JWKSUnavailable(never_fetched=True)
        if self._too_stale(self._clock()):
            # SECURITY: fail closed once the cached set is older than the operator allows.
            raise JWKSUnavailable(never_fetched=False)
        return keys

    def _too_stale(self, now: float) -> bool:
        return now > self._expires_at + self._max_stale_s

    def _may_fetch(self, now: float, interval: float) -> bool:
        if self._task is not None and not self._task.done():
            return True  # join the fetch in flight
        return now - self._last_attempt >= interval

    # ------------------------------------------------------------------ fetching

    async def refresh(self) -> bool:
        """Single flight: wait for the fetch in progress (starting one); True on success."""
        # shield: a caller that is cancelled must not cancel the fetch others are awaiting.
        return await asyncio.shield(self._start_fetch())

    def _start_fetch(self) -> asyncio.Task[bool]:
        task = self._task
        if task is None or task.done():
            self._last_attempt = self._clock()
            task = self._task = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return task

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            document, cache_control = await self._download()
            keys = self._parse(document)
        except (_FetchError, ValueError) as exc:  # JOSEError is a ValueError
            self.refresh_failures += 1
            self._report(ok=False)
            self._log.warning("JWKS refresh for %s failed: %s", self._label, exc)
            return False
        ttl = parse_cache_control(
            cache_control,
            min_s=self._min_refresh_s,
            default_s=self._default_ttl_s,
            max_s=self._max_ttl_s,
        )
        self.keys, self._expires_at = keys, self._clock() + ttl
        self.refreshes += 1
        self._report(ok=True)
        size = len(keys) if isinstance(keys, Sized) else 0
        self._log.info("JWKS for %s: %d keys, fresh for %.0fs", self._label, size, ttl)
        return True

    def _report(self, *, ok: bool) -> None:
        if self._on_fetch is not None:
            self._on_fetch(ok)

    async def _download(self) -> tuple[dict[str, Any], str | None]:
        if self._session is None:
            # As gateway.net.outbound builds them (not imported: the kit stands alone): no
            # proxy or netrc from the environment, no cookies.
            self._session = aiohttp.ClientSession(
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        headers = {"Accept": "application/jwk-set+json, application/json"}
        try:
            # SECURITY: no redirects -- the JWKS location is configuration, never a server's
            # choice (RFC 8725 §3.10: the key source is never chosen by the other side).
            async with self._session.get(
                self.url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise _FetchError(f"HTTP status {resp.status}")
                body = await self._read_capped(resp)
                cache_control = resp.headers.get("Cache-Control")
        except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Session is closed" during shutdown.
            raise _FetchError(type(exc).__name__) from None
        return strict_json_object(body), cache_control

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise _FetchError("response too large")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            body += chunk
            if len(body) > cap:
                raise _FetchError("response too large")
        return bytes(body)
