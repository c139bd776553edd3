"""Builds every route's converters once and picks the one a request uses.

A route's default credential is ``credential``; when it is absent the default
is ``txn_token`` if the gateway mints Txn-Tokens, otherwise ``none``. A policy
decision may name one of the route's ``credentials`` alternatives (or
``default``); a name the route does not list is refused (403
``credential_not_allowed``): the policy may choose among what the operator
allowed, never invent a credential.

Each credential is built by the converter registered for its ``type``
(:mod:`gateway.credentials.registry`); a type without one is a configuration error.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.credentials import BuildContext, Converter
from gateway.credentials.none import NoneConverter
from gateway.credentials.registry import build
from gateway.credentials.txn_token import TxnTokenConverter
from gateway.errors import Forbidden, ServiceUnavailable
from gateway.settings.credentials import CredentialSettings
from gateway.settings.routes import Route, UpstreamTLS

DEFAULT = "default"


def build_converter(
    name: str,
    cfg: CredentialSettings,
    txn_header: str | None,
    upstream_tls: UpstreamTLS | None = None,
    *,
    where: str = "credential",
) -> Converter:
    """The converter registered for ``cfg.type`` (:mod:`.registry`); ValueError if none."""
    return build(name, cfg, BuildContext(txn_header, upstream_tls), where=where)


class CredentialManager:
    def __init__(self, routes: Sequence[Route], *, txn_header: str | None) -> None:
        self._routes: dict[str, dict[str, Converter]] = {}
        for index, route in enumerate(routes):
            table: dict[str, Converter] = {}
            if route.credential is not None:
                table[DEFAULT] = build_converter(
                    DEFAULT,
                    route.credential,
                    txn_header,
                    route.upstream_tls,
                    where=f"routes.{index}.credential",
                )
            elif txn_header is not None and route.authn is not None:
                # A public route (no authn) never has a Txn-Token to send.
                table[DEFAULT] = TxnTokenConverter(DEFAULT, txn_header)
            else:
                # The documented default, not a fallback: nothing to send.
                table[DEFAULT] = NoneConverter(DEFAULT)
            for alt, cfg in route.credentials.items():
                table[alt] = build_converter(
                    alt,
                    cfg,
                    txn_header,
                    route.upstream_tls,
                    where=f"routes.{index}.credentials.{alt}",
                )
            self._routes[route.name] = table

    def all(self) -> list[Converter]:
        return [conv for table in self._routes.values() for conv in table.values()]

    async def start(self) -> None:
        for conv in self.all():
            await conv.start()

    async def close(self) -> None:
        for conv in self.all():
            await conv.close()

    def uses_txn_token(self, route: str, choice: str | None) -> bool:
        return isinstance(self.select(route, choice), TxnTokenConverter)

    def select(self, route: str, choice: str | None) -> Converter:
        table = self._routes.get(route)
        if table is None:
            raise ServiceUnavailable(f"no credentials built for route {route}")
        conv = table.get(choice or DEFAULT)
        if conv is None:
            raise Forbidden(
                f"decision chose credential {choice!r}, not allowed on route {route}",
                reason="credential_not_allowed",
            )
        return conv
