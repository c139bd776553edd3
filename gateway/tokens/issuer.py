"""The pipeline's view of Txn-Token minting: continuation, replay check, signing.

On ingress a request starts a new transaction (fresh ``txn``); on an east-west
hop authenticated by the ``txn_token`` method the transaction continues (same
``txn``, scope intersected with the presented token's). With
``txn_tokens.replay_check`` a continued ``txn`` may cross each route once.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.context import Identity, RequestFacts
from gateway.errors import invalid_token
from gateway.state import ReplayCache
from gateway.tokens.txn_token import TxnTokenMinter


class TxnTokenIssuer:
    def __init__(
        self,
        minter: TxnTokenMinter,
        *,
        header: str,
        replay: ReplayCache | None,
        ttl_s: float,
    ) -> None:
        self.minter = minter
        self.header = header
        self._replay = replay
        self._ttl_s = ttl_s

    async def mint(
        self, identity: Identity, facts: RequestFacts, route: str, scopes: Sequence[str]
    ) -> tuple[str, str]:
        """The signed Txn-Token and its ``txn`` (for the audit record)."""
        # The transaction continues when a Txn-Token is the primary credential (east-west).
        txn = identity.continued_txn
        if txn is not None:
            exp = identity.principal.expires_at
            # SECURITY: SPECS.md §1.6/§1.8 -- never issue from an expired Txn-Token, not even
            # within the verifier's clock-skew leeway (POST /token refuses it the same way).
            if exp is None or self.minter.now() >= exp:
                raise invalid_token("transaction token expired")
        # SECURITY: one crossing of each route per transaction when replay_check is on.
        replay, key = self._replay, f"txn:{txn}:{route}"
        if txn is not None and replay is not None and not await replay.first_use(key, self._ttl_s):
            raise invalid_token("transaction already used on this route")
        claims = self.minter.mint_claims(
            identity=identity, facts=facts, route_name=route, scopes=scopes, txn=txn
        )
        return self.minter.sign(claims), str(claims["txn"])
