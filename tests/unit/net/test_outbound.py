"""``gateway.net.outbound.client_session``: the guarantees every outbound client inherits.

- a redirect is refused even when a call site forgets ``allow_redirects=False`` (GET 302,
  POST 307 with a body): :class:`RedirectRefused`, an ``aiohttp.ClientError``, and the
  Location (an :class:`tests.support.Attacker`) sees zero connections;
- with ``allow_redirects=False`` the 3xx itself is the answer (what the forwarder relays);
- ``HTTP_PROXY`` from the environment is ignored, cookies are never stored or sent;
- the fixed options cannot be overridden;
- no module of the gateway builds an ``aiohttp.ClientSession`` by itself, except the ones
  listed (with why), so a future client cannot skip the helper unnoticed.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.net.outbound import RedirectRefused, client_session
from tests.support import LOCALHOST, Attacker

GATEWAY = Path(__file__).resolve().parents[3] / "gateway"


class Server:
    def __init__(self) -> None:
        self.attacker = Attacker()
        self.cookies: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        await self.attacker.start()
        target = f"http://{LOCALHOST}:{self.attacker.port}/stolen"

        async def found(request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": target})

        async def temporary(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=307, headers={"Location": target})

        async def cookie(request: web.Request) -> web.Response:
            self.cookies.append(request.headers.get("Cookie"))
            response = web.Response(text="ok")
            response.set_cookie("session", "planted-by-dependency")
            return response

        app = web.Application()
        app.router.add_get("/found", found)
        app.router.add_post("/temporary", temporary)
        app.router.add_get("/cookie", cookie)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, LOCALHOST, 0)
        await site.start()
        self.url = f"http://{LOCALHOST}:{self.runner.addresses[0][1]}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.attacker.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/found", id="get-302"),
        pytest.param("POST", "/temporary", id="post-307"),
    ],
)
async def test_a_forgotten_allow_redirects_still_refuses(
    server: Server, method: str, path: str
) -> None:
    async with client_session() as session:
        with pytest.raises(RedirectRefused) as info:
            # aiohttp's default for GET and POST is to follow: the guard must catch it.
            async with session.request(method, server.url + path, data=b"secret body"):
                pass
    assert isinstance(info.value, aiohttp.ClientError)  # every call site's mapping catches it
    assert info.value.status in (302, 307)
    assert server.attacker.connections == 0


async def test_allow_redirects_false_returns_the_3xx(server: Server) -> None:
    url = server.url + "/found"
    async with client_session() as session, session.get(url, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].endswith("/stolen")
    assert server.attacker.connections == 0


async def test_environment_proxy_is_ignored(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://{LOCALHOST}:{server.attacker.port}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with client_session() as session, session.get(server.url + "/cookie") as resp:
        assert resp.status == 200
    assert server.attacker.connections == 0


async def test_cookies_are_never_kept(server: Server) -> None:
    async with client_session() as session:
        for _ in range(2):
            async with session.get(server.url + "/cookie") as resp:
                assert resp.status == 200
                assert resp.cookies["session"].value == "planted-by-dependency"  # it tried
    assert server.cookies == [None, None]


@pytest.mark.parametrize("option", ["trust_env", "cookie_jar", "trace_configs"])
def test_fixed_options_cannot_be_overridden(option: str) -> None:
    with pytest.raises(TypeError, match=option):
        client_session(**{option: None})


# Modules allowed to build a ClientSession themselves, and why.
_OWN_SESSIONS = {
    "net/outbound.py": "the helper itself",
    "jose/jwks.py": "imports nothing of the gateway (the sdk kit runs it alone); a session is"
    " passed in by the gateway, else built with the same options by hand, allow_redirects=False",
    "devtools/demo.py": "the demo's agents and probes are clients OF the gateway",
    "upstream/forward.py": "DummyCookieJar + allow_redirects=False by hand (owned elsewhere)",
    "checks.py": "check-config --strict probes: GET only, allow_redirects=False by hand",
}


def _session_constructors(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "ClientSession":
                lines.append(node.lineno)
    return lines


def test_no_module_builds_its_own_client_session() -> None:
    offenders = {}
    seen_allowed = set()
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(GATEWAY).as_posix()
        lines = _session_constructors(path)
        if not lines:
            continue
        if rel in _OWN_SESSIONS:
            seen_allowed.add(rel)
        else:
            offenders[rel] = lines
    assert offenders == {}, "build outbound sessions with gateway.net.outbound.client_session"
    assert "net/outbound.py" in seen_allowed  # the scan does find constructor calls
