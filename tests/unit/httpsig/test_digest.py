"""gateway.httpsig.digest: RFC 9530 ``Content-Digest``, checked in constant time."""

from __future__ import annotations

import pytest

from gateway.httpsig import InvalidSignature, MalformedSignature
from gateway.httpsig.digest import check_digests, content_digest, wanted_digests

# RFC 9530 Appendix B.1 / RFC 9421 B.2: the body {"hello": "world"}.
BODY = b'{"hello": "world"}'
SHA256 = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
SHA512 = (
    "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJ"
    "wew==:"
)


def test_rfc9530_values() -> None:
    assert content_digest(BODY) == SHA256
    assert content_digest(BODY, "sha-512") == SHA512


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([SHA256], id="sha-256"),
        pytest.param([SHA512], id="sha-512"),
        pytest.param([f"{SHA256}, {SHA512}"], id="both-one-line"),
        pytest.param([SHA512, SHA256], id="both-two-lines"),
        pytest.param([f"md5=:AAAA:, {SHA256}"], id="unknown-ignored"),
        pytest.param([f"sha=:AAAA:, {SHA256}"], id="insecure-ignored"),
    ],
)
def test_matching_digests(lines: list[str]) -> None:
    check_digests(BODY, wanted_digests(lines))


@pytest.mark.parametrize(
    ("lines", "error", "message"),
    [
        pytest.param(["sha-256=("], MalformedSignature, "malformed", id="not-sf"),
        pytest.param(['sha-256="x"'], MalformedSignature, "malformed", id="not-bytes"),
        pytest.param(["sha-256=(:AAAA:)"], MalformedSignature, "malformed", id="inner-list"),
        pytest.param(["md5=:AAAA:"], InvalidSignature, "no sha-256", id="only-unknown"),
        pytest.param([], InvalidSignature, "no sha-256", id="absent"),
    ],
)
def test_unusable_fields(lines: list[str], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        wanted_digests(lines)


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([SHA256.replace("X48", "Y48")], id="sha-256-wrong"),
        pytest.param([f"{SHA256}, {SHA512.replace('WZD', 'WZE')}"], id="one-of-two-wrong"),
    ],
)
def test_mismatch(lines: list[str]) -> None:
    with pytest.raises(InvalidSignature, match="does not match"):
        check_digests(BODY, wanted_digests(lines))
    with pytest.raises(InvalidSignature):
        check_digests(BODY + b" ", wanted_digests([SHA256]))
