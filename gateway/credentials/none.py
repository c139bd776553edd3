"""``none``: the backend gets no credential at all (a public backend).

Chosen explicitly (``credential: {type: none}``) or as the documented default of a route
without ``credential`` when the gateway does not mint Txn-Tokens, or on a public route (no
``authn``: there is no Txn-Token to send). Never a fallback for a type without a converter:
that is a configuration error (:mod:`.registry`).
"""

from __future__ import annotations

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.settings.credentials import NoCredential


class NoneConverter(NoLifecycle):
    def __init__(self, name: str) -> None:
        self.name = name

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        return None


def _build(name: str, cfg: NoCredential, ctx: BuildContext) -> NoneConverter:
    return NoneConverter(name)


REGISTRATION = Registration("none", NoCredential, _build)
