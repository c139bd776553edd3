"""``token_exchange``: the inbound token exchanged for one for the backend (RFC 8693 §2.1).

The subject token is the verified inbound access token (``subject: inbound``) or the
Txn-Token minted for this request (``subject: txn_token``); with none there is nothing to
exchange and the request fails (503), never passes through. The result, sent as
``Authorization: Bearer``, is cached per subject token (keyed by its SHA-256, so the cache
holds no subject token) until 5 s before it expires, bounded to ``max_cache_entries`` (the
oldest entry goes first; ``0`` caches nothing), with one exchange per key in flight. Client
authentication and failure handling are :mod:`._token_endpoint`'s.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping

from gateway.credentials import BuildContext, ConvertContext, Outbound, Registration
from gateway.credentials._token_endpoint import (
    CredentialUnavailable,
    SingleFlight,
    Token,
    TokenEndpoint,
)
from gateway.settings.credentials import TokenExchangeCredential

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TXN_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:txn_token"  # noqa: S105


class TokenExchangeConverter:
    def __init__(self, name: str, cfg: TokenExchangeCredential) -> None:
        self.name = name
        self._cfg = cfg
        self._endpoint = TokenEndpoint(
            cfg.token_endpoint, cfg.client_id, cfg.client_secret, cfg.auth_method, cfg.timeout_s
        )
        self._cache: OrderedDict[str, Token] = OrderedDict()
        self._flight = SingleFlight()

    async def start(self) -> None:
        await self._endpoint.start()

    async def close(self) -> None:
        await self._endpoint.close()

    def _subject(self, ctx: ConvertContext) -> tuple[str, str]:
        if self._cfg.subject == "txn_token":
            token, kind = ctx.txn_token, TXN_TOKEN_TYPE
        else:
            token, kind = ctx.inbound_token, ACCESS_TOKEN_TYPE
        if not token:
            # SECURITY: nothing to exchange means no credential: refuse, never pass through.
            raise CredentialUnavailable(f"no {self._cfg.subject} subject token to exchange")
        return token, kind

    def _form(self, subject: str, subject_type: str) -> dict[str, str]:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": subject_type,
            "requested_token_type": self._cfg.requested_token_type,
        }
        optional: Mapping[str, str | None] = {
            "audience": self._cfg.audience,
            "resource": self._cfg.resource,
            "scope": self._cfg.scope,
        }
        form.update({k: v for k, v in optional.items() if v})
        return form

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        subject, subject_type = self._subject(ctx)
        key = hashlib.sha256(subject.encode()).hexdigest()
        token = self._cache.get(key)
        if token is None or time.monotonic() >= token.expires_at - 5.0:
            token = await self._flight.run(key, lambda: self._exchange(key, subject, subject_type))
        out.headers["Authorization"] = "Bearer " + token.value

    async def _exchange(self, key: str, subject: str, subject_type: str) -> Token:
        token = await self._endpoint.fetch(self._form(subject, subject_type))
        if self._cfg.max_cache_entries:
            self._cache[key] = token
            self._cache.move_to_end(key)
            while len(self._cache) > self._cfg.max_cache_entries:
                self._cache.popitem(last=False)
        return token


def _build(name: str, cfg: TokenExchangeCredential, ctx: BuildContext) -> TokenExchangeConverter:
    return TokenExchangeConverter(name, cfg)


REGISTRATION = Registration("token_exchange", TokenExchangeCredential, _build)
