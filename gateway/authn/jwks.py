"""Issuer verification keys: a JWK Set (RFC 7517 §5) and a caching client per issuer.

:class:`JWKSet` turns a JWKS document into :class:`gateway.authn.jose.VerificationKey` values,
each usable only for the algorithm its JWK ``alg`` names (RFC 8725 §3.1). A JWK without
``alg`` gets the single algorithm its curve implies (EC P-256 -> ES256, P-384 -> ES384,
P-521 -> ES512, OKP -> EdDSA); an RSA JWK without ``alg`` may be used with the issuer's
configured RSA algorithms only. Symmetric (``oct``) keys, keys with private members,
``use: enc`` keys, keys whose ``key_ops`` exclude ``verify``, and keys for algorithms the
issuer does not allow are skipped with a log line; a malformed key never fails the whole set.

:class:`JWKSClient` serves one issuer's keys, from ``jwks_file`` (read once at ``start()``),
from a development issuer's ``dev_signing_key`` (its public half, the file created at
``start()`` if missing, :mod:`gateway.devtools.devissuer`; logged as a WARNING), or from
``jwks_uri``:

* fetched with its own ``aiohttp`` session: ``fetch_timeout_s``, no redirects, at most 1 MiB,
  HTTP 200 with a JSON object holding a ``keys`` array (RFC 7517 §5);
* fresh for ``Cache-Control: max-age`` clamped to ``[min_refresh_s, max_ttl_s]``
  (``default_ttl_s`` when absent, ``min_refresh_s`` on ``no-store``/``no-cache``; RFC 9111
  §5.2.2); when the TTL ends, the next request starts a background refresh and keeps being
  served from the cached set meanwhile;
* an unknown ``kid`` triggers a refetch at most once per ``min_refresh_s``; concurrent callers
  share one fetch (single flight); still unknown afterwards -> :class:`UnknownKeyError`;
* a failed refresh keeps the old set in service until it has been stale (past its TTL) for
  ``max_stale_s``; after that, or before any successful fetch, ``get_key`` raises
  :class:`gateway.errors.ServiceUnavailable` (503, ``jwks_unavailable``): fail closed.

Nothing from aiohttp's exception tree escapes this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from gateway.authn.jose import (
    RSA_ALGS,
    TokenError,
    VerificationKey,
    public_key_from_jwk,
    strict_json_object,
)
from gateway.errors import ConfigError, ServiceUnavailable
from gateway.net.outbound import client_session
from gateway.settings import Issuer

log = logging.getLogger("agentgate.authn.jwks")

MAX_JWKS_BYTES = 1 << 20
_DEV_ISSUERS_ANNOUNCED: set[tuple[str, Path]] = set()
MAX_KEYS = 100


class UnknownKeyError(TokenError):
    """No key of the issuer matches the token's ``kid`` and ``alg``."""


class JWKSUnavailable(ServiceUnavailable):
    reason = "jwks_unavailable"


class JWKSet:
    """The usable verification keys of one JWKS document, by ``kid``."""

    def __init__(self, document: Mapping[str, Any], *, allowed_algs: Collection[str]) -> None:
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise TokenError("JWKS has no keys array")
        self._allowed = frozenset(allowed_algs)
        self._by_kid: dict[str | None, list[VerificationKey]] = {}
        for index, jwk in enumerate(keys[:MAX_KEYS]):
            try:
                key = self._key(jwk)
            except TokenError as exc:
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
            raise TokenError("not a JSON object")
        if jwk.get("use", "sig") != "sig":
            raise TokenError("not a signature key (use)")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise TokenError("key_ops does not allow verify")
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
            raise TokenError("malformed kid")
        key, possible = public_key_from_jwk(jwk)
        algs = self._usable_algs(jwk.get("alg"), possible)
        return VerificationKey(kid=kid, algs=algs, key=key)

    def _usable_algs(self, alg: Any, possible: frozenset[str]) -> frozenset[str]:
        if alg is not None:
            if not isinstance(alg, str) or alg not in possible:
                raise TokenError("alg does not fit the key type")
            usable = frozenset({alg})
        elif possible <= RSA_ALGS:
            # An RSA JWK without alg: only the RSA algorithms this issuer is configured for.
            usable = possible
        else:
            usable = possible  # EC and OKP imply exactly one algorithm
        usable &= self._allowed
        if not usable:
            raise TokenError("key algorithm not allowed for this issuer")
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


