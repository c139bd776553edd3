"""TLS handshakes the listener can see, refusals included (issue 15.6).

With ``loop.create_server(ssl=...)`` asyncio performs the handshake inside its own protocol
and drops a failed one silently (``sslproto`` logs ``OSError`` subclasses, which every
``ssl.SSLError`` is, only in debug mode): an operator whose client "cannot connect" sees
nothing. :class:`TLSAcceptor` accepts plain TCP instead and upgrades each connection with
``loop.start_tls`` (the same OpenSSL handshake, the same context, the same deadline). A
handshake that succeeds hands the TLS transport to the HTTP protocol exactly as asyncio
would; one that fails is logged once, with the peer address and a stable reason, and
counted (``on_refused(reason)``, the ``agentgate_tls_handshake_failures`` metric).

Reasons (:func:`refusal_reason`): ``no_client_cert``, ``unknown_ca``, ``expired``,
``not_yet_valid``, ``revoked``, ``bad_certificate`` (any other verification failure, e.g. a
certificate that X509-strict checking refuses), ``protocol`` (no shared version or cipher),
``not_tls`` (plain HTTP sent to the TLS port), ``timeout``, ``closed`` (the peer went away
mid-handshake), ``other``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

log = logging.getLogger("agentgate.tls")

_VERIFY_REASONS = (
    ("expired", "expired"),
    ("not yet valid", "not_yet_valid"),
    ("revoked", "revoked"),
    ("unable to get local issuer", "unknown_ca"),
    ("self-signed certificate", "unknown_ca"),
    ("self signed certificate", "unknown_ca"),
    ("unable to get issuer", "unknown_ca"),
)
_OPENSSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "CERTIFICATE_REQUIRED": "no_client_cert",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_cert",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "UNSUPPORTED_PROTOCOL": "protocol",
    "NO_SHARED_CIPHER": "protocol",
    "NO_PROTOCOLS_AVAILABLE": "protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol",
    "VERSION_TOO_LOW": "protocol",
}


def refusal_reason(exc: BaseException) -> tuple[str, str]:
    """(stable reason, short detail) for a failed server-side handshake."""
    if isinstance(exc, TimeoutError):
        return "timeout", "handshake not finished in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or exc.reason or "").lower()
        for needle, reason in _VERIFY_REASONS:
            if needle in message:
                return reason, exc.verify_message or ""
        return "bad_certificate", exc.verify_message or str(exc.reason or "")
    if isinstance(exc, ssl.SSLError):
        code = str(exc.reason or "")
        return _OPENSSL_REASONS.get(code, "other"), code or type(exc).__name__
    if isinstance(exc, ConnectionError | EOFError | ssl.SSLEOFError):
        return "closed", type(exc).__name__
    return "other", type(exc).__name__


class TLSAcceptor(asyncio.Protocol):
    """One accepted TCP connection until its TLS handshake is done (then: ``factory()``)."""

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        *,
        handshake_s: float | None,
        on_refused: Callable[[str], None],
        pending: set[asyncio.Task[None]],
    ) -> None:
        self._factory = factory
        self._context = context
        self._handshake_s = handshake_s
        self._on_refused = on_refused
        self._pending = pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover - TCP only
            transport.close()
            return
        # The ClientHello may already be on its way: nothing may be read before start_tls
        # has put its TLS protocol in place (it resumes reading itself).
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        protocol = self._factory()
        # start_tls delivers application data as soon as the handshake is done, before this
        # coroutine resumes: it must reach the HTTP protocol only after connection_made.
        handoff = _Handoff()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                handoff,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._handshake_s,
            )
        except asyncio.CancelledError:
            transport.abort()
            raise
        except Exception as exc:  # one connection's failure never reaches the listener
            reason, detail = refusal_reason(exc)
            address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
            # One line per refused handshake, never the certificate or anything it holds. A
            # peer that only connects and leaves (a TCP health check) is not a warning.
            level = logging.INFO if reason == "closed" else logging.WARNING
            log.log(level, "TLS handshake refused: %s (%s) from %s", reason, detail[:120], address)
            self._on_refused(reason)
            transport.abort()
            return
        if tls is None:  # pragma: no cover - the peer closed during the upgrade
            transport.abort()
            return
        protocol.connection_made(tls)
        handoff.hand_over(tls, protocol)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - start_tls owns reads
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _Handoff(asyncio.Protocol):
    """Holds what the TLS transport delivers until the HTTP protocol has been connected."""

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None
        self._paused = False

    def data_received(self, data: bytes) -> None:
        self._data.append(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        return True  # keep the transport open until the real protocol decides

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def hand_over(self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol) -> None:
        """Route the transport to ``protocol`` and replay what arrived meanwhile, in order."""
        transport.set_protocol(protocol)
        if self._paused:
            protocol.pause_writing()
        if isinstance(protocol, asyncio.Protocol):
            for chunk in self._data:
                protocol.data_received(chunk)
            if self._eof and not protocol.eof_received():
                transport.close()
        self._data.clear()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])
