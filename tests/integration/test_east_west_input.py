"""``input.txn`` on a live east-west request, through the real mTLS listener (issue 13 item 2).

Before the fix every live request had ``input.txn == {}``, although the README and the golden
inputs promised the transaction there. Here the real :class:`gateway.app.Gateway` (dev PKI,
``client_cert: required``, the embedded PDP over the *shipped* ``policies/``, a temp copy of
``policies/data.json`` with what this hop needs) serves an internal route with
``authn: {all_of: [mtls, txn_token]}``. Service ``booking`` presents a Txn-Token of alice's
transaction, signed with the gateway's own key. The policy input the PDP saw is read back from
the decision log and compared, volatile values masked, with
``tests/golden/live_input_east_west.json`` (regenerate with ``AGENTGATE_UPDATE_GOLDEN=1``).

The shipped ``agentgate.txn`` rules read it: ``data.txn.routes.internal.origins`` accepts
transactions that started on route ``flights`` only, so the same hop of a transaction that
started elsewhere is denied (``txn:origin_not_allowed``) and never reaches the upstream.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.devtools.devpki import issue_leaf, load_issued
from gateway.settings import parse_settings
from gateway.tokens.keys import SigningKey, write_private_key
from gateway.tokens.txn_token import sign_claims
from tests.integration.conftest import tls_block
from tests.support import ROOT, CertPair, TestPKI, Upstream, client_context, wait_until

pytestmark = pytest.mark.integration

TD = "example.org"
TXN_ISSUER = "https://gateway.example.org"
TRAVEL = f"spiffe://{TD}/agent/travel"
BOOKING = f"spiffe://{TD}/service/booking"
TXN_ID = "0b6c5d2e-1111-4222-8333-944455556666"
GOLDEN = ROOT / "tests" / "golden" / "live_input_east_west.json"
# Values that differ per run; the golden file holds "<volatile>" in their place.
VOLATILE = (
    ("request", "id"),
    ("request", "time_ns"),
    ("request", "host"),
    ("route", "upstream"),
    ("source", "peer", "cert_sha256"),
    ("subject", "claims", "iat"),
    ("subject", "claims", "exp"),
)


def policy_data() -> dict[str, Any]:
    """The shipped data plus: traveller may GET /internal/bookings/**, alice's delegation to
    travel and travel's to booking cover route internal, no UTC hour window (no clock)."""
    data: dict[str, Any] = json.loads((ROOT / "policies" / "data.json").read_text())
    data["rbac"]["roles"]["traveller"].append(
        {"methods": ["GET"], "paths": ["/internal/bookings/**"], "scopes": ["flights.read"]}
    )
    data["delegations"]["alice"][TRAVEL]["routes"].append("internal")
    data["delegations"][TRAVEL][BOOKING] = {"routes": ["internal"], "scopes": ["flights.read"]}
    data["abac"]["routes"]["internal"].pop("hours_utc")
    assert data["txn"]["routes"]["internal"] == {"origins": ["flights"]}  # the shipped rule
    return data


@dataclass
class World:
    gw: Gateway
    base: str
    key: SigningKey
    upstream: Upstream
    decision_log: Path
    session: aiohttp.ClientSession

    def txn_token(self, *, origin: str = "flights", hop: int = 1) -> str:
        now = int(time.time())
        claims = {
            "iss": TXN_ISSUER,
            "iat": now,
            "exp": now + 60,
            "aud": TD,
            "txn": TXN_ID,
            "sub": "alice",
            "scope": "flights.read",
            "req_wl": f"spiffe://{TD}/gateway",
            "act": {"sub": TRAVEL},
            "tctx": {
                "route": origin,
                "method": "POST",
                "path": "/flights/42/trips",
                "subject_type": "user",
                "mode": "obo_user",
                "caller": "agent",
            },
            "rctx": {
                "req_ip": "203.0.113.9",
                "authn": ["mfa", "swk"],
                "transport": "https",
                "request_id": "req-ingress",
                "a2a": {"hop": hop, "caller_agent": TRAVEL},
            },
        }
        return sign_claims(self.key, claims)

    async def get(self, path: str, token: str | None) -> tuple[int, str]:
        headers = {"Txn-Token": token} if token else {}
        async with self.session.get(self.base + path, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers["X-Request-Id"]

    async def decision(self, request_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            if self.decision_log.exists():
                for line in self.decision_log.read_text().splitlines():
                    entry = json.loads(line)
                    if entry["request_id"] == request_id:
                        found.append(entry)
            return bool(found)

        await wait_until(ready, timeout=10)
        return found[0]


@pytest.fixture(scope="module")
def booking_cert(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    directory = tmp_path_factory.mktemp("booking")
    issued = issue_leaf(
        load_issued(pki.ca, pki.directory / "ca.key"), common_name="booking", spiffe_id=BOOKING
    )
    pair = CertPair(directory / "booking.pem", directory / "booking.key", BOOKING)
    issued.write(pair.cert, pair.key)
    return pair


@pytest.fixture
async def world(tmp_path: Path, pki: TestPKI, booking_cert: CertPair) -> AsyncIterator[World]:
    upstream = Upstream()
    await upstream.start()
    key = write_private_key(tmp_path / "txn.pem", "ES256")
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(policy_data()))
    decision_log = tmp_path / "decisions.log"
    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "tls": tls_block(pki),
            "trust_domain": TD,
            "timeouts": {"drain_s": 1, "upstream_total_s": 10, "pdp_s": 5},
        },
        "authn": {"mtls": {}, "txn_token": {}},
        "pdp": {
            "engine": "embedded",
            "policies": str(ROOT / "policies"),
            "data": str(data_file),
            "cache": {"ttl_s": 0, "max_entries": 0},
        },
        "txn_tokens": {"issuer": TXN_ISSUER, "signing_key": str(key.path)},
        "telemetry": {"decision_log": str(decision_log), "audit_log": "off"},
        "routes": [
            {
                "name": "internal",
                "match": {"path_prefix": "/internal/"},
                "authn": {"all_of": ["mtls", "txn_token"]},
                "upstream": upstream.url,
                "segment": "internal",
            },
            {
                "name": "m2m",
                "match": {"path_prefix": "/m2m/"},
                "authn": "mtls",
                "upstream": upstream.url,
                "segment": "internal",
            },
        ],
    }
    gw = Gateway(parse_settings(config, tmp_path))
    await gw.start()
    assert gw.main_address is not None
    host, port = gw.main_address
    tls: ssl.SSLContext = client_context(pki, booking_cert)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls), timeout=aiohttp.ClientTimeout(total=30)
    )
    try:
        yield World(gw, f"https://{host}:{port}", key, upstream, decision_log, session)
    finally:
        await session.close()
        await gw.stop()
        await upstream.close()


def masked(document: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(document))
    for path in VOLATILE:
        node = out
        for key in path[:-1]:
            node = node[key]
        assert path[-1] in node, path  # a volatile value that vanished is a change too
        node[path[-1]] = "<volatile>"
    return out


async def test_live_east_west_input_matches_golden(world: World) -> None:
    status, request_id = await world.get("/internal/bookings/42", world.txn_token())
    assert status == 200
    entry = await world.decision(request_id)
    assert entry["result"] == "allow"
    document = masked(entry["input"])
    if os.environ.get("AGENTGATE_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    assert document == json.loads(GOLDEN.read_text())
    # What issue 13 asked for, spelled out (the golden file pins the rest).
    txn = entry["input"]["txn"]
    assert txn["id"] == TXN_ID
    assert txn["scope"] == ["flights.read"]
    assert txn["tctx"]["route"] == "flights"
    assert txn["rctx"]["a2a"] == {"hop": 1, "caller_agent": TRAVEL}
    assert txn["actors"] == [{"sub": TRAVEL}]  # the token's chain; input.actors adds the peer
    assert entry["input"]["actors"] == [{"sub": BOOKING}, {"sub": TRAVEL}]
    assert "iat" not in txn
    assert "exp" not in txn


async def test_shipped_rule_denies_a_transaction_from_another_origin(world: World) -> None:
    status, request_id = await world.get("/internal/bookings/42", world.txn_token(origin="m2m"))
    assert status == 403
    entry = await world.decision(request_id)
    assert entry["reason"] == "txn:origin_not_allowed"
    assert entry["input"]["txn"]["tctx"]["route"] == "m2m"
    assert world.upstream.hits == []


async def test_shipped_rule_bounds_the_hops(world: World) -> None:
    status, request_id = await world.get("/internal/bookings/42", world.txn_token(hop=8))
    assert status == 403
    assert (await world.decision(request_id))["reason"] == "txn:too_many_hops"
    assert world.upstream.hits == []


async def test_no_txn_token_means_empty_txn(world: World) -> None:
    status, request_id = await world.get("/m2m/ping", None)
    entry = await world.decision(request_id)
    assert entry["input"]["txn"] == {}
    assert entry["input"]["authn"]["methods"] == ["mtls"]
    assert status in (200, 403)  # whatever the policy says; the input is what is tested
