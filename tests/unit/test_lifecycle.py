"""gateway.lifecycle: start/stop order, failed-start cleanup, reload protocol, watched files.

The Lifecycle drives real aiohttp runners bound on 127.0.0.1 and real config files; the
parts it starts (state, audit, runtime) are recording stand-ins, since what is tested is the
order and the swap, not the parts. The whole gateway's drain and reload are tested end to end
in tests/integration/test_lifecycle.py and test_reload.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.errors import ConfigError
from gateway.lifecycle import (
    RESTART_ONLY,
    Lifecycle,
    Listener,
    check_restart_only,
    fingerprint,
    watched_files,
)
from gateway.settings import Settings, load_settings, parse_settings
from tests.support import TestPKI

ROUTE = {"name": "r", "upstream": "http://127.0.0.1:9001"}
BASE: dict[str, Any] = {
    "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
    "routes": [ROUTE],
}


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_settings(data, base_dir=tmp_path)


class Part:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events

    async def start(self) -> None:
        self.events.append(f"{self.name}.start")

    async def close(self) -> None:
        self.events.append(f"{self.name}.close")


class Counter:
    inflight = 0


class Runtime(Part):
    def __init__(self, name: str, events: list[str], settings: Settings) -> None:
        super().__init__(name, events)
        self.settings = settings
        self.pipeline = Counter()


class RecordingRunner(web.AppRunner):
    def __init__(self, name: str, events: list[str]) -> None:
        super().__init__(web.Application())
        self.name, self.events = name, events

    async def cleanup(self) -> None:
        self.events.append(f"{self.name}.cleanup")
        await super().cleanup()


class Parts:
    """What gateway.app.Gateway is to its Lifecycle."""

    def __init__(
        self, settings: Settings, config_path: Path | None = None, admin_listen: str | None = None
    ) -> None:
        self.events: list[str] = []
        self.settings = settings
        self.config_path = config_path
        self.state = Part("state", self.events)
        self.audit = Part("audit", self.events)
        self.runtime = Runtime("runtime-1", self.events, settings)
        self.built = 1
        self._admin_listen = admin_listen or settings.server.admin_listen

    def build_runtime(self, settings: Settings) -> Runtime:
        self.built += 1
        return Runtime(f"runtime-{self.built}", self.events, settings)

    def listeners(self) -> Sequence[Listener]:
        self.events.append("listeners")
        server = self.settings.server
        return (
            Listener("main", RecordingRunner("main", self.events), server.listen),
            Listener("admin", RecordingRunner("admin", self.events), self._admin_listen),
        )


def _port_free(address: tuple[str, int]) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(address)
        except OSError:
            return False
        return True


# ---------------------------------------------------------------------- start / stop


async def test_start_then_stop_order(tmp_path: Path) -> None:
    parts = Parts(_settings(tmp_path))
    life = Lifecycle(parts)
    await life.start()
    assert life.started
    assert list(life.addresses) == ["main", "admin"]
    assert parts.events == ["state.start", "audit.start", "runtime-1.start", "listeners"]
    parts.events.clear()
    await life.stop()
    assert not life.started
    # Listeners first (main before admin: it drains), then the runtime, audit, state.
    assert parts.events == [
        "main.cleanup",
        "admin.cleanup",
        "runtime-1.close",
        "audit.close",
        "state.close",
    ]
    assert _port_free(life.addresses["main"])


async def test_a_failed_start_leaves_no_listener_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = taken.getsockname()
        parts = Parts(_settings(tmp_path), admin_listen=f"{host}:{port}")
        life = Lifecycle(parts)
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await life.start()  # the admin port is in use
        assert not life.started
        main = life.addresses["main"]
        assert not _port_free(main)
        await life.stop()  # what run() does after a failed start
        assert "main.cleanup" in parts.events
        assert _port_free(main)


# ---------------------------------------------------------------------- reload


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def test_reload_without_a_file_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    life = Lifecycle(Parts(_settings(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="agentgate"):
        assert await life.reload() is False
    assert "reload requested, but the gateway was not started from a file" in caplog.text
    assert life.reloads == 0


async def test_reload_swaps_then_retires_the_old_runtime(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _write(tmp_path / "gateway.yaml", BASE)
    parts = Parts(load_settings(config), config)
    life = Lifecycle(parts)
    old = parts.runtime
    old.pipeline.inflight = 1  # a request still running on the old runtime
    with caplog.at_level(logging.INFO, logger="agentgate"):
        _write(config, {**BASE, "routes": [ROUTE, {**ROUTE, "name": "r2"}]})
        assert await life.reload() is True
    assert parts.runtime is not old
    assert parts.events == ["runtime-2.start"]  # built and started before the swap
    assert [r.name for r in parts.settings.routes] == ["r", "r2"]
    assert life.reloads == 1
    assert "configuration reloaded (2 route(s))" in caplog.text
    await asyncio.sleep(0.1)
    assert "runtime-1.close" not in parts.events  # waits for its in-flight request
    old.pipeline.inflight = 0
    await asyncio.sleep(0.1)
    assert parts.events[-1] == "runtime-1.close"


async def test_reload_keeps_the_overrides(tmp_path: Path) -> None:
    config = _write(tmp_path / "gateway.yaml", BASE)
    settings = load_settings(config).model_copy()
    server = settings.server.model_copy(update={"listen": "127.0.0.1:1"})
    settings = settings.model_copy(update={"server": server})
    parts = Parts(settings, config)
    # A worker's listen address (assigned by the supervisor) is not the file's.
    life = Lifecycle(parts, overrides={"listen": "127.0.0.1:1"})
    assert await life.reload() is True
    assert parts.settings.server.listen == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("change", "logged"),
    [
        pytest.param(
            {"server": {**BASE["server"], "listen": "127.0.0.1:1"}},
            "reload refused: server.listen: changing this needs a restart, not a reload",
            id="restart-only-setting",
        ),
        pytest.param({"routes": "nope"}, "reload refused: routes", id="invalid-config"),
    ],
)
async def test_a_refused_reload_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict[str, Any], logged: str
) -> None:
    config = _write(tmp_path / "gateway.yaml", BASE)
    parts = Parts(load_settings(config), config)
    life = Lifecycle(parts)
    old = parts.runtime
    _write(config, {**BASE, **change})
    with caplog.at_level(logging.ERROR, logger="agentgate"):
        assert await life.reload() is False
    assert parts.runtime is old
    assert parts.built == 1  # refused before any runtime was built
    assert life.reloads == 0
    assert logged in caplog.text
    assert "reload refused: still serving the previous configuration" in caplog.text


# ---------------------------------------------------------------------- restart-only settings


def _changes(pki: TestPKI) -> dict[str, dict[str, Any]]:
    tls = {"cert": str(pki.server.cert), "key": str(pki.server.key), "client_ca": str(pki.ca)}
    return {
        "server.listen": {"server__listen": "127.0.0.1:8443"},
        "server.admin_listen": {"server__admin_listen": "127.0.0.1:9443"},
        "server.tls": {"server__tls": tls},
        "state": {"state__key_prefix": "other:"},
    }


@pytest.mark.parametrize("dotted", RESTART_ONLY)
def test_restart_only_settings_are_refused(tmp_path: Path, pki: TestPKI, dotted: str) -> None:
    old, new = _settings(tmp_path), _settings(tmp_path, **_changes(pki)[dotted])
    with pytest.raises(ConfigError) as caught:
        check_restart_only(old, new)
    assert caught.value.lines() == [f"{dotted}: changing this needs a restart, not a reload"]


def test_other_settings_reload(tmp_path: Path) -> None:
    old = _settings(tmp_path)
    new = _settings(tmp_path, routes=[ROUTE, {**ROUTE, "name": "r2"}])
    check_restart_only(old, new)  # no error: routes change on a reload


# ---------------------------------------------------------------------- watched files


def test_watched_files_and_fingerprint(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    (policies / "sub").mkdir(parents=True)
    for name in ("b.rego", "a.rego", "sub/c.rego", "README.md"):
        (policies / name).write_text("package x\n")
    (policies / "data.json").write_text("{}")
    (tmp_path / "keys.yaml").write_text("keys: []\n")
    config = tmp_path / "gateway.yaml"
    settings = _settings(
        tmp_path,
        pdp={"engine": "embedded", "policies": "policies", "data": "policies/data.json"},
        authn={"api_key": {"keys_file": "keys.yaml"}},
    )
    files = watched_files(settings, config)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "gateway.yaml",
        "policies/a.rego",
        "policies/b.rego",
        "policies/sub/c.rego",
        "policies/data.json",
        "keys.yaml",
    ]
    before = fingerprint(files)
    assert before[0] == (str(config), -1, -1)  # not written yet: unreadable, not an error
    config.write_text("x: 1\n")
    after = fingerprint(files)
    assert after[0][1:] != (-1, -1)
    assert after[1:] == before[1:]
