"""RFC 9421 HTTP Message Signatures with ``hmac-sha256`` for legacy backends.

The gateway signs the outbound request with a secret it alone holds, covering
``@method``, ``@authority``, ``@path`` and ``@query`` of the upstream URL, with
``created`` and ``keyid`` parameters (RFC 9421 §2.3), and sends
``Signature-Input`` and ``Signature`` under the configured label. The body is
streamed, so it is not covered (no ``content-digest``): backends that need body
integrity should take the ``mtls`` credential instead.
"""

from __future__ import annotations

import time

from gateway.credentials import ConvertContext, Outbound
from gateway.httpsig import hmac_sha256, sf_bytes, signature_base, signature_params
from gateway.settings import HMACSignCredential

COMPONENTS = ("@method", "@authority", "@path", "@query")


def _authority(out: Outbound) -> str:
    # RFC 9421 §2.2.3: the authority as the Host header carries it (RFC 9110 §7.2), i.e.
    # without a default port -- exactly what the HTTP client sends (yarl/aiohttp).
    return (out.url.host_port_subcomponent or "").lower()


class HMACSignConverter:
    def __init__(self, name: str, cfg: HMACSignCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        values = {
            "@method": out.method.upper(),
            "@authority": _authority(out),
            "@path": out.url.raw_path or "/",
            "@query": "?" + out.url.raw_query_string,
        }
        params = signature_params(COMPONENTS, created=int(time.time()), keyid=self._cfg.key_id)
        base = signature_base(COMPONENTS, values.__getitem__, params)
        signature = hmac_sha256(self._cfg.secret.reveal(), base)
        label = self._cfg.label
        out.headers["Signature-Input"] = f"{label}={params}"
        out.headers["Signature"] = f"{label}={sf_bytes(signature)}"
