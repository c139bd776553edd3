"""gateway.admin_api: the revocation admin API (auth, disabled mode, CRUD, JSON errors).

Runs against the memory store on a real aiohttp server; the Redis-backed store gets the
same API in tests/integration/test_redis_state.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin_api import admin_routes
from gateway.settings import Secret
from gateway.state.revocation import MemoryRevocationStore

TOKEN = "admin-token-7f3a9c0e5b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENT = "spiffe://example.org/agent/travel"

ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def store() -> MemoryRevocationStore:
    return MemoryRevocationStore()


async def _client(
    aiohttp_client: ClientMaker, store: MemoryRevocationStore, token: str | None
) -> TestClient[Any, Any]:
    app = web.Application()
    admin_routes(app, store, Secret("env:ADMIN", token.encode()) if token is not None else None)
    return await aiohttp_client(app)


REQUESTS = [
    pytest.param("GET", "/admin/revocations", None, id="list"),
    pytest.param("POST", "/admin/revocations", {"kind": "subject", "value": "a"}, id="create"),
    pytest.param("DELETE", "/admin/revocations/subject/a", None, id="delete"),
    pytest.param("GET", "/admin", None, id="admin-root"),
    pytest.param("PUT", "/admin/anything/else", None, id="unknown-path"),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
@pytest.mark.parametrize("token", [None, ""], ids=["no-token", "empty-token"])
async def test_disabled_without_token_is_404_everywhere(
    aiohttp_client: ClientMaker,
    store: MemoryRevocationStore,
    token: str | None,
    method: str,
    path: str,
    body: Any,
) -> None:
    client = await _client(aiohttp_client, store, token)
    resp = await client.request(method, path, json=body, headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    assert await store.list() == []


AUTH_CASES = [
    pytest.param({}, "bearer token required", id="missing"),
    pytest.param({"Authorization": "Bearer wrong-token"}, "invalid bearer token", id="wrong"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, "invalid bearer token", id="longer"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid bearer token", id="prefix"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, "invalid bearer token", id="wrong-scheme"),
    pytest.param({"Authorization": "Bearer "}, "invalid bearer token", id="empty"),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
@pytest.mark.parametrize(("headers", "detail"), AUTH_CASES)
async def test_unauthenticated_is_401_and_changes_nothing(
    aiohttp_client: ClientMaker,
    store: MemoryRevocationStore,
    headers: dict[str, str],
    detail: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    client = await _client(aiohttp_client, store, TOKEN)
    resp = await client.request(method, path, json=body, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="agentgate-admin"')
    text = await resp.text()
    assert (await resp.json())["detail"] == detail
    assert TOKEN not in text
    assert TOKEN not in str(resp.headers)
    assert await store.list() == []


async def test_lifecycle_create_list_delete(
    aiohttp_client: ClientMaker, store: MemoryRevocationStore
) -> None:
    client = await _client(aiohttp_client, store, TOKEN)
    body = {"kind": "agent", "value": AGENT, "ttl_s": 600, "reason": "key leaked"}
    resp = await client.post("/admin/revocations", json=body, headers=AUTH)
    assert resp.status == 201
    created = await resp.json()
    assert created["kind"] == "agent"
    assert created["value"] == AGENT
    assert created["reason"] == "key leaked"
    assert 599 < created["ttl_s"] <= 600
    location = resp.headers["Location"]
    assert location == "/admin/revocations/agent/spiffe%3A%2F%2Fexample.org%2Fagent%2Ftravel"
    no_kwargs: dict[str, Any] = {"subject": None, "cert_sha256": None, "jti": None, "txn": None}
    assert await store.check(agent=AGENT, **no_kwargs) == "agent"

    await client.post("/admin/revocations", json={"kind": "jti", "value": "j-1"}, headers=AUTH)
    listed = await (await client.get("/admin/revocations", headers=AUTH)).json()
    assert [(r["kind"], r["value"]) for r in listed["revocations"]] == [
        ("agent", AGENT),
        ("jti", "j-1"),
    ]
    assert listed["revocations"][1]["ttl_s"] > 3590  # default one hour
    only = await (await client.get("/admin/revocations?kind=jti", headers=AUTH)).json()
    assert [r["value"] for r in only["revocations"]] == ["j-1"]

    # The Location (percent-encoded) and the raw SPIFFE ID both address the entry.
    resp = await client.delete(location, headers=AUTH)
    assert resp.status == 204
    resp = await client.delete(f"/admin/revocations/agent/{AGENT}", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    assert await store.check(agent=AGENT, **no_kwargs) is None
    resp = await client.delete("/admin/revocations/jti/j-1", headers=AUTH)
    assert resp.status == 204


BAD_BODIES = [
    pytest.param(b"{not json", 400, "invalid_json", id="not-json"),
    pytest.param(b"[1, 2]", 400, "invalid_json", id="not-an-object"),
    pytest.param(b'{"kind": "user", "value": "a"}', 400, "invalid_revocation", id="bad-kind"),
    pytest.param(b'{"kind": "subject"}', 400, "invalid_revocation", id="no-value"),
    pytest.param(
        b'{"kind": "subject", "value": "a", "ttl_s": 0}', 400, "invalid_revocation", id="ttl-zero"
    ),
    pytest.param(
        b'{"kind": "subject", "value": "a", "ttl_s": 2592001}',
        400,
        "invalid_revocation",
        id="ttl-over-30-days",
    ),
    pytest.param(
        b'{"kind": "subject", "value": "a", "until": 5}',
        400,
        "invalid_revocation",
        id="unknown-field",
    ),
    pytest.param(
        b'{"kind": "cert_sha256", "value": "abc"}', 400, "invalid_revocation", id="bad-thumbprint"
    ),
    pytest.param(
        b'{"kind": "subject", "value": "' + b"a" * 9000 + b'"}',
        413,
        "body_too_large",
        id="too-large",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code"), BAD_BODIES)
async def test_create_refuses_bad_bodies_as_json(
    aiohttp_client: ClientMaker, store: MemoryRevocationStore, raw: bytes, status: int, code: str
) -> None:
    client = await _client(aiohttp_client, store, TOKEN)
    resp = await client.post(
        "/admin/revocations", data=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == code
    assert await store.list() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("PUT", "/admin/revocations", 405, id="put-collection"),
        pytest.param("GET", "/admin/revocations/subject/a", 405, id="get-item"),
        pytest.param("GET", "/admin/revocations/subject", 404, id="no-value"),
        pytest.param("GET", "/admin/other", 404, id="unknown"),
        pytest.param("GET", "/admin/revocations?kind=user", 400, id="bad-kind-filter"),
        pytest.param("DELETE", "/admin/revocations/user/a", 400, id="delete-bad-kind"),
    ],
)
async def test_routing_errors_are_json(
    aiohttp_client: ClientMaker, store: MemoryRevocationStore, method: str, path: str, status: int
) -> None:
    client = await _client(aiohttp_client, store, TOKEN)
    resp = await client.request(method, path, headers=AUTH)
    assert resp.status == status
    assert "error" in await resp.json()
