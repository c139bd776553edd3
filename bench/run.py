"""agentgate benchmarks: end-to-end scenarios on loopback, micro-benchmarks, a profile.

    python bench/run.py [--runs 5] [--duration 10] [--latency-duration 6] [--rate 1000]
                        [--connections 32] [--only a,b,d] [--no-micro] [--no-profile]
                        [--budget-min 28] [--quick] [--no-bootstrap]

Writes ``bench/RESULTS.md`` and ``bench/results.json`` (``--out DIR`` elsewhere); every
process's log and generated config lands in ``bench/out/run-<timestamp>/``. Loopback only;
not part of CI. ``make bench`` runs it; ``bench/README.md`` explains the method.

Scenarios (the gateway/proxy under test on CPU 0; load generator and upstream on CPU 1):

    a          direct to the upstream (nginx answering a static 200: the rig's limit)
    b          nginx as a plain reverse proxy (plain HTTP)
    c          agentgate pass-through (plain HTTP; no authn, no PDP, no Txn-Token)
    d          agentgate full pipeline: TLS + ES256 JWT bearer + embedded PDP + Txn-Token + forward
    d-mtls     d with real mTLS (client certificate via a client-side nginx helper) + bearer
    e          d with the OPA server as PDP
    e-nocache  e with the verified-token and decision caches off (the work Oathkeeper does)
    f          Ory Oathkeeper: TLS + jwt + remote_json (same OPA, same policy) + id_token
    g          d with --workers 2 and state.backend redis (both CPUs)

Each round runs every scenario once (rounds interleave scenarios, so a burst of load from
elsewhere on the machine hits all of them alike): a 1 s warm-up, maximum throughput (wrk,
fixed connections), then latency at a fixed rate (h2load --rps, HTTP/1.1, per-request log).
CPU per request comes from /proc/<pid>/stat (utime+stime, every process of the server under
test) over each measured phase; peak RSS from /proc/<pid>/status VmHWM at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCENARIOS_DIR = BENCH / "scenarios"
TOOLS_BIN = ROOT / ".tools" / "bin"
SUT_CPU = "0"  # the gateway / proxy under test (and its PDP sidecar)
LOAD_CPU = "1"  # load generator, upstream, client-side helper
CLK_TCK = os.sysconf("SC_CLK_TCK")
ISSUER = "https://idp.example.org"
AUDIENCE = "https://gateway.example.org"
PATH = "/flights/42"

ALL_SCENARIOS = ("a", "b", "c", "d", "d-mtls", "e", "e-nocache", "f", "g")


# ----------------------------------------------------------------------------- utilities


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def free_port(pair: bool = False) -> int:
    """A free loopback port (and, with pair, port + 1 free as well)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def fill(template: str, values: dict[str, Any]) -> str:
    out = template
    for key, value in values.items():
        out = out.replace(f"@@{key}@@", str(value))
    left = re.findall(r"@@[A-Z_]+@@", out)
    if left:
        raise ValueError(f"unfilled placeholders: {sorted(set(left))}")
    return out


