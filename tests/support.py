"""Shared test helpers: ports, a scriptable upstream, raw HTTP, TLS client contexts, PKI files,
and a gateway running as a real subprocess (``python -m gateway run``).

Nothing here mocks a gateway class: tests talk to the gateway over real sockets. The upstream is
a small aiohttp app because it must do things a real backend cannot be told to do on cue (stall,
reset, redirect to an "attacker", stream tens of megabytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.context import Inbound
from gateway.protocols.body import RequestBody

ROOT = Path(__file__).resolve().parents[1]
LOCALHOST = "127.0.0.1"
MiB = 1024 * 1024

# Generous, bounded waits: the suite must survive a loaded two-core CI machine.
STARTUP_TIMEOUT_S = 30.0
IO_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- real components

_BINARIES = {"redis": "redis-server"}


def require_real(tool: str) -> str:
    """Path of the real ``tool`` binary (``.tools/bin`` first, then ``PATH``).

    When it is missing the test fails under CI (a skipped test proves nothing there) and
    skips elsewhere, naming the bootstrap step that installs it.
    """
    binary = _BINARIES.get(tool, tool)
    pinned = ROOT / ".tools" / "bin" / binary
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    found = shutil.which(binary)
    if found:
        return found
    message = f"{binary} not found in .tools/bin or PATH (install it: scripts/bootstrap.sh {tool})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI requires the real {tool}: {message}", pytrace=False)
    pytest.skip(message)


# --------------------------------------------------------------------------- ports and polling


def free_port() -> int:
    """A TCP port that was free a moment ago (prefer binding port 0 where the code allows it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    return free_port()


async def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float = IO_TIMEOUT_S,  # noqa: ASYNC109 - a bound on polling, not on one await
    interval: float = 0.01,
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- PKI files


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path
    spiffe_id: str | None = None
    serial: int = 0


@dataclass(frozen=True)
class TestPKI:
    """Certificates for the TLS tests; every path is inside a session temp folder."""

    __test__ = False  # not a test class, despite the name

    directory: Path
    trust_domain: str
    ca: Path  # trust bundle for client certificates (and the server cert)
    server: CertPair  # localhost / 127.0.0.1 / ::1, spiffe://<td>/gateway
    agents: Mapping[str, CertPair]  # spiffe://<td>/agent/<name>
    foreign: CertPair  # a valid agent cert from ANOTHER CA
    foreign_ca: Path
    expired: CertPair
    two_uris: CertPair  # two URI SANs, both SPIFFE IDs
    malformed: Mapping[str, CertPair]  # one malformed SPIFFE URI SAN each
    revoked: CertPair
    crl: Path  # revokes ``revoked`` only
    no_spiffe: CertPair  # a client cert with no URI SAN at all


def client_context(
    pki: TestPKI,
    pair: CertPair | None = None,
    *,
    maximum_version: ssl.TLSVersion | None = None,
    minimum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context that trusts the dev CA and optionally presents ``pair``."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if minimum_version is not None:
        ctx.minimum_version = minimum_version
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    if pair is not None:
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    lowered = {k.lower(): v for k, v in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in lowered:
        return await reader.readexactly(int(lowered["content-length"]))
    return await reader.read()


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """Parse one HTTP/1.1 response; raises ``EOFError`` if the peer closed before a status.

    ``head``: the response answers a HEAD request, so it has no body whatever it announces.
    """
    line = await reader.readline()
    if not line:
        raise EOFError("connection closed before any response")
    _, status, reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    body = b"" if head else await _read_body(reader, headers)
    return RawResponse(int(status), reason, headers, body)


async def raw_request(
    address: tuple[str, int],
    data: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = IO_TIMEOUT_S,  # noqa: ASYNC109 - helpers are bounded by default
) -> RawResponse:
    """Send ``data`` verbatim (a request head, maybe a body) and parse one response."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(*address, ssl=ssl_context)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader, head=data.startswith(b"HEAD "))
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def http_request(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "gw.test",
) -> bytes:
    """Bytes of one request; ``Host`` first unless given, ``Content-Length`` iff a body."""
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(k.lower() == "host" for k, _ in headers):
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def tls_outcome(
    address: tuple[str, int],
    ctx: ssl.SSLContext,
    *,
    timeout: float = IO_TIMEOUT_S,  # noqa: ASYNC109 - helpers are bounded by default
) -> bytes | BaseException:
    """Handshake, send one GET, read to EOF: the bytes read, or the exception that ended it.

    With TLS 1.3 the client finishes its side of the handshake before the server has checked
    the client certificate, so a refusal shows up on the first read, not in ``connect``.
    """
    request = http_request("GET", "/", [("Connection", "close")], host="localhost")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*address, ssl=ctx)
            try:
                writer.write(request)
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        raise
    except (OSError, ssl.SSLError, EOFError) as exc:  # ssl.SSLError is an OSError; be explicit
        return exc


# --------------------------------------------------------------------------- upstream


@dataclass
class Hit:
    """One request as the upstream received it."""

    method: str
    path: str  # raw path with query, exactly as on the request line
    headers: list[tuple[str, str]]
    body_len: int = 0
    complete: bool = False  # the whole body arrived, properly terminated
    finished: bool = False  # the upstream is done with this request, one way or the other

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Attacker:
    """A listener that only counts connections: the target of an upstream's redirect."""

    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(on_connect, LOCALHOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


_BIG_CHUNK = b"\xa5" * (256 * 1024)


@dataclass
class Upstream:
    """An echo backend on 127.0.0.1:<free port>.

    ``/`` (anything not below) answers JSON: method, raw path, headers as a list of pairs, body
    length and SHA-256. ``/redirect`` 302s to the attacker listener; ``/slow?s=N`` answers after
    N seconds (default 60, past any total timeout used here); ``/hold`` answers once ``gate`` is
    set; ``/big?mb=N`` streams N MiB; ``/reset`` resets the TCP connection before answering;
    ``/hop`` answers with hop-by-hop headers that must not reach the client.
    """

    hits: list[Hit] = field(default_factory=list)
    attacker: Attacker = field(default_factory=Attacker)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    async def start(self) -> None:
        await self.attacker.start()
        app = web.Application()
        app.router.add_route("*", "/redirect", self._redirect)
        app.router.add_route("*", "/slow", self._slow)
        app.router.add_route("*", "/hold", self._hold)
        app.router.add_route("*", "/big", self._big)
        app.router.add_route("*", "/reset", self._reset)
        app.router.add_route("*", "/hop", self._hop)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        # handler_cancellation: a stalled handler dies with its connection, so teardown is quick.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCALHOST, 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.attacker.close()

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]

    async def _record(self, request: web.Request) -> tuple[Hit, str]:
        hit = Hit(
            request.method,
            request.raw_path,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        )
        self.hits.append(hit)
        digest = hashlib.sha256()
        try:
            async for chunk in request.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                hit.body_len += len(chunk)
            hit.complete = True
        finally:
            hit.finished = True
        return hit, digest.hexdigest()

    async def _echo(self, request: web.Request) -> web.Response:
        hit, sha = await self._record(request)
        return web.json_response(
            {
                "method": hit.method,
                "path": hit.path,
                "headers": hit.headers,
                "body_len": hit.body_len,
                "body_sha256": sha,
            }
        )

    async def _redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        location = f"http://{LOCALHOST}:{self.attacker.port}/"
        return web.Response(status=302, headers={"Location": location})

    async def _slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(float(request.query.get("s", "60")))
        return web.json_response({"slow": True})

    async def _hold(self, request: web.Request) -> web.Response:
        await self._record(request)
        async with asyncio.timeout(60):
            await self.gate.wait()
        return web.json_response({"held": True})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        total = int(float(request.query.get("mb", "1")) * MiB)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = total
        await response.prepare(request)
        sent = 0
        while sent < total:
            chunk = _BIG_CHUNK[: total - sent]
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
        return response

    async def _reset(self, request: web.Request) -> web.Response:
        await self._record(request)
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        # SO_LINGER 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        raise asyncio.CancelledError  # nothing more to say on this connection

    async def _hop(self, request: web.Request) -> web.Response:
        await self._record(request)
        response = web.json_response({"hop": True})
        response.headers.update(
            {
                "Connection": "X-Internal-Route",
                "X-Internal-Route": "10.0.0.7:8080",
                "Keep-Alive": "timeout=5",
                "Proxy-Connection": "keep-alive",
                "Proxy-Authenticate": "Basic realm=internal",
                "Trailer": "X-Checksum",
                "Upgrade": "h2c",
                "Server": "upstream-httpd/9.9.9",
                "X-Kept": "yes",
            }
        )
        return response


# --------------------------------------------------------------------------- subprocess gateway

_LISTENING = re.compile(
    r"agentgate listening: main (?P<scheme>https?)://(?P<host>[^ ]+):(?P<port>\d+) .*"
    r"admin http://(?P<ahost>[^ ]+):(?P<aport>\d+)"
)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class GatewayProcess:
    """``python -m gateway run -c <config>`` with its stderr collected line by line."""

    proc: asyncio.subprocess.Process
    scheme: str = "http"
    main_address: tuple[str, int] = ("", 0)
    admin_address: tuple[str, int] = ("", 0)
    lines: list[str] = field(default_factory=list)
    listening_line: str = ""
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        host, port = self.main_address
        return f"{self.scheme}://{host}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        return f"http://{host}:{port}"

    @classmethod
    async def start(
        cls,
        config: Mapping[str, Any],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> GatewayProcess:
        """Start and wait for the listening line; ``env`` adds to the inherited environment."""
        path = write_config(workdir / "gateway.yaml", config)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "-c",
            str(path),
            cwd=ROOT,
            env={**subprocess_env(), **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        gw = cls(proc)
        try:
            await gw._await_listening()
        except BaseException:
            await gw.kill()
            raise
        gw._reader = asyncio.create_task(gw._drain_stderr())
        return gw

    async def _await_listening(self) -> None:
        assert self.proc.stderr is not None
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    await self.proc.wait()
                    raise AssertionError(
                        f"gateway exited {self.proc.returncode} before listening:\n"
                        + "\n".join(self.lines)
                    )
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.listening_line = line
                    self.scheme = match["scheme"]
                    self.main_address = (match["host"].strip("[]"), int(match["port"]))
                    self.admin_address = (match["ahost"].strip("[]"), int(match["aport"]))
                    return

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def send_signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109 - bounded by design
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def stop(self) -> None:
        """SIGTERM and wait; kill if it does not exit in time (teardown only)."""
        if self.proc.returncode is None:
            self.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await self.wait(timeout=20)
        await self.kill()


def inbound(request: web.BaseRequest, max_body_bytes: int = 10 * 1024 * 1024) -> Inbound:
    """What the pipeline hands an authentication method for ``request`` (a mocked one too)."""
    body = RequestBody(request, max_body_bytes)
    return Inbound(request.method, request.raw_path, request.headers, request.query, body)
