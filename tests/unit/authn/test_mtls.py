"""gateway.authn.mtls: the verified client certificate as a principal (SPECS.md §11)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.authn.mtls import MTLSAuthenticator
from gateway.context import Peer, RequestFacts
from gateway.errors import Unauthorized
from gateway.settings import MTLSMethod
from tests.support import inbound

TRUST_DOMAIN = "example.org"


def _peer(spiffe_id: str | None) -> Peer:
    trust_domain = spiffe_id.removeprefix("spiffe://").split("/")[0] if spiffe_id else None
    return Peer(
        spiffe_id=spiffe_id,
        trust_domain=trust_domain,
        cert_sha256="ab" * 32,
        cert_x5t_s256="q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s",
        subject="CN=legacy-client,O=Example",
        issuer="CN=Example CA",
        not_after=1_900_000_000.0,
    )


def _facts(peer: Peer | None) -> RequestFacts:
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
        peer=peer,
        time_ns=1_700_000_000 * 10**9,
    )


def _method(**cfg: Any) -> MTLSAuthenticator:
    return MTLSAuthenticator("mtls", MTLSMethod(**cfg), trust_domain=TRUST_DOMAIN)


async def test_no_client_certificate_is_not_mine() -> None:
    assert (
        await _method().authenticate(inbound(make_mocked_request("GET", "/x")), _facts(None))
        is None
    )


PRINCIPAL_CASES = [
    pytest.param({}, "spiffe://example.org/agent/travel", "agent", id="agent-path"),
    pytest.param({}, "spiffe://example.org/device/cam-1", "device", id="device-path"),
    pytest.param({}, "spiffe://example.org/user/alice", "user", id="user-path"),
    pytest.param({}, "spiffe://example.org/ns/prod/billing", "service", id="default-service"),
    pytest.param({}, "spiffe://example.org/agentx/y", "service", id="prefix-is-literal"),
    pytest.param(
        {"subject_types": {"/agent/": "agent", "/agent/edge/": "device"}},
        "spiffe://example.org/agent/edge/cam",
        "device",
        id="longest-prefix-wins-regardless-of-order",
    ),
    pytest.param(
        {"trust_domains": ["partner.example"]},
        "spiffe://partner.example/agent/p",
        "agent",
        id="extra-trust-domain",
    ),
]


@pytest.mark.parametrize(("cfg", "spiffe_id", "subject_type"), PRINCIPAL_CASES)
async def test_spiffe_peer_becomes_principal(
    cfg: dict[str, Any], spiffe_id: str, subject_type: str
) -> None:
    principal = await _method(**cfg).authenticate(
        inbound(make_mocked_request("GET", "/x")), _facts(_peer(spiffe_id))
    )
    assert principal is not None
    trust_domain = spiffe_id.split("/")[2]
    assert principal.method == "mtls"
    assert principal.subject == spiffe_id
    assert principal.subject_type == subject_type
    assert principal.issuer == f"spiffe://{trust_domain}"
    assert principal.amr == ("swk",)
    assert principal.sender_constraint == "none"
    assert dict(principal.claims) == {
        "spiffe_id": spiffe_id,
        "trust_domain": trust_domain,
        "cert_sha256": "ab" * 32,
    }
    assert principal.expires_at == 1_900_000_000.0


REFUSED_CASES = [
    pytest.param({}, "spiffe://evil.example/agent/travel", id="foreign-trust-domain"),
    pytest.param({}, None, id="no-spiffe-id-while-required"),
    pytest.param(
        {"trust_domains": ["partner.example"]},
        "spiffe://other.example/agent/x",
        id="unlisted-trust-domain",
    ),
]


@pytest.mark.parametrize(("cfg", "spiffe_id"), REFUSED_CASES)
async def test_unacceptable_peer_is_401(cfg: dict[str, Any], spiffe_id: str | None) -> None:
    with pytest.raises(Unauthorized) as exc:
        await _method(**cfg).authenticate(
            inbound(make_mocked_request("GET", "/x")), _facts(_peer(spiffe_id))
        )
    assert exc.value.status == 401
    assert exc.value.reason == "authn_invalid"
    assert exc.value.headers["WWW-Authenticate"] == 'Bearer realm="agentgate"'


async def test_non_spiffe_peer_allowed_when_not_required() -> None:
    principal = await _method(require_spiffe_id=False).authenticate(
        inbound(make_mocked_request("GET", "/x")), _facts(_peer(None))
    )
    assert principal is not None
    assert (principal.subject, principal.subject_type, principal.issuer) == (
        "CN=legacy-client,O=Example",
        "service",
        "CN=Example CA",
    )


def test_no_http_challenge() -> None:
    assert _method().challenge() is None
