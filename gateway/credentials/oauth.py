"""Backend tokens from an OAuth authorization server.

* ``oauth_client_credentials`` -- RFC 6749 §4.4: one token for the route, cached
  and refreshed ``refresh_before_s`` before it expires; concurrent requests
  share one fetch (single flight).
* ``token_exchange`` -- RFC 8693 §2.1: the inbound access token (or the
  Txn-Token) is exchanged for a token for the backend's audience/resource;
  results are cached per (subject token, audience) until they expire, bounded
  in number, again with one fetch per key in flight.

Client authentication is ``client_secret_basic`` (RFC 6749 §2.3.1, form-encoded
id and secret) or ``client_secret_post``. Any failure -- connection refused,
timeout, a non-200 answer (a redirect included: none is ever followed), a body
that is not a JSON object with a string ``access_token`` -- is a 503 with a
generic text; the AS's own error text goes to the log only, and no token or
secret is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from gateway.credentials import ConvertContext, Outbound
from gateway.errors import ServiceUnavailable
from gateway.net.outbound import client_session
from gateway.settings import OAuthClientCredentials, Secret, TokenExchangeCredential

log = logging.getLogger("agentgate.credentials")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TXN_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:txn_token"  # noqa: S105
_MAX_BODY = 256 * 1024


class CredentialUnavailable(ServiceUnavailable):
    reason = "credential_unavailable"


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float  # monotonic seconds


class TokenEndpoint:
    """One AS token endpoint with client authentication."""

    def __init__(
        self,
        url: str,
        client_id: str,
        secret: Secret,
        auth_method: str,
        timeout_s: float,
    ) -> None:
        self._url = url
        self._client_id = client_id
        self._secret = secret
        self._auth_method = auth_method
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = client_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _auth(self, form: dict[str, str]) -> dict[str, str]:
        secret = self._secret.reveal_str()
        if self._auth_method == "client_secret_post":
            form["client_id"] = self._client_id
            form["client_secret"] = secret
            return {}
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
        pair = f"{quote(self._client_id, safe='')}:{quote(secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}

    async def fetch(self, form: dict[str, str]) -> Token:
        assert self._session is not None, "TokenEndpoint.start() was not awaited"
        headers = self._auth(form)
        headers["Accept"] = "application/json"
        try:
            # SECURITY: a redirect is a failure (503), never followed: a 307 would re-send the
            # client secret and the subject token to the Location (issue 12).
            async with self._session.post(
                self._url, data=form, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                body = await resp.content.read(_MAX_BODY)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CredentialUnavailable(f"token endpoint: {type(exc).__name__}") from None
        return _parse_token(status, body)


def _parse_token(status: int, body: bytes) -> Token:
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status != 200 or not isinstance(doc, dict):
        error = doc.get("error") if isinstance(doc, dict) else None
        raise CredentialUnavailable(f"token endpoint answered {status} ({error!r})")
    token = doc.get("access_token")
    expires_in = doc.get("expires_in", 60)
    if not isinstance(token, str) or not token:
        raise CredentialUnavailable("token endpoint answered without an access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise CredentialUnavailable("token endpoint answered a malformed expires_in")
    return Token(token, time.monotonic() + float(expires_in))


class _SingleFlight:
    """At most one fetch per key in flight; every waiter gets its result or error."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[Token]] = {}

    async def run(self, key: str, fetch: Callable[[], Awaitable[Token]]) -> Token:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(fetch())
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)


class ClientCredentialsConverter:
    def __init__(self, name: str, cfg: OAuthClientCredentials) -> None:
        self.name = name
        self._cfg = cfg
        self._endpoint = TokenEndpoint(
            cfg.token_endpoint, cfg.client_id, cfg.client_secret, cfg.auth_method, cfg.timeout_s
        )
        self._token: Token | None = None
        self._flight = _SingleFlight()

    async def start(self) -> None:
        await self._endpoint.start()

    async def close(self) -> None:
        await self._endpoint.close()

    async def _fetch(self) -> Token:
        form = {"grant_type": "client_credentials"}
        if self._cfg.scope:
            form["scope"] = self._cfg.scope
        if self._cfg.audience:
            form["audience"] = self._cfg.audience
        token = await self._endpoint.fetch(form)
        self._token = token
        return token

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        token = self._token
        if token is None or time.monotonic() >= token.expires_at - self._cfg.refresh_before_s:
            token = await self._flight.run("", self._fetch)
        out.headers["Authorization"] = "Bearer " + token.value


class TokenExchangeConverter:
    def __init__(self, name: str, cfg: TokenExchangeCredential) -> None:
        self.name = name
        self._cfg = cfg
        self._endpoint = TokenEndpoint(
            cfg.token_endpoint, cfg.client_id, cfg.client_secret, cfg.auth_method, cfg.timeout_s
        )
        self._cache: OrderedDict[str, Token] = OrderedDict()
        self._flight = _SingleFlight()

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
