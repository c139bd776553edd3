"""RFC 9421 HTTP Message Signatures: the signature base, shared by verify and sign.

Only what both directions need lives here: building the ``@signature-params``
value (an RFC 8941 inner list, §4.1.1.1) and the signature base (RFC 9421 §2.5)
from a function that yields each covered component's value. Parsing inbound
``Signature-Input`` lives with the verifier (:mod:`gateway.authn.hmac_signature`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def signature_params(
    components: Sequence[str], *, created: int, keyid: str, alg: str = "hmac-sha256"
) -> str:
    """The ``@signature-params`` value: ``("@method" ...);created=...;keyid="...";alg="..."``."""
    covered = " ".join(_sf_string(c) for c in components)
    return f"({covered});created={created};keyid={_sf_string(keyid)};alg={_sf_string(alg)}"


def signature_base(components: Sequence[str], value_of: Callable[[str], str], params: str) -> bytes:
    """RFC 9421 §2.5; ``value_of`` raises KeyError for a component it cannot produce."""
    lines = [f'"{name}": {value_of(name)}' for name in components]
    lines.append(f'"@signature-params": {params}')
    text = "\n".join(lines)
    if not text.isascii():
        raise KeyError("non-ASCII component value")  # RFC 9421 §2.5
    return text.encode("ascii")


def hmac_sha256(secret: bytes, base: bytes) -> bytes:
    return hmac.new(secret, base, hashlib.sha256).digest()


def sf_bytes(value: bytes) -> str:
    return ":" + base64.b64encode(value).decode("ascii") + ":"
