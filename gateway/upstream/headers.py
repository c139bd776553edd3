"""Header hygiene between the client, the gateway and the upstream (DESIGN.md §2, §5).

Contract: pure functions over aiohttp's header multidicts. They never mutate their input and
always return a new :class:`multidict.CIMultiDict` that keeps the order and repetition of the
headers that survive. The forwarder must sanitise *first* and add the headers the gateway owns
(``Txn-Token``, ``X-Forwarded-*``, ``X-Request-Id``, ``traceparent``, the converted credential,
``Host``) *afterwards*, so that no client header, and no ``Connection`` option naming one, can
replace or remove them.

- :func:`sanitize_request_headers`: inbound request -> headers safe to forward.
- :func:`sanitize_response_headers`: upstream response -> headers safe to return.
- :func:`forwarded_for`: the single ``X-Forwarded-For`` value and the client address, trusting
  exactly ``trusted_hops`` proxies in front of the gateway.
- :func:`header_block_size`: size of a raw header block, for ``max_header_bytes`` (431).

None of them raises for hostile input: unwanted headers are dropped, unparseable
``X-Forwarded-For`` entries are ignored.
"""

from __future__ import annotations

import functools
import ipaddress

from multidict import CIMultiDict, CIMultiDictProxy

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

# Connection-specific fields a proxy must not forward (RFC 9110 §7.6.1, RFC 9112 §9.6,
# RFC 9110 §11.7.1-11.7.2 for the proxy-* pair, which belong to the hop to *this* proxy).
# Proxy-Connection and Keep-Alive are the pre-standard HTTP/1.0 spellings (RFC 9112 §9.3).
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# SECURITY: inbound headers that are never forwarded, whatever the route says.
DEFAULT_STRIPPED: frozenset[str] = frozenset(
    {
        # The gateway mints the one Txn-Token the upstream sees; a client-sent one would let a
        # caller choose its own transaction context (draft-ietf-oauth-transaction-tokens §7).
        "txn-token",
        # Forwarding metadata is written by the gateway from the TCP peer and the listener,
        # never copied from the client (RFC 7239 §8.1 on spoofed Forwarded values).
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        # Client-certificate relays (Envoy XFCC, RFC 9440, nginx/HAProxy conventions): the only
        # certificate that counts is the one verified in this TLS handshake.
        "x-forwarded-client-cert",
        "client-cert",
        "client-cert-chain",
        "x-client-cert",
        "x-ssl-client-cert",
        "x-spiffe-id",
        # Set by the gateway for correlation; a client value would poison the audit trail.
        "x-request-id",
        # Inbound credentials are consumed here and converted per route; the upstream receives
        # only the converted credential (DESIGN.md §5; RFC 9449 DPoP; RFC 9421 signatures).
        "authorization",
        "dpop",
        "dpop-nonce",
        "signature",
        "signature-input",
        "workload-identity-token",
        # Identity assertions that upstreams behind auth proxies (oauth2-proxy, Pomerium, ...)
        # tend to trust blindly.
        "x-remote-user",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-user-id",
        "x-agent-id",
        # Framing and authority: the client library sets Content-Length for the body it actually
        # sends, and the forwarder sets the upstream's Host itself (RFC 9110 §7.2).
        "host",
        "content-length",
    }
)

_NEVER_FORWARDED = HOP_BY_HOP | DEFAULT_STRIPPED


def connection_options(headers: Headers) -> frozenset[str]:
    """Lowercased field names listed in every ``Connection`` header (RFC 9110 §7.6.1)."""
    return frozenset(
        name
        for value in headers.getall("Connection", ())
        for option in value.split(",")
        if (name := option.strip().lower())
    )


def sanitize_request_headers(
    headers: Headers, *, extra_strip: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Return a copy of inbound ``headers`` without anything the upstream must not receive.

    Dropped: :data:`HOP_BY_HOP`, fields named by ``Connection``, :data:`DEFAULT_STRIPPED`,
    ``extra_strip`` (names, any case) and any field whose name contains ``_``.
    """
    drop = _NEVER_FORWARDED | {name.lower() for name in extra_strip} | connection_options(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        # SECURITY: 'X_Forwarded_For' reaches WSGI/CGI upstreams as HTTP_X_FORWARDED_FOR, the
        # same variable as 'X-Forwarded-For'; names with '_' could smuggle any stripped header.
        if "_" in name or name.lower() in drop:
            continue
        out.add(name, value)
    return out


def sanitize_response_headers(headers: Headers) -> CIMultiDict[str]:
    """Return a copy of upstream response ``headers`` without connection-specific fields.

    ``Content-Length`` and ``Content-Encoding`` are kept: the body is streamed through unchanged.
    """
    drop = HOP_BY_HOP | connection_options(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def forwarded_for(client_xff: list[str], peer_address: str, trusted_hops: int) -> tuple[str, str]:
    """Return ``(x_forwarded_for, client_address)`` for the request sent upstream.

    ``client_xff`` holds every inbound ``X-Forwarded-For`` line. With ``trusted_hops == 0`` they
    are ignored. Otherwise only the rightmost ``trusted_hops`` entries (those appended by the
    trusted proxies in front of us) are kept; the client is the leftmost of them.
    """
    if trusted_hops < 0:
        raise ValueError("trusted_hops must be >= 0")
    peer = _canonical_peer(peer_address)
    if trusted_hops == 0:
        # SECURITY: nothing the client wrote is believed or passed on.
        return peer, peer
    entries = [e.strip() for line in client_xff for e in line.split(",")]
    entries = [e for e in entries if e]
    # SECURITY: count positions *before* dropping unparseable entries; dropping first would let
    # one junk entry written by a trusted proxy pull a client-written entry into the trusted part.
    trusted = entries[-trusted_hops:]
    kept = [ip for ip in map(_canonical_ip, trusted) if ip is not None]
    client = kept[0] if kept else peer
    return ", ".join([*kept, peer]), client


def header_block_size(raw_headers: tuple[tuple[bytes, bytes], ...]) -> int:
    """Bytes of ``name: value\\r\\n`` summed over ``raw_headers`` (for ``max_header_bytes``)."""
    return sum(len(name) + len(value) + 4 for name, value in raw_headers)


@functools.lru_cache(maxsize=4096)
def _canonical_peer(address: str) -> str:
    """The TCP peer's address (from the kernel, one per connection), canonical; cached."""
    return _canonical_ip(address) or address


def _canonical_ip(entry: str) -> str | None:
    """Canonical text of an IP address entry, or None.

    Accepts ``1.2.3.4``, ``2001:db8::1``, ``[2001:db8::1]``, and either with a ``:port``
    (some proxies append one). The canonical form is what ``ipaddress`` prints.
    """
    host, port = entry, None
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            return None
        port = rest[1:] if rest else None
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    if port is not None and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
