"""One strict rule for the framing of a request head (RFC 9112 §2-§7, §11.2).

aiohttp has two HTTP/1 parsers, llhttp (C, the default) and a pure-Python
fallback (``AIOHTTP_NO_EXTENSIONS=1``, or no compiled extension). They refuse
most framing tricks already, but not the same ones: the Python parser takes
``get`` and ``HTTP/1.2``, llhttp takes ``HTTP/2.0`` in an HTTP/1 request line,
both take ``Transfer-Encoding`` on HTTP/1.0, a ``Host`` with a path or user
info in it, an absolute-form target naming another host than ``Host``, and
header bytes that are not UTF-8 (which one parser blanks and the other turns
into a 500). :func:`check_head` runs on every parsed request before the
pipeline, so both parsers end up with the same, documented rule.

Contract: :func:`check_head` returns the request target the pipeline must use
(the origin-form of an accepted absolute-form target, else ``None``: keep the
target as parsed), or raises :class:`FramingError` carrying the status, the
stable reason code and the public text. Every refusal closes the connection:
after a framing error nothing later on that connection can be trusted to be a
request of its own (RFC 9112 §11.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

RawHeaders = Sequence[tuple[bytes, bytes]]

# Methods as nginx takes them: upper-case letters, digits, '-' and '_' (RFC 9110 §9.1
# methods are case-sensitive; "get" is not GET, and an upstream may think it is).
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
# Host: reg-name restricted to unreserved characters, an IPv4 address or an IP-literal,
# then an optional port. Percent-encoding and sub-delims are valid RFC 3986 reg-name
# characters but no host the gateway routes by contains them.
_HOST = re.compile(
    r"(?P<name>[A-Za-z0-9._~-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORT = {"http": 80, "https": 443}


class FramingError(Exception):
    """A request head the gateway refuses; the connection is closed after the answer."""

    def __init__(self, status: int, reason: str, public: str) -> None:
        super().__init__(public)
        self.status = status
        self.reason = reason
        self.public = public

    def __repr__(self) -> str:
        return f"FramingError(status={self.status}, reason={self.reason!r})"


def _bad(reason: str, public: str, status: int = 400) -> FramingError:
    return FramingError(status, reason, public)


def check_head(
    method: str,
    target: str,
    version: tuple[int, int],
    raw_headers: RawHeaders,
    *,
    scheme: str,
) -> str | None:
    """Check one parsed request head; see the module docstring for the contract."""
    if version not in ((1, 0), (1, 1)):
        raise _bad("http_version_not_supported", "HTTP version not supported", 505)
    if not _METHOD.fullmatch(method):
        raise _bad("bad_request_line", "malformed request method")
    if method == "CONNECT":
        # SECURITY: the gateway is no forward proxy; a CONNECT that some proxy in front
        # took for a tunnel must not leave a half-open tunnel behind.
        raise _bad("bad_request_line", "CONNECT is not supported")
    hosts: list[bytes] = []
    te: list[bytes] = []
    cl: list[bytes] = []
    for name, value in raw_headers:
        _check_field(value)
        size = len(name)  # cheaper than lower-casing every name on the hot path
        if size == 4 and name.lower() == b"host":
            hosts.append(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            te.append(value)
        elif size == 14 and name.lower() == b"content-length":
            cl.append(value)
    _check_body_framing(version, te, cl)
    host = _check_host(hosts)
    if target.startswith("/"):
        return None
    return _origin_form(target, host, scheme)


def _check_field(value: bytes) -> None:
    # Names that are not tokens, and NUL, CR, LF or other controls in values, both parsers
    # refuse themselves (test_framing_corpus.py pins it for each); scanning every byte again
    # here would cost more than the rest of this module together.
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            # One parser would forward the field blanked, the other fail with a 500: the
            # value cannot reach the upstream as sent, so it does not reach it at all.
            raise _bad("bad_header", "header field value is not UTF-8") from None


def _check_body_framing(version: tuple[int, int], te: list[bytes], cl: list[bytes]) -> None:
    if te:
        if version < (1, 1):
            # SECURITY: RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means the
            # framing is faulty; a 1.0 hop in front of us would not have decoded it.
            raise _bad("bad_framing", "Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            # SECURITY: RFC 9112 §6.3 (3): the classic CL.TE / TE.CL request smuggling.
            raise _bad("bad_framing", "both Transfer-Encoding and Content-Length")
        if len(te) > 1:
            raise _bad("bad_framing", "repeated Transfer-Encoding")
        codings = [c.strip(b" \t").lower() for c in te[0].split(b",")]
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1 or b"" in codings:
            raise _bad("bad_framing", "chunked must be the one, final transfer coding")
        if len(codings) > 1:
            raise _bad("unsupported_transfer_coding", "unsupported transfer coding", 501)
    if cl and (len(cl) > 1 or not (cl[0].isdigit() and cl[0].isascii())):
        # SECURITY: RFC 9112 §6.3 (5): a list or a repeat is not one length.
        raise _bad("bad_framing", "Content-Length must be one decimal number")


def _check_host(hosts: list[bytes]) -> tuple[str, int | None]:
    # RFC 9112 §3.2: 400 for a missing Host (HTTP/1.0 included: routing and DPoP htu need
    # one), for several, and for an invalid value.
    if len(hosts) != 1:
        raise _bad("bad_host", "exactly one Host header")
    match = _HOST.fullmatch(hosts[0].decode("latin-1"))
    if match is None:
        raise _bad("bad_host", "malformed Host header")
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        raise _bad("bad_host", "malformed Host header")
    return match["name"].lower(), int(port) if port else None


def _origin_form(target: str, host: tuple[str, int | None], scheme: str) -> str:
    """The origin-form of an absolute-form target that names this listener and ``Host``."""
    if target == "*" or "://" not in target:
        return target  # asterisk- or a malformed form: path normalisation answers 400
    if "#" in target:
        raise _bad("bad_request_line", "malformed request target")
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:
        raise _bad("bad_request_line", "malformed request target") from None
    if parts.scheme.lower() != scheme or parts.username is not None or not parts.hostname:
        raise _bad("bad_host", "request target names another scheme or host")
    default = _DEFAULT_PORT[scheme]
    name = parts.hostname.lower()
    if parts.netloc.startswith("["):
        name = f"[{name}]"
    # SECURITY: RFC 9112 §3.2.2 tells an origin server to route by the target's authority
    # and ignore Host; a gateway that routes (and checks DPoP htu) by Host must not let
    # the two disagree, so an absolute-form target is taken only when they are the same.
    if (name, port or default) != (host[0], host[1] or default):
        raise _bad("bad_host", "request target and Host name different hosts")
    path = parts.path or "/"
    return path + ("?" + parts.query if parts.query else "")
