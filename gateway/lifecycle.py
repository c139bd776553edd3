"""How a gateway starts, stops, drains and reloads; :mod:`gateway.app` only says what to build.

**Start** (:meth:`Lifecycle.start`): the shared state, the audit sink, the runtime (upstream
sessions, credentials, authn, PDP), then the listeners in the order given (main, then admin),
each bound before the next; readiness (``config``) turns true only once all are bound. A
failed start is undone by :meth:`Lifecycle.stop` (``run`` calls it), so nothing half-started
outlives it.

**Stop / drain** (:meth:`Lifecycle.stop`): readiness drops first, so ``/readyz`` answers 503
while draining; the main listener's cleanup closes its socket, waits up to
``server.timeouts.drain_s`` for in-flight requests and cancels what is left; then the admin
listener; then runtimes a reload retired whose requests outlived the drain; then the current
runtime, the audit sink and the state.

**Reload** (:meth:`Lifecycle.reload`, on SIGHUP or a change of a watched file): the file is
loaded and validated off the event loop, the values the process was started with
(``server_overrides``: a worker's listen addresses) are kept, settings only a restart may
change (:data:`RESTART_ONLY`) are refused, and a new runtime is built and started *beside*
the old one. Only then are they swapped; the old one is retired once its in-flight requests
have finished (bounded by ``drain_s``), so each request runs entirely on the runtime it
started on. Any failure keeps the old runtime serving and is logged as ``reload refused: ...``;
a reload never stops the gateway. Reloads are serialised.

**Watching** (:func:`watch_files`): polling of :func:`watched_files` (config, policies, data,
keys, credential files) once a second: portable, no extra dependency.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from aiohttp import web

from gateway.authz.pdp import PolicyLoadError
from gateway.errors import ConfigError
from gateway.net.tls_acceptor import TLSAcceptor
from gateway.settings.base import split_listen
from gateway.settings.loading import load_settings
from gateway.settings.root import Settings

log = logging.getLogger("agentgate")

# Settings a running process cannot change: the sockets and the shared state.
RESTART_ONLY: Final = ("server.listen", "server.admin_listen", "server.tls", "state")


class Service(Protocol):
    """A part with a start and a close (the state, the audit sink)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _Counts(Protocol):
    @property
    def inflight(self) -> int: ...


class Retirable(Service, Protocol):
    """A runtime: started, swapped in, retired when its pipeline has nothing in flight."""

    @property
    def pipeline(self) -> _Counts: ...


R = TypeVar("R", bound=Retirable)


@dataclass(frozen=True)
class Listener:
    """One listening socket to bind: its runner, address and TLS settings."""

    name: str
    runner: web.BaseRunner
    listen: str
    ssl_context: ssl.SSLContext | None = None
    reuse_port: bool = False
    handshake_s: float | None = None
    on_refused: Callable[[str], None] = lambda reason: None


class Composed(Protocol[R]):
    """What the composition root (:class:`gateway.app.Gateway`) hands its lifecycle."""

    settings: Settings
    runtime: R
    config_path: Path | None

    @property
    def state(self) -> Service: ...

    @property
    def audit(self) -> Service: ...

    def build_runtime(self, settings: Settings) -> R:
        """A new, not yet started runtime for ``settings``."""

    def listeners(self) -> Sequence[Listener]:
        """The listeners to bind, main first (built once the runtime has started)."""


