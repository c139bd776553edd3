"""``agentgate run --workers N``: N gateway processes sharing one port (SO_REUSEPORT).

The parent (a small asyncio supervisor, no gateway inside) validates the config once,
then starts N children with ``subprocess``: ``python -m gateway.net.workers --index I ...``.
Subprocesses rather than ``multiprocessing``: each worker is a plain, fresh
interpreter (no inherited event loop, sockets or pickled state), its exit status is
an ordinary exit code, and ``ps`` shows what it is.

* **Config.** The parent reads the file once and hands every worker the same bytes on
  stdin, so all workers -- including one restarted later -- run the same config
  (relative paths still resolve against the file's folder). On SIGHUP the parent
  re-reads and validates the file; only a valid config is adopted and SIGHUP is then
  forwarded to the workers (whose reload, if any, is the app's business).
* **Main port.** Every worker binds ``server.listen`` with ``SO_REUSEPORT``; the kernel
  spreads new connections across them (by 4-tuple hash). The parent first binds the
  same address with ``SO_REUSEPORT`` without listening: that resolves port 0 to a real
  port shared by all workers, fails early if the port is taken, and keeps the port
  reserved for restarts. It never accepts anything.
* **Admin port.** Each worker has its own admin listener: worker 0 on
  ``server.admin_listen`` exactly (point probes there), worker I on that port + I (each
  worker's ``/metrics`` scraped separately; with port 0 each gets a free port).
* **Readiness.** A worker writes one JSON line (its pid and bound addresses) to a pipe
  once it is listening. The parent logs ``agentgate listening: ...`` once all N are up;
  if any worker fails to start the first time, everything stops and the exit code is 1.
* **Signals.** SIGTERM/SIGINT are forwarded to every worker, which drains
  (``timeouts.drain_s``); a second signal, or a worker still alive after drain_s + 10 s,
  gets SIGKILL. The parent exits 0 when every worker exited 0, else 1. Workers ask the
  kernel for SIGTERM if the parent dies (``PR_SET_PDEATHSIG``), so none is orphaned.
* **Crashes.** A worker that exits while the parent is not stopping is restarted after
  0.5 s, doubling per consecutive failure up to 30 s; a worker that ran for 30 s resets
  its backoff.

SECURITY: with N > 1 every worker must share replay caches, revocations and rate
limits, so ``state.backend: memory`` is refused (a jti replayed to another worker
would be accepted, a revocation would reach one worker only, and limits would be
N times too high). SO_REUSEPORT lets any process of the same user join the port:
run the gateway under its own user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.settings.base import split_listen
from gateway.settings.loading import parse_settings
from gateway.settings.root import Settings

log = logging.getLogger("agentgate.workers")

STARTUP_TIMEOUT_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0
KILL_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- helpers


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    return max(1, cpus)


def _fmt_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_config(path: Path) -> tuple[bytes, Settings]:
    """The config bytes and their validated settings; raise :class:`ConfigError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    return raw, _parse(raw, path)


def _parse(raw: bytes, path: Path) -> Settings:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError([("", f"{path}: invalid YAML")]) from None
    return parse_settings(data, path.resolve().parent)


def check_workers(settings: Settings, n: int) -> None:
    problems: list[tuple[str, str]] = []
    if n < 1:
        problems.append(("", "--workers must be at least 1"))
    if n > 1 and settings.state.backend == "memory":
        # SECURITY: per-process replay caches, revocations and buckets cannot protect
        # a port served by several processes.
        problems.append(("state.backend", f"'memory' cannot be shared by {n} workers; use 'redis'"))
    if n > 1 and not hasattr(socket, "SO_REUSEPORT"):
        problems.append(("", "--workers > 1 needs SO_REUSEPORT (Linux)"))
    _, admin_port = split_listen(settings.server.admin_listen)
    if admin_port and admin_port + n - 1 > 65535:
        problems.append(("server.admin_listen", f"port + {n - 1} workers exceeds 65535"))
    if problems:
        raise ConfigError(problems)


def _ignore_signals(loop: asyncio.AbstractEventLoop, sigs: Sequence[signal.Signals]) -> None:
    """Done: ignore further stop signals rather than let the loop restore the defaults.

    A terminal's Ctrl-C (or ``timeout``) signals the whole process group *and* the
    parent forwards the signal: a second copy arriving after the loop closed would
    otherwise kill a cleanly stopped process (exit -15) or raise KeyboardInterrupt.
    """
    for sig in sigs:
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (never listen) ``host:port`` with SO_REUSEPORT: resolves port 0, holds the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host = "127.0.0.1"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- parent


@dataclass
class _Worker:
    index: int
    admin_listen: str
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    def __init__(
        self, config_path: Path, raw: bytes, settings: Settings, n: int, log_level: str
    ) -> None:
        self.config_path = config_path
        self.raw = raw
        self.settings = settings
        self.n = n
        self.log_level = log_level
        self.stopping = False
        self._forced = False
        self._stop = asyncio.Event()
        self.listen = ""
        self.workers: list[_Worker] = []

    # -------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        server = self.settings.server
        host, port = split_listen(server.listen)
        try:
            reservation = _reserve(host, port)
        except OSError as exc:
            log.error("cannot bind %s: %s", server.listen, exc.strerror or exc)
            return 1
        with reservation:
            self.listen = _fmt_listen(host, reservation.getsockname()[1])
            ahost, aport = split_listen(server.admin_listen)
            self.workers = [
                _Worker(i, _fmt_listen(ahost, aport + i if aport else 0)) for i in range(self.n)
            ]
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                return await self._serve()
            finally:
                _ignore_signals(loop, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))

    async def _serve(self) -> int:
        started = await asyncio.gather(*(self._spawn(w) for w in self.workers))
        if self.stopping:  # a signal arrived while starting
            return await self._shutdown()
        if not all(started):
            log.error("a worker failed to start; stopping all workers")
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            await self._shutdown()
            return 1
        self._announce()
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        await self._stop.wait()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return await self._shutdown()

    def _announce(self) -> None:
        scheme = "https" if self.settings.server.tls else "http"
        w0 = self.workers[0].info
        ahost, aport = w0.get("admin", ["?", 0])
        admin_host = f"[{ahost}]" if ":" in str(ahost) else ahost
        pids = " ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
        log.info(
            "agentgate listening: main %s://%s (%d workers, SO_REUSEPORT), "
            "admin http://%s:%s (worker 0; worker i on its port + i), pids %s",
            scheme,
            self.listen,
            self.n,
            admin_host,
            aport,
            pids,
        )

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            self._reload()
            return
        if self.stopping:
            log.warning("second %s: killing the workers now", sig.name)
            self._forced = True
            self._signal_all(signal.SIGKILL)
            return
        log.info("%s: stopping %d workers (drain up to %.1fs)", sig.name, self.n, self._drain_s)
        self.stopping = True
        self._signal_all(sig)
        self._stop.set()

    def _reload(self) -> None:
        try:
            raw, settings = _read_config(self.config_path)
            check_workers(settings, self.n)
        except ConfigError as exc:
            for line in exc.lines():
                log.error("SIGHUP: config not reloaded: %s", line)
            return
        if settings.server.listen != self.settings.server.listen:
            log.warning("SIGHUP: server.listen changed; it takes a restart, keeping the port")
        self.raw, self.settings = raw, settings
        log.info("SIGHUP: config re-read; forwarding to %d workers", self.n)
        self._signal_all(signal.SIGHUP)

    @property
    def _drain_s(self) -> float:
        return self.settings.server.timeouts.drain_s

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _shutdown(self) -> int:
        self.stopping = True
        running = [(w.index, w.proc) for w in self.workers if w.proc is not None]
        try:
            async with asyncio.timeout(self._drain_s + KILL_GRACE_S):
                codes = await asyncio.gather(*(proc.wait() for _, proc in running))
        except TimeoutError:
            log.error("workers still running after drain + %.0fs: killing them", KILL_GRACE_S)
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*(proc.wait() for _, proc in running))
            return 1
        bad = [(index, code) for (index, _), code in zip(running, codes, strict=True) if code]
        for index, code in bad:
            log.error("worker %d exited with %d", index, code)
        return 1 if bad or self._forced else 0

    # -------------------------------------------------------------- one worker

    async def _spawn(self, worker: _Worker) -> bool:
        """Start ``worker`` and wait until it listens; False if it died or hung."""
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.net.workers",
                "--index",
                str(worker.index),
                "--config",
                str(self.config_path),
                "--listen",
                self.listen,
                "--admin-listen",
                worker.admin_listen,
                "--ready-fd",
                str(write_fd),
                "--parent-pid",
                str(os.getpid()),
                "--log-level",
                self.log_level,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
            )
        except OSError as exc:
            os.close(read_fd)
            log.error("worker %d: cannot start: %s", worker.index, exc.strerror or exc)
            return False
        finally:
            os.close(write_fd)
        worker.proc, worker.started_at = proc, time.monotonic()
        if proc.stdin is None:  # never: create_subprocess_exec was given stdin=PIPE
            raise RuntimeError(f"worker {worker.index}: no stdin pipe")
        with contextlib.suppress(OSError):  # a worker that died at once: seen below
            proc.stdin.write(self.raw)
            await proc.stdin.drain()
            proc.stdin.close()
        line = await _read_line(read_fd, STARTUP_TIMEOUT_S)
        if not line:
            if proc.returncode is None and line is None:
                log.error("worker %d: not listening after %.0fs", worker.index, STARTUP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            code = await proc.wait()
            if not self.stopping:
                log.error(
                    "worker %d (pid %d) failed to start (exit %d)", worker.index, proc.pid, code
                )
            return False
        with contextlib.suppress(ValueError):
            worker.info = json.loads(line)
        log.debug("worker %d (pid %d) ready: %s", worker.index, proc.pid, worker.info)
        return True

    async def _watch(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits while we are not stopping."""
        while True:
            if worker.proc is None:  # never started: nothing to watch
                return
            code = await worker.proc.wait()
            if self._stop.is_set():
                return
            ran = time.monotonic() - worker.started_at
            worker.failures = 0 if ran >= HEALTHY_AFTER_S else worker.failures + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, worker.failures - 1))
            log.error(
                "worker %d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
                worker.index,
                worker.proc.pid,
                code,
                ran,
                delay,
            )
            await asyncio.sleep(delay)
            if self._stop.is_set():
                return
            if await self._spawn(worker):
                log.info("worker %d restarted (pid %d)", worker.index, worker.proc.pid)


async def _read_line(fd: int, wait_s: float) -> bytes | None:
    """One line from a pipe: the line, b"" on EOF (writer gone), None on timeout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        async with asyncio.timeout(wait_s):
            return await reader.readline()
    except TimeoutError:
        return None
    finally:
        transport.close()


def run_workers(config_path: Path, n: int, *, log_level: str = "INFO") -> int:
    """Run ``n`` workers until SIGTERM/SIGINT; the exit code for the CLI.

    Raises :class:`ConfigError` (the CLI prints it and exits 2) for an invalid config
    or a worker count the config cannot support.
    """
    raw, settings = _read_config(config_path)
    check_workers(settings, n)
    supervisor = Supervisor(config_path, raw, settings, n, log_level)
    return asyncio.run(supervisor.run())


# --------------------------------------------------------------------------- worker


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this worker when the supervisor dies (Linux), so no worker is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_settings(raw: bytes, config: Path, listen: str, admin_listen: str) -> Settings:
    settings = _parse(raw, config)
    server = settings.server.model_copy(update={"listen": listen, "admin_listen": admin_listen})
    return settings.model_copy(update={"server": server})


async def _serve_worker(settings: Settings, index: int, ready_fd: int, config: Path) -> None:
    from gateway.app import Gateway, install_reload

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SO_REUSEPORT on the main listener only (the admin listener has a port per worker);
    # a reload keeps the ports the supervisor assigned. The supervisor validates the file
    # and forwards SIGHUP, so workers reload on the signal and do not watch files.
    overrides = {
        "listen": settings.server.listen,
        "admin_listen": settings.server.admin_listen,
    }
    gateway = Gateway(settings, reuse_port=True, config_path=config, server_overrides=overrides)
    reloading: list[asyncio.Task[Any]] = []
    try:
        await gateway.start()
        reloading = install_reload(gateway, watch=False)
        main, admin = gateway.main_address, gateway.admin_address
        log.info("worker %d (pid %d) up: main %s, admin %s", index, os.getpid(), main, admin)
        os.write(
            ready_fd,
            json.dumps({"pid": os.getpid(), "main": main, "admin": admin}).encode() + b"\n",
        )
        os.close(ready_fd)
        await stop.wait()
    finally:
        for task in reloading:
            task.cancel()
        await gateway.stop()
        _ignore_signals(loop, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.net.workers")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--admin-listen", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[w{args.index}]: %(message)s",
    )
    _die_with_parent(args.parent_pid)
    try:
        settings = _worker_settings(
            sys.stdin.buffer.read(), args.config, args.listen, args.admin_listen
        )
        asyncio.run(_serve_worker(settings, args.index, args.ready_fd, args.config))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"agentgate worker {args.index}: cannot start: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
