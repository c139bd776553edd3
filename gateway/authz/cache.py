"""Decision cache: TTL + LRU, invalidated wholesale when the policy changes.

Contract: :meth:`DecisionCache.get` returns a cached :class:`~gateway.context.Decision` or
``None``; :meth:`DecisionCache.put` stores one. Nothing here does I/O or raises.

**Key.** The SHA-256 of a ``marshal`` (format version 2) serialisation of the *whole* policy
input except ``request.id`` and ``request.time_ns`` (unique per request: keeping them would make
every key unique), plus the ``subject_scopes`` the decision was parsed against. Every other
field the policy may read is in the key, so two requests share a decision only if the policy
saw the same facts. ``marshal`` is an exact, type-preserving encoding of dicts, lists, strings,
numbers, booleans and ``None`` (``True`` and ``1`` differ) and about 4x faster than
``json.dumps``; its bytes are only ever compared inside one process, so its lack of a
cross-version format guarantee does not matter. Version 2 is used because later versions
encode shared sub-objects as back-references, which would make equal inputs built from
different objects miss. Keys are not sorted: :func:`gateway.authz.input.build_input` emits keys
in a fixed order and JSON claims keep their token order, so equal facts serialise identically;
differently ordered but equal inputs merely miss. Keys are digests so that an entry costs a
few dozen bytes; a collision needs ~2^128 work.

**Policies and time.** Because ``request.time_ns`` and ``request.id`` are not in the key, a
policy must not depend on them for a cacheable decision. A policy whose outcome reads the clock
(e.g. ``agentgate.abac`` hour windows) marks its decision ``obligations.no_cache: true``; such
decisions, and every PDP error, are never stored. Everything else lives at most ``ttl_s``
(<= 60 s by config, 1 s by default).

**Invalidation.** :meth:`DecisionCache.invalidate` bumps a generation counter and drops every
entry; the engine wrapper calls it whenever the PDP reports a policy reload. An evaluation that
started under an older generation is not stored (see ``generation`` on :meth:`put`).
"""

from __future__ import annotations

import hashlib
import json
import marshal
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.context import Decision

_VOLATILE = ("id", "time_ns")
_MARSHAL_VERSION = 2


def cache_key(input: Mapping[str, Any], subject_scopes: Sequence[str] | None) -> bytes:
    """The cache key of ``input`` (see the module docstring)."""
    request = input.get("request")
    if isinstance(request, Mapping):
        stable = {k: v for k, v in request.items() if k not in _VOLATILE}
        input = {**input, "request": stable}
    scopes = None if subject_scopes is None else list(subject_scopes)
    try:
        encoded = marshal.dumps((dict(input), scopes), _MARSHAL_VERSION)
    except ValueError:  # not plain data: fall back to JSON, which raises a clear TypeError
        encoded = json.dumps([input, scopes], separators=(",", ":"), default=_refuse).encode()
    return hashlib.sha256(encoded).digest()


def _refuse(value: object) -> object:
    raise TypeError(f"policy input cannot hold a {type(value).__name__}")


def cacheable(decision: Decision) -> bool:
    return decision.obligations.get("no_cache") is not True


class DecisionCache:
    """A bounded LRU of decisions with a per-entry TTL; not thread-safe (event-loop only)."""

    __slots__ = ("_clock", "_entries", "generation", "max_entries", "ttl_s")

    def __init__(
        self, ttl_s: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.generation = 0
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: bytes, decision: Decision, *, generation: int) -> None:
        """Store ``decision`` unless caching is off, it says ``no_cache``, or it is stale.

        ``generation`` is :attr:`generation` as read *before* the evaluation started: a
        decision computed by a policy that was replaced meanwhile is dropped.
        """
        if not self.enabled or generation != self.generation or not cacheable(decision):
            return
        self._entries[key] = (self._clock() + self.ttl_s, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self) -> None:
        """Forget everything (policy or data changed)."""
        self.generation += 1
        self._entries.clear()
