"""One issuer's verification keys, from its configuration, over :mod:`gateway.jose.jwks`.

:class:`JWKSClient` serves one issuer's keys, from ``jwks_file`` (read once at ``start()``),
from a development issuer's ``dev_signing_key`` (its public half, the file created at
``start()`` if missing, :mod:`gateway.devtools.devissuer`; logged as a WARNING), or from
``jwks_uri`` through the one cached JWKS fetcher, :class:`gateway.jose.jwks.JWKSCache`
(its rules: bounded fetch, no redirects, at most 1 MiB, ``Cache-Control`` freshness, a
background refresh when the TTL ends, unknown-``kid`` refetch at most once per
``min_refresh_s``, single flight, stale-on-error up to ``max_stale_s``). The session is the
gateway's own (:func:`gateway.net.outbound.client_session`).

This module only binds the issuer's settings to the JOSE layer and maps its outcomes to the
gateway's errors: a key set that is unusable at start is a :class:`gateway.errors.ConfigError`
naming the key; no usable set at request time is :class:`JWKSUnavailable` (503,
``jwks_unavailable``: fail closed); an unknown key is
:class:`gateway.jose.jwks.UnknownKeyError` (a ``JOSEError``: 401 at the caller).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gateway.errors import ConfigError, ServiceUnavailable
from gateway.jose.errors import JOSEError
from gateway.jose.jwks import JWKSCache, JWKSet, UnknownKeyError
from gateway.jose.jwks import JWKSUnavailable as _NoKeys
from gateway.jose.jws import VerificationKey, strict_json_object
from gateway.net.outbound import client_session
from gateway.settings.issuers import Issuer

log = logging.getLogger("agentgate.authn.jwks")

_DEV_ISSUERS_ANNOUNCED: set[tuple[str, Path]] = set()

__all__ = ["JWKSClient", "JWKSUnavailable", "JWKSet", "UnknownKeyError"]


class JWKSUnavailable(ServiceUnavailable):
    reason = "jwks_unavailable"


class DevKeys(Protocol):
    """:func:`gateway.devtools.devissuer.public_jwks`, injected by the composition root.

    ``(JWK Set, created)`` for a development issuer's key file; raises ValueError."""

    def __call__(self, path: Path, algorithms: Collection[str]) -> tuple[dict[str, Any], bool]: ...


class JWKSClient:
    """Verification keys of one issuer; see the module docstring."""

    def __init__(
        self,
        issuer: Issuer,
        *,
        clock: Callable[[], float] = time.monotonic,
        dev_keys: DevKeys | None = None,
    ) -> None:
        self.issuer = issuer
        self._dev_keys = dev_keys
        self._cfg = issuer.jwks_cache
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._cache: JWKSCache[JWKSet] | None = None
        self._static: JWKSet | None = None  # jwks_file or dev_signing_key: never expires
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
        cfg = self._cfg
        self._session = client_session(timeout=aiohttp.ClientTimeout(total=cfg.fetch_timeout_s))
        self._cache = JWKSCache(
            self.issuer.jwks_uri,
            self._parse,
            timeout_s=cfg.fetch_timeout_s,
            min_refresh_s=cfg.min_refresh_s,
            default_ttl_s=cfg.default_ttl_s,
            max_ttl_s=cfg.max_ttl_s,
            max_stale_s=cfg.max_stale_s,
            background_refresh=True,
            session=self._session,
            clock=self._clock,
            label=f"issuer {self.issuer.name}",
            logger=log,
            on_fetch=self._fetched,
        )
        await self._cache.refresh()

    async def close(self) -> None:
        if self._cache is not None:
            await self._cache.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def ready(self) -> bool:
        """Keys are loaded and not stale beyond ``max_stale_s``."""
        if self._static is not None:
            return True
        return self._cache is not None and self._cache.ready()

    @property
    def keys(self) -> JWKSet | None:
        if self._static is not None or self._cache is None:
            return self._static
        return self._cache.keys

    # ------------------------------------------------------------------ lookup

    def fresh_key(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key if the cached set is fresh and has it; None means "call get_key".

        A synchronous fast path for the common case; it never fetches and never raises
        except for a known kid that does not allow ``alg`` (UnknownKeyError).
        """
        keys = self._static
        if keys is None and self._cache is not None:
            keys = self._cache.fresh_keys()
        return None if keys is None else keys.find(kid, alg)

    async def get_key(self, kid: str | None, alg: str) -> VerificationKey:
        """The issuer key for ``kid``/``alg``; raises UnknownKeyError or JWKSUnavailable."""
        if self._static is not None:
            key = self._static.find(kid, alg)
            if key is None:
                raise UnknownKeyError("unknown signing key")
            return key
        cache = self._cache
        if cache is None:
            raise JWKSUnavailable(f"issuer {self.issuer.name}: no JWKS fetched yet")
        try:
            key = (await cache.usable()).find(kid, alg)
            if key is None:
                refetched = await cache.refetch()
                key = refetched.find(kid, alg) if refetched is not None else None
        except _NoKeys as exc:
            raise JWKSUnavailable(f"issuer {self.issuer.name}: {exc}") from None
        if key is None:
            raise UnknownKeyError("unknown signing key")
        return key

    # ------------------------------------------------------------------ loading

    def _parse(self, document: dict[str, Any]) -> JWKSet:
        return JWKSet(document, allowed_algs=self.issuer.algorithms)

    def _fetched(self, ok: bool) -> None:
        if ok:
            self.refreshes += 1
        else:
            self.refresh_failures += 1
        if self.on_refresh is not None:
            self.on_refresh(self.issuer.name, ok)

    def _load_file(self, path: Path) -> None:
        try:
            self._static = self._parse(strict_json_object(path.read_bytes()))
        except (OSError, JOSEError) as exc:
            raise ConfigError([(f"issuers.{self.issuer.name}.jwks_file", str(exc))]) from None
        self.refreshes += 1

    def _load_dev_key(self, path: Path) -> None:
        """A development issuer: the public half of its key file (created if missing)."""
        where = f"issuers.{self.issuer.name}.dev_signing_key"
        if self._dev_keys is None:
            raise ConfigError([(where, "no development key loader was wired in")])
        try:
            public, created = self._dev_keys(path, self.issuer.algorithms)
            self._static = self._parse(public)
        except (ValueError, JOSEError) as exc:
            raise ConfigError([(where, str(exc))]) from None
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
