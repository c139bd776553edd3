"""The Txn-Token parts built once from ``txn_tokens`` settings: keys, minter, verifier."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sdk.txn import TxnTokenVerifier
from gateway.settings.root import Settings
from gateway.settings.tokens import TxnTokenSettings
from gateway.tokens.keys import KeyRing
from gateway.tokens.txn_token import TxnTokenMinter


@dataclass(frozen=True)
class TokenKit:
    settings: TxnTokenSettings
    keys: KeyRing
    minter: TxnTokenMinter
    verifier: TxnTokenVerifier

    @classmethod
    def build(cls, settings: Settings) -> TokenKit:
        tt = settings.txn_tokens
        if tt is None:
            raise ValueError("txn_tokens is not configured")
        trust_domain = settings.server.trust_domain
        keys = KeyRing(tt.key_files, algorithm=tt.algorithm)
        minter = TxnTokenMinter(
            keys,
            issuer=tt.issuer,
            audience=trust_domain,
            ttl_s=tt.ttl_s,
            gateway_spiffe_id=settings.server.gateway_spiffe_id,
        )
        verifier = TxnTokenVerifier(keys, audience=trust_domain, issuer=tt.issuer)
        return cls(tt, keys, minter, verifier)
