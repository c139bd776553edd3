"""``api_key``: a static, high-entropy key in a request header (or, if configured, a query
parameter), looked up by its SHA-256 (DESIGN.md §4 ``authn.api_key``).

Contract:

* The key travels in ``cfg.header`` (default ``X-API-Key``) and, only when ``cfg.query_param``
  is set, in that query parameter. Neither present: ``None`` (not mine).
* More than one value -- the header repeated, the parameter repeated, or header *and*
  parameter -- is a credential sent twice: 400 ``invalid_request`` (RFC 6750 §3.1 rule). An
  empty, over-long (> 1024 bytes) or non-visible-ASCII value is malformed: 400 as well.
* Unknown key: 401 ``invalid_token`` with a ``Bearer`` challenge (no scheme fits a bare header
  key better, and clients already understand it).
* Known key: a :class:`~gateway.context.Principal` with the record's ``subject``, ``roles`` and
  ``type`` (default ``service``), ``client_id`` = the key's ``id``, and ``amr = ("pwd",)``:
  RFC 8176 §2 has no "API key" value; a shared secret the caller presents verbatim is closest to
  a password (it proves knowledge, not possession of a key).

The pipeline must keep the key away from the upstream (DESIGN.md §5):
:meth:`APIKeyAuthenticator.credential_headers` and
:meth:`APIKeyAuthenticator.credential_query_params` name what to strip.
"""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType
from typing import ClassVar, Self

from gateway.authn.base import invalid_request, invalid_token
from gateway.authn.credfiles import APIKeyRecord, load_api_keys
from gateway.authn.registry import BuildEnv, register
from gateway.context import Inbound, Principal, RequestFacts
from gateway.settings.authn import APIKeyMethod

AMR = ("pwd",)  # RFC 8176 §2
MAX_KEY_BYTES = 1024


@register
class APIKeyAuthenticator:
    type_id: ClassVar[str] = "api_key"
    config_model: ClassVar[type[APIKeyMethod]] = APIKeyMethod
    primary_rank: ClassVar[int] = 5  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, name: str, cfg: APIKeyMethod, env: BuildEnv) -> Self:
        return cls(name, cfg)

    def __init__(self, name: str, cfg: APIKeyMethod) -> None:
        self.name = name
        self._header = cfg.header
        self._query_param = cfg.query_param
        # SECURITY: the index is keyed by SHA-256(key), never by the key. A timing difference
        # in the dict lookup can at most reveal bits of the *digest* of a candidate the
        # attacker already chose, and the digest is not a credential (the presented value is
        # always hashed first), while inverting it for a high-entropy key is infeasible. The
        # final equality is still checked in constant time (belt and braces), and the lookup
        # costs O(1) whatever the number of keys.
        self._by_digest: dict[bytes, APIKeyRecord] = {
            bytes.fromhex(record.sha256): record for record in load_api_keys(cfg.keys_file)
        }

    def __repr__(self) -> str:
        return f"APIKeyAuthenticator({self.name!r}, keys={len(self._by_digest)})"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def challenge(self) -> str | None:
        return None  # the route's Bearer challenge already tells a client to authenticate

    def credential_headers(self) -> tuple[str, ...]:
        """Request headers that carry this method's credential; never forwarded upstream."""
        return (self._header,)

    def credential_query_params(self) -> tuple[str, ...]:
        """Query parameters that carry this method's credential; the pipeline removes them."""
        return (self._query_param,) if self._query_param else ()

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        values = list(request.headers.getall(self._header, ()))
        if self._query_param:
            values += request.query.getall(self._query_param, ())
        if not values:
            return None
        if len(values) > 1:
            raise invalid_request("API key sent more than once")
        key = values[0].strip()
        if not key or len(key) > MAX_KEY_BYTES or not (key.isascii() and key.isprintable()):
            raise invalid_request("malformed API key")
        digest = hashlib.sha256(key.encode("ascii")).digest()
        record = self._by_digest.get(digest)
        # SECURITY: constant-time confirmation of the digest match (CONVENTIONS.md).
        if record is None or not hmac.compare_digest(bytes.fromhex(record.sha256), digest):
            raise invalid_token("unknown API key", detail=f"api key sha256:{digest.hex()[:12]}")
        return Principal(
            method=self.name,
            subject=record.subject,
            subject_type=record.type,
            client_id=record.id,
            roles=record.roles,
            amr=AMR,
            claims=MappingProxyType({"key_id": record.id}),
        )
