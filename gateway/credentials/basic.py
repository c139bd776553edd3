"""``basic``: HTTP Basic (RFC 7617 §2) with a configured user and a secret password.

``Authorization: Basic base64(user ":" password)``, the password's bytes as stored (UTF-8
when typed, RFC 7617 §2.1). The secret is read on every use (rotation without restart); an
unreadable one raises 503 and the request is not forwarded.
"""

from __future__ import annotations

import base64

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.settings.credentials import BasicCredential


class BasicConverter(NoLifecycle):
    def __init__(self, name: str, cfg: BasicCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        raw = self._cfg.username.encode() + b":" + self._cfg.password.reveal()
        out.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")


def _build(name: str, cfg: BasicCredential, ctx: BuildContext) -> BasicConverter:
    return BasicConverter(name, cfg)


REGISTRATION = Registration("basic", BasicCredential, _build)
