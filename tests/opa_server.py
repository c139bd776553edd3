"""A real OPA server for the tests: ``opa run --server`` on a free loopback port.

``OPAServer(paths, workdir).start()`` loads the given policy/data paths exactly as a production
``opa run --server policies/`` would, turns on console decision logging (so every response
carries a ``decision_id``, as in production) and waits until ``GET /health`` answers 200.
``stop()`` ends it (SIGTERM, then SIGKILL); ``restart()`` brings it back on the same port.

``require_real("opa")`` returns the binary's path (``PATH`` first, then ``.tools/bin/opa``), or
skips the test when it is not installed -- except in CI (``CI=true``), where a missing real OPA
is a failure: CI must never pass by skipping what it was meant to exercise.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.support import require_real

LOCALHOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "policies"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


class OPAServer:
    def __init__(self, paths: Sequence[Path], workdir: Path, *, binary: str | None = None) -> None:
        self.binary = binary or require_real("opa")
        self.paths = [Path(p) for p in paths]
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, timeout: float = 20.0) -> OPAServer:
        if self.running:
            return self
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "opa.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "run",
                "--server",
                "--addr",
                f"{LOCALHOST}:{self.port}",
                "--disable-telemetry",
                "--log-level",
                "error",
                # Decision logging is what makes OPA return a decision_id (SPECS.md §15.1).
                "--set",
                "decision_logs.console=true",
                *map(str, self.paths),
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"opa exited with {self.proc.returncode}: {self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"opa did not become healthy within {timeout}s: {self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as response:  # noqa: S310
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> OPAServer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.workdir / "opa.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def __enter__(self) -> OPAServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
