"""The one RFC 8941 / RFC 9421 implementation: HTTP Message Signatures, signing and verifying.

Both users share every byte of it: the inbound ``hmac`` authentication method
(:mod:`gateway.authn.hmac_signature`) and the outbound ``hmac_sign`` credential
(:mod:`gateway.credentials.hmac_sign`), so a signer and a verifier cannot drift apart.

* :mod:`.sfv` -- RFC 8941 Structured Field Values (strict Dictionary parser, serialisers);
* :mod:`.base` -- RFC 9421 §2: component values of a :class:`~.base.Request`, the signature base;
* :mod:`.fields` -- RFC 9421 §4: reading and writing ``Signature-Input`` / ``Signature``;
* :mod:`.hmac_sha256` -- RFC 9421 §3.3.3: ``hmac-sha256`` sign, constant-time verify;
* :mod:`.digest` -- RFC 9530 ``Content-Digest``;
* :mod:`.errors` -- what they raise: :class:`~.errors.SFError`,
  :class:`~.errors.MalformedSignature` (a bad request), :class:`~.errors.InvalidSignature`
  (does not verify) and its :class:`~.errors.ComponentUnavailable`.

Layer rule: this package imports nothing of the gateway (the agent SDK imports it); callers
map its exceptions to their own errors where they call it. Policy -- which components are
required, clock skew, replay, body size -- belongs to the caller too.

Structured fields are parsed here rather than with the ``http-sfv`` package: see :mod:`.sfv`.
"""

from __future__ import annotations

from gateway.httpsig.base import Request, signature_base
from gateway.httpsig.errors import (
    ComponentUnavailable,
    HTTPSigError,
    InvalidSignature,
    MalformedSignature,
    SFError,
)
from gateway.httpsig.fields import SignatureFields, parse_signature_fields

__all__ = [
    "ComponentUnavailable",
    "HTTPSigError",
    "InvalidSignature",
    "MalformedSignature",
    "Request",
    "SFError",
    "SignatureFields",
    "parse_signature_fields",
    "signature_base",
]