class _FetchError(Exception):
    pass


class JWKSClient:
    """Verification keys of one issuer; see the module docstring for the caching rules."""

    def __init__(self, issuer: Issuer, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self._cfg = issuer.jwks_cache
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._keys: JWKSet | None = None
        self._expires_at = 0.0  # end of freshness (clock time)
        self._last_attempt = -math.inf
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0  # successful fetches (metrics)
        self.refresh_failures = 0
        # Called with (issuer name, ok) after every fetch; the app points it at the metrics.
        self.on_refresh: Callable[[str, bool], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.issuer.dev_signing_key is not None:
            self._load_dev_key(self.issuer.dev_signing_key)
            return
        if self.issuer.jwks_file is not None:
            self._load_file(self.issuer.jwks_file)
            return
        if self.issuer.jwks_uri is None:
            return  # an introspection-only issuer
        timeout = aiohttp.ClientTimeout(total=self._cfg.fetch_timeout_s)
        self._session = client_session(timeout=timeout)
        await self._refresh()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def ready(self) -> bool:
        """Keys are loaded and not stale beyond ``max_stale_s``."""
        return self._keys is not None and not self._too_stale(self._clock())

    @property
    def keys(self) -> JWKSet | None:
        return self._keys

    # ------------------------------------------------------------------ lookup

    def fresh_key(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key if the cached set is fresh and has it; None means "call get_key".

        A synchronous fast path for the common case; it never fetches and never raises
        except for a known kid that does not allow ``alg`` (UnknownKeyError).
        """
        keys = self._keys
        if keys is None or self._clock() >= self._expires_at:
            return None
        return keys.find(kid, alg)

    async def get_key(self, kid: str | None, alg: str) -> VerificationKey:
        """The issuer key for ``kid``/``alg``; raises UnknownKeyError or JWKSUnavailable."""
        now = self._clock()
        keys = self._keys
        if keys is None or self._too_stale(now):
            if self._may_fetch(now):
                await self._refresh()
            keys = self._usable_keys()
        elif now >= self._expires_at and self._may_fetch(now):
            self._start_fetch()  # SECURITY-neutral: serve cached keys while refreshing
        key = keys.find(kid, alg)
        if key is None and self._may_fetch(now):
            await self._refresh()
            key = self._usable_keys().find(kid, alg)
        if key is None:
            raise UnknownKeyError("unknown signing key")
        return key

    def _usable_keys(self) -> JWKSet:
        keys = self._keys
        if keys is None:
            raise JWKSUnavailable(f"issuer {self.issuer.name}: no JWKS fetched yet")
        if self._too_stale(self._clock()):
            # SECURITY: fail closed once the cached set is older than the operator allows.
            raise JWKSUnavailable(f"issuer {self.issuer.name}: JWKS stale beyond max_stale_s")
        return keys

    def _too_stale(self, now: float) -> bool:
        return now > self._expires_at + self._cfg.max_stale_s

    def _may_fetch(self, now: float) -> bool:
        if self._session is None:
            return False
        if self._task is not None and not self._task.done():
            return True  # join the fetch in flight
        return now - self._last_attempt >= self._cfg.min_refresh_s

    # ------------------------------------------------------------------ fetching

    def _start_fetch(self) -> asyncio.Task[None]:
        task = self._task
        if task is None or task.done():
            self._last_attempt = self._clock()
            task = self._task = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return task

    async def _refresh(self) -> None:
        """Single flight: wait for the fetch in progress, starting one if there is none."""
        # shield: a caller that is cancelled must not cancel the fetch others are awaiting.
        await asyncio.shield(self._start_fetch())

    async def _fetch(self) -> None:
        session, uri = self._session, self.issuer.jwks_uri
        if session is None or uri is None:
            return
        try:
            document, cache_control = await _download(session, uri)
            keys = JWKSet(document, allowed_algs=self.issuer.algorithms)
        except (_FetchError, TokenError) as exc:
            self.refresh_failures += 1
            self._report(ok=False)
            log.warning("JWKS refresh for issuer %s failed: %s", self.issuer.name, exc)
            return
        ttl = parse_cache_control(
            cache_control,
            min_s=self._cfg.min_refresh_s,
            default_s=self._cfg.default_ttl_s,
            max_s=self._cfg.max_ttl_s,
        )
        self._keys, self._expires_at = keys, self._clock() + ttl
        self.refreshes += 1
        self._report(ok=True)
        log.info("JWKS for issuer %s: %d keys, fresh for %.0fs", self.issuer.name, len(keys), ttl)

    def _report(self, *, ok: bool) -> None:
        if self.on_refresh is not None:
            self.on_refresh(self.issuer.name, ok)

    def _load_file(self, path: Path) -> None:
        try:
            document = strict_json_object(path.read_bytes())
            self._keys = JWKSet(document, allowed_algs=self.issuer.algorithms)
        except (OSError, TokenError) as exc:
            raise ConfigError([(f"issuers.{self.issuer.name}.jwks_file", str(exc))]) from None
        self._expires_at = math.inf
        self.refreshes += 1

    def _load_dev_key(self, path: Path) -> None:
        """A development issuer: the public half of its key file (created if missing)."""
        # Imported here: production configurations never load the dev issuer's code.
        from gateway.devtools.devissuer import DevIssuerError, jwks, load_or_create

        try:
            key, created = load_or_create(path, self.issuer.algorithms)
            self._keys = JWKSet(jwks(key), allowed_algs=self.issuer.algorithms)
        except (DevIssuerError, TokenError) as exc:
            raise ConfigError([(f"issuers.{self.issuer.name}.dev_signing_key", str(exc))]) from None
        self._expires_at = math.inf
        self.refreshes += 1
        # Once per process and key file: two bearer methods on one issuer, or a reload, need
        # no second line (a key created now is always announced).
        if (self.issuer.name, path) in _DEV_ISSUERS_ANNOUNCED and not created:
            return
        _DEV_ISSUERS_ANNOUNCED.add((self.issuer.name, path))
        # SECURITY: say it loudly -- whoever can read this file can mint accepted tokens.
        log.warning(
            "issuer %s is a DEVELOPMENT issuer: tokens signed with %s%s (agentgate token "
            "mint-access) are trusted; never use dev_signing_key in production",
            self.issuer.name,
            path,
            " (key created)" if created else "",
        )


async def _download(session: aiohttp.ClientSession, uri: str) -> tuple[dict[str, Any], str | None]:
    headers = {"Accept": "application/jwk-set+json, application/json"}
    try:
        # SECURITY: no redirects -- the JWKS location is configuration, never a server's choice.
        async with session.get(uri, headers=headers, allow_redirects=False) as resp:
            if resp.status != 200:
                raise _FetchError(f"HTTP status {resp.status}")
            body = await _read_capped(resp, MAX_JWKS_BYTES)
            cache_control = resp.headers.get("Cache-Control")
    except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
        # RuntimeError: aiohttp's "Session is closed" during shutdown.
        raise _FetchError(type(exc).__name__) from None
    return strict_json_object(body), cache_control


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    if resp.content_length is not None and resp.content_length > cap:
        raise _FetchError("response too large")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > cap:
            raise _FetchError("response too large")
    return bytes(body)
