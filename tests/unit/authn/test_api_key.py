"""gateway.authn.api_key: static keys looked up by SHA-256 (DESIGN.md §4)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.authn.api_key import APIKeyAuthenticator
from gateway.context import RequestFacts
from gateway.errors import BadRequest, Unauthorized
from gateway.settings import APIKeyMethod
from tests.support import inbound

KEY = "agk_7f3c0e9b5d2a4e81b6c9d0f1a2b3c4d5"
OTHER = "agk_00000000000000000000000000000000"


def _facts() -> RequestFacts:
    return RequestFacts(
        request_id="r1",
        method="GET",
        scheme="https",
        host="gw.example.org",
        path="/x",
        raw_query="",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto="https",
        forwarded_host="gw.example.org",
        peer=None,
        time_ns=1_700_000_000 * 10**9,
    )


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys.yaml"
    entries = [
        {
            "id": "partner-1",
            "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
            "subject": "partner-agent-1",
            "roles": ["partner"],
            "type": "agent",
        },
        {"id": "batch", "sha256": hashlib.sha256(OTHER.encode()).hexdigest(), "subject": "b"},
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def _method(keys_file: Path, **cfg: Any) -> APIKeyAuthenticator:
    return APIKeyAuthenticator("api", APIKeyMethod(keys_file=keys_file, **cfg))


def _request(target: str = "/x", headers: list[tuple[str, str]] | None = None) -> Any:
    return inbound(make_mocked_request("GET", target, headers=CIMultiDict(headers or [])))


async def test_known_key_in_header(keys_file: Path) -> None:
    principal = await _method(keys_file).authenticate(
        _request(headers=[("X-API-Key", KEY)]), _facts()
    )
    assert principal is not None
    assert principal.method == "api"
    assert (principal.subject, principal.subject_type, principal.client_id) == (
        "partner-agent-1",
        "agent",
        "partner-1",
    )
    assert principal.roles == ("partner",)
    assert principal.amr == ("pwd",)
    assert dict(principal.claims) == {"key_id": "partner-1"}


async def test_type_defaults_to_service(keys_file: Path) -> None:
    principal = await _method(keys_file).authenticate(
        _request(headers=[("x-api-key", OTHER)]), _facts()
    )
    assert principal is not None
    assert (principal.client_id, principal.subject_type) == ("batch", "service")


async def test_custom_header_and_query_param(keys_file: Path) -> None:
    method = _method(keys_file, header="X-Partner-Key", query_param="api_key")
    by_header = await method.authenticate(_request(headers=[("X-Partner-Key", KEY)]), _facts())
    by_query = await method.authenticate(_request(f"/x?a=1&api_key={KEY}"), _facts())
    assert by_header is not None
    assert by_query is not None
    assert by_header.client_id == by_query.client_id == "partner-1"
    assert method.credential_query_params() == ("api_key",)
    assert method.credential_headers() == ("X-Partner-Key",)


NOT_MINE_CASES = [
    pytest.param({}, "/x", [], id="nothing-sent"),
    pytest.param({}, f"/x?api_key={KEY}", [], id="query-ignored-unless-configured"),
    pytest.param({}, "/x", [("Authorization", f"Bearer {KEY}")], id="other-header"),
]


@pytest.mark.parametrize(("cfg", "target", "headers"), NOT_MINE_CASES)
async def test_not_mine(
    keys_file: Path, cfg: dict[str, Any], target: str, headers: list[tuple[str, str]]
) -> None:
    method = _method(keys_file, **cfg)
    assert await method.authenticate(_request(target, headers), _facts()) is None


BAD_REQUEST_CASES = [
    pytest.param({}, "/x", [("X-API-Key", KEY), ("X-API-Key", KEY)], id="header-twice"),
    pytest.param({}, "/x", [("X-API-Key", KEY), ("X-API-Key", OTHER)], id="two-keys"),
    pytest.param(
        {"query_param": "api_key"}, f"/x?api_key={KEY}", [("X-API-Key", KEY)], id="header-and-query"
    ),
    pytest.param(
        {"query_param": "api_key"}, f"/x?api_key={KEY}&api_key={KEY}", [], id="query-twice"
    ),
    pytest.param({}, "/x", [("X-API-Key", "   ")], id="empty"),
    pytest.param({}, "/x", [("X-API-Key", "ключ")], id="non-ascii"),
    pytest.param({}, "/x", [("X-API-Key", "a" * 1025)], id="too-long"),
]


@pytest.mark.parametrize(("cfg", "target", "headers"), BAD_REQUEST_CASES)
async def test_malformed_or_duplicate_is_400(
    keys_file: Path, cfg: dict[str, Any], target: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(BadRequest) as exc:
        await _method(keys_file, **cfg).authenticate(_request(target, headers), _facts())
    assert (exc.value.status, exc.value.reason) == (400, "invalid_request")
    assert KEY not in str(exc.value)
    assert KEY not in exc.value.public


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param(KEY[:-1] + "6", id="one-char-off"),
        pytest.param(KEY.upper(), id="case-differs"),
        pytest.param(hashlib.sha256(KEY.encode()).hexdigest(), id="the-stored-digest-itself"),
    ],
)
async def test_unknown_key_is_401(keys_file: Path, presented: str) -> None:
    with pytest.raises(Unauthorized) as exc:
        await _method(keys_file).authenticate(
            _request(headers=[("X-API-Key", presented)]), _facts()
        )
    assert exc.value.status == 401
    challenge = exc.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="agentgate", error="invalid_token"')
    for text in (str(exc.value), exc.value.detail, exc.value.public, challenge, repr(exc.value)):
        assert presented not in text


def test_repr_and_challenge_show_no_key_material(keys_file: Path) -> None:
    method = _method(keys_file)
    assert repr(method) == "APIKeyAuthenticator('api', keys=2)"
    assert method.challenge() is None
