"""Credential conversion: each backend gets the credential dialect it speaks.

Agents never hold backend secrets; the gateway is the intermediary credential
manager. A route names one default credential (``credential``) and optional
named alternatives (``credentials``) that a policy decision may select.

Every converter has one method, shaped like httpx's ``auth_flow``::

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None

It edits the outbound request (headers, URL, TLS context) in place and raises
:class:`gateway.errors.ServiceUnavailable` (503, generic text) when it cannot
produce its credential: a missing or unreadable secret, a token endpoint that
is down, slow or answering garbage. It never falls back to passthrough or to
no credential. Inbound credentials have already been stripped by the pipeline,
so exactly one credential reaches the upstream.

One module per converter, named after its config ``type`` (``api_key.py`` for
``type: api_key``), each declaring a :class:`Registration`; :mod:`.registry` is the
table of them and :mod:`.manager` builds each route's converters from it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from multidict import CIMultiDict
from pydantic import BaseModel
from yarl import URL

from gateway.context import Identity, RequestFacts
from gateway.settings.routes import UpstreamTLS


@dataclass(slots=True)
class Outbound:
    """The request about to be sent upstream; converters edit it in place."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    ssl_context: ssl.SSLContext | None = None
    # Query parameters that carry a credential: removed from Location/Content-Location of
    # the upstream's response before it reaches the client.
    scrub_query: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ConvertContext:
    facts: RequestFacts
    identity: Identity | None
    txn_token: str | None  # the Txn-Token minted for this request, if any
    # The verified inbound access token, for exchange; never in a repr.
    inbound_token: str | None = field(default=None, repr=False)
    extras: dict[str, str] = field(default_factory=dict)


class Converter(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None: ...


class NoLifecycle:
    """For converters with nothing to open or close."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a converter may need beyond its own config, from the route and the gateway."""

    txn_header: str | None  # ``txn_tokens.header`` when the gateway mints, else None
    upstream_tls: UpstreamTLS | None = None


C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Registration(Generic[C]):
    """One converter: its id (= config ``type`` = module name), config model and factory."""

    id: str
    config: type[C]
    build: Callable[[str, C, BuildContext], Converter]