class Lifecycle(Generic[R]):
    """Start/stop order, drain and reload of one gateway; see the module docstring."""

    def __init__(self, parts: Composed[R], *, overrides: Mapping[str, Any] | None = None) -> None:
        self._parts = parts
        # Values the process was started with that a reloaded file must not change
        # (a worker's listen/admin_listen assigned by the supervisor).
        self._overrides = dict(overrides or {})
        self.started = False
        self.reloads = 0
        self.addresses: dict[str, tuple[str, int]] = {}
        self._runners: list[web.BaseRunner] = []
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        parts = self._parts
        await parts.state.start()
        await parts.audit.start()
        await parts.runtime.start()
        for listener in parts.listeners():
            self.addresses[listener.name] = await bind(listener)
            self._runners.append(listener.runner)
        self.started = True

    async def stop(self) -> None:
        parts = self._parts
        self.started = False
        # The main runner first: its cleanup closes the listening socket, then waits up to
        # drain_s for in-flight requests, then cancels what is left.
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        # Runtimes retired by a reload are closed now if their requests outlived the drain.
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await parts.runtime.close()
        await parts.audit.close()
        await parts.state.close()

    async def reload(self) -> bool:
        """Reload the configuration file, policies, keys and secrets; keep serving on error.

        The new configuration is validated and every part is built and started before
        the swap; if anything fails the old runtime keeps serving and the error is logged.
        """
        parts = self._parts
        config_path = parts.config_path
        if config_path is None:
            log.warning("reload requested, but the gateway was not started from a file")
            return False
        async with self._reload_lock:
            try:
                settings = await asyncio.to_thread(load_settings, config_path)
                if self._overrides:
                    server = settings.server.model_copy(update=self._overrides)
                    settings = settings.model_copy(update={"server": server})
                check_restart_only(parts.settings, settings)
                runtime = parts.build_runtime(settings)
                await runtime.start()
            except (ConfigError, PolicyLoadError) as exc:
                for line in exc.lines():
                    log.error("reload refused: %s", line)
                log.error("reload refused: still serving the previous configuration")
                return False
            except (ValueError, OSError) as exc:
                log.error("reload refused: %s", exc)
                log.error("reload refused: still serving the previous configuration")
                return False
            except Exception as exc:  # a reload must never stop the gateway
                log.exception("reload refused: internal error (%s)", type(exc).__name__)
                return False
            old, parts.runtime, parts.settings = parts.runtime, runtime, settings
            self.reloads += 1
            log.info("configuration reloaded (%d route(s))", len(settings.routes))
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    async def _retire(self, old: R) -> None:
        # In-flight requests of the old runtime finish first (bounded by drain_s).
        deadline = time.monotonic() + self._parts.settings.server.timeouts.drain_s
        try:
            while old.pipeline.inflight and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling a counter is cheaper than an Event per request
        finally:
            await old.close()


def check_restart_only(old: Settings, new: Settings) -> None:
    """Raise :class:`ConfigError` when ``new`` changes a :data:`RESTART_ONLY` setting."""
    before_all, after_all = old.model_dump(), new.model_dump()
    for dotted in RESTART_ONLY:
        before: Any = before_all
        after: Any = after_all
        for key in dotted.split("."):
            before, after = before.get(key), after.get(key)
        if before != after:
            raise ConfigError([(dotted, "changing this needs a restart, not a reload")])


# ---------------------------------------------------------------------- listening sockets


