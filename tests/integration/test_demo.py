"""``agentgate demo`` end to end: the tour runs as a real subprocess and says what it did.

``python -m gateway demo --dir <tmp>`` (with ``CI=true``, as in CI) must exit 0 within the
time budget, print every step of the tour with the lines a reader relies on, and never print
a secret: not the legacy backend's API key, not a full token, not a private key. The
configuration it leaves behind must pass ``check-config``, and a second run in the same
folder (``make demo`` twice) must work too.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, subprocess_env

pytestmark = pytest.mark.integration

BUDGET_S = 15.0
# A compact JWS/JWT: three base64url segments. Any full token in the output is a leak.
FULL_JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")


@dataclass(frozen=True)
class Run:
    workdir: Path
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float

    def section(self, number: int) -> str:
        """The text of step ``number`` (from its ``== N.`` heading to the next heading)."""
        match = re.search(rf"^== {number}\. .*?(?=^== |\Z)", self.stdout, re.M | re.S)
        assert match is not None, f"no section {number} in:\n{self.stdout}"
        return match.group(0)


def run_demo(workdir: Path) -> Run:
    env = subprocess_env()
    env["CI"] = "true"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--dir", str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Run(workdir, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = run_demo(tmp_path_factory.mktemp("demo") / "work")
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def test_exits_zero_fast_and_cleanly(demo: Run) -> None:
    assert demo.elapsed_s < BUDGET_S, f"the tour took {demo.elapsed_s:.1f} s"
    assert "unexpected" not in demo.stdout
    assert "demo finished: every step behaved as described" in demo.stdout
    assert demo.stderr.strip() == "", demo.stderr
    for number in range(1, 8):
        demo.section(number)  # every step has its heading, in order
    headings = re.findall(r"^== (\d)\.", demo.stdout, re.M)
    assert headings == [str(n) for n in range(1, 8)]


def test_setup_writes_a_readable_valid_config(demo: Run) -> None:
    setup = demo.section(1)
    for text in (
        "spiffe://example.org/agent/travel",
        "spiffe://example.org/agent/rogue",
        "spiffe://example.org/agent/billing",
        "spiffe://example.org/service/booking",
        "Txn-Token key",
        "idp/jwks.json",
        "file:secrets/billing.key",
        "config              gateway.yaml",
        "(mTLS required)",
    ):
        assert text in setup, text
    config = demo.workdir / "gateway.yaml"
    assert (demo.workdir / "policies" / "data.json").is_file()
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    text = config.read_text()
    assert "secret: file:secrets/billing.key" in text  # a reference, never the value
    assert (demo.workdir / "secrets" / "billing.key").read_text().strip() not in text


def test_agent_call_for_alice_reaches_flights_with_a_txn_token(demo: Run) -> None:
    step = demo.section(2)
    assert "travel -> gateway  GET /flights/42" in step
    assert re.search(r"^\s+<- 200 ", step, re.M), step
    backend = step.split("flights backend received GET /flights/42", 1)[1]
    assert "authorization: (absent)" in backend
    assert "txn-token: eyJ" in backend
    assert "verified against the gateway's /.well-known/jwks.json" in backend
    assert re.search(r"^\s+sub\s+alice$", backend, re.M)
    assert re.search(r"^\s+scope\s+flights.read$", backend, re.M)
    assert re.search(r"^\s+act\s+spiffe://example.org/agent/travel$", backend, re.M)
    assert re.search(r"^\s+req_wl\s+spiffe://example.org/gateway$", backend, re.M)
    assert "'flights.read flights.book' -> 'flights.read'" in step


def _txn(text: str) -> str:
    match = re.search(r"^\s+txn\s+([0-9a-f-]{36})$", text, re.M)
    assert match is not None, text
    return match.group(1)


def test_second_hop_continues_the_same_transaction(demo: Run) -> None:
    step = demo.section(3)
    assert "as spiffe://example.org/service/booking (mTLS), -> gateway  GET /internal/" in step
    assert re.search(r"^\s+<- 200 ", step, re.M), step
    assert "booking backend received GET /internal/bookings/42" in step
    assert "same txn on both hops: yes" in step
    assert "within hop 1 'flights.read': yes" in step
    assert _txn(step) == _txn(demo.section(2))
    assert (
        "act       spiffe://example.org/service/booking <- spiffe://example.org/agent/travel"
        in step
    )


def test_legacy_billing_gets_the_key_the_agent_never_held(demo: Run) -> None:
    step = demo.section(4)
    assert "billing -> gateway  GET /billing/invoices" in step
    assert re.search(r"^\s+<- 200 ", step, re.M), step
    sent, received = step.split("billing backend received GET /billing/invoices", 1)
    assert "x-billing-key" not in sent.lower().replace("no x-billing-key header", "")
    assert "x-billing-key: present, 24 chars, matches the key on file: yes" in received
    assert "authorization: (absent)" in received


def test_mcp_tools_filtered_allowed_and_denied(demo: Run) -> None:
    match = re.search(r"^== 4c\. .*?(?=^== |\Z)", demo.stdout, re.M | re.S)
    assert match is not None, demo.stdout
    step = match.group(0)
    assert "the agent is shown ['get_fare', 'book_flight']" in step  # cancel_all hidden
    assert 'get_fare -> {"content": [{"type": "text", "text": "get_fare: done"}]}' in step
    assert re.search(
        r'book_flight with price 5000 -> JSON-RPC error \{"code": -32001, '
        r'"message": "forbidden by policy", "data": \{"decision_id": "[0-9a-f-]{36}"',
        step,
    ), step
    assert "a session id the gateway never saw issued: 404" in step
    assert "!! unexpected" not in step


def test_hijack_caught_by_the_heartbeat(demo: Run) -> None:
    match = re.search(r"^== 4d\. .*?(?=^== |\Z)", demo.stdout, re.M | re.S)
    assert match is not None, demo.stdout
    step = match.group(0)
    assert "heartbeat: healthy (2 calls)" in step
    assert "heartbeat: mismatch: the gateway saw 2 calls, the agent made 1" in step
    assert re.search(r"^\s+<- 403 ", step, re.M), step
    assert (
        "quarantined: spiffe://example.org/agent/travel/itinerary (behavior:heartbeat_mismatch)"
        in step
    )
    assert "!! unexpected" not in step


def test_denials(demo: Run) -> None:
    step = demo.section(5)
    parts = dict(re.findall(r"^-- (.*?)\n(.*?)(?=^-- |\Z)", step, re.M | re.S))
    rogue = next(v for k, v in parts.items() if k.startswith("the rogue agent (valid"))
    assert re.search(r"^\s+<- 403 ", rogue, re.M)
    assert re.search(r'"decision_id": "[0-9a-f-]{36}"', rogue)
    assert "rbac:no_permission" in rogue
    replay = next(v for k, v in parts.items() if k.startswith("the rogue agent replays"))
    assert 'error="invalid_token", error_description="certificate binding mismatch"' in replay
    no_token = next(v for k, v in parts.items() if "no token" in k)
    assert re.search(r"^\s+<- 401 ", no_token, re.M)
    assert re.search(r'WWW-Authenticate: Bearer realm="agentgate"(,|$)', no_token, re.M)
    assert "error=" not in no_token
    expired = next(v for k, v in parts.items() if k.startswith("an expired token"))
    assert 'error="invalid_token", error_description="token expired"' in expired
    spoofed = next(v for k, v in parts.items() if k.startswith("spoofed headers"))
    assert "sent X-Forwarded-For: 10.6.6.6" in spoofed
    seen = spoofed.split("flights backend received GET /flights/7", 1)[1]
    assert "x-forwarded-for: 127.0.0.1" in seen
    for leaked in ("10.6.6.6", "forged-by-the-client", "x-evil", "x_user", "x-forwarded-client"):
        assert leaked not in seen, leaked
    slash = next(v for k, v in parts.items() if "encoded slash" in k)
    assert re.search(r"^\s+<- 400 ", slash, re.M)
    no_cert = next(v for k, v in parts.items() if "without a certificate" in k)
    assert "refused at the TLS layer" in no_cert
    assert "only the allowed call reached a backend" in step


def test_hot_reload_flips_the_decision(demo: Run) -> None:
    step = demo.section(6)
    assert "await gateway.reload() -> True" in step
    assert "decision flip: 200 -> 403" in step
    assert "rebac:not_delegated" in step


def test_audit_record_and_metrics(demo: Run) -> None:
    step = demo.section(7)
    assert f'"txn": "{_txn(demo.section(2))}"' in step
    assert '"decision": "allow"' in step
    assert re.search(r'"decision_id": "[0-9a-f-]{36}"', step)
    assert "same txn: yes" in step
    assert 'agentgate_requests_total{reason="ok",route="flights",status="200"}' in step
    assert 'agentgate_txn_tokens_minted_total{route="internal"} 1.0' in step


def test_no_secret_is_ever_printed(demo: Run) -> None:
    output = demo.stdout + demo.stderr
    key = (demo.workdir / "secrets" / "billing.key").read_text().strip()
    assert len(key) == 24
    assert key not in output
    assert key not in (demo.workdir / "audit.log").read_text()
    assert not FULL_JWT.search(output), FULL_JWT.search(output)
    assert "PRIVATE KEY" not in output
    for pem in (demo.workdir / "keys" / "txn-signing.pem", demo.workdir / "pki" / "ca.key"):
        body = "".join(pem.read_text().splitlines()[1:-1])
        assert body[:40] not in output


def test_a_second_run_in_the_same_folder_works(demo: Run) -> None:
    again = run_demo(demo.workdir)
    assert again.returncode == 0, f"stdout:\n{again.stdout}\nstderr:\n{again.stderr}"
    assert "same txn on both hops: yes" in again.stdout
    new_key = (demo.workdir / "secrets" / "billing.key").read_text().strip()
    assert new_key not in again.stdout + again.stderr
