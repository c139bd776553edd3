"""``hmac_sign``: RFC 9421 HTTP Message Signatures with ``hmac-sha256`` for legacy backends.

The gateway signs the outbound request with a secret it alone holds, covering
``@method``, ``@authority``, ``@path`` and ``@query`` of the upstream URL, with
``created``, ``keyid`` and ``alg`` parameters (RFC 9421 §2.3), and sends
``Signature-Input`` and ``Signature`` under the configured label. The body is
streamed, so it is not covered (no ``content-digest``): backends that need body
integrity should take the ``mtls`` credential instead.

Signing is :mod:`gateway.httpsig`, the same code the inbound ``hmac`` method verifies with.
The secret is read on every use; an unreadable one raises 503.
"""

from __future__ import annotations

import time

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.httpsig import Request
from gateway.httpsig.hmac_sha256 import sign_request
from gateway.settings.credentials import HMACSignCredential

COMPONENTS = ("@method", "@authority", "@path", "@query")


def message(out: Outbound) -> Request:
    """The outbound request as RFC 9421 covers it, from the URL the client will send."""
    url = out.url
    query = url.raw_query_string
    return Request(
        method=out.method.upper(),
        scheme=url.scheme,
        # RFC 9421 §2.2.3: the authority as the Host header carries it (RFC 9110 §7.2), i.e.
        # without a default port -- exactly what the HTTP client sends (yarl/aiohttp).
        authority=url.host_port_subcomponent or "",
        target=(url.raw_path or "/") + ("?" + query if query else ""),
        fields=lambda name: out.headers.getall(name, ()),
    )


class HMACSignConverter(NoLifecycle):
    def __init__(self, name: str, cfg: HMACSignCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        signature_input, signature = sign_request(
            message(out),
            COMPONENTS,
            key=self._cfg.secret.reveal(),
            keyid=self._cfg.key_id,
            created=int(time.time()),
            label=self._cfg.label,
        )
        out.headers["Signature-Input"] = signature_input
        out.headers["Signature"] = signature


def _build(name: str, cfg: HMACSignCredential, ctx: BuildContext) -> HMACSignConverter:
    return HMACSignConverter(name, cfg)


REGISTRATION = Registration("hmac_sign", HMACSignCredential, _build)
