"""``txn_token``: the Txn-Token minted for this transaction, in ``txn_tokens.header``.

DESIGN.md §8. The default credential of a route with ``authn`` when the gateway mints. A
configured ``type: txn_token`` without a ``txn_tokens`` section is a configuration error
(``ValueError``). No Txn-Token in the context at apply time is a 503 ``txn_token_missing``:
a route promised one, so the request is never forwarded without it.
"""

from __future__ import annotations

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.errors import ServiceUnavailable
from gateway.settings.credentials import TxnTokenCredential


class TxnTokenConverter(NoLifecycle):
    def __init__(self, name: str, header: str) -> None:
        self.name = name
        self._header = header

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        if ctx.txn_token is None:
            # SECURITY: a route promised a Txn-Token; never forward without one.
            raise ServiceUnavailable("no Txn-Token was minted", reason="txn_token_missing")
        out.headers[self._header] = ctx.txn_token


def _build(name: str, cfg: TxnTokenCredential, ctx: BuildContext) -> TxnTokenConverter:
    if ctx.txn_header is None:
        raise ValueError("credential type txn_token needs the txn_tokens section")
    return TxnTokenConverter(name, ctx.txn_header)


REGISTRATION = Registration("txn_token", TxnTokenCredential, _build)
