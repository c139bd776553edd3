"""RFC 9530 ``Content-Digest``: the body digests a signature covers, checked in constant time.

:func:`wanted_digests` reads the field (an RFC 8941 Dictionary, §2): every ``sha-256`` or
``sha-512`` member (§5) must be a Byte Sequence (else :class:`MalformedSignature`), others are
ignored, and at least one supported member is required (else :class:`InvalidSignature`).
:func:`check_digests` compares each against the body (:class:`InvalidSignature` on a mismatch).
Reading the body, and bounding it, is the caller's job.

This module imports nothing of the gateway: the agent SDK uses it as well.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from gateway.httpsig.errors import InvalidSignature, MalformedSignature, SFError
from gateway.httpsig.sfv import Item, parse_dictionary, serialize_dictionary

DIGESTS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}


def wanted_digests(field_lines: Sequence[str]) -> list[tuple[str, bytes]]:
    """The (algorithm, digest) pairs of ``Content-Digest`` that can be checked."""
    try:
        members = parse_dictionary(", ".join(field_lines))
    except SFError:
        raise MalformedSignature("malformed Content-Digest") from None
    wanted: list[tuple[str, bytes]] = []
    for alg, member in members.items():
        if alg in DIGESTS:
            if not isinstance(member, Item) or not isinstance(member.value, bytes):
                raise MalformedSignature("malformed Content-Digest")
            wanted.append((alg, member.value))
    if not wanted:
        raise InvalidSignature("Content-Digest has no sha-256 or sha-512 member")
    return wanted


def check_digests(body: bytes, wanted: Sequence[tuple[str, bytes]]) -> None:
    """Raise :class:`InvalidSignature` unless every wanted digest is the body's."""
    for alg, digest in wanted:
        # SECURITY: constant-time comparison of the body digest (RFC 9530 §2).
        if not hmac.compare_digest(DIGESTS[alg](body).digest(), digest):
            raise InvalidSignature("Content-Digest does not match the body")


def content_digest(body: bytes, alg: str = "sha-256") -> str:
    """A ``Content-Digest`` value for ``body`` (for signers and tests)."""
    return serialize_dictionary({alg: Item(DIGESTS[alg](body).digest())})
