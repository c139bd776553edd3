"""``agentgate run --workers N``: N processes on one port (SO_REUSEPORT), supervised.

Runs the real CLI (``python -m gateway run -c CFG --workers 2``) with the redis state
backend against a real redis-server, and looks at the processes from outside with
psutil: which PIDs listen on the port, which PID owns each accepted connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.errors import ConfigError
from gateway.net.workers import available_cpus, check_workers
from gateway.settings import parse_settings
from tests.redis_server import RedisServer
from tests.support import (
    ROOT,
    STARTUP_TIMEOUT_S,
    Upstream,
    http_request,
    read_response,
    subprocess_env,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "workers-admin-token-5d1e"
_LISTENING = re.compile(
    r"agentgate listening: main http://(?P<host>[^ ]+):(?P<port>\d+) .*"
    r"admin http://(?P<ahost>[^ ]+):(?P<aport>\d+)"
)


# --------------------------------------------------------------------------- config checks


def _settings(backend: str, admin_listen: str = "127.0.0.1:0") -> Any:
    state: dict[str, Any] = {"backend": backend}
    if backend == "redis":
        state["redis_url"] = "env:PATH"  # any set variable; never connected here
    return parse_settings({"server": {"admin_listen": admin_listen}, "state": state}, Path.cwd())


@pytest.mark.parametrize(
    ("backend", "n", "admin", "problem"),
    [
        pytest.param("memory", 1, "127.0.0.1:0", None, id="memory-one-worker-ok"),
        pytest.param("redis", 4, "127.0.0.1:9901", None, id="redis-four-workers-ok"),
        pytest.param("memory", 2, "127.0.0.1:0", "state.backend", id="memory-shared-refused"),
        pytest.param("redis", 0, "127.0.0.1:0", "", id="zero-workers"),
        pytest.param(
            "redis", 3, "127.0.0.1:65534", "server.admin_listen", id="admin-port-overflow"
        ),
    ],
)
def test_check_workers(backend: str, n: int, admin: str, problem: str | None) -> None:
    settings = _settings(backend, admin)
    if problem is None:
        check_workers(settings, n)
        return
    with pytest.raises(ConfigError) as info:
        check_workers(settings, n)
    assert [path for path, _ in info.value.problems] == [problem]


def test_available_cpus_is_positive_and_bounded() -> None:
    assert 1 <= available_cpus() <= (psutil.cpu_count() or 1)


# --------------------------------------------------------------------------- the supervisor


@dataclass
class Supervised:
    """``agentgate run --workers N`` as a subprocess, stderr collected."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    main: tuple[str, int] = ("", 0)
    admin: tuple[str, int] = ("", 0)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: dict[str, Any], workdir: Path, n: int) -> Supervised:
        path = write_config(workdir / "gateway.yaml", config)
        env = subprocess_env() | {"ADMIN_TOKEN": ADMIN_TOKEN}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(path), "--workers", str(n),
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        sup = cls(proc)
        sup.reader = asyncio.create_task(sup._read())
        return sup

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not self.main[1]:
                self.main = (match["host"], int(match["port"]))
                self.admin = (match["ahost"], int(match["aport"]))

    async def listening(self) -> None:
        async with asyncio.timeout(STARTUP_TIMEOUT_S * 2):
            while not self.main[1]:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"exited {self.proc.returncode} before listening (is `agentgate run "
                        f"--workers` wired into the CLI?):\n" + "\n".join(self.lines)
                    )
                await asyncio.sleep(0.05)

    def workers(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children() if p.is_running()]

    async def wait(self, wait_s: float) -> int:
        async with asyncio.timeout(wait_s):
            code = await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.reader
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await self.wait(20)
        if self.proc.returncode is None:
            for child in self.workers():
                child.kill()
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


