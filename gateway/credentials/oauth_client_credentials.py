"""``oauth_client_credentials``: a backend token from the OAuth client credentials grant.

RFC 6749 §4.4: one access token for the route, sent as ``Authorization: Bearer`` (RFC 6750
§2.1), cached and refreshed ``refresh_before_s`` before it expires; concurrent requests share
one fetch (single flight). Client authentication and failure handling (503
``credential_unavailable``, never a request without the token) are :mod:`._token_endpoint`'s.
"""

from __future__ import annotations

import time

from gateway.credentials import BuildContext, ConvertContext, Outbound, Registration
from gateway.credentials._token_endpoint import SingleFlight, Token, TokenEndpoint
from gateway.settings.credentials import OAuthClientCredentials


class ClientCredentialsConverter:
    def __init__(self, name: str, cfg: OAuthClientCredentials) -> None:
        self.name = name
        self._cfg = cfg
        self._endpoint = TokenEndpoint(
            cfg.token_endpoint, cfg.client_id, cfg.client_secret, cfg.auth_method, cfg.timeout_s
        )
        self._token: Token | None = None
        self._flight = SingleFlight()

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


def _build(name: str, cfg: OAuthClientCredentials, ctx: BuildContext) -> ClientCredentialsConverter:
    return ClientCredentialsConverter(name, cfg)


REGISTRATION = Registration("oauth_client_credentials", OAuthClientCredentials, _build)
