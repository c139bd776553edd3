"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the JSON-RPC routes.

Each ``kind: mcp`` / ``kind: a2a`` route is a protected resource; its metadata is served at
``/.well-known/oauth-protected-resource`` followed by the path of its resource identifier
(RFC 9728 §3.1), the URL every 401 of the route names in ``resource_metadata`` (§5.1). The
document (§2): ``resource``, ``authorization_servers``, ``scopes_supported``,
``bearer_methods_supported`` (``header``: the gateway takes tokens in ``Authorization`` only)
and ``resource_name`` when configured. It is public, like the metadata of an authorization
server, and cacheable for five minutes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.context import RequestFacts
from gateway.enrich.jsonrpc import WELL_KNOWN, resource_for
from gateway.settings.routes import Route

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def metadata_path(route: Route) -> str:
    section = route.jsonrpc
    if section is not None and section.resource is not None:
        path = urlsplit(section.resource).path
    else:
        path = route.match.path_prefix
    return WELL_KNOWN + path.rstrip("/")


def document(route: Route, facts: RequestFacts) -> dict[str, Any]:
    section = route.jsonrpc
    if section is None:  # pragma: no cover - only JSON-RPC routes get an endpoint
        raise ValueError("not a JSON-RPC route")
    doc: dict[str, Any] = {"resource": resource_for(route, facts)}
    if section.authorization_servers:
        doc["authorization_servers"] = list(section.authorization_servers)
    if section.scopes_supported:
        doc["scopes_supported"] = list(section.scopes_supported)
    doc["bearer_methods_supported"] = ["header"]
    if section.resource_name is not None:
        doc["resource_name"] = section.resource_name
    return doc


def metadata_endpoints(
    routes: Sequence[Route], facts_key: web.RequestKey[RequestFacts]
) -> dict[str, Handler]:
    """``{path: handler}`` for the pipeline's own endpoints; the first route of a path wins."""
    endpoints: dict[str, Handler] = {}
    for route in routes:
        if route.jsonrpc is None:
            continue
        endpoints.setdefault(metadata_path(route), _handler(route, facts_key))
    return endpoints


def _handler(route: Route, facts_key: web.RequestKey[RequestFacts]) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        body = json.dumps(document(route, request[facts_key]), separators=(",", ":"))
        return web.Response(
            body=body.encode(),
            content_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return handle
