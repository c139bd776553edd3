"""The one exception of the JOSE layer.

Contract: every check in :mod:`gateway.jose` raises :class:`JOSEError` (a ``ValueError``) and
never returns ``False`` (pyca/cryptography's habit). ``str()`` is a terse description that is
safe to put in an ``error_description``: it never contains a token, a key or a claim value.
``code`` is a stable, coarse reason for callers that report their own codes (the Txn-Token
kit maps it to its ``TxnTokenError.code``); callers map :class:`JOSEError` to their own HTTP
answer at the call site (httpx's habit: library errors are mapped where the library is called).
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

Code: TypeAlias = Literal[
    "malformed",  # syntax: size, base64url, JSON, segment count, header member types
    "alg_refused",  # alg none / HMAC / not on the caller's allowlist / not the key's
    "crit",  # a crit header parameter (we understand no extension)
    "bad_kid",  # a kid that is not a short printable string
    "bad_signature",  # the signature does not verify with the selected key
    "bad_key",  # a JWK or JWKS that cannot be used as a verification key
    "unknown_kid",  # no key of the set matches the token's kid and alg
    "wrong_typ",  # explicit typing mismatch (RFC 8725 §3.11)
]

MALFORMED: Final = "malformed"


class JOSEError(ValueError):
    """A token, proof or key failed a check; ``str()`` is safe to show to the caller."""

    code: Code

    def __init__(self, message: str, code: Code = "malformed") -> None:
        super().__init__(message)
        self.code = code