class _TCPSite(web.TCPSite):
    """aiohttp's TCPSite plus a TLS handshake deadline (asyncio's default is 60 s) and
    handshakes the gateway sees (:mod:`gateway.net.tls_acceptor`: a refusal is logged and counted,
    where asyncio would drop it silently)."""

    __slots__ = ("_handshake_s", "_handshakes", "_on_refused")

    def __init__(
        self,
        *args: Any,
        handshake_s: float | None,
        on_refused: Callable[[str], None] = lambda reason: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_s = handshake_s
        self._on_refused = on_refused
        self._handshakes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner has no server")
        context = self._ssl_context
        factory: Callable[[], asyncio.BaseProtocol] = server
        if context is not None:

            def factory() -> asyncio.BaseProtocol:
                # SECURITY: a client that never finishes its handshake holds a socket; bound
                # it like a client that never finishes its request head.
                return TLSAcceptor(
                    server,
                    context,
                    handshake_s=self._handshake_s,
                    on_refused=self._on_refused,
                    pending=self._handshakes,
                )

        self._server = await asyncio.get_running_loop().create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        for task in list(self._handshakes):  # handshakes still under way end with the site
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        await super().stop()


async def bind(listener: Listener) -> tuple[str, int]:
    """Set up ``listener``'s runner and bind its socket; the bound ``(host, port)``."""
    host, port = split_listen(listener.listen)
    runner = listener.runner
    await runner.setup()
    site = _TCPSite(
        runner,
        host,
        port,
        ssl_context=listener.ssl_context,
        backlog=1024,
        reuse_port=listener.reuse_port or None,
        handshake_s=listener.handshake_s,
        on_refused=listener.on_refused,
    )
    await site.start()
    server = site._server  # aiohttp keeps the asyncio.Server here; it holds the bound port
    if not isinstance(server, asyncio.base_events.Server):
        raise RuntimeError("the site did not start a server")
    sock: socket.socket = server.sockets[0]
    bound = sock.getsockname()
    return str(bound[0]), int(bound[1])


# ---------------------------------------------------------------------- reload triggers


class Reloadable(Protocol):
    """What the reload triggers need of a gateway."""

    @property
    def settings(self) -> Settings: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def loaded_files(self) -> Fingerprint: ...

    async def reload(self) -> bool: ...


def watched_files(settings: Settings, config_path: Path) -> list[Path]:
    """The files whose change triggers a reload: config, policies, data, keys, credentials."""
    files = [config_path]
    if settings.pdp is not None and settings.pdp.policies is not None:
        files.extend(sorted(settings.pdp.policies.rglob("*.rego")))
        if settings.pdp.data is not None:
            files.append(settings.pdp.data)
    if settings.txn_tokens is not None:
        files.extend(settings.txn_tokens.key_files)
    for method in settings.authn.values():
        for attr in ("keys_file", "users_file", "agents_file"):
            path = getattr(method, attr, None)
            if isinstance(path, Path):
                files.append(path)
    return files


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(files: list[Path]) -> Fingerprint:
    """``(path, mtime_ns, size)`` of each file; ``-1, -1`` for one that cannot be read."""
    out = []
    for path in files:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


async def watch_files(gateway: Reloadable, interval_s: float = 1.0) -> None:
    """Reload when a watched file changes (polling: portable, no extra dependency)."""
    config_path = gateway.config_path
    if config_path is None:
        raise ValueError("the gateway was not started from a file")
    seen = gateway.loaded_files
    while True:
        await asyncio.sleep(interval_s)
        now = fingerprint(watched_files(gateway.settings, config_path))
        if now != seen:
            log.info("a watched file changed: reloading")
            await gateway.reload()  # never raises: a refused reload is logged
            # Compare later rounds with what this reload read, so a save made while it ran
            # is reloaded next round; a new watch list (e.g. a new policy file) starts afresh.
            files = watched_files(gateway.settings, config_path)
            same = [entry[0] for entry in now] == [str(path) for path in files]
            seen = now if same else fingerprint(files)


def install_reload(gateway: Reloadable, *, watch: bool = True) -> list[asyncio.Task[Any]]:
    """SIGHUP and (optionally) file changes reload ``gateway``; returns tasks to cancel."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []

    def on_hup() -> None:
        log.info("SIGHUP: reloading")
        tasks.append(loop.create_task(gateway.reload()))

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if watch and gateway.config_path is not None:
        tasks.append(loop.create_task(watch_files(gateway)))
    return tasks


# ---------------------------------------------------------------------- the process


class Served(Reloadable, Protocol):
    """What :func:`serve` needs of a gateway."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str: ...


async def serve(
    build: Callable[[], Served],
    stop: asyncio.Event | None = None,
    *,
    drain_s: float,
    watch: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain and return.

    ``build`` makes the gateway once the signal handlers are in place. SIGHUP, or a change
    to a watched file (``watch``), reloads the configuration in place.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = build()
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()  # nothing half-started outlives a failed start
        raise
    reloading = install_reload(gateway, watch=watch)
    log.info(gateway.describe())
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight requests for up to %.1fs", drain_s)
    finally:
        for task in reloading:
            task.cancel()
        await gateway.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("agentgate stopped")
