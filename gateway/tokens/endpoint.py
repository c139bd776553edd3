"""The Token Service's endpoints on the main listener, and the two calls they make outside it.

:func:`token_endpoints` builds the table ``path -> handler`` that the pipeline serves before
route matching (they are the gateway's own endpoints, never proxied):

* ``GET /.well-known/jwks.json`` (:data:`gateway.tokens.keys.JWKS_PATH`): the public keys of
  the key ring (RFC 7517 §5), whenever ``txn_tokens`` is configured;
* ``POST /token`` (:data:`gateway.tokens.service.TOKEN_PATH`): the Transaction Token Service
  (txn-tokens-10 §11, RFC 8693), only when ``txn_tokens.token_service_clients`` names at least
  one client. Its contract is :mod:`gateway.tokens.service`.

``POST /token`` asks two things of the rest of the gateway, and :class:`TokenExchange` is the
only place that asks them:

* **the PDP** (:meth:`TokenExchange.authorize`), action ``token.exchange``, with the input
  ``exchange_input`` builds (:func:`gateway.authz.exchange.exchange_input`, handed in by the
  composition root so that this stage does not import authz) from the request's facts (the ones the
  pipeline observed for this request, under ``facts_key``; built afresh only if there are
  none). No PDP is a 503
  ``pdp_unavailable`` (fail closed; settings validation already requires one);
* **access-token validation** (:meth:`TokenExchange.validate_access_token`) for a new
  transaction: the authn service's ``bearer`` methods. No authn service is a 401
  (``authn_invalid``), which the service answers as ``invalid_grant``.

Both read the gateway's *current* PDP, authn service and pipeline when a request asks (the
``source``, i.e. :class:`gateway.app.Gateway`), so a reload is seen at once. This module
imports nothing of :mod:`gateway.authn`: the validator is reached through ``source``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from gateway.context import Decision, Identity, RequestFacts
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.tokens.keys import JWKS_PATH, make_jwks_handler
from gateway.tokens.kit import TokenKit
from gateway.tokens.service import TOKEN_PATH, ExchangeRequest, Handler, make_token_handler


class Decides(Protocol):
    """The PDP as the Token Service uses it (:class:`gateway.authz.engine.PolicyDecisionPoint`)."""

    async def decide(
        self, input: dict[str, Any], subject_scopes: Sequence[str] | None
    ) -> Decision: ...


class ValidatesAccessTokens(Protocol):
    """The authn service as the Token Service uses it (``gateway.authn.compose.AuthnService``)."""

    async def validate_access_token(self, token: str) -> Identity: ...


class Observes(Protocol):
    """The pipeline's first stage, for a request that has no observed facts yet."""

    def observe(self, request: web.BaseRequest, request_id: str) -> RequestFacts: ...


class BuildsExchangeInput(Protocol):
    """:func:`gateway.authz.exchange.exchange_input`: the policy input of ``POST /token``."""

    def __call__(
        self,
        facts: RequestFacts,
        *,
        kind: str,
        client: str,
        identity: Identity | None,
        scopes: Sequence[str],
        current_scopes: Sequence[str],
        txn: str | None,
        claims: Mapping[str, Any] | None,
    ) -> dict[str, Any]: ...


class ExchangeSource(Protocol):
    """Where :class:`TokenExchange` finds the current PDP, authn service and pipeline."""

    @property
    def pdp(self) -> Decides | None: ...

    @property
    def authn(self) -> ValidatesAccessTokens | None: ...

    @property
    def pipeline(self) -> Observes: ...


class TokenExchange:
    """The PDP and validation calls of ``POST /token``; see the module docstring."""

    def __init__(
        self,
        source: ExchangeSource,
        facts_key: web.RequestKey[RequestFacts],
        exchange_input: BuildsExchangeInput,
    ) -> None:
        self._source = source
        self._facts_key = facts_key
        self._exchange_input = exchange_input

    async def authorize(self, request: web.BaseRequest, exchange: ExchangeRequest) -> Decision:
        """Ask the PDP about ``POST /token`` (action ``token.exchange``)."""
        source = self._source
        pdp = source.pdp
        if pdp is None:  # settings validation requires a PDP for the Token Service
            raise ServiceUnavailable("no PDP for token exchange", reason="pdp_unavailable")
        facts = request.get(self._facts_key) or source.pipeline.observe(request, str(uuid.uuid4()))
        document = self._exchange_input(
            facts,
            kind=exchange.kind,
            client=exchange.client,
            identity=exchange.identity,
            scopes=exchange.scopes,
            current_scopes=exchange.current_scopes,
            txn=exchange.txn,
            claims=exchange.claims,
        )
        return await pdp.decide(document, exchange.current_scopes)

    async def validate_access_token(self, token: str, request: web.BaseRequest) -> Identity:
        """The subject access token of a new transaction, by the ``bearer`` methods."""
        authn = self._source.authn
        if authn is None:
            # The same 401 (reason authn_invalid) authn.base.invalid_token gives; the service
            # turns any refusal into invalid_grant and logs only the reason.
            raise Unauthorized("no access-token method configured")
        return await authn.validate_access_token(token)


def token_endpoints(
    kit: TokenKit,
    source: ExchangeSource,
    facts_key: web.RequestKey[RequestFacts],
    exchange_input: BuildsExchangeInput,
) -> dict[str, Handler]:
    """The Token Service's table ``path -> handler`` (JWKS always, ``/token`` if clients).

    ``facts_key`` is where the pipeline leaves a request's observed facts
    (:data:`gateway.pipeline.FACTS_KEY`; passed in so that this package does not import the
    pipeline, which imports every stage).
    """
    tt = kit.settings
    endpoints: dict[str, Handler] = {
        JWKS_PATH: make_jwks_handler(kit.keys, max_age_s=tt.jwks_max_age_s)
    }
    if tt.token_service_clients:
        exchange = TokenExchange(source, facts_key, exchange_input)
        endpoints[TOKEN_PATH] = make_token_handler(
            minter=kit.minter,
            verifier=kit.verifier,
            keys=kit.keys,
            authorize=exchange.authorize,
            clients=tt.token_service_clients,
            access_token_validator=exchange.validate_access_token,
        )
    return endpoints