def descendants(pid: int) -> list[int]:
    """pid and every descendant (via /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo += [
                        int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                    ]
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def vm_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def summary(values: Sequence[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# ----------------------------------------------------------------------------- processes


class Proc:
    """One long-running server, pinned with taskset, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        cpus: str,
        logdir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.argv, self.cpus = name, list(argv), cpus
        self.logfile = logdir / f"{name}.log"
        self.env, self.cwd = env, cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.logfile.open("ab")
        self.popen = subprocess.Popen(
            ["taskset", "-c", self.cpus, *self.argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, preexec_fn=_die_with_parent,
        )  # fmt: skip
        out.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pids(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        tree = self.pids()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
        for pid in tree[1:]:  # children we started through it (workers, nginx workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when run.py dies, so no server outlives a crash."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_until(check: Callable[[], bool], proc: Proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {what} not ready after {timeout:.0f}s:\n{proc.tail()}")


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    return check


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    scheme, rest = url.split("://", 1)
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def http_ok(url: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    return lambda: http_get(url, headers, timeout=1.0)[0] == 200


# ----------------------------------------------------------------------------- materials


def make_materials(work: Path, python: str, env: dict[str, str]) -> dict[str, Any]:
    """Dev CA + server/agent certificates, Txn-Token key, an IdP key, JWKS files, tokens."""
    import base64

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    def run(*args: str) -> None:
        subprocess.run([python, "-m", "gateway", *args], check=True, cwd=work, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    run("certs", "init", "--dir", "certs", "--agent", "travel")
    run("keys", "generate", "--out", "keys/txn.pem")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def jwk(key: ec.EllipticCurvePrivateKey, kid: str, private: bool) -> dict[str, str]:
        nums = key.private_numbers()
        out = {
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(nums.public_numbers.x.to_bytes(32, "big")),
            "y": b64(nums.public_numbers.y.to_bytes(32, "big")),
        }  # fmt: skip
        if private:
            out["d"] = b64(nums.private_value.to_bytes(32, "big"))
        return out

    idp = ec.generate_private_key(ec.SECP256R1())
    (work / "issuer-jwks.json").write_text(json.dumps({"keys": [jwk(idp, "idp-1", False)]}))
    ok_key = ec.generate_private_key(ec.SECP256R1())
    (work / "oathkeeper-idtoken-jwks.json").write_text(
        json.dumps({"keys": [jwk(ok_key, "oathkeeper-1", True)]})
    )
    now = int(time.time())
    claims = {
        "iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 4 * 3600,
        "jti": "bench-1", "client_id": "travel-agent", "scope": "flights.read flights.book",
    }  # fmt: skip
    token = jwt.encode(claims, idp, algorithm="ES256", headers={"kid": "idp-1", "typ": "at+jwt"})
    return {"token": token}


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    key: str
    title: str
    transport: str
    placement: str
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    sut: list[Proc] = field(default_factory=list)  # "the gateway process" (CPU, RSS)
    aux: dict[str, Proc] = field(default_factory=dict)  # reported separately (OPA, helper)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    rss: dict[str, Any] = field(default_factory=dict)


class Rig:
    """Generates configs, starts and stops every process of every scenario."""

    def __init__(self, work: Path, python: str, wanted: Sequence[str]) -> None:
        self.work, self.python, self.wanted = work, python, list(wanted)
        self.logdir = work / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        (work / "nginx-tmp").mkdir(exist_ok=True)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.procs: list[Proc] = []
        self.scenarios: dict[str, Scenario] = {}
        self.shared: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self.materials: dict[str, Any] = {}
        self.versions: dict[str, str] = {}

    # -- helpers

    def _start(self, proc: Proc, ready: Callable[[], bool], what: str, timeout: float = 40) -> Proc:
        self.procs.append(proc)
        proc.start()
        wait_until(ready, proc, timeout, what)
        return proc

    def _template(self, name: str, **values: Any) -> str:
        base = {"WORK": self.work, "ROOT": ROOT, "UPSTREAM_PORT": self.ports["upstream"]}
        return fill((SCENARIOS_DIR / name).read_text(), base | values)

    def _write(self, name: str, text: str) -> Path:
        path = self.work / name
        path.write_text(text)
        return path

    def _nginx(self, name: str, template: str, cpus: str, **values: Any) -> Proc:
        port = values["PORT"]
        conf = self._write(f"{name}.conf", self._template(template, **values))
        nginx = tool("nginx")
        assert nginx is not None
        proc = Proc(name, [nginx, "-e", "stderr", "-c", str(conf)], cpus, self.logdir)
        return self._start(proc, tcp_open(port), f"port {port}")

    def _gateway(self, name: str, config: dict[str, Any], cpus: str, workers: int = 0) -> Proc:
        import yaml

        path = self._write(f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run(
            [self.python, "-m", "gateway", "check-config", "-c", str(path)],
            env=self.env, capture_output=True, text=True,
        )  # fmt: skip
        if check.returncode != 0:
            raise RuntimeError(f"check-config {path.name}: {check.stderr.strip()}")
        argv = [self.python, "-m", "gateway", "run", "-c", str(path), "--log-level", "WARNING"]
        if workers:
            argv += ["--workers", str(workers)]
        proc = Proc(name, argv, cpus, self.logdir, env=self.env)
        admin = int(config["server"]["admin_listen"].rsplit(":", 1)[1])
        ready = [http_ok(f"http://127.0.0.1:{admin + i}/readyz") for i in range(max(1, workers))]
        return self._start(proc, lambda: all(r() for r in ready), "/readyz", timeout=60)

    def _gateway_config(self, template: str, **values: Any) -> dict[str, Any]:
        import yaml

        loaded: dict[str, Any] = yaml.safe_load(self._template(template, **values))
        return loaded

    # -- shared processes

    def start_shared(self) -> None:
        self.materials = make_materials(self.work, self.python, self.env)
        # The default behaviour thresholds (policies/agentgate/behavior) deny a subject that
        # sends more than 600 requests a minute -- every benchmark subject. Raise them, the
        # way an operator would for a known high-rate client; the figures are still collected.
        data = json.loads((ROOT / "policies" / "data.json").read_text())
        data.setdefault("behavior", {}).setdefault("thresholds", {})["max_requests"] = 10**9
        self._write("policy-data.json", json.dumps(data, indent=1))
        self.ports["upstream"] = free_port()
        self.shared["upstream"] = self._nginx(
            "nginx-upstream", "nginx-upstream.conf", LOAD_CPU, PORT=self.ports["upstream"]
        )
        need_opa = {"e", "e-nocache", "f"} & set(self.wanted)
        if need_opa:
            opa = tool("opa")
            if opa is None:
                log("opa not found: scenarios e, e-nocache and f cannot run")
            else:
                port = free_port()
                self.ports["opa"] = port
                proc = Proc(
                    "opa",
                    [opa, "run", "--server", "--addr", f"127.0.0.1:{port}",
                     "--disable-telemetry", "--log-level", "error",
                     str(ROOT / "policies" / "agentgate"), str(self.work / "policy-data.json"),
                     str(SCENARIOS_DIR / "oathkeeper_adapter.rego")],
                    SUT_CPU, self.logdir, cwd=self.work,
                )  # fmt: skip
                self.shared["opa"] = self._start(
                    proc, http_ok(f"http://127.0.0.1:{port}/health"), "/health"
                )
        if "g" in self.wanted:
            redis = tool("redis-server")
            if redis is not None:
                port = free_port()
                self.ports["redis"] = port
                rdir = self.work / "redis"
                rdir.mkdir(exist_ok=True)
                proc = Proc(
                    "redis",
                    [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(rdir)],
                    f"{SUT_CPU},{LOAD_CPU}", self.logdir,
                )  # fmt: skip
                self.shared["redis"] = self._start(proc, tcp_open(port), f"port {port}")

    # -- scenarios

    def build(self) -> None:
        builders: dict[str, Callable[[Scenario], None]] = {
            "a": self._a, "b": self._b, "c": self._c, "d": self._d, "d-mtls": self._d_mtls,
            "e": self._e, "e-nocache": self._e_nocache, "f": self._f, "g": self._g,
        }  # fmt: skip
        for key in self.wanted:
            sc = SCENARIO_INFO[key]()
            self.scenarios[key] = sc
            try:
                builders[key](sc)
                self.smoke(sc)
            except Exception as exc:  # recorded in RESULTS.md, the other scenarios go on
                sc.error = f"{type(exc).__name__}: {exc}"
                log(f"scenario {key} unavailable: {sc.error}")
                for proc in sc.sut:
                    proc.stop()

    def smoke(self, sc: Scenario) -> None:
        status, headers, body = http_get(sc.url, sc.headers)
        if status != 200 or body != b"ok\n":
            raise RuntimeError(f"smoke request: HTTP {status} {body[:200]!r}")
        sc.notes.append(f"smoke request: 200, server `{headers.get('server', '?')}`")

    def _a(self, sc: Scenario) -> None:
        sc.url = f"http://127.0.0.1:{self.ports['upstream']}{PATH}"
        sc.sut = [self.shared["upstream"]]

    def _b(self, sc: Scenario) -> None:
        port = free_port()
        sc.sut = [self._nginx("nginx-proxy", "nginx-proxy.conf", SUT_CPU, PORT=port)]
        sc.url = f"http://127.0.0.1:{port}{PATH}"

    def _c(self, sc: Scenario) -> None:
        port, admin = free_port(), free_port()
        cfg = self._gateway_config("gateway-passthrough.yaml", PORT=port, ADMIN_PORT=admin)
        sc.sut = [self._gateway("gateway-c", cfg, SUT_CPU)]
        sc.url = f"http://127.0.0.1:{port}{PATH}"

    def _full(self, sc: Scenario, name: str, edit: Callable[[dict[str, Any]], None] | None = None,
              cpus: str = SUT_CPU, workers: int = 0) -> int:  # fmt: skip
        port, admin = free_port(), free_port(pair=workers > 1)
        cfg = self._gateway_config("gateway-full.yaml", PORT=port, ADMIN_PORT=admin)
        if edit is not None:
            edit(cfg)
        sc.sut = [self._gateway(name, cfg, cpus, workers)]
        sc.url = f"https://127.0.0.1:{port}{PATH}"
        sc.headers = {"Authorization": f"Bearer {self.materials['token']}"}
        return port

    def _d(self, sc: Scenario) -> None:
        self._full(sc, "gateway-d")

    def _d_mtls(self, sc: Scenario) -> None:
        def edit(cfg: dict[str, Any]) -> None:
            cfg["server"]["tls"]["client_cert"] = "required"
            cfg["authn"]["mtls"] = {}
            cfg["routes"][0]["authn"] = {"all_of": ["mtls", "bearer"]}

        gw_port = self._full(sc, "gateway-d-mtls", edit)
        port = free_port()
        helper = self._nginx(
            "nginx-mtls-client", "nginx-mtls-client.conf", LOAD_CPU, PORT=port, GATEWAY_PORT=gw_port
        )
        sc.aux["mtls helper (CPU 1)"] = helper
        sc.url = f"http://127.0.0.1:{port}{PATH}"

    def _opa_edit(self, caches: bool) -> Callable[[dict[str, Any]], None]:
        if "opa" not in self.shared:
            raise RuntimeError(
                "opa is not installed (.tools/bin/opa): run scripts/bootstrap.sh opa"
            )

        def edit(cfg: dict[str, Any]) -> None:
            cfg["pdp"] = {"engine": "opa", "url": f"http://127.0.0.1:{self.ports['opa']}"}
            if not caches:
                cfg["pdp"]["cache"] = {"ttl_s": 0, "max_entries": 0}
                cfg["authn"]["bearer"]["verified_cache_entries"] = 0

        return edit

    def _e(self, sc: Scenario) -> None:
        self._full(sc, "gateway-e", self._opa_edit(caches=True))
        sc.aux["opa (CPU 0)"] = self.shared["opa"]

    def _e_nocache(self, sc: Scenario) -> None:
        self._full(sc, "gateway-e-nocache", self._opa_edit(caches=False))
        sc.aux["opa (CPU 0)"] = self.shared["opa"]

    def _f(self, sc: Scenario) -> None:
        binary = tool("oathkeeper")
        if binary is None:
            raise RuntimeError(
                "oathkeeper is not installed (.tools/bin/oathkeeper): "
                "`bash scripts/bootstrap.sh bench` builds it; see its log in .tools/logs/"
            )
        if "opa" not in self.shared:
            raise RuntimeError("opa is not installed (.tools/bin/opa)")
        port, api, prom = free_port(), free_port(), free_port()
        values = {"PORT": port, "API_PORT": api, "PROMETHEUS_PORT": prom,
                  "OPA_PORT": self.ports["opa"]}  # fmt: skip
        self._write("oathkeeper-rules.json", self._template("oathkeeper-rules.json"))
        conf = self._write("oathkeeper.yaml", self._template("oathkeeper.yaml", **values))
        proc = Proc("oathkeeper", [binary, "serve", "--config", str(conf)], SUT_CPU, self.logdir)
        sc.sut = [self._start(proc, http_ok(f"http://127.0.0.1:{api}/health/ready"), "health")]
        sc.aux["opa (CPU 0)"] = self.shared["opa"]
        sc.url = f"https://127.0.0.1:{port}{PATH}"
        sc.headers = {"Authorization": f"Bearer {self.materials['token']}"}
        with contextlib.suppress(Exception):
            out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=10)
            self.versions["oathkeeper"] = " ".join(out.stdout.split()[:2])

    def _g(self, sc: Scenario) -> None:
        if "redis" not in self.shared:
            raise RuntimeError("redis-server not found (.tools/bin/redis-server)")
        self.env["AGENTGATE_BENCH_REDIS_URL"] = f"redis://127.0.0.1:{self.ports['redis']}/0"

        def edit(cfg: dict[str, Any]) -> None:
            cfg["state"] = {"backend": "redis", "redis_url": "env:AGENTGATE_BENCH_REDIS_URL"}

        self._full(sc, "gateway-g", edit, cpus=f"{SUT_CPU},{LOAD_CPU}", workers=2)
        sc.aux["redis (CPUs 0-1)"] = self.shared["redis"]

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()


def _info(key: str, title: str, transport: str, placement: str) -> Callable[[], Scenario]:
    return lambda: Scenario(key, title, transport, placement, notes=list(NOTES.get(key, ())))


NOTES: dict[str, tuple[str, ...]] = {
    "a": ("nginx `return 200 \"ok\\n\"` from memory, the fastest upstream available here; the same "
          "process is every other scenario's upstream, so a is the rig's limit (load generator "
          "and upstream sharing CPU 1), not a proxy.",),
    "b": ("Debian nginx-light, 1 worker, upstream keep-alive pool, access log off "
          "(`bench/scenarios/nginx-proxy.conf`).",),
    "c": ("`bench/scenarios/gateway-passthrough.yaml`: one route, no `authn`, no `pdp`, no "
          "`txn_tokens`, audit log off; header hygiene, path normalisation, routing, "
          "X-Forwarded-*, X-Request-Id, metrics, tracing (no exporter) and behaviour remain.",),
    "d": ("`bench/scenarios/gateway-full.yaml`; one access token (ES256, `at+jwt`) for every "
          "request, so the verified-token cache answers all but the first; decision cache at "
          "its default (1 s) -- but see the profile findings: the behaviour figures in the "
          "policy input change on every request, so it never hits.",
          "TLS without client certificate: wrk and h2load cannot present one (d-mtls measures "
          "real mTLS through a client-side helper).",),
    "d-mtls": ("`tls.client_cert: required`, route authn `{all_of: [mtls, bearer]}` (agent "
               "certificate spiffe://example.org/agent/travel + the user's token). wrk/h2load "
               "-> nginx helper (plain HTTP, CPU 1) -> keep-alive mTLS connections -> gateway; "
               "latency includes the helper's hop.",),
    "e": ("`pdp.engine: opa` against `opa run --server` (policies/agentgate + the bench data) "
          "on loopback, pinned with the gateway to CPU 0; caches at their defaults.",),
    "e-nocache": ("`pdp.cache.ttl_s: 0` and `bearer.verified_cache_entries: 0`: an ES256 "
                  "verification and an OPA call on every request, as Oathkeeper does: the "
                  "like-for-like comparison with f.",),
    "f": ("Ory Oathkeeper built from its Go module (`scripts/bootstrap.sh bench`), "
          "`bench/scenarios/oathkeeper.yaml`: jwt authenticator (JWKS file) -> remote_json "
          "authorizer (same OPA, same policy via `oathkeeper_adapter.rego`, input shaped like "
          "agentgate's) -> id_token mutator (ES256, fresh `txn` claim per request). Go "
          "sizes GOMAXPROCS from the CPU affinity: 1 here.",
          "Oathkeeper v0.40.9's remote_json authorizer builds a new HTTP client on every "
          "request (`Config()` calls `httpx.NewResilientClient`), so it opens a new TCP "
          "connection to OPA per request: part of its cost below is that.",),
    "g": ("`state.backend: redis` (required for `--workers 2`), redis-server on loopback "
          "(no persistence). Two workers share the port (SO_REUSEPORT) and may run on both "
          "CPUs -- which they share with the load generator and upstream; CPU and RSS sum "
          "the supervisor and both workers.",),
}  # fmt: skip


_GW, _BOTH = (
    "SUT CPU 0; wrk/h2load + upstream CPU 1",
    "workers on CPUs 0-1; wrk/h2load + upstream CPU 1",
)
SCENARIO_INFO: dict[str, Callable[[], Scenario]] = {
    "a": _info("a", "direct to the upstream (nginx static 200)", "plain HTTP",
               "upstream + wrk/h2load on CPU 1 (CPU 0 idle)"),
    "b": _info("b", "nginx reverse proxy", "plain HTTP", _GW),
    "c": _info("c", "agentgate pass-through", "plain HTTP", _GW),
    "d": _info("d", "agentgate full pipeline, embedded PDP", "TLS (server cert) + bearer", _GW),
    "d-mtls": _info("d-mtls", "d with real mTLS (client-side helper)",
                    "mTLS + bearer, via nginx helper on CPU 1", _GW),
    "e": _info("e", "agentgate full pipeline, OPA server PDP", "TLS (server cert) + bearer",
               "gateway + OPA CPU 0; wrk/h2load + upstream CPU 1"),
    "e-nocache": _info("e-nocache", "e, token + decision caches off", "TLS (server cert) + bearer",
                       "gateway + OPA CPU 0; wrk/h2load + upstream CPU 1"),
    "f": _info("f", "Ory Oathkeeper: jwt + remote_json (OPA) + id_token",
               "TLS (server cert) + bearer", "Oathkeeper + OPA CPU 0; wrk/h2load + upstream CPU 1"),
    "g": _info("g", "d with --workers 2 (redis state)", "TLS (server cert) + bearer", _BOTH),
}  # fmt: skip


# ----------------------------------------------------------------------------- load


def wrk_run(url: str, headers: dict[str, str], conns: int, seconds: float) -> dict[str, Any]:
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    res: dict[str, Any] = {"raw_tail": out.strip().splitlines()[-6:]}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
            res[f"p{q}_ms"] = float(m.group(1)) * scale
    return res


def h2load_run(
    url: str, headers: dict[str, str], rate: int, conns: int, seconds: float, logfile: Path
) -> dict[str, Any]:
    per_conn = rate / conns
    argv = ["taskset", "-c", LOAD_CPU, "h2load", "--h1", "-c", str(conns), "--rps",
            f"{per_conn:g}", "-D", f"{seconds:g}", f"--log-file={logfile}"]  # fmt: skip
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    logfile.unlink(missing_ok=True)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    rows = []
    with contextlib.suppress(OSError):
        for line in logfile.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    res: dict[str, Any] = {"requests": len(rows)}
    if not rows:
        res["error"] = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return res
    rows.sort()
    t0, t1 = rows[0][0], rows[-1][0]
    res["achieved_rps"] = (len(rows) - 1) / ((t1 - t0) / 1e6) if t1 > t0 else None
    statuses = Counter(r[1] for r in rows)
    res["non2xx"] = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    res["errors"] = 0
    m = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", proc.stdout)
    if m:
        res["errors"] = sum(int(x) for x in m.groups())
    steady = [r[2] / 1000 for r in rows if r[0] >= t0 + 500_000] or [r[2] / 1000 for r in rows]
    steady.sort()
    for q in (50, 90, 99, 99.9):
        res[f"p{q:g}_ms"] = pct(steady, q)
    res["max_ms"] = steady[-1]
    return res


def paced_run(
    url: str, headers: dict[str, str], rate: int, conns: int, seconds: float
) -> dict[str, Any]:
    """bench/scenarios/paced.py: evenly spaced requests, latency from the due time."""
    argv = ["taskset", "-c", LOAD_CPU, sys.executable, str(SCENARIOS_DIR / "paced.py"), url,
            "--rate", str(rate), "--duration", f"{seconds:g}", "--connections", str(conns)]  # fmt: skip
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        return {"requests": 0, "error": (proc.stdout + proc.stderr).strip()[-500:]}
    return result


def measure(sc: Scenario, args: argparse.Namespace, work: Path, rnd: int) -> dict[str, Any]:
    sut_pids = [p for proc in sc.sut for p in proc.pids()]
    aux_pids = {name: proc.pids() for name, proc in sc.aux.items()}
    run: dict[str, Any] = {"round": rnd, "loadavg_start": loadavg()}
    wrk_run(sc.url, sc.headers, args.connections, 1)  # warm-up (not recorded)

    def cpu_all() -> tuple[float, dict[str, float]]:
        return cpu_seconds(sut_pids), {k: cpu_seconds(v) for k, v in aux_pids.items()}

    c0, a0 = cpu_all()
    w0 = time.monotonic()
    tput = wrk_run(sc.url, sc.headers, args.connections, args.duration)
    wall = time.monotonic() - w0
    c1, a1 = cpu_all()
    n = tput.get("requests") or 0
    tput["cpu_us_per_req"] = (c1 - c0) / n * 1e6 if n else None
    tput["sut_cpu_util"] = (c1 - c0) / wall
    tput["aux_cpu_us_per_req"] = {k: (a1[k] - a0[k]) / n * 1e6 if n else None for k in a0}
    run["throughput"] = tput
    lat = h2load_run(sc.url, sc.headers, args.rate, args.latency_connections,
                     args.latency_duration, work / f"h2load-{sc.key}.log")  # fmt: skip
    c2, a2 = cpu_all()
    n = lat.get("requests") or 0
    lat["cpu_us_per_req"] = (c2 - c1) / n * 1e6 if n else None
    lat["aux_cpu_us_per_req"] = {k: (a2[k] - a1[k]) / n * 1e6 if n else None for k in a1}
    run["latency"] = lat
    paced = paced_run(sc.url, sc.headers, args.rate, args.connections, args.latency_duration)
    c3, _ = cpu_all()
    n = paced.get("requests") or 0
    paced["cpu_us_per_req"] = (c3 - c2) / n * 1e6 if n else None
    run["paced"] = paced
    run["loadavg_end"] = loadavg()
    return run


# ----------------------------------------------------------------------------- micro


MICRO: list[tuple[str, str, list[str], int]] = [
    # (key, what, argv after the script, timeout s)
    ("authn_tokens", "JWT bearer verification (ES256), DPoP", [], 240),
    ("pdp", "PDP per engine, cached and uncached", ["--ops", "2000", "--runs", "3"], 300),
    ("txn_tokens", "Txn-Token mint and verify", ["--seconds", "0.5", "--runs", "5"], 300),
    ("authn_methods", "other authentication methods", ["--runs", "3", "--ops", "1000"], 300),
    ("state", "shared state: memory vs redis", ["--ops", "5000"], 240),
    (
        "agent_credentials",
        "agent credentials (issue 16) vs ES256 JWT and X.509",
        ["--seconds", "0.5", "--runs", "3"],
        240,
    ),
    (
        "jsonrpc",
        "JSON-RPC inspection of mcp/a2a routes (issue 17)",
        ["--seconds", "0.5", "--runs", "5"],
        240,
    ),
    ("heartbeat", "observed-action chain and heartbeat verification (issue 18)", [], 240),
    ("drift", "baseline drift score per request (issue 18)", [], 240),
]


def run_micro(python: str, env: dict[str, str], only: set[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, what, extra, timeout in MICRO:
        script = BENCH / f"bench_{key}.py"
        if only is not None and key not in only:
            continue
        if not script.exists():
            out[key] = {"what": what, "error": "script missing"}
            continue
        log(f"micro-benchmark {script.name} {' '.join(extra)}")
        t0 = time.monotonic()
        argv = ["taskset", "-c", SUT_CPU, python, str(script), *extra]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=env, cwd=ROOT)  # fmt: skip
            text = proc.stdout.strip()
            entry: dict[str, Any] = {"what": what, "argv": " ".join(argv[3:]), "output": text}
            if proc.returncode != 0:
                entry["error"] = f"exit {proc.returncode}: " + proc.stderr.strip()[-800:]
        except subprocess.TimeoutExpired as exc:
            text = (
                (exc.stdout or b"").decode()
                if isinstance(exc.stdout, bytes)
                else (exc.stdout or "")
            )
            entry = {"what": what, "output": text, "error": f"timed out after {timeout}s"}
        entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["figures"] = parse_micro(entry.get("output", ""))
        out[key] = entry
    return out


_NUM = r"([\d][\d,]*(?:\.\d+)?)"


def parse_micro(text: str) -> dict[str, float]:
    """Best-effort: 'label .... number' per line -> {label: first number}."""
    figures: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^\s*([A-Za-z+][^\d]*?[A-Za-z)\]%])\s+{_NUM}", line)
        if m and not line.lstrip().startswith(("python", "operation", "bench_")):
            figures[m.group(1).strip()] = float(m.group(2).replace(",", ""))
    return figures


# ----------------------------------------------------------------------------- profile


def profile(sc: Scenario, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pyspy = tool("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        for cand in (str(ROOT / ".venv" / "bin" / "py-spy"),):
            if Path(cand).exists():
                pyspy = cand
                break
        else:
            return {"error": "py-spy not found (pip install py-spy, or scripts/bootstrap.sh bench)"}
    pid = sc.sut[0].pid
    raw = work / f"profile-{sc.key}.txt"
    seconds = min(args.duration, 10)
    # Blocking sampling (the process is paused ~200 times a second while its stack is read):
    # --nonblocking reads the stack while it changes and truncates a large share of samples.
    argv = [pyspy, "record", "--pid", str(pid), "--duration", f"{seconds:g}", "--rate", "200",
            "--format", "raw", "--output", str(raw), "--threads"]  # fmt: skip
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    load = wrk_run(sc.url, sc.headers, args.connections, seconds)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {err.strip()[-500:]}"}
    result = analyse_profile(raw.read_text())
    result["main_thread_busy"] = result.pop("main_samples") / (200 * seconds)
    return result | {"load_rps": load.get("rps"), "file": str(raw.relative_to(ROOT))}


_IDLE_LEAF = re.compile(r"^_worker \(concurrent/futures/thread\.py:81\)$|^wait \(threading\.py")
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def analyse_profile(text: str) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks with --threads -> the main thread's costs.

    Shares are of the main thread's (event loop's) active samples: idle samples are not
    recorded without --idle. Other threads are counted separately.
    """
    main = 0
    threads: Counter[str] = Counter()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    bucket: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        head, *frames = stack.split(";")
        thread = head.split(":", 1)[-1].strip()
        if frames and _IDLE_LEAF.search(frames[-1]):
            continue  # a worker thread parked on its queue (blocking mode reports it active)
        threads[thread] += n
        if thread != "MainThread" or not frames:
            continue
        main += n
        names = []
        for fr in frames:
            m = _FRAME.match(fr.strip())
            names.append(f"{m['func']} ({_short(m['file'])})" if m else fr.strip())
        self_t[names[-1]] += n
        for name in set(names):
            incl[name] += n
        bucket[_bucket(names)] += n
    busy = max(1, main)

    def top(counter: Counter[str], k: int, only_gateway: bool = False) -> list[dict[str, Any]]:
        rows = []
        for name, n in counter.most_common():
            if only_gateway and "(gateway/" not in name:
                continue
            rows.append({"function": name, "share_of_busy": n / busy})
            if len(rows) >= k:
                break
        return rows

    return {
        "samples": sum(threads.values()),
        "main_samples": main,
        "threads": dict(threads),
        "top_self": top(self_t, 20),
        "top_inclusive_gateway": top(incl, 25, only_gateway=True),
        "by_component": [
            {"component": k, "share_of_busy": v / busy} for k, v in bucket.most_common()
        ],
    }


def _bucket(names: list[str]) -> str:
    """Which part of the stack owns this sample (the innermost recognised frame wins)."""
    leaf = names[-1]
    for name in reversed(names):
        if "(gateway/" in name:
            mod = name.rsplit("(gateway/", 1)[1].split(")")[0].rsplit(".py", 1)[0]
            inner = leaf.split("(", 1)[-1]
            lib = inner.split("/", 1)[0] if "/" in inner else inner.rstrip(")")
            if "(gateway/" in leaf:
                return f"gateway/{mod} (own Python)"
            return f"gateway/{mod} -> {lib.split('.')[0]}"
    inner = leaf.split("(", 1)[-1].rstrip(")")
    return "outside gateway: " + inner.split("/", 1)[0].split(".py")[0]


# ----------------------------------------------------------------------------- report


def summarise(sc: Scenario) -> dict[str, Any]:
    t = [r["throughput"] for r in sc.runs]
    lt = [r["latency"] for r in sc.runs]
    pc = [r.get("paced", {}) for r in sc.runs]
    aux_keys = sorted({k for r in t for k in r.get("aux_cpu_us_per_req", {})})
    return {
        "rps": summary([x.get("rps") for x in t]),
        "cpu_us_per_req": summary([x.get("cpu_us_per_req") for x in t]),
        "sut_cpu_util": summary([x.get("sut_cpu_util") for x in t]),
        "wrk_p99_ms": summary([x.get("p99_ms") for x in t]),
        "errors": sum((x.get("non2xx") or 0) + (x.get("socket_errors") or 0) for x in t)
        + sum((x.get("non2xx") or 0) + (x.get("errors") or 0) for x in lt)
        + sum((x.get("non2xx") or 0) + (x.get("errors") or 0) for x in pc),
        "lat_p50_ms": summary([x.get("p50_ms") for x in lt]),
        "lat_p90_ms": summary([x.get("p90_ms") for x in lt]),
        "lat_p99_ms": summary([x.get("p99_ms") for x in lt]),
        "lat_achieved_rps": summary([x.get("achieved_rps") for x in lt]),
        "lat_cpu_us_per_req": summary([x.get("cpu_us_per_req") for x in lt]),
        "paced_p50_ms": summary([x.get("p50_ms") for x in pc]),
        "paced_p90_ms": summary([x.get("p90_ms") for x in pc]),
        "paced_p99_ms": summary([x.get("p99_ms") for x in pc]),
        "paced_achieved_rps": summary([x.get("achieved_rps") for x in pc]),
        "paced_cpu_us_per_req": summary([x.get("cpu_us_per_req") for x in pc]),
        "aux_cpu_us_per_req": {
            k: summary([x.get("aux_cpu_us_per_req", {}).get(k) for x in t]) for k in aux_keys
        },
    }


def fmt(s: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not s:
        return "—"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s.get("n", 1) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} <sub>{lo:,.{digits}f}–{hi:,.{digits}f}</sub>"


def med(s: dict[str, float] | None) -> float | None:
    return s["median"] if s else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def write_report(data: dict[str, Any], out_md: Path) -> None:
    meta, scen = data["meta"], data["scenarios"]
    S = {k: v["summary"] for k, v in scen.items() if v.get("summary")}
    L: list[str] = []
    add = L.append
    add("# agentgate benchmark results")
    add("")
    add(f"Generated by `bench/run.py` on {meta['started']} (took {meta['elapsed_min']:.1f} min). "
        "Regenerate with `make bench`; method and caveats in [README.md](README.md). "
        "Loopback only, not part of CI.")  # fmt: skip
    add("")
    add("## Machine and conditions")
    add("")
    add(f"- {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['kernel']}, Python {meta['python']}, "
        f"aiohttp {meta['versions'].get('aiohttp', '?')}")  # fmt: skip
    add(f"- Pinning (taskset): {meta['pinning']}")
    la = meta["loadavg"]
    add(f"- **Load average** (1/5/15 min) at start {la['start']}, at end {la['end']}; per run "
        f"1-min load ranged {la['per_run_min']:.2f}–{la['per_run_max']:.2f}. The machine was "
        "shared with other engineers' test runs: throughput and latency are depressed and noisy "
        "by an unknown amount; CPU µs per request (CPU time the server itself consumed) is the "
        "figure least affected by that.")  # fmt: skip
    add(f"- Runs: {meta['runs']} rounds × each scenario (interleaved), medians with "
        f"<sub>min–max</sub>. Throughput: `wrk -t1 -c{meta['connections']} -d{meta['duration']:g}s`. "
        f"Latency at {meta['rate']} req/s for {meta['latency_duration']:g} s each: "
        f"`h2load --h1 -c{meta['latency_connections']} --rps`, then `bench/scenarios/paced.py` "
        f"({meta['connections']} connections); first 0.5 s dropped.")  # fmt: skip
    if meta.get("runs_note"):
        add(f"- {meta['runs_note']}")
    add(f"- Code: git `{meta['git']}`; tools: " + ", ".join(
        f"{k} {v}" for k, v in sorted(meta["versions"].items()) if k != "aiohttp"))  # fmt: skip
    add("")
    add("## End-to-end results")
    add("")
    rate = meta["rate"]
    add("### Maximum throughput and cost")
    add("")
    add("| scenario | transport | max throughput req/s | × direct | × nginx | CPU µs/req | "
        "server CPU use | peak RSS MiB | errors |")  # fmt: skip
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    direct, nginx = med(S.get("a", {}).get("rps")), med(S.get("b", {}).get("rps"))
    for key in data["order"]:
        v = scen[key]
        if v.get("error"):
            add(f"| **{key}** {v['title']} | {v['transport']} | failed: see notes | | | | | | |")
            continue
        s = S.get(key)
        if not s:
            continue
        r = med(s["rps"])
        util = med(s["sut_cpu_util"])
        rss = v.get("rss", {}).get("sut_vmhwm_mib")
        add(f"| **{key}** {v['title']} | {v['transport']} | {fmt(s['rps'])} | {ratio(r, direct)} | "
            f"{ratio(r, nginx)} | {fmt(s['cpu_us_per_req'])} | "
            f"{f'{util:.2f}' if util is not None else '—'} | {rss if rss is not None else '—'} | "
            f"{s['errors']} |")  # fmt: skip
    add("")
    add(f"### Latency at {rate:,} requests/s")
    add("")
    add(f"*paced*: `bench/scenarios/paced.py`, one request every 1/{rate} s over "
        f"{meta['connections']} keep-alive connections, timed from when it was due (no "
        f"coordinated omission). *h2load*: `h2load --h1 -c{meta['latency_connections']} --rps`, "
        "whose per-connection timers start together, so the rate arrives as bursts of one "
        "request per connection (see README). *Added* = the scenario's p99 minus direct's (a).")  # fmt: skip
    add("")
    add("| scenario | paced p50 ms | p90 | p99 | added p99 | CPU µs/req | h2load p50 ms | p90 | "
        "p99 | added p99 |")  # fmt: skip
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    a_paced = med(S.get("a", {}).get("paced_p99_ms"))
    a_h2 = med(S.get("a", {}).get("lat_p99_ms"))

    def added(p: float | None, base: float | None) -> str:
        return f"{p - base:.2f}" if p is not None and base is not None else "—"

    def flag(achieved: float | None) -> str:
        return "" if (achieved or 0) >= 0.95 * rate else f" (only {achieved or 0:,.0f}/s)"

    for key in data["order"]:
        if not S.get(key) or scen[key].get("error"):
            continue
        s = defaultdict(lambda: None, S[key])  # results.json of an older run.py lacks some
        add(f"| **{key}** | {fmt(s['paced_p50_ms'], 2)}{flag(med(s['paced_achieved_rps']))} | "
            f"{fmt(s['paced_p90_ms'], 2)} | {fmt(s['paced_p99_ms'], 2)} | "
            f"{added(med(s['paced_p99_ms']), a_paced)} | {fmt(s['paced_cpu_us_per_req'])} | "
            f"{fmt(s['lat_p50_ms'], 2)}{flag(med(s['lat_achieved_rps']))} | {fmt(s['lat_p90_ms'], 2)} | "
            f"{fmt(s['lat_p99_ms'], 2)} | {added(med(s['lat_p99_ms']), a_h2)} |")  # fmt: skip
    add("")
    add("*CPU µs/req* is the server under test only (all its processes: nginx master+worker, "
        "gateway supervisor+workers), at maximum throughput (and, in the latency table, during "
        "the paced phase); sidecars are listed below. *Server CPU use*: CPU seconds per second "
        "during the throughput phase (1.0 = one core; below 1.0 the server waited, e.g. on its "
        "sidecar on the same core, or was starved by other load). *Peak RSS* = sum of VmHWM over "
        "the server's processes at the end (shared pages counted per process).")  # fmt: skip
    add("")
    aux_rows = [(k, name, s2) for k in data["order"] if k in S
                for name, s2 in S[k]["aux_cpu_us_per_req"].items()]  # fmt: skip
    if aux_rows:
        add(
            "| scenario | sidecar | its CPU µs/req (at max) | its peak RSS MiB | server + sidecar CPU µs/req |"
        )
        add("|---|---|---:|---:|---:|")
        for k, name, s2 in aux_rows:
            total = (med(S[k]["cpu_us_per_req"]) or 0) + (med(s2) or 0)
            rss = scen[k].get("rss", {}).get("aux_vmhwm_mib", {}).get(name, "—")
            add(f"| {k} | {name} | {fmt(s2)} | {rss} | {total:,.0f} |")
        add("")
    add("## Targets")
    add("")
    for line in data.get("targets", []):
        add(f"- {line}")
    add("")
    add("## Scenario notes")
    add("")
    for key in data["order"]:
        v = scen[key]
        add(f"- **{key}** — {v['title']}; {v['transport']}; {v['placement']}.")
        for note in v.get("notes", []):
            add(f"  - {note}")
        if v.get("error"):
            add(f"  - **FAILED**: `{v['error'].splitlines()[0][:400]}`")
    add("")
    for section in data.get("static_sections", []):
        add(section.rstrip())
        add("")
    prof = data.get("profile")
    if prof:
        add("## Profile of the full pipeline (this run)")
        add("")
        if prof.get("error"):
            add(f"Profile failed: {prof['error']}")
        else:
            others = ", ".join(f"{k} {v}" for k, v in prof["threads"].items() if k != "MainThread")
            add(f"py-spy (`record --rate 200 --threads`, blocking) on scenario {prof['scenario']}'s "
                f"gateway under `wrk -c{meta['connections']}` ({prof.get('load_rps') or 0:,.0f} "
                f"req/s during the profile). The event-loop thread was busy "
                f"{100 * prof['main_thread_busy']:.0f}% of the time; other threads' active samples: "
                f"{others or 'none'}. Shares below are of the event loop's active samples. "
                f"Raw collapsed stacks: `{prof.get('file')}`.")  # fmt: skip
            add("")
            add("| by component (innermost gateway module -> library it was in) | share |")
            add("|---|---:|")
            for row in prof["by_component"][:18]:
                add(f"| {row['component']} | {100 * row['share_of_busy']:.1f}% |")
            add("")
            add("| gateway function (inclusive) | share |")
            add("|---|---:|")
            for row in prof["top_inclusive_gateway"][:20]:
                add(f"| `{row['function']}` | {100 * row['share_of_busy']:.1f}% |")
            add("")
            add("| leaf function (self) | share |")
            add("|---|---:|")
            for row in prof["top_self"][:15]:
                add(f"| `{row['function']}` | {100 * row['share_of_busy']:.1f}% |")
            add("")
    micro = data.get("micro") or {}
    if micro:
        add("## Micro-benchmarks")
        add("")
        add("Run by `bench/run.py` (pinned to CPU 0, same load as above); full output below.")
        add("")
        for key, entry in micro.items():
            add(f"### `bench/bench_{key}.py` — {entry['what']}")
            add("")
            if entry.get("argv"):
                add(f"`{entry['argv']}` ({entry.get('seconds', '?')} s)")
                add("")
            if entry.get("error"):
                add(f"**Error**: `{entry['error'][:600]}`")
                add("")
            if entry.get("output"):
                add("```")
                add(entry["output"])
                add("```")
                add("")
    out_md.write_text("\n".join(L) + "\n")


def targets(data: dict[str, Any]) -> list[str]:
    S = {k: v["summary"] for k, v in data["scenarios"].items() if v.get("summary")}
    rate = data["meta"]["rate"]
    out = []

    def m(key: str, metric: str) -> float | None:
        return med(S[key][metric]) if key in S else None

    def cpu_total(key: str) -> float | None:  # server + sidecars, µs per request at maximum
        if key not in S:
            return None
        aux = S[key].get("aux_cpu_us_per_req", {})
        return (m(key, "cpu_us_per_req") or 0) + sum(med(v) or 0 for v in aux.values())

    f, fcpu = m("f", "rps"), cpu_total("f")
    for key in ("d", "e", "e-nocache"):
        d, dcpu = m(key, "rps"), cpu_total(key)
        if d and f:
            cpu = (
                f"; CPU per request incl. OPA {dcpu:,.0f} vs {fcpu:,.0f} µs"
                if dcpu and fcpu
                else ""
            )
            out.append(f"Full pipeline throughput ≥ 1.0× Oathkeeper's: {key} {d:,.0f} vs f {f:,.0f} "
                       f"req/s = **{d / f:.2f}×**{cpu} — {'met' if d >= f else 'NOT met'}"
                       + (" (within the run-to-run spread)" if abs(d / f - 1) < 0.1 else "") + ".")  # fmt: skip
    if f is None:
        out.append("Full pipeline vs Oathkeeper: not measured (scenario f unavailable; see notes).")
    for key in ("c", "d", "d-mtls", "e", "e-nocache", "g"):
        parts, verdicts = [], []
        for label, metric in (("paced", "paced_p99_ms"), ("h2load", "lat_p99_ms")):
            p99, a99 = m(key, metric), m("a", metric)
            if p99 is None or a99 is None:
                continue
            parts.append(f"{label} **{p99 - a99:.2f} ms** (p99 {p99:.2f} vs direct {a99:.2f})")
            verdicts.append(p99 - a99 <= 1)
        if parts:
            verdict = "met" if all(verdicts) else ("NOT met" if not any(verdicts) else "mixed")
            out.append(f"p99 added latency ≤ 1 ms at {rate:,} req/s, {key}: " + "; ".join(parts)
                       + f" — {verdict}.")  # fmt: skip
    c, b = m("c", "rps"), m("b", "rps")
    if c and b:
        ccpu, bcpu = m("c", "cpu_us_per_req"), m("b", "cpu_us_per_req")
        per_core = (f"; per core of the proxy (CPU µs per request {ccpu:,.0f} vs {bcpu:,.0f}) "
                    f"**{bcpu / ccpu:.2f}×** — b's throughput is capped by CPU 1 (wrk + upstream), "
                    "not by nginx") if ccpu and bcpu else ""  # fmt: skip
        out.append(f"Pass-through ≥ 0.5× nginx: c {c:,.0f} vs b {b:,.0f} req/s = **{c / b:.2f}×**"
                   f"{per_core} — {'met' if c >= 0.5 * b else 'NOT met'}.")  # fmt: skip
    return out


# ----------------------------------------------------------------------------- main


def versions(python: str, env: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}

    def first(argv: list[str], pattern: str) -> str | None:
        with contextlib.suppress(Exception):
            p = subprocess.run(argv, capture_output=True, text=True, timeout=15)
            m = re.search(pattern, p.stdout + p.stderr)
            return m.group(1) if m else None
        return None

    for name, argv, pat in [
        ("nginx", ["nginx", "-v"], r"nginx/(\S+)"),
        ("wrk", ["wrk", "-v"], r"wrk (\S+)"),
        ("h2load", ["h2load", "--version"], r"nghttp2/(\S+)"),
        ("opa", [tool("opa") or "opa", "version"], r"Version: (\S+)"),
        ("redis", [tool("redis-server") or "redis-server", "--version"], r"v=(\S+)"),
    ]:
        v = first(argv, pat)
        if v:
            out[name] = v
    v = first([python, "-c", "import aiohttp; print('v', aiohttp.__version__)"], r"v (\S+)")
    if v:
        out["aiohttp"] = v
    return out


def git_state() -> str:
    with contextlib.suppress(Exception):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "gateway"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + (" + uncommitted changes in gateway/" if dirty else "")
    return "?"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10, help="throughput phase, seconds")
    ap.add_argument("--latency-duration", type=float, default=6,
                    help="each fixed-rate phase (h2load, then paced), seconds")  # fmt: skip
    ap.add_argument("--rate", type=int, default=1000, help="fixed rate, requests/s (total)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--latency-connections", type=int, default=20, help="h2load connections")
    ap.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    ap.add_argument("--micro", default="", help="comma-separated micro-benchmarks (default: all)")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--budget-min", type=float, default=28.0, help="cap for the whole run")
    ap.add_argument("--quick", action="store_true", help="1 run, 3 s phases, no micro/profile")
    ap.add_argument("--no-bootstrap", action="store_true", help="don't run bootstrap.sh bench")
    ap.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md/results.json go")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md from results.json (and scenarios/findings.md)",
    )
    args = ap.parse_args(argv)
    if args.report_only:
        data = json.loads((args.out / "results.json").read_text())
        prof = data.get("profile") or {}
        raw = ROOT / prof["file"] if prof.get("file") else None
        if raw is not None and raw.exists():  # re-analyse with the current analysis code
            keep = {
                k: prof[k]
                for k in ("load_rps", "file", "scenario", "main_thread_busy")
                if k in prof
            }
            data["profile"] = analyse_profile(raw.read_text()) | keep
            data["profile"].pop("main_samples", None)
        data["targets"] = targets(data)
        notes = SCENARIOS_DIR / "findings.md"
        data["static_sections"] = [notes.read_text()] if notes.exists() else []
        write_report(data, args.out / "RESULTS.md")
        log(f"rewrote {args.out / 'RESULTS.md'} from results.json")
        return 0
    if args.quick:
        args.runs, args.duration, args.latency_duration = 1, 3, 3
        args.no_micro = args.no_profile = True
    started = time.monotonic()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or list(ALL_SCENARIOS)
    unknown = set(wanted) - set(ALL_SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {sorted(unknown)}")
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        ap.error("needs at least 2 CPUs (SUT on CPU 0, load generator on CPU 1)")

    if not args.no_bootstrap:
        log("bootstrap: scripts/bootstrap.sh bench (nginx, wrk, h2load, Oathkeeper, py-spy)")
        rc = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "bench"]).returncode
        if rc != 0:
            log(f"bootstrap.sh bench failed (exit {rc}); going on with what is installed")
    missing = [t for t in ("nginx", "wrk", "h2load", "taskset") if tool(t) is None]
    if missing:
        log(f"missing tools: {missing} (scripts/bootstrap.sh bench installs them)")
        return 1

    python = sys.executable
    # Time budget: per scenario and round, warm-up + the three phases + ~2 s overhead.
    per = 1 + args.duration + 2 * args.latency_duration + 2
    micro_s = 0 if args.no_micro else 360
    budget_s = args.budget_min * 60 - 90 - micro_s - (0 if args.no_profile else 20)
    runs_note = ""
    max_runs = max(1, int(budget_s // (per * len(wanted))))
    if args.runs > max_runs:
        runs_note = (f"Runs reduced from {args.runs} to {max_runs} to stay within the "
                     f"{args.budget_min:g}-minute budget.")  # fmt: skip
        log(runs_note)
        args.runs = max_runs
    log(f"{len(wanted)} scenarios × {args.runs} rounds × ~{per:.0f} s "
        f"≈ {len(wanted) * args.runs * per / 60:.1f} min of load, + micro-benchmarks ~{micro_s / 60:.0f} min")  # fmt: skip

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    git_at_start = git_state()  # the code the servers load now (others may commit meanwhile)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = BENCH / "out" / f"run-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    rig = Rig(work, python, wanted)
    la_start = loadavg()
    data: dict[str, Any] = {"order": wanted, "scenarios": {}}
    try:
        log(f"work folder {work.relative_to(ROOT)}")
        rig.start_shared()
        rig.build()
        active = [rig.scenarios[k] for k in wanted if rig.scenarios[k].error is None]
        for rnd in range(1, args.runs + 1):
            for sc in active:
                if any(not p.alive() for p in sc.sut):
                    sc.error = sc.error or f"server exited during round {rnd}:\n" + sc.sut[0].tail()
                    continue
                if sc.error:
                    continue
                res = measure(sc, args, work, rnd)
                sc.runs.append(res)
                t, lt, pc = res["throughput"], res["latency"], res["paced"]
                bad = sum((x.get(k) or 0) for x in (t, lt, pc)
                          for k in ("non2xx", "socket_errors", "errors"))  # fmt: skip
                log(f"round {rnd}/{args.runs} {sc.key:<9} {t.get('rps') or 0:>9,.0f} req/s  "
                    f"{t.get('cpu_us_per_req') or 0:>6,.0f} µs CPU/req  p99@{args.rate}/s: h2load "
                    f"{lt.get('p99_ms', float('nan')):6.2f} ms, paced {pc.get('p99_ms', float('nan')):6.2f} ms  "
                    f"load {res['loadavg_end'][0]:.2f}" + (f"  ERRORS {bad}" if bad else ""))  # fmt: skip
        for sc in rig.scenarios.values():
            hwm = {p: vm_kib(p, "VmHWM") for proc in sc.sut for p in proc.pids()}
            sc.rss = {
                "sut_vmhwm_mib": round(sum(hwm.values()) / 1024, 1) if hwm else None,
                "sut_processes": len(hwm),
                "aux_vmhwm_mib": {
                    name: round(sum(vm_kib(p, "VmHWM") for p in proc.pids()) / 1024, 1)
                    for name, proc in sc.aux.items()
                },
            }
        if not args.no_profile:
            target = next((rig.scenarios[k] for k in ("d", "e", "g") if k in rig.scenarios
                           and rig.scenarios[k].error is None), None)  # fmt: skip
            if target is not None:
                log(f"profiling scenario {target.key} with py-spy")
                data["profile"] = profile(target, args, work) | {"scenario": target.key}
    finally:
        rig.stop_all()
    micro_env = dict(rig.env)
    if not args.no_micro:
        only = {s.strip() for s in args.micro.split(",") if s.strip()} or None
        data["micro"] = run_micro(python, micro_env, only)
    la_end = loadavg()
    per_run = [r["loadavg_end"][0] for sc in rig.scenarios.values() for r in sc.runs] or [0.0]
    vers = versions(python, rig.env) | rig.versions
    data["meta"] = {
        "started": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "elapsed_min": (time.monotonic() - started) / 60,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "versions": vers,
        "git": git_at_start
        + ("" if git_state() == git_at_start else f" (at the end: {git_state()})"),
        "pinning": f"server under test on CPU {SUT_CPU} (with its PDP sidecar in e/f); wrk, "
                   f"h2load, the upstream nginx and d-mtls's client helper on CPU {LOAD_CPU}; "
                   "g's two workers may use both CPUs",
        "loadavg": {"start": la_start, "end": la_end,
                    "per_run_min": min(per_run), "per_run_max": max(per_run)},
        "runs": args.runs, "runs_note": runs_note, "duration": args.duration,
        "latency_duration": args.latency_duration, "rate": args.rate,
        "connections": args.connections, "latency_connections": args.latency_connections,
        "work": str(work.relative_to(ROOT)),
    }  # fmt: skip
    for key in wanted:
        sc = rig.scenarios.get(key)
        if sc is None:
            continue
        entry: dict[str, Any] = {
            "title": sc.title, "transport": sc.transport, "placement": sc.placement,
            "url": sc.url, "notes": sc.notes, "error": sc.error, "rss": sc.rss, "runs": sc.runs,
        }  # fmt: skip
        if sc.runs:
            entry["summary"] = summarise(sc)
        data["scenarios"][key] = entry
    data["targets"] = targets(data)
    notes = SCENARIOS_DIR / "findings.md"
    data["static_sections"] = [notes.read_text()] if notes.exists() else []
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {k: v for k, v in data.items() if k != "static_sections"}, indent=1, default=str) + "\n")  # fmt: skip
    write_report(data, args.out / "RESULTS.md")
    log(
        f"wrote {args.out / 'RESULTS.md'} and results.json in {(time.monotonic() - started) / 60:.1f} min"
    )
    for line in data["targets"]:
        log(line.replace("**", ""))
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
