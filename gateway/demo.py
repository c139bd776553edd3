"""``agentgate demo``: a self-contained tour on loopback.

It creates a development CA and SPIFFE certificates, starts two demo backends
(a modern agent API and a legacy billing system), writes a gateway config that
fronts them, starts the gateway, and then plays a short scripted agent
workflow as an mTLS client, printing what each backend received. Everything
binds to 127.0.0.1 on free ports and is torn down at the end.
"""

from __future__ import annotations

import json
import ssl
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from gateway.app import Gateway
from gateway.devpki import DevPKI, init_dev_pki
from gateway.settings import load_settings

TRUST_DOMAIN = "example.org"
AGENTS = ("travel", "rogue")

Step = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _backend(name: str) -> web.Application:
    """A backend that answers with what it received, so the tour can show it."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_bytes": len(body),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    return runner, port


def _config(pki: DevPKI, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "trust_domain": TRUST_DOMAIN,
            "tls": {
                "cert": str(pki.server.cert),
                "key": str(pki.server.key),
                "client_ca": str(pki.ca.cert),
                "client_cert": "required",
            },
        },
        "routes": [
            {
                "name": "flights",
                "match": {"path_prefix": "/flights/", "methods": ["GET", "POST"]},
                "upstream": f"http://127.0.0.1:{ports['flights']}",
                "segment": "booking",
            },
            {
                "name": "billing-legacy",
                "match": {"path_prefix": "/billing/"},
                "upstream": f"http://127.0.0.1:{ports['billing']}",
                "segment": "finance",
            },
        ],
    }


def _client_context(pki: DevPKI, agent: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if agent is not None:
        files = pki.agents[agent]
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


_SHOWN = (
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "txn-token",
    "authorization",
    "x-evil",
    "x-billing-key",
)


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, title: str, **kw: Any
) -> None:
    _say(f"\n-> {title}\n   {method} {url.split('/', 3)[-1] and '/' + url.split('/', 3)[-1]}")
    for key, value in (kw.get("headers") or {}).items():
        _say(f"   sent {key}: {value}")
    try:
        async with session.request(method, url, **kw) as resp:
            body = await resp.read()
            _say(f"<- {resp.status} (X-Request-Id {resp.headers.get('X-Request-Id', '-')})")
            if resp.content_type == "application/json" and b'"backend"' in body:
                seen = json.loads(body)
                _say(f"   {seen['backend']} backend received {seen['method']} {seen['path']}")
                for key, value in seen["headers"]:
                    if key.lower() in _SHOWN:
                        _say(f"     {key}: {value}")
            else:
                _say(textwrap.indent(body.decode(errors="replace")[:300], "   "))
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as exc:
        _say(f"<- refused at the TLS layer: {type(exc).__name__}")


async def run_demo(workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before serving
    _say("agentgate demo: everything below runs on 127.0.0.1 and stops at the end.\n")
    pki = init_dev_pki(workdir / "pki", trust_domain=TRUST_DOMAIN, agents=AGENTS)
    _say(f"dev CA and certificates in {workdir / 'pki'}")
    for name, files in pki.agents.items():
        _say(f"  agent {name}: {files.spiffe_id}")
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    for name in ("flights", "billing"):
        runner, ports[name] = await _start(_backend(name))
        runners.append(runner)
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(_config(pki, ports), sort_keys=False))
    gateway = Gateway(load_settings(config_path))
    await gateway.start()
    _say(gateway.describe())
    _say(f"config written to {config_path}")
    assert gateway.main_address is not None
    base = f"https://localhost:{gateway.main_address[1]}"
    try:
        await _tour(pki, base)
    finally:
        await gateway.stop()
        for runner in runners:
            await runner.cleanup()
    _say("\ndemo finished.")
    return 0


async def _tour(pki: DevPKI, base: str) -> None:
    agent_ctx = _client_context(pki, "travel")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=agent_ctx)) as agent:
        await _call(agent, "GET", f"{base}/flights/42", "agent 'travel' reads a flight over mTLS")
        await _call(
            agent,
            "GET",
            f"{base}/flights/./a/../42",
            "spoofed identity headers are stripped, the path is normalised once",
            headers={
                "Txn-Token": "forged",
                "X-Forwarded-For": "10.6.6.6",
                "Connection": "X-Evil",
                "X-Evil": "hop-by-hop",
            },
        )
        await _call(agent, "GET", f"{base}/flights/%2e%2e%2fadmin", "an encoded slash is refused")
        await _call(agent, "GET", f"{base}/nowhere", "no route: 404, nothing is forwarded")
    anonymous = _client_context(pki, None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous)) as nobody:
        await _call(nobody, "GET", f"{base}/flights/42", "a client without a certificate")
