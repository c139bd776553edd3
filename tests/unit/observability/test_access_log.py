"""The access log (issue 15.8): one readable line per request, in the operator's format.

Unit cases pin the escaping (no client-chosen value can split a line or fake a field) and the
format check; the integration case runs a real gateway writing to a file and reads the lines
back for an allowed, a refused and an unrouted request.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.errors import ConfigError
from gateway.observability.access_log import AccessLog
from gateway.settings import parse_settings
from tests.support import Upstream, wait_until

FIELDS = {
    "time": "2026-12-07T10:00:00.000Z",
    "client": "127.0.0.1",
    "method": "GET",
    "path": "/flights/42",
    "status": 200,
    "duration_ms": "1.2",
    "route": "flights",
    "subject": "alice",
    "reason": "ok",
    "request_id": "r-1",
}


def test_the_default_line() -> None:
    assert AccessLog("off").format(FIELDS) == (
        '2026-12-07T10:00:00.000Z 127.0.0.1 "GET /flights/42" 200 1.2ms route=flights '
        "subject=alice reason=ok request_id=r-1"
    )


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        ("evil\nFAKE 200 ok", "evil\\x0aFAKE\\x20200\\x20ok"),
        ('a" reason=ok', "a\\x22\\x20reason=ok"),
        ("back\\slash", "back\\x5cslash"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("", "-"),
        (None, "-"),
    ],
    ids=["newline", "quote-and-space", "backslash", "ansi-escape", "empty", "absent"],
)
def test_client_chosen_values_cannot_split_or_forge_a_line(subject: str | None, shown: str) -> None:
    line = AccessLog("off", "{subject} {status}").format({**FIELDS, "subject": subject})
    assert line == f"{shown} 200"
    assert "\n" not in line


def test_a_custom_format_picks_fields() -> None:
    log = AccessLog("off", "{request_id} {status} {trace_id}")
    assert log.format(FIELDS) == "r-1 200 -"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{nosuch}", "unknown field {nosuch}"),
        ("{status:>5}", "no format spec"),
        ("{status!r}", "no format spec or conversion"),
        ("{status", "not a format template"),
    ],
)
def test_a_bad_format_is_a_config_error(template: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"telemetry": {"access_log_format": template}}, tmp_path)
    [line] = info.value.lines()
    assert line.startswith("telemetry.access_log_format: ")
    assert message in line


async def test_a_gateway_writes_one_line_per_request(tmp_path: Path) -> None:
    upstream = Upstream()
    await upstream.start()
    try:
        await _three_requests(tmp_path, upstream)
    finally:
        await upstream.close()


async def _three_requests(tmp_path: Path, upstream: Upstream) -> None:
    key = "access-log-test-key-0123456789abcdef"
    (tmp_path / "keys.yaml").write_text(
        "keys:\n  - id: p\n    sha256: " + hashlib.sha256(key.encode()).hexdigest()
        + "\n    subject: partner-agent-1\n    type: agent\n    roles: [partner]\n"
    )  # fmt: skip
    log_path = tmp_path / "access.log"
    old = os.umask(0)
    try:
        settings = parse_settings(
            {
                "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
                "authn": {"api_key": {"keys_file": "keys.yaml"}},
                "telemetry": {"audit_log": "off", "access_log": str(log_path)},
                "routes": [
                    {
                        "name": "flights",
                        "match": {"path_prefix": "/flights/"},
                        "authn": "api_key",
                        "upstream": upstream.url,
                    }
                ],
            },
            tmp_path,
        )
        gw = Gateway(settings)
        await gw.start()
    finally:
        os.umask(old)
    try:
        assert gw.main_address is not None
        base = f"http://127.0.0.1:{gw.main_address[1]}"
        async with aiohttp.ClientSession() as session:
            for path, headers in (
                ("/flights/1?api_key=never-logged", {"X-API-Key": key}),
                ("/flights/2", {}),
                ("/nowhere", {}),
            ):
                async with session.get(base + path, headers=headers) as resp:
                    await resp.read()
    finally:
        await gw.stop()  # drains the writer
    await wait_until(lambda: log_path.exists())
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3, lines
    ok, unauthenticated, unrouted = lines
    assert '"GET /flights/1" 200 ' in ok
    assert "route=flights subject=partner-agent-1 reason=ok" in ok
    assert '"GET /flights/2" 401 ' in unauthenticated
    assert "subject=- reason=authn_missing" in unauthenticated
    assert '"GET /nowhere" 404 ' in unrouted
    assert "route=- " in unrouted
    assert "never-logged" not in log_path.read_text()  # no query, no credential
    assert key not in log_path.read_text()
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
