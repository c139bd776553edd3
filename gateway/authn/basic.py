"""``basic``: HTTP Basic authentication (RFC 7617) against argon2id / bcrypt password hashes.

Contract:

* ``Authorization: Basic <base64(user-id ":" password)>`` (RFC 7617 §2; scheme name
  case-insensitive). No ``Authorization`` header, or another scheme: ``None`` (not mine).
* Malformed credentials -- not strict base64, not UTF-8 (RFC 7617 §2.1 ``charset="UTF-8"``), no
  colon, over-long, control characters -- or a repeated ``Authorization`` header: 400
  ``invalid_request``.
* Unknown user or wrong password: 401 with ``WWW-Authenticate: Basic realm="<realm>"``
  (RFC 7617 §2; Basic has no ``error`` parameter). Both cost one full hash verification: an
  unknown user is checked against a dummy hash built with the parameters of the first user's
  hash, so response time does not reveal which usernames exist.
* Success: a :class:`~gateway.context.Principal` with the user's ``roles`` and ``type``
  (default ``user``), ``amr = ("pwd",)`` (RFC 8176 §2).

CPU-exhaustion protection. Password hashing is deliberately slow, so it never runs on the event
loop: verifications run on a dedicated thread pool of ``max_concurrent_verifications`` workers
(a hard bound on hashing threads even when waiting requests are cancelled), admitted through an
:class:`asyncio.Semaphore` of the same size. At most ``max_waiting`` (default 4x the limit)
requests may wait for a slot; beyond that the request is refused at once with 503
``authn_overloaded`` instead of queueing without bound.

A success cache keyed by HMAC-SHA256(per-process random key, ``user-id ":" password``) remembers
a *correct* credential for ``success_cache_s`` so a client that sends the same Basic header on
every request pays microseconds, not a hash. Failures are never cached. The per-process key
makes cache keys useless outside this process, and no password is ever stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import ClassVar, Self

import argon2
import bcrypt

from gateway.authn.base import authorization
from gateway.authn.base import challenge as make_challenge
from gateway.authn.credfiles import BasicUserRecord, hash_scheme, load_users
from gateway.authn.registry import BuildEnv, register
from gateway.context import Inbound, Principal, RequestFacts
from gateway.errors import BadRequest, ServiceUnavailable, Unauthorized
from gateway.settings.authn import BasicMethod

AMR = ("pwd",)  # RFC 8176 §2
MAX_CREDENTIALS_CHARS = 4096
BCRYPT_MAX_PASSWORD_BYTES = 72
SUCCESS_CACHE_ENTRIES = 10_000

PasswordVerifier = Callable[[str, bytes], bool]
"""``verify(encoded_hash, password) -> matched``; blocking, runs on the worker pool."""


class PasswordMismatch(Exception):
    """The password does not match the hash."""


_ARGON2 = argon2.PasswordHasher()  # verify() reads the cost parameters from each hash


def verify_password(encoded: str, password: bytes) -> bool:
    """Check ``password`` against an argon2id or bcrypt hash (both compare in constant time)."""
    scheme = hash_scheme(encoded)
    try:
        if scheme == "argon2id":
            return _ARGON2.verify(encoded, password)
        if scheme == "bcrypt":
            if len(password) > BCRYPT_MAX_PASSWORD_BYTES:
                # SECURITY: bcrypt reads only 72 bytes; refuse longer passwords instead of
                # truncating (which would accept any suffix), but spend the same time.
                bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], encoded.encode("ascii"))
                return False
            return bcrypt.checkpw(password, encoded.encode("ascii"))
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError, ValueError):
        # A mismatch, or a stored hash the library cannot use: either way, no match.
        return False
    return False


def dummy_hash_like(encoded: str | None) -> str:
    """A hash of a random password with the same algorithm and cost as ``encoded``."""
    password = secrets.token_bytes(16)
    if encoded is not None and hash_scheme(encoded) == "bcrypt":
        rounds = int(encoded[4:6])
        return bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode("ascii")
    if encoded is not None and hash_scheme(encoded) == "argon2id":
        p = argon2.extract_parameters(encoded)
        try:
            hasher = argon2.PasswordHasher(
                time_cost=p.time_cost,
                memory_cost=p.memory_cost,
                parallelism=p.parallelism,
                hash_len=p.hash_len,
                salt_len=p.salt_len,
            )
            return hasher.hash(password)
        except (argon2.exceptions.HashingError, ValueError):
            pass  # parameters argon2 will not hash with: fall back to the library default
    return argon2.PasswordHasher().hash(password)


@register
class BasicAuthenticator:
    type_id: ClassVar[str] = "basic"
    config_model: ClassVar[type[BasicMethod]] = BasicMethod
    primary_rank: ClassVar[int] = 6  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, name: str, cfg: BasicMethod, env: BuildEnv) -> Self:
        return cls(name, cfg)

    def __init__(
        self,
        name: str,
        cfg: BasicMethod,
        *,
        verifier: PasswordVerifier = verify_password,
        max_waiting: int | None = None,
    ) -> None:
        self.name = name
        self._realm = cfg.realm
        self._users = {user.username: user for user in load_users(cfg.users_file)}
        self._template = next(iter(self._users.values())).hash if self._users else None
        self._dummy: str | None = None
        self._verify = verifier
        self._limit = cfg.max_concurrent_verifications
        self._max_waiting = 4 * self._limit if max_waiting is None else max_waiting
        self._slots = asyncio.Semaphore(self._limit)
        self._admitted = 0
        self._pool: ThreadPoolExecutor | None = None
        self._cache_s = cfg.success_cache_s
        self._cache: dict[bytes, tuple[float, BasicUserRecord]] = {}
        self._cache_key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"BasicAuthenticator({self.name!r}, users={len(self._users)})"

    async def start(self) -> None:
        pool = self._executor()
        if self._dummy is None:
            loop = asyncio.get_running_loop()
            self._dummy = await loop.run_in_executor(pool, dummy_hash_like, self._template)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._cache.clear()

    def challenge(self) -> str | None:
        return make_challenge("Basic", realm=self._realm)

    def credential_headers(self) -> tuple[str, ...]:
        return ("Authorization",)

    def credential_query_params(self) -> tuple[str, ...]:
        return ()

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        parsed = authorization(request)
        if parsed is None or parsed[0] != "basic":
            return None
        username, password = self._decode(parsed[1])
        cache_key = hmac.new(
            self._cache_key, username.encode() + b":" + password, hashlib.sha256
        ).digest()
        # SECURITY: the dict is keyed by a keyed MAC of the credential under a per-process
        # random key; lookup timing reveals nothing an attacker can use, and only verified
        # successes are ever stored.
        hit = self._cache.get(cache_key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return self._principal(hit[1])
        user = self._users.get(username)
        # SECURITY: an unknown user still costs one verification (no user enumeration).
        encoded = user.hash if user is not None else await self._dummy_hash()
        matched = await self._verify_bounded(encoded, password)
        if user is None or not matched:
            raise Unauthorized(
                "basic: unknown user or wrong password",
                reason="authn_invalid",
                public="authentication failed",
                headers={"WWW-Authenticate": make_challenge("Basic", realm=self._realm)},
            )
        if self._cache_s > 0:
            self._remember(cache_key, user, now)
        return self._principal(user)

    # ------------------------------------------------------------------ helpers

    def _decode(self, credentials: str) -> tuple[str, bytes]:
        if len(credentials) > MAX_CREDENTIALS_CHARS:
            raise _malformed("Basic credentials too long")
        try:
            raw = base64.b64decode(credentials, validate=True)
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            raise _malformed("malformed Basic credentials") from None
        username, colon, password = text.partition(":")
        if not colon:
            raise _malformed("malformed Basic credentials")
        # RFC 7617 §2: user-id and password must not contain control characters.
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
            raise _malformed("malformed Basic credentials")
        return username, password.encode("utf-8")

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            loop = asyncio.get_running_loop()
            self._dummy = await loop.run_in_executor(
                self._executor(), dummy_hash_like, self._template
            )
        return self._dummy

    async def _verify_bounded(self, encoded: str, password: bytes) -> bool:
        # SECURITY: bound the work queue; a flood of Basic attempts gets fast 503s instead
        # of an unbounded backlog of slow hash computations.
        if self._admitted >= self._limit + self._max_waiting:
            raise ServiceUnavailable(
                "basic: too many password verifications waiting",
                reason="authn_overloaded",
                headers={"Retry-After": "1"},
            )
        self._admitted += 1
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor(), self._verify, encoded, password)
        finally:
            self._admitted -= 1

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._limit, thread_name_prefix=f"agentgate-basic-{self.name}"
            )
        return self._pool

    def _remember(self, key: bytes, user: BasicUserRecord, now: float) -> None:
        if len(self._cache) >= SUCCESS_CACHE_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= SUCCESS_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]  # oldest insertion first
        self._cache[key] = (now + self._cache_s, user)

    def _principal(self, user: BasicUserRecord) -> Principal:
        return Principal(
            method=self.name,
            subject=user.username,
            subject_type=user.type,
            roles=user.roles,
            amr=AMR,
            claims=MappingProxyType({"username": user.username}),
        )


def _malformed(description: str) -> BadRequest:
    return BadRequest(description, reason="invalid_request", public=description)