def _config(upstream: Upstream, redis_url: str, backend: str = "redis") -> dict[str, Any]:
    state: dict[str, Any] = {"backend": backend}
    if backend == "redis":
        state |= {"redis_url": "env:AGENTGATE_TEST_REDIS_URL", "key_prefix": "workers:"}
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "timeouts": {"drain_s": 1},
        },
        "state": state,
        "admin": {"token": "env:ADMIN_TOKEN"},
        "routes": [{"name": "echo", "upstream": upstream.url}],
    }


@pytest.fixture
async def supervised(
    tmp_path: Path,
    upstream: Upstream,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Supervised]:
    monkeypatch.setenv("AGENTGATE_TEST_REDIS_URL", redis_server.url)
    sup = await Supervised.start(_config(upstream, redis_server.url), tmp_path, 2)
    try:
        await sup.listening()
        yield sup
    finally:
        await sup.stop()


async def _open(address: tuple[str, int]) -> tuple[int, asyncio.StreamWriter]:
    """One keep-alive connection with one answered request: (client port, writer)."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(http_request("GET", "/ping", host="gw.test"))
    await writer.drain()
    response = await read_response(reader)
    assert response.status == 200
    return int(writer.get_extra_info("sockname")[1]), writer


def _owners(workers: list[psutil.Process], port: int) -> dict[int, int]:
    """client port -> pid of the worker holding the accepted socket."""
    owners: dict[int, int] = {}
    for worker in workers:
        for conn in worker.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port and conn.raddr:
                owners[conn.raddr.port] = worker.pid
    return owners


def _listeners(worker: psutil.Process) -> set[int]:
    return {c.laddr.port for c in worker.net_connections(kind="tcp") if c.status == "LISTEN"}


async def test_two_workers_accept_on_one_port(supervised: Supervised) -> None:
    workers = supervised.workers()
    assert len({w.pid for w in workers}) == 2
    port = supervised.main[1]
    for worker in workers:
        assert port in _listeners(worker)  # both bound the same port: SO_REUSEPORT
    connections = await asyncio.gather(*(_open(supervised.main) for _ in range(40)))
    try:
        owners = _owners(workers, port)
        mine = {client_port for client_port, _ in connections}
        served = {owners[p] for p in mine if p in owners}
        # The kernel hashes each connection to one listener: with 40, both get some
        # (all on one worker has probability 2**-39).
        assert served == {w.pid for w in workers}
    finally:
        for _, writer in connections:
            writer.close()


async def test_sigterm_stops_every_worker_and_exits_0(supervised: Supervised) -> None:
    workers = supervised.workers()
    assert len(workers) == 2
    supervised.proc.send_signal(signal.SIGTERM)
    assert await supervised.wait(15) == 0
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.wait(5)
        assert not worker.is_running()


async def test_crashed_worker_is_restarted(supervised: Supervised) -> None:
    first = supervised.workers()
    victim = first[0]
    victim.kill()
    victim.wait(10)  # its listening socket is gone (connections queued on it were reset)
    # New connections are served by the survivor while the victim restarts.
    for _ in range(10):
        _, writer = await _open(supervised.main)
        writer.close()

    def replaced() -> bool:
        pids = {w.pid for w in supervised.workers()}
        return len(pids) == 2 and victim.pid not in pids

    await wait_until(replaced, timeout=STARTUP_TIMEOUT_S)
    await wait_until(
        lambda: any("restarted" in line for line in supervised.lines), timeout=STARTUP_TIMEOUT_S
    )
    port = supervised.main[1]
    assert all(port in _listeners(w) for w in supervised.workers())
    assert any("exited with -9" in line for line in supervised.lines)


async def test_memory_backend_with_two_workers_is_a_config_error(
    tmp_path: Path, upstream: Upstream
) -> None:
    sup = await Supervised.start(_config(upstream, "", backend="memory"), tmp_path, 2)
    try:
        assert await sup.wait(STARTUP_TIMEOUT_S) == 2
    finally:
        await sup.stop()
    assert any(
        "state.backend: 'memory' cannot be shared by 2 workers; use 'redis'" in line
        for line in sup.lines
    )
