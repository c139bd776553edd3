"""Keycloak goes down and comes back under the OAuth credential converters; the gateway stays up.

A real Keycloak (``tests/keycloak_server.py``: dev mode, in-memory database, the
``agentgate-test`` realm) is the authorization server of three routes of one gateway
subprocess:

* ``/cc/`` -- ``oauth_client_credentials`` with ``refresh_before_s`` above the token lifetime,
  so every request asks Keycloak (the outage shows at once);
* ``/cached/`` -- the same grant with the default caching: its token keeps serving while
  Keycloak is away (a cached credential does not depend on the AS being up);
* ``/tx/`` -- RFC 8693 ``token_exchange`` of the caller's Keycloak access token, cache off
  (``max_cache_entries: 0``), so every request is an exchange.

Keycloak is stopped (SIGTERM) under a paced stream, kept down, then started again on the same
port (a fresh in-memory realm, recreated through the admin API: new signing keys, no sessions,
so the caller gets a new access token, as after any IdP restart). Before: all 2xx. Down, and
while it starts: ``/cc/`` and ``/tx/`` answer 503 (fail closed, bounded by ``timeout_s``),
``/cached/`` 2xx. After: all 2xx again with no gateway restart. Never a 500 or a client
timeout; the upstream saw each 2xx once and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.faults import (
    FAULT_ID,
    LOCALHOST,
    CountingUpstream,
    Outcome,
    assert_accounted,
    stream,
    tally,
)
from tests.keycloak_server import (
    ADMIN_PASSWORD,
    Keycloak,
    _create_realm,
    _wait_ready,
    keycloak_home,
    require_real,
)
from tests.support import GatewayProcess, free_port

pytestmark = pytest.mark.integration

RATE = 15.0
AS_TIMEOUT_S = 1.0  # the converters' timeout_s
API_KEY = "faults-api-key-" + "5TqX2v8LmW3zR7cN1pY4"
GatewayStarter = Callable[[Mapping[str, Any]], Awaitable[GatewayProcess]]


class RestartableKeycloak:
    """``kc.sh start-dev`` on a fixed loopback port that can be stopped and started again."""

    def __init__(self, log_path: Path) -> None:
        home = keycloak_home()
        require_real("keycloak", home is not None)
        assert home is not None
        self.home = home
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def kc(self) -> Keycloak:
        return Keycloak(f"http://{LOCALHOST}:{self.port}")

    def start(self) -> None:
        """Start and wait for it, then create the realm (blocking; run it in a thread)."""
        env = dict(
            os.environ,
            KC_BOOTSTRAP_ADMIN_USERNAME="admin",
            KC_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
            JAVA_OPTS_APPEND="-Xms256m -Xmx768m",
        )
        cmd = [
            str(self.home / "bin" / "kc.sh"),
            "start-dev",
            "--db=dev-mem",
            f"--http-port={self.port}",
            f"--http-host={LOCALHOST}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_ready(self.kc.base, self.proc, deadline_s=240)
        _create_realm(self.kc.base)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableKeycloak]:
    server = RestartableKeycloak(tmp_path_factory.mktemp("keycloak") / "keycloak.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def counting() -> AsyncIterator[CountingUpstream]:
    up = CountingUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


def gateway_config(
    tmp_path: Path, kc: Keycloak, upstream: CountingUpstream, secrets_dir: Path
) -> dict[str, Any]:
    keys = tmp_path / "api-keys.yaml"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    keys.write_text(f"keys:\n  - id: k\n    sha256: {digest}\n    subject: partner\n")
    (secrets_dir / "cc").write_text("cc-test-secret")  # tests/fixtures/keycloak/realm.json
    (secrets_dir / "gw").write_text("gw-test-secret")

    def cc(**extra: Any) -> dict[str, Any]:
        return {
            "type": "oauth_client_credentials",
            "token_endpoint": kc.token_endpoint,
            "client_id": "billing-backend-client",
            "client_secret": f"file:{secrets_dir / 'cc'}",
            "timeout_s": AS_TIMEOUT_S,
            **extra,
        }

    def route(name: str, authn: str, credential: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"path_prefix": f"/{name}/"},
            "authn": authn,
            "upstream": upstream.url,
            "credential": credential,
        }

    return {
        "server": {
            "listen": f"{LOCALHOST}:0",
            "admin_listen": f"{LOCALHOST}:0",
            "timeouts": {"drain_s": 1, "upstream_connect_s": 1, "upstream_total_s": 10},
        },
        "issuers": [
            {
                "name": "keycloak",
                "issuer": kc.issuer,
                "jwks_uri": f"{kc.issuer}/protocol/openid-connect/certs",
                "audience": "agentgate",
                "algorithms": ["RS256"],
                "require_typ": None,
                # A restarted realm signs with new keys: pick them up within a second.
                "jwks_cache": {"min_refresh_s": 1, "max_stale_s": 3600},
            }
        ],
        "authn": {"api_key": {"keys_file": str(keys)}, "bearer": {"issuers": ["keycloak"]}},
        "telemetry": {"audit_log": "off"},
        "routes": [
            route("cc", "api_key", cc(refresh_before_s=10**6)),  # every request asks Keycloak
            route("cached", "api_key", cc()),
            route(
                "tx",
                "bearer",
                {
                    "type": "token_exchange",
                    "token_endpoint": kc.token_endpoint,
                    "client_id": "agentgate",
                    "client_secret": f"file:{secrets_dir / 'gw'}",
                    "audience": "billing-backend",
                    "timeout_s": AS_TIMEOUT_S,
                    "max_cache_entries": 0,
                },
            ),
        ],
    }


ROUTES = ("cc", "cached", "tx")


class Caller:
    """Request ``i`` goes to ``ROUTES[i % 3]`` with the credential that route wants."""

    def __init__(self) -> None:
        self.user_token = ""

    async def login(self, kc: Keycloak) -> None:
        self.user_token = await asyncio.to_thread(
            kc.password_token, "alice", "alice-test-password", "travel-agent"
        )

    def headers(self, i: int) -> dict[str, str]:
        if ROUTES[i % 3] == "tx":
            return {"Authorization": f"Bearer {self.user_token}", "Host": "gw.test"}
        return {"X-API-Key": API_KEY, "Host": "gw.test"}


def by_route(outcomes: list[Outcome]) -> dict[str, set[int | None]]:
    out: dict[str, set[int | None]] = {name: set() for name in ROUTES}
    for o in outcomes:
        out[ROUTES[o.index % 3]].add(o.status)
    return out


async def test_keycloak_down_then_restarted(
    keycloak: RestartableKeycloak,
    gateway_process: GatewayStarter,
    tmp_path: Path,
    counting: CountingUpstream,
) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    gw = await gateway_process(gateway_config(tmp_path, keycloak.kc, counting, secrets_dir))
    pid = gw.pid
    caller = Caller()
    await caller.login(keycloak.kc)
    outcomes: list[Outcome] = []

    async def phase(duration_s: float, rate: float = RATE) -> list[Outcome]:
        offset = len(outcomes)
        got = await stream(
            gw.url,
            rate=rate,
            duration_s=duration_s,
            # X-Fault-Id numbers requests across phases (the upstream counts by it).
            headers=lambda i: {FAULT_ID: str(offset + i), **caller.headers(offset + i)},
            path=lambda i: f"/{ROUTES[(offset + i) % 3]}/invoices/{offset + i}",
            timeout_s=10.0,
        )
        shifted = [
            Outcome(o.index + offset, o.t, o.kind, o.status, o.latency_s, o.detail) for o in got
        ]
        outcomes.extend(shifted)
        return shifted

    up = await phase(3.0)
    print(f"keycloak up: {tally(up)}")
    assert by_route(up) == {"cc": {200}, "cached": {200}, "tx": {200}}, tally(up)

    await asyncio.to_thread(keycloak.stop)
    down = await phase(3.0)
    print(f"keycloak down: {tally(down)}")
    assert by_route(down) == {"cc": {503}, "cached": {200}, "tx": {503}}, tally(down)
    assert max(o.latency_s for o in down) < AS_TIMEOUT_S + 2.0

    # Starting takes a while (JVM, realm import): keep a slow stream running through it.
    starting = asyncio.create_task(asyncio.to_thread(keycloak.start))
    during: list[Outcome] = []
    while not starting.done():
        during += await phase(2.0, rate=5.0)
    await starting
    print(f"keycloak starting: {tally(during)}")
    assert by_route(during)["cached"] == {200}
    assert by_route(during)["cc"] <= {200, 503}
    assert by_route(during)["tx"] <= {200, 503}

    await caller.login(keycloak.kc)  # a new realm: a new session and access token
    back = await phase(4.0)
    print(f"keycloak back: {tally(back)}")
    assert by_route(back) == {"cc": {200}, "cached": {200}, "tx": {200}}, tally(back)

    assert gw.proc.returncode is None
    assert gw.pid == pid
    assert_accounted(outcomes, counting)
