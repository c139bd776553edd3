"""Fixtures for the Txn-Token tests: real key files, a key ring, a minter and verifiers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sdk.txn import TxnTokenVerifier
from gateway.tokens.keys import KeyRing, SigningKey, write_private_key
from gateway.tokens.txn_token import TxnTokenMinter
from tests.unit.tokens.support import GATEWAY_ID, ISSUER, TD


@pytest.fixture
def es_key(tmp_path: Path) -> tuple[Path, SigningKey]:
    path = tmp_path / "txn-es256.pem"
    return path, write_private_key(path, "ES256")


@pytest.fixture
def ed_key(tmp_path: Path) -> tuple[Path, SigningKey]:
    path = tmp_path / "txn-eddsa.pem"
    return path, write_private_key(path, "EdDSA")


@pytest.fixture
def ring(es_key: tuple[Path, SigningKey]) -> KeyRing:
    return KeyRing([es_key[0]], algorithm="ES256")


@pytest.fixture
def minter(ring: KeyRing) -> TxnTokenMinter:
    return TxnTokenMinter(ring, issuer=ISSUER, audience=TD, ttl_s=60, gateway_spiffe_id=GATEWAY_ID)


@pytest.fixture
def verifier(ring: KeyRing) -> TxnTokenVerifier:
    return TxnTokenVerifier(ring, audience=TD, issuer=ISSUER, leeway_s=5)
