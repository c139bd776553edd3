"""Suite-wide fixtures: a session-scoped development PKI for the TLS tests.

Every certificate is minted with :mod:`gateway.devtools.devpki` (EC P-256, fast) into a session temp
folder; the deliberately broken ones (expired, from another CA, several URI SANs, malformed
SPIFFE IDs, revoked) come from ``issue_leaf``'s test knobs.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `pytest` run as a script does not put the checkout on sys.path
    sys.path.insert(0, _ROOT)

from gateway.devtools.devpki import (  # noqa: E402
    Issued,
    create_ca,
    create_crl,
    init_dev_pki,
    issue_leaf,
    load_issued,
)
from tests.support import CertPair, TestPKI  # noqa: E402

TRUST_DOMAIN = "example.org"
AGENTS = ("planner", "travel", "billing")
MALFORMED_SPIFFE = {
    "uppercase-trust-domain": "spiffe://Example.org/agent/x",
    "dot-dot-segment": "spiffe://example.org/a/../b",
    "empty-segment": "spiffe://example.org/agent//x",
    "port-in-trust-domain": "spiffe://example.org:443/agent/x",
}


def _write(directory: Path, name: str, issued: Issued) -> CertPair:
    pair = CertPair(
        directory / f"{name}.pem",
        directory / f"{name}.key",
        issued.spiffe_id,
        issued.cert.serial_number,
    )
    issued.write(pair.cert, pair.key)
    return pair


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    directory = tmp_path_factory.mktemp("pki")
    dev = init_dev_pki(directory, trust_domain=TRUST_DOMAIN, agents=AGENTS)
    ca = load_issued(dev.ca.cert, dev.ca.key)
    agents = {
        name: CertPair(files.cert, files.key, files.spiffe_id) for name, files in dev.agents.items()
    }
    td = f"spiffe://{TRUST_DOMAIN}"

    other_ca = create_ca("another CA", trust_domain=TRUST_DOMAIN)
    other_ca.write(directory / "other-ca.pem", directory / "other-ca.key")
    foreign = issue_leaf(other_ca, common_name="intruder", spiffe_id=f"{td}/agent/planner")

    expired = issue_leaf(
        ca,
        common_name="expired",
        spiffe_id=f"{td}/agent/expired",
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    two_uris = issue_leaf(
        ca,
        common_name="two-uris",
        spiffe_id=f"{td}/agent/a",
        uri_sans=[f"{td}/agent/b"],
    )
    malformed = {
        label: _write(
            directory, f"malformed-{label}", issue_leaf(ca, common_name="m", uri_sans=[uri])
        )
        for label, uri in MALFORMED_SPIFFE.items()
    }
    revoked = issue_leaf(ca, common_name="revoked", spiffe_id=f"{td}/agent/revoked")
    crl = directory / "crl.pem"
    crl.write_bytes(create_crl(ca, [revoked.cert.serial_number]))
    no_spiffe = issue_leaf(ca, common_name="plain-client")

    return TestPKI(
        directory=directory,
        trust_domain=TRUST_DOMAIN,
        ca=dev.ca.cert,
        server=CertPair(dev.server.cert, dev.server.key, dev.server.spiffe_id),
        agents=agents,
        foreign=_write(directory, "foreign", foreign),
        foreign_ca=directory / "other-ca.pem",
        expired=_write(directory, "expired", expired),
        two_uris=_write(directory, "two-uris", two_uris),
        malformed=malformed,
        revoked=_write(directory, "revoked", revoked),
        crl=crl,
        no_spiffe=_write(directory, "no-spiffe", no_spiffe),
    )
