"""The OAuth token endpoint shared by ``oauth_client_credentials`` and ``token_exchange``.

:class:`TokenEndpoint` posts a form to the authorization server with client authentication
``client_secret_basic`` (RFC 6749 §2.3.1: id and secret form-encoded, then Basic) or
``client_secret_post`` and reads the token response (RFC 6749 §5.1). Any failure -- connection
refused, timeout, a non-200 answer (a redirect included: none is ever followed), a body that
is not a JSON object with a string ``access_token``, a malformed ``expires_in`` -- raises
:class:`CredentialUnavailable` (503, generic public text); the AS's own ``error`` goes to the
detail only, and no token or secret is ever in a log, an error or a repr.

:class:`SingleFlight` keeps one fetch per key in flight; every waiter gets its result or error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from gateway.errors import ServiceUnavailable
from gateway.net.outbound import client_session
from gateway.secret import Secret

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
        if self._session is None:
            raise RuntimeError("TokenEndpoint.start() was not awaited")
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


class SingleFlight:
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
