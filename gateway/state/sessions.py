"""Session bindings (:class:`gateway.state.SessionBindings`) in one process.

A dict ``sha256(key) -> (sha256(owner), expiry)`` with a bound on live entries: when it is
full and nothing has expired, ``claim`` raises :class:`gateway.state.StateUnavailable`
(fail closed: a session the gateway cannot bind is not created) rather than evicting a
binding, which would let another subject claim that session afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from gateway.state import StateUnavailable


def _h(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class MemorySessionBindings:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._bound: dict[bytes, tuple[bytes, float]] = {}

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        name, who = _h(key), _h(owner)
        held = self._bound.get(name)
        if held is not None and held[1] > now:
            if not hmac.compare_digest(held[0], who):
                return False
        elif len(self._bound) >= self._max:
            self._bound = {k: v for k, v in self._bound.items() if v[1] > now}
            if len(self._bound) >= self._max:
                raise StateUnavailable("session bindings full")
        self._bound[name] = (who, now + ttl_s)
        return True

    async def owned_by(self, key: str, owner: str) -> bool | None:
        held = self._bound.get(_h(key))
        if held is None or held[1] <= time.monotonic():
            return None
        return hmac.compare_digest(held[0], _h(owner))

    async def release(self, key: str, owner: str) -> None:
        name = _h(key)
        held = self._bound.get(name)
        if held is not None and hmac.compare_digest(held[0], _h(owner)):
            del self._bound[name]
