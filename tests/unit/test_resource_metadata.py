"""gateway.resource_metadata: RFC 9728 documents for the JSON-RPC routes."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.resource_metadata import document, metadata_endpoints, metadata_path
from gateway.settings.routes import Route
from tests.unit.authz.samples import facts

FACTS = web.RequestKey("facts", object)


def route(**section: object) -> Route:
    return Route.model_validate(
        {"name": "tools", "kind": "mcp", "match": {"path_prefix": "/mcp/"},
         "upstream": "http://127.0.0.1:9000", "mcp": section}
    )  # fmt: skip


def test_document_rfc9728_section_2() -> None:
    configured = route(
        resource="https://gw.example/mcp",
        authorization_servers=["https://idp.example/realms/agents"],
        scopes_supported=["mcp.tools", "payments.write"],
        resource_name="Bank tools",
    )
    assert document(configured, facts("r", "GET", "/")) == {
        "resource": "https://gw.example/mcp",
        "authorization_servers": ["https://idp.example/realms/agents"],
        "scopes_supported": ["mcp.tools", "payments.write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Bank tools",
    }


def test_minimal_document_uses_the_gateway_url() -> None:
    assert document(route(), facts("r", "GET", "/")) == {
        "resource": "https://gateway.example.org:8443/mcp",
        "bearer_methods_supported": ["header"],
    }


def test_paths() -> None:
    assert metadata_path(route()) == "/.well-known/oauth-protected-resource/mcp"
    configured = route(resource="https://gw.example/tools/bank")
    assert metadata_path(configured) == "/.well-known/oauth-protected-resource/tools/bank"
    plain = Route.model_validate({"name": "p", "upstream": "http://127.0.0.1:1"})
    assert metadata_endpoints([plain], FACTS) == {}  # type: ignore[arg-type]


async def test_handler_serves_json_and_refuses_writes() -> None:
    endpoints = metadata_endpoints([route()], FACTS)  # type: ignore[arg-type]
    handler = endpoints["/.well-known/oauth-protected-resource/mcp"]
    request = make_mocked_request("GET", "/.well-known/oauth-protected-resource/mcp")
    request[FACTS] = facts("r", "GET", "/.well-known/oauth-protected-resource/mcp")
    response = await handler(request)
    assert isinstance(response, web.Response)
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body)["resource"] == "https://gateway.example.org:8443/mcp"
    post = make_mocked_request("POST", "/.well-known/oauth-protected-resource/mcp")
    refused = await handler(post)
    assert refused.status == 405
    assert refused.headers["Allow"] == "GET, HEAD"
