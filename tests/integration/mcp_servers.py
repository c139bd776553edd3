"""Servers and clients built with the official MCP and A2A SDKs, for the issue-17 tests.

Nothing here is agentgate code: the servers are the SDKs' own (``mcp`` 2.x ``MCPServer``
served over Streamable HTTP; ``a2a-sdk`` 1.x JSON-RPC routes), run by uvicorn in the test's
event loop on ``127.0.0.1:<free port>``, so the gateway under test sits between two pieces
of software nobody here wrote.

Contract:

* :class:`Recorder` is a raw ASGI wrapper around a server app: it keeps every HTTP request's
  method, path, headers and the exact body bytes (:class:`Seen`) before the SDK parses them,
  so a test can assert what the upstream received byte for byte, and that no client
  ``Authorization`` header ever arrived.
* :func:`bank_server` builds the MCP server: tools ``get_balance(account)``,
  ``transfer_funds(account, amount, currency)``, ``delete_account(account)`` and
  ``slow_count(n)`` (one log message and one progress notification per step; before the
  next step it waits for the client's acknowledgement through a :class:`Pacer`, so the call
  only completes if every notification was relayed on its own, not buffered to the end).
* :func:`serve` starts an ASGI app on a free loopback port (async context manager yielding
  the :class:`Running` server); it waits until the port answers and stops the server at exit.
* :func:`mcp_client` is an SDK ``Client`` over the SDK's Streamable HTTP transport with the
  given headers (the bearer token), ``mode="legacy"`` (initialize handshake, Mcp-Session-Id)
  unless told otherwise.
* :func:`policy_dir` is the one place that decides the policy both SDK test files run
  against: the shipped Rego (``agentgate.authz`` with ``agentgate.mcp``) over the shipped data
  plus the tools (``data.mcp.routes``), skills (``data.a2a.routes``), read-only subjects and
  RBAC roles defined here. :func:`challenge_params` reads a ``WWW-Authenticate`` challenge.
* :func:`travel_agent_app` builds the A2A v1.0 server (JSON-RPC at ``/a2a``, v0.3 method names
  accepted too; its card at ``/.well-known/agent-card.json`` and
  ``/a2a/.well-known/agent-card.json``) with skills
  ``search_flights``, ``book_flight`` and ``cancel_booking``. Its executor answers a message
  with a task, one ``working`` status update per step (paced by a :class:`Pacer` like
  ``slow_count``, when the message asks for ``steps``) and a ``completed`` update whose text
  names the skill it was asked for (message metadata ``skill``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    TaskState,
)
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from tests.integration.conftest import merge
from tests.support import ROOT

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How long slow_count waits for the client to acknowledge one step before it gives up: a
# relay that buffers never delivers the step, so the tool fails instead of the test hanging.
ACK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Seen:
    """One HTTP request as the upstream received it (headers lower-cased, body exact)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Recorder:
    """An ASGI wrapper that records each HTTP request before the wrapped app sees it."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = tuple(
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
        )
        self.seen.append(Seen(scope["method"], scope["path"], headers, body))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the disconnect, when it comes

        await self.app(scope, replay, send)

    def bodies(self, needle: bytes) -> list[bytes]:
        """The bodies received that contain ``needle``."""
        return [s.body for s in self.seen if needle in s.body]


@dataclass
class Pacer:
    """Lockstep for ``slow_count``: after each step the tool waits for the client's ack.

    A test's progress callback calls :meth:`ack` when step *k* reached it; only then does the
    server emit step *k + 1*. So the call completes only if every notification crossed the
    gateway on its own, before the response ended: proof of event-by-event relaying that
    needs no clock. ``emitted`` counts the steps sent so far.
    """

    acks: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    emitted: int = 0

    def ack(self, step: int) -> None:
        self.acks.put_nowait(step)

    async def wait(self, step: int) -> None:
        try:
            got = await asyncio.wait_for(self.acks.get(), ACK_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"step {step} never reached the client (buffered?)") from None
        if got != step:
            raise RuntimeError(f"client acknowledged step {got}, expected {step}")


def bank_server(pacer: Pacer | None = None) -> MCPServer:
    """The MCP server behind the gateway: four tools of a toy bank."""
    mcp = MCPServer("bank")
    pace = pacer or Pacer()

    @mcp.tool()
    def get_balance(account: str) -> dict[str, Any]:
        """The balance of an account."""
        return {"account": account, "balance": 1234, "currency": "EUR"}

    @mcp.tool()
    def transfer_funds(account: str, amount: int, currency: str) -> dict[str, Any]:
        """Move money out of an account."""
        return {"account": account, "moved": amount, "currency": currency}

    @mcp.tool()
    def delete_account(account: str) -> str:
        """Close an account for good."""
        return f"deleted {account}"

    @mcp.tool()
    async def slow_count(n: int, ctx: Context) -> int:
        """Count to n: a log message and a progress notification per step, each acknowledged."""
        for step in range(1, n + 1):
            await ctx.info(f"step {step}")
            await ctx.report_progress(step, n, f"step {step}")
            pace.emitted = step
            await pace.wait(step)
        return n

    return mcp


def mcp_app(server: MCPServer, *, stateless: bool = False, path: str = "/mcp") -> Any:
    """The server's Streamable HTTP app at ``path``.

    Stateful (the default) hands out ``Mcp-Session-Id`` and answers with SSE streams;
    ``stateless`` keeps no session and answers plain JSON.
    """
    return server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=stateless,
        json_response=stateless,
        # The gateway forwards the client's Host; the SDK's DNS-rebinding guard would refuse it.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Running:
    url: str
    recorder: Recorder


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, port: int | None = None) -> AsyncIterator[Running]:
    """Run ``app`` (wrapped in a :class:`Recorder`) under uvicorn on ``port`` (default: free)."""
    recorder = Recorder(app)
    port = port or free_port()
    config = uvicorn.Config(
        recorder,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()  # raises the server's startup error
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("uvicorn did not start")
        yield Running(f"http://127.0.0.1:{port}", recorder)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def mcp_client(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    mode: str = "legacy",
    event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    **options: Any,
) -> AsyncIterator[Client]:
    """An SDK client over Streamable HTTP to ``url`` sending ``headers`` on every request.

    ``event_hooks`` go to the ``httpx2.AsyncClient`` (to see the exact request bytes);
    ``options`` to the SDK ``Client`` (callbacks).
    """
    async with httpx2.AsyncClient(
        headers=dict(headers or {}),
        timeout=httpx2.Timeout(10, read=30),
        event_hooks=dict(event_hooks or {}),
    ) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None, **options) as client:
            yield client


# --------------------------------------------------------------------------- A2A

SKILLS = {
    "search_flights": "Find flights between two airports.",
    "book_flight": "Book a flight found by search_flights.",
    "cancel_booking": "Cancel a booking.",
}


class TravelAgent(AgentExecutor):
    """Answers each message with a task: ``steps`` paced working updates, then completed."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        assert message is not None
        task = context.current_task or new_task_from_user_message(message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        metadata = dict(message.metadata.items())
        skill = str(metadata.get("skill", "-"))
        for step in range(1, int(metadata.get("steps", 0)) + 1):
            text = new_text_message(f"step {step}", context_id=task.context_id, task_id=task.id)
            await updater.update_status(TaskState.TASK_STATE_WORKING, text)
            self.pacer.emitted = step
            await self.pacer.wait(step)
        await updater.complete(
            new_text_message(f"done: {skill}", context_id=task.context_id, task_id=task.id)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def travel_card(url: str) -> AgentCard:
    """The card the A2A server itself serves (the gateway re-points, filters and signs it)."""
    return AgentCard(
        name="travel",
        description="Books flights.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(id=name, name=name, description=text, tags=["travel"])
            for name, text in SKILLS.items()
        ],
    )


def travel_agent_app(url: str, pacer: Pacer) -> Any:
    """The A2A server: JSON-RPC at ``/a2a``, the card at both well-known paths."""
    card = travel_card(url)
    handler = DefaultRequestHandler(
        agent_executor=TravelAgent(pacer), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = [
        *create_agent_card_routes(card),
        *create_agent_card_routes(card, card_url="/a2a/.well-known/agent-card.json"),
        *create_jsonrpc_routes(handler, "/a2a", enable_v0_3_compat=True),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------- policy data

IDP = "https://idp.gw.test"  # the development issuer of the callers' tokens
MCP_ROUTE = "tools"  # the stateful MCP server's route
STATELESS_ROUTE = "tools-stateless"
A2A_ROUTE = "agents"
TRANSFER_LIMIT = 1000
JSONRPC_FORBIDDEN = -32001  # the gateway's JSON-RPC error code for a policy deny

TOOLS: dict[str, Any] = {
    "routes": {
        name: {
            "tools": {
                "get_balance": {"scopes": ["mcp.tools", "accounts.read"], "read_only": True},
                "transfer_funds": {
                    "scopes": ["mcp.tools", "payments.write"],
                    "arguments": {"amount": {"max": TRANSFER_LIMIT}},
                    "read_only": False,
                },
                "delete_account": {"scopes": ["mcp.tools", "accounts.admin"], "read_only": False},
                "slow_count": {"scopes": ["mcp.tools"], "read_only": True},
            },
            "read_only_subjects": ["reader"],
        }
        for name in (MCP_ROUTE, STATELESS_ROUTE)
    }
}
# The A2A route of test_a2a_sdk.py (data.a2a.routes[<route>].skills[<id>]).
SKILL_DATA: dict[str, Any] = {
    "routes": {
        A2A_ROUTE: {
            "skills": {
                "search_flights": {"scopes": ["a2a.travel"]},
                "book_flight": {"scopes": ["a2a.travel", "payments.write"]},
                "cancel_booking": {"scopes": ["a2a.travel", "bookings.admin"]},
            }
        }
    }
}
# The shipped RBAC must let these callers reach the routes at all; the tool rules decide.
CLIENT_PATHS = ["/mcp", "/mcp/**", "/stateless/**", "/a2a", "/a2a/**"]
RBAC_DATA: dict[str, Any] = {
    "roles": {"mcp-client": [{"methods": ["*"], "paths": CLIENT_PATHS, "scopes": []}]},
    "subjects": {sub: ["mcp-client"] for sub in ("alice", "root", "reader", "viewer")},
}
TEST_DATA: dict[str, Any] = {"mcp": TOOLS, "a2a": SKILL_DATA, "rbac": RBAC_DATA}
# Routes in the "public" segment: the shipped segments data lets external callers reach it.
SEGMENT = "public"


def policy_dir(tmp_path: Path) -> tuple[Path, Path]:
    """(policies folder, data file) for the PDP: the shipped Rego (agentgate.authz with its
    agentgate.mcp package) over the shipped data plus the tools, skills and roles above.

    The one place that decides which policy the MCP and A2A SDK tests run against.
    """
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies" / "agentgate", policies / "agentgate")
    shipped = json.loads((ROOT / "policies" / "data.json").read_text("utf-8"))
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(merge(shipped, TEST_DATA)))
    return policies, data_file


def challenge_params(header: str) -> dict[str, str]:
    """The auth-params of a ``Bearer`` challenge (quoted-string values, RFC 9110 §11.2)."""
    assert header.startswith("Bearer "), header
    params: dict[str, str] = {}
    for part in header[len("Bearer ") :].split('", '):
        name, _, value = part.partition("=")
        params[name.strip()] = value.strip().strip('"')
    return params
