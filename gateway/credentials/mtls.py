"""``mtls``: a client certificate presented on the upstream TLS connection (RFC 8446 §4.4.2).

The SSL context is built once per credential at startup (certificate, key, CA; TLS 1.2 at
least; hostname checked), so each credential gets its own pooled connections (aiohttp keys
its pool by SSL context) and a bad certificate or key fails the start, not a request. The
server is verified against the credential's own ``ca``, else the route's
``upstream_tls.ca``, else the system store.
"""

from __future__ import annotations

import ssl

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.settings.credentials import MTLSCredential
from gateway.settings.routes import UpstreamTLS


class MTLSConverter(NoLifecycle):
    def __init__(
        self, name: str, cfg: MTLSCredential, upstream_tls: UpstreamTLS | None = None
    ) -> None:
        self.name = name
        ca = cfg.ca or (upstream_tls.ca if upstream_tls is not None else None)
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
        self._ssl = ctx

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        out.ssl_context = self._ssl


def _build(name: str, cfg: MTLSCredential, ctx: BuildContext) -> MTLSConverter:
    return MTLSConverter(name, cfg, ctx.upstream_tls)


REGISTRATION = Registration("mtls", MTLSCredential, _build)
