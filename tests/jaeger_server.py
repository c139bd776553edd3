"""A real Jaeger v2 for the tracing tests, and ``require_real`` for real-binary fixtures.

``JaegerServer.start(workdir)`` writes a collector config (in-memory trace storage, an
OTLP/HTTP receiver and the query service, each on its own free loopback port, the
collector's own telemetry off so nothing binds a fixed port), runs ``jaeger --config
file:<config>``, waits until the health check reports ready and the query API answers, and
``stop()`` terminates it (SIGTERM, then SIGKILL after 10 s). Queries use the v3 HTTP API
(``/api/v3/...``, OTLP JSON), which Jaeger v2 serves next to the legacy ``/api/traces``.

``require_real(name)`` finds a pinned binary (``.tools/bin/<name>``, then ``PATH``); when it
is missing the test is skipped on a developer machine and FAILS under ``CI=true``, so CI can
never go green by skipping the real-component tests (``scripts/bootstrap.sh`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import require_real

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
LOCALHOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def _config(otlp: int, query_http: int, query_grpc: int, health: int) -> str:
    # JSON is YAML: no YAML writer needed, and every value is quoted exactly.
    return json.dumps(
        {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "exporters": ["jaeger_storage_exporter"]}
                },
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "healthcheckv2": {
                    "use_v2": True,
                    "http": {"endpoint": f"{LOCALHOST}:{health}"},
                },
                "jaeger_query": {
                    # On by default in v2: Jaeger would trace itself to localhost:4317 and
                    # spend 10 s at shutdown failing to flush there.
                    "enable_tracing": False,
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"{LOCALHOST}:{query_http}"},
                    "grpc": {"endpoint": f"{LOCALHOST}:{query_grpc}"},
                },
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
            },
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"{LOCALHOST}:{otlp}"}}}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        },
        indent=2,
    )


def _with_ports(
    template: dict[str, Any], otlp: int, query_http: int, query_grpc: int, health: int
) -> str:
    """``template`` (a shipped Jaeger config) with each endpoint's port replaced, host kept."""
    config = json.loads(json.dumps(template))
    ext = config["extensions"]
    for node, port in (
        (config["receivers"]["otlp"]["protocols"]["http"], otlp),
        (ext["jaeger_query"]["http"], query_http),
        (ext["jaeger_query"]["grpc"], query_grpc),
        (ext["healthcheckv2"]["http"], health),
    ):
        host = node["endpoint"].rsplit(":", 1)[0]
        node["endpoint"] = f"{host}:{port}"
    return json.dumps(config, indent=2)


@dataclass
class JaegerServer:
    """One Jaeger v2 process. ``start``/``stop`` are synchronous, so any fixture scope works."""

    binary: Path
    workdir: Path
    otlp_port: int = 0
    query_port: int = 0
    health_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    @property
    def otlp_endpoint(self) -> str:
        """Base URL for ``telemetry.otlp_endpoint`` (the exporter appends ``/v1/traces``)."""
        return f"http://{LOCALHOST}:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://{LOCALHOST}:{self.query_port}"

    template: dict[str, Any] | None = None  # a shipped config whose ports are replaced

    @classmethod
    def start(cls, workdir: Path, template: dict[str, Any] | None = None) -> JaegerServer:
        server = cls(Path(require_real("jaeger")), workdir, template=template)
        # A probed port can be taken before Jaeger binds it; retry with fresh ones.
        for attempt in range(3):
            try:
                server._launch()
                return server
            except _PortClash:
                server.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.otlp_port, self.query_port, self.health_port = (_free_port() for _ in range(3))
        config = self.workdir / "jaeger.yaml"
        ports = (self.otlp_port, self.query_port, _free_port(), self.health_port)
        config.write_text(
            _config(*ports) if self.template is None else _with_ports(self.template, *ports)
        )
        self.log_path = self.workdir / "jaeger.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", f"file:{config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None:
                text = self.log()
                if "address already in use" in text:
                    raise _PortClash(text)
                raise AssertionError(f"jaeger exited {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"jaeger not ready in {STARTUP_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        for url in (
            f"http://{LOCALHOST}:{self.health_port}/status",
            f"{self.query_url}/api/v3/services",
        ):
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                    if resp.status != 200:
                        return False
            except (OSError, urllib.error.URLError):
                return False
        return True

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # ------------------------------------------------------------------ queries (API v3)

    async def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of ``trace_id`` as ``{service, name, kind, span_id, parent_id, attrs}``."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{self.query_url}/api/v3/traces/{trace_id}") as resp,
        ):
            if resp.status == 404:
                return []
            resp.raise_for_status()
            body = json.loads(await resp.text())
        return _flatten(body)

    async def find(self, service: str, *, since_s: float = 600) -> list[dict[str, Any]]:
        """Spans of every trace that has a span of ``service`` started in the last ``since_s``."""
        now = time.time()
        params = {
            "query.service_name": service,
            "query.start_time_min": _rfc3339(now - since_s),
            "query.start_time_max": _rfc3339(now + 60),
            "query.num_traces": "1000",
        }
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{self.query_url}/api/v3/traces", params=params) as resp,
        ):
            if resp.status == 404:
                return []
            resp.raise_for_status()
            body = json.loads(await resp.text())
        return _flatten(body)

    async def wait_for_spans(
        self, trace_id: str, count: int, *, within_s: float = 20.0
    ) -> list[dict[str, Any]]:
        """Poll until ``trace_id`` holds at least ``count`` spans (ingest is asynchronous)."""
        deadline = time.monotonic() + within_s
        while True:
            spans = await self.trace(trace_id)
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            await asyncio.sleep(0.1)


class _PortClash(Exception):
    pass


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + "Z"


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def _flatten(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rs in body.get("result", {}).get("resourceSpans", []):
        resource = {
            a["key"]: _value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])
        }
        for scope in rs.get("scopeSpans", []):
            for span in scope.get("spans", []):
                out.append(
                    {
                        "service": resource.get("service.name"),
                        "name": span["name"],
                        "kind": _KINDS.get(span.get("kind", 0), "UNSPECIFIED"),
                        "trace_id": span["traceId"],
                        "span_id": span["spanId"],
                        "parent_id": span.get("parentSpanId") or None,
                        "attrs": {a["key"]: _value(a["value"]) for a in span.get("attributes", [])},
                        "links": [lk.get("traceId") for lk in span.get("links", [])],
                        "status": span.get("status", {}).get("code"),
                    }
                )
    return out
