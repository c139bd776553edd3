"""``bearer_static``: a static bearer token (RFC 6750 §2.1) in ``Authorization``.

The secret is read on every use (rotation without restart); an unreadable one raises 503
and the request is not forwarded.
"""

from __future__ import annotations

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.settings.credentials import BearerStaticCredential


class BearerStaticConverter(NoLifecycle):
    def __init__(self, name: str, cfg: BearerStaticCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        out.headers["Authorization"] = "Bearer " + self._cfg.token.reveal_str()


def _build(name: str, cfg: BearerStaticCredential, ctx: BuildContext) -> BearerStaticConverter:
    return BearerStaticConverter(name, cfg)


REGISTRATION = Registration("bearer_static", BearerStaticCredential, _build)
