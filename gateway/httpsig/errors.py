"""The exceptions of :mod:`gateway.httpsig`; callers map them to their own errors.

Every message is safe to show to the party that sent the signature: it names what is wrong,
never a key or a MAC. The tree follows the HTTP answer a verifier gives (RFC 9421 §3.2):

* :class:`SFError` -- a structured field that does not parse (RFC 8941 §4.2);
* :class:`MalformedSignature` -- ``Signature-Input``/``Signature`` that are not a usable
  signature (RFC 9421 §4.1, §4.2): a bad request;
* :class:`InvalidSignature` -- a well-formed signature that does not verify: unauthorised.
  :class:`ComponentUnavailable` is the case where a covered component cannot be produced
  (§2.5: "the signer or verifier MUST produce an error").
"""

from __future__ import annotations


class HTTPSigError(ValueError):
    """Base of every error this package raises."""


class SFError(HTTPSigError):
    """A structured field value that does not parse or serialise (RFC 8941 §4.1, §4.2)."""


class MalformedSignature(HTTPSigError):
    """Signature fields that are syntactically not one usable signature (400)."""


class InvalidSignature(HTTPSigError):
    """A signature that does not verify (401)."""


class ComponentUnavailable(InvalidSignature):
    """A covered component the message cannot produce, or one this package does not support."""
