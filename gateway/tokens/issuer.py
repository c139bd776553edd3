"""The pipeline's view of Txn-Token minting: continuation, replay check, signing.

On ingress a request starts a new transaction (fresh ``txn``); on an east-west
hop authenticated by the ``txn_token`` method the transaction continues (same
``txn``, scope intersected with the presented token's). With
``txn_tokens.replay_check`` a continued ``txn`` may cross each route once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gateway.authn.base import invalid_token
from gateway.authn.txn_token import continued_txn
from gateway.context import Identity, RequestFacts
from gateway.state import ReplayCache
from gateway.tokens.txn_token import TxnTokenMinter


class TxnTokenIssuer:
    def __init__(
        self,
        minter: TxnTokenMinter,
        *,
        header: str,
        txn_methods: Collection[str],
        replay: ReplayCache | None,
        ttl_s: float,
    ) -> None:
        self.minter = minter
        self.header = header
        self._txn_methods = frozenset(txn_methods)
        self._replay = replay
        self._ttl_s = ttl_s

    async def mint(
        self, identity: Identity, facts: RequestFacts, route: str, scopes: Sequence[str]
    ) -> str:
        txn = continued_txn(identity, self._txn_methods)
        if txn is not None and self._replay is not None:
            # SECURITY: one crossing of each route per transaction when replay_check is on.
            if not await self._replay.first_use(f"txn:{txn}:{route}", self._ttl_s):
                raise invalid_token("transaction already used on this route")
        return self.minter.mint(
            identity=identity, facts=facts, route_name=route, scopes=scopes, txn=txn
        )
