"""The policy input for ``POST /token`` (the Transaction Token Service, action ``token.exchange``).

It is the ordinary input document (DESIGN.md §7) of the requesting workload's call,
with the route replaced by the Token Service itself and two additions:

* ``action``: ``"token.exchange"``;
* ``exchange``: ``kind`` (``new`` | ``replacement``), ``client`` (the requester's SPIFFE
  ID), ``requested_scopes``, ``current_scopes`` and, for a replacement, ``txn``.

For a replacement the subject is the Txn-Token's ``sub`` and ``txn`` holds its
verified ``tctx``; for a new transaction the subject is the validated access token's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.authz.input import build_input, derive_segment
from gateway.context import Identity, RequestFacts
from gateway.routing import CompiledRoute
from gateway.settings.routes import Route

TOKEN_SERVICE_ROUTE = "token-service"  # noqa: S105 - a route name


def exchange_input(
    facts: RequestFacts,
    *,
    kind: str,
    client: str,
    identity: Identity | None,
    scopes: Sequence[str],
    current_scopes: Sequence[str],
    txn: str | None,
    claims: Mapping[str, Any] | None,
) -> dict[str, Any]:
    segment = derive_segment(facts.peer)
    route = CompiledRoute.of(
        Route(
            name=TOKEN_SERVICE_ROUTE,
            upstream="http://127.0.0.1:1",
            segment=segment,
            tags=("token-service",),
        )
    )
    tctx = claims.get("tctx") if claims is not None else None
    document = build_input(
        facts,
        route,
        identity,
        {},
        {},
        txn={"txn": txn, "tctx": tctx} if txn else None,
    )
    document["route"]["upstream"] = ""
    document["action"] = "token.exchange"
    document["exchange"] = {
        "kind": kind,
        "client": client,
        "requested_scopes": sorted(scopes),
        "current_scopes": sorted(current_scopes),
        "txn": txn,
    }
    if identity is None and claims is not None:
        document["subject"] = {
            "id": claims.get("sub"),
            "type": (tctx or {}).get("subject_type") if isinstance(tctx, Mapping) else None,
            "issuer": claims.get("iss"),
            "scopes": sorted(current_scopes),
            "client_id": None,
            "claims": {},
        }
    return document
