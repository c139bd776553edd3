"""RFC 9421 §3.3.3 ``hmac-sha256``: sign a request, verify a signature, in constant time.

:func:`sign` and :func:`verify` work on a signature base (:mod:`gateway.httpsig.base`);
:func:`sign_request` is the whole signer: the covered components of a :class:`Request`,
``created``/``keyid``/``alg`` parameters (§2.3), and the ``Signature-Input``/``Signature``
field values under one label (§4). The key is the shared secret's bytes; it never appears in
an exception.

This module imports nothing of the gateway: the agent SDK uses it as well.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from gateway.httpsig.base import Request, signature_base
from gateway.httpsig.errors import InvalidSignature
from gateway.httpsig.fields import field_values, signature_params

ALGORITHM = "hmac-sha256"


def sign(key: bytes, base: bytes) -> bytes:
    """The HMAC-SHA256 of the signature base (RFC 2104, RFC 9421 §3.3.3)."""
    return hmac.new(key, base, hashlib.sha256).digest()


def verify(key: bytes, base: bytes, signature: bytes) -> None:
    """Raise :class:`InvalidSignature` unless ``signature`` is the MAC of ``base``."""
    # SECURITY: constant-time MAC comparison (RFC 9421 §3.3.3, CONVENTIONS.md).
    if not hmac.compare_digest(sign(key, base), signature):
        raise InvalidSignature("signature mismatch")


def sign_request(
    request: Request,
    components: Sequence[str],
    *,
    key: bytes,
    keyid: str,
    created: int,
    label: str,
) -> tuple[str, str]:
    """The ``Signature-Input`` and ``Signature`` values signing ``components`` of ``request``.

    Raises :class:`ComponentUnavailable` for a component the request cannot produce and
    :class:`SFError` for a ``keyid`` or ``label`` that cannot be serialised.
    """
    params = signature_params(components, created=created, keyid=keyid, alg=ALGORITHM)
    signature = sign(key, signature_base(params, request.component))
    return field_values(label, params, signature)
