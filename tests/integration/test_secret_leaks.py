"""No secret leaves the gateway except as the converted credential to its upstream (DESIGN.md §4
"Secrets ... never appear in logs, errors, check-config output or repr"; §5 "Error bodies never
contain secrets, tokens ..."; "No full token ever appears in logs, metrics or telemetry").

One gateway runs as a real subprocess (``python -m gateway run --log-level DEBUG``) with
secrets supplied through ``env:`` and ``file:`` references, a file decision log and a file
audit log. The module drives it through successes and failures -- bad inbound credentials,
a token endpoint that refuses the client (and echoes what it got), one that is down, an
upstream that is down, a secret file removed at runtime, the admin API with a wrong token --
then searches every place a secret could surface for every secret value, its base64 /
base64url / percent-encoded forms and every full inbound or issued token:

* the gateway's stderr and stdout,
* every status line, header and body sent to a client (main and admin listeners),
* ``/metrics``,
* the decision log and the audit log files,
* ``agentgate check-config`` output, for a valid file and for broken ones whose mistakes
  sit right next to (or are) secret values,
* ``repr``/``str``/JSON dump of the loaded ``Settings``.

A sanity test proves the search is not vacuous: the same needles ARE found in what the
upstream and the token endpoint received.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import aiohttp
import bcrypt
import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.settings import load_settings
from tests.support import (
    LOCALHOST,
    ROOT,
    GatewayProcess,
    closed_port,
    subprocess_env,
    write_config,
)

pytestmark = pytest.mark.integration


def _rand(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


# Every value below is a secret: it must never be found outside its one legitimate recipient.
S = {
    "backend_header_key": _rand("LEAKhdr"),  # env:
    "backend_query_key": _rand("LEAKqry") + "+/&=",  # file:, needs URL encoding
    "backend_password": _rand("LEAKpw") + ":x",  # file:
    "backend_bearer": _rand("LEAKbrr"),  # env:
    "hmac_secret": _rand("LEAKhmac") + _rand("pad"),  # file:, >= 32 bytes
    "cc_secret": _rand("LEAKcc"),  # file: (the token endpoint accepts it)
    "cc_wrong_secret": _rand("LEAKccw"),  # env: (the token endpoint refuses and echoes it)
    "cc_down_secret": _rand("LEAKccd"),  # env: (the token endpoint is down)
    "gone_secret": _rand("LEAKgone"),  # file:, removed at runtime
    "admin_token": _rand("LEAKadm"),  # env:
    "as_cc_token": _rand("LEAKascc"),  # issued by the token endpoint
    "as_tx_token": _rand("LEAKastx"),  # issued by the token endpoint (exchange)
    "inbound_api_key": _rand("LEAKinkey"),
    "inbound_password": _rand("LEAKinpw"),
    "wrong_api_key": _rand("LEAKbadkey"),
    "wrong_password": _rand("LEAKbadpw"),
    "wrong_admin_token": _rand("LEAKbadadm"),
    "crlf_head": _rand("LEAKcrlf"),  # file: "<head>\r\nX-Injected: <tail>" (not header-safe)
    "crlf_tail": _rand("LEAKinj"),
}
BACKEND_USER = "billing-svc"
INBOUND_USER = "ops"
ISSUER = "https://idp.leak.test"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encodings(value: str) -> set[str]:
    raw = value.encode()
    forms = {value, _b64(raw), _b64(raw).rstrip("="), _b64url(raw), quote(value, safe="")}
    forms.add(quote(value, safe="/"))  # yarl's query encoding keeps '/'
    return {f for f in forms if len(f) >= 12}


def token_needles(token: str) -> set[str]:
    """A full token, and its signature on its own (no prefix of it is logged by design)."""
    return {token, token.rsplit(".", 1)[-1]}


# --------------------------------------------------------------------------- the scenario


@dataclass
class Artifacts:
    needles: dict[str, set[str]]  # label -> every form that must not leak
    stderr: str
    stdout: str
    responses: list[tuple[str, int, str]]  # (label, status, status line + headers + body)
    metrics: str
    decision_log: str | None
    audit_log: str | None
    upstream_seen: str  # what the upstream received (legitimately holds backend secrets)
    as_seen: str  # what the token endpoint received
    exit_code: int
    config_path: Path
    env: dict[str, str]
    statuses: dict[str, int] = field(default_factory=dict)


def _ec_pem() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key,
    )


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class Recorder:
    """A plain upstream: records requests, answers a fixed body (never echoes)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        lines = [f"{request.method} {request.raw_path}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items()]
        self.seen.append("\n".join(lines) + "\n" + body.decode("latin-1"))
        path, _, query = request.raw_path.partition("?")
        if path.endswith("/redirect"):
            # The everyday trailing-slash redirect (Django APPEND_SLASH, aiohttp's
            # normalize_path_middleware, ...): same path plus '/', same query.
            location = f"{path}/?{query}" if query else f"{path}/"
            return web.Response(status=301, headers={"Location": location})
        return web.json_response({"ok": True})


class TokenEndpoint:
    """A verbose, hostile-ish AS: its error descriptions echo what the client sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        auth = request.headers.get("Authorization", "")
        self.seen.append(auth + "\n" + json.dumps(form))
        client_secret = str(form.get("client_secret", ""))
        if auth.startswith("Basic "):
            pair = base64.b64decode(auth[6:]).decode()
            client_secret = unquote(pair.partition(":")[2])
        if client_secret != S["cc_secret"]:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": f"client secret {client_secret} is wrong",
                },
                status=401,
            )
        if form.get("grant_type") == "client_credentials":
            return web.json_response(
                {"access_token": S["as_cc_token"], "token_type": "Bearer", "expires_in": 300}
            )
        subject = str(form.get("subject_token", ""))
        if _claims(subject).get("sub") == "reject-me":
            return web.json_response(
                {
                    "error": "invalid_grant",
                    "error_description": f"subject_token {subject} is not acceptable",
                },
                status=400,
            )
        return web.json_response(
            {"access_token": S["as_tx_token"], "token_type": "Bearer", "expires_in": 300}
        )


async def _serve(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, LOCALHOST, 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def build_config(directory: Path, upstream: str, token_url: str) -> tuple[dict[str, Any], Any]:
    """The gateway config (every secret by reference) and the inbound-token signing key."""

    def secret_file(name: str, value: str) -> str:
        (directory / f"{name}.secret").write_text(value + "\n", encoding="utf-8")
        return f"file:{name}.secret"  # relative to the config folder

    keys_file = directory / "api-keys.yaml"
    digest = hashlib.sha256(S["inbound_api_key"].encode()).hexdigest()
    keys_file.write_text(
        f"keys:\n  - id: partner-1\n    sha256: {digest}\n    subject: partner-agent-1\n",
        encoding="utf-8",
    )
    users_file = directory / "users.yaml"
    hashed = bcrypt.hashpw(S["inbound_password"].encode(), bcrypt.gensalt(4)).decode()
    users_file.write_text(
        f"users:\n  - username: {INBOUND_USER}\n    hash: '{hashed}'\n", encoding="utf-8"
    )
    _, idp_key = _ec_pem()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp_key.public_key()))
    jwk.update({"kid": "idp-1", "alg": "ES256", "use": "sig"})
    (directory / "jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    jwt_pem, _ = _ec_pem()
    (directory / "backend-jwt.key").write_bytes(jwt_pem)
    S["jwt_signing_key_line"] = jwt_pem.decode().splitlines()[2]  # a base64 line of the PEM
    policies = directory / "policies"
    policies.mkdir()
    (policies / "authz.rego").write_text(
        'package agentgate.authz\n\ndecision := {"allow": true}\n', encoding="utf-8"
    )

    def route(name: str, credential: dict[str, Any], to: str = upstream) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"path_prefix": f"/{name}/"},
            "authn": {"any_of": ["api_key", "bearer", "basic"]},
            "upstream": to,
            "credential": credential,
        }

    def crlf_secret() -> str:
        raw = f"{S['crlf_head']}\r\nX-Injected: {S['crlf_tail']}".encode()
        (directory / "crlf.secret").write_bytes(raw)
        return "file:crlf.secret"

    def cc(secret_ref: str, url: str = token_url) -> dict[str, Any]:
        return {
            "type": "oauth_client_credentials",
            "token_endpoint": url,
            "client_id": "billing",
            "client_secret": secret_ref,
            "timeout_s": 1,
        }

    config = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "timeouts": {"drain_s": 1, "upstream_connect_s": 1, "upstream_total_s": 5},
        },
        "issuers": [
            {
                "name": "local",
                "issuer": ISSUER,
                "jwks_file": "jwks.json",
                "audience": "agentgate",
                "algorithms": ["ES256"],
            }
        ],
        "authn": {
            "api_key": {"keys_file": "api-keys.yaml"},
            "bearer": {"issuers": ["local"]},
            "basic": {"users_file": "users.yaml"},
        },
        "pdp": {"engine": "embedded", "policies": "policies"},
        "telemetry": {"decision_log": "decision.log", "audit_log": "audit.log"},
        "admin": {"token": "env:LEAK_ADMIN_TOKEN"},
        "routes": [
            route("hdr", {"type": "api_key", "header": "X-Backend-Key",
                          "secret": "env:LEAK_BACKEND_HEADER_KEY"}),
            route("qry", {"type": "api_key", "header": None, "query_param": "key",
                          "secret": secret_file("query", S["backend_query_key"])}),
            route("basic", {"type": "basic", "username": BACKEND_USER,
                            "password": secret_file("password", S["backend_password"])}),
            route("bearer", {"type": "bearer_static", "token": "env:LEAK_BACKEND_BEARER"}),
            route("hmac", {"type": "hmac_sign", "key_id": "gw",
                           "secret": secret_file("hmac", S["hmac_secret"])}),
            route("jwt", {"type": "signed_jwt", "key": "backend-jwt.key",
                          "issuer": "https://gw", "audience": "https://backend", "ttl_s": 30}),
            route("cc", cc(secret_file("cc", S["cc_secret"]))),
            route("ccwrong", cc("env:LEAK_CC_WRONG_SECRET")),
            route("ccdown", cc("env:LEAK_CC_DOWN_SECRET",
                               f"http://{LOCALHOST}:{closed_port()}/token")),
            route("tx", {"type": "token_exchange", "token_endpoint": token_url,
                         "client_id": "agentgate",
                         "client_secret": secret_file("tx", S["cc_secret"]),
                         "audience": "billing", "timeout_s": 1}),
            route("updown", {"type": "api_key", "header": "X-Backend-Key",
                             "secret": "env:LEAK_BACKEND_HEADER_KEY"},
                  to=f"http://{LOCALHOST}:{closed_port()}"),
            route("gone", {"type": "bearer_static",
                           "token": secret_file("gone", S["gone_secret"])}),
            route("crlf", {"type": "api_key", "header": "X-Backend-Key",
                           "secret": crlf_secret()}),
        ],
    }  # fmt: skip
    return config, idp_key


def secret_env() -> dict[str, str]:
    return {
        "LEAK_BACKEND_HEADER_KEY": S["backend_header_key"],
        "LEAK_BACKEND_BEARER": S["backend_bearer"],
        "LEAK_CC_WRONG_SECRET": S["cc_wrong_secret"],
        "LEAK_CC_DOWN_SECRET": S["cc_down_secret"],
        "LEAK_ADMIN_TOKEN": S["admin_token"],
    }


def mint(key: Any, *, sub: str = "agent-7", exp_in: int = 300, **extra: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": sub,
        "aud": "agentgate",
        "iat": now - 10,
        "exp": now + exp_in,
        "jti": str(uuid.uuid4()),
        "client_id": sub,
        **extra,
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "idp-1"})


async def _drive(directory: Path) -> Artifacts:
    recorder, endpoint = Recorder(), TokenEndpoint()
    up_runner, up_port = await _serve(recorder.handle)
    as_runner, as_port = await _serve(endpoint.handle)
    gw: GatewayProcess | None = None
    stdout_file = directory / "gateway.stdout"
    try:
        config, idp_key = build_config(
            directory, f"http://{LOCALHOST}:{up_port}", f"http://{LOCALHOST}:{as_port}/token"
        )
        config_path = write_config(directory / "gateway.yaml", config)
        env = {**subprocess_env(), **secret_env()}
        with stdout_file.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "-c", str(config_path),
                "--log-level", "DEBUG",
                cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        gw = GatewayProcess(proc)
        await gw._await_listening()
        gw._reader = asyncio.create_task(gw._drain_stderr())

        good_token = mint(idp_key)
        reject_token = mint(idp_key, sub="reject-me")
        expired_token = mint(idp_key, exp_in=-3600)
        head, payload, sig = mint(idp_key).split(".")
        tampered_token = f"{head}.{payload}.{sig[:-4]}AAAA"
        needles: dict[str, set[str]] = {k: encodings(v) for k, v in S.items()}
        needles["backend_basic_pair"] = {_b64(f"{BACKEND_USER}:{S['backend_password']}".encode())}
        needles["inbound_basic_pair"] = {_b64(f"{INBOUND_USER}:{S['inbound_password']}".encode())}
        needles["wrong_basic_pair"] = {_b64(f"{INBOUND_USER}:{S['wrong_password']}".encode())}
        # client_secret_basic (RFC 6749 §2.3.1): base64 of the form-encoded "id:secret" pair.
        for client, key in (
            ("billing", "cc_secret"),
            ("agentgate", "cc_secret"),
            ("billing", "cc_wrong_secret"),
            ("billing", "cc_down_secret"),
        ):
            pair = f"{client}:{quote(S[key], safe='')}"
            needles[f"{key}_basic_pair_{client}"] = {_b64(pair.encode())}  # fmt: skip
        for label, token in (
            ("good_token", good_token),
            ("reject_token", reject_token),
            ("expired_token", expired_token),
            ("tampered_token", tampered_token),
        ):
            needles[label] = token_needles(token)

        def basic(user: str, password: str) -> str:
            return "Basic " + _b64(f"{user}:{password}".encode())

        inbound = {
            "api_key": [("X-API-Key", S["inbound_api_key"])],
            "bearer": [("Authorization", "Bearer " + good_token)],
            "basic": [("Authorization", basic(INBOUND_USER, S["inbound_password"]))],
        }
        responses: list[tuple[str, int, str]] = []
        statuses: dict[str, int] = {}

        async with aiohttp.ClientSession() as session:

            async def call(
                label: str,
                url: str,
                headers: list[tuple[str, str]] | None = None,
                method: str = "GET",
            ) -> int:
                async with session.request(
                    method, url, headers=headers or [], allow_redirects=False
                ) as resp:
                    body = await resp.read()
                    text = f"HTTP {resp.status} {resp.reason}\n"
                    text += "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
                    text += "\n\n" + body.decode("utf-8", "replace")
                responses.append((label, resp.status, text))
                statuses[label] = resp.status
                return resp.status

            base, admin = gw.url, gw.admin_url
            for name in ("hdr", "qry", "basic", "bearer", "hmac", "jwt", "cc", "tx"):
                for kind, headers in inbound.items():
                    await call(f"{name}/{kind}", f"{base}/{name}/x?n=1", headers)
            # Bad inbound credentials.
            await call("bad/api_key", f"{base}/hdr/x", [("X-API-Key", S["wrong_api_key"])])
            await call(
                "bad/api_key_twice",
                f"{base}/hdr/x",
                [("X-API-Key", S["inbound_api_key"]), ("X-API-Key", S["wrong_api_key"])],
            )
            await call(
                "bad/password",
                f"{base}/hdr/x",
                [("Authorization", basic(INBOUND_USER, S["wrong_password"]))],
            )
            await call(
                "bad/expired", f"{base}/hdr/x", [("Authorization", "Bearer " + expired_token)]
            )
            await call(
                "bad/tampered", f"{base}/hdr/x", [("Authorization", "Bearer " + tampered_token)]
            )
            await call("bad/query_token", f"{base}/hdr/x?access_token={good_token}")
            await call(
                "bad/token_twice",
                f"{base}/hdr/x",
                [
                    ("Authorization", "Bearer " + good_token),
                    ("Authorization", "Bearer " + good_token),
                ],
            )
            # Dependency failures.
            await call("fail/cc_wrong", f"{base}/ccwrong/x", inbound["api_key"])
            await call("fail/cc_down", f"{base}/ccdown/x", inbound["bearer"])
            await call(
                "fail/tx_rejected", f"{base}/tx/x", [("Authorization", "Bearer " + reject_token)]
            )
            await call("fail/upstream_down", f"{base}/updown/x", inbound["basic"])
            await call("fail/crlf_secret", f"{base}/crlf/x", inbound["api_key"])
            # An upstream redirect that repeats the request's query (the API key in it).
            await call("reflect/redirect", f"{base}/qry/redirect?n=1", inbound["api_key"])
            await call("gone/before", f"{base}/gone/x", inbound["api_key"])
            (directory / "gone.secret").unlink()
            await asyncio.sleep(1.2)  # file secrets are stat'ed at most once a second
            await call("fail/secret_removed", f"{base}/gone/x", inbound["api_key"])
            # The admin listener.
            await call(
                "admin/wrong",
                f"{admin}/admin/revocations",
                [("Authorization", "Bearer " + S["wrong_admin_token"])],
            )
            await call(
                "admin/right",
                f"{admin}/admin/revocations",
                [("Authorization", "Bearer " + S["admin_token"])],
            )
            await call("admin/readyz", f"{admin}/readyz")
            async with session.get(f"{admin}/metrics") as resp:
                metrics = await resp.text()

        gw.send_signal(signal.SIGTERM)
        exit_code = await gw.wait(timeout=20)
        decision = directory / "decision.log"
        audit = directory / "audit.log"
        return Artifacts(
            needles=needles,
            stderr="\n".join(gw.lines),
            stdout=stdout_file.read_text("utf-8", "replace"),
            responses=responses,
            metrics=metrics,
            decision_log=decision.read_text("utf-8") if decision.exists() else None,
            audit_log=audit.read_text("utf-8") if audit.exists() else None,
            upstream_seen="\n".join(recorder.seen),
            as_seen="\n".join(endpoint.seen),
            exit_code=exit_code,
            config_path=config_path,
            env=env,
            statuses=statuses,
        )
    finally:
        if gw is not None:
            await gw.stop()
        await up_runner.cleanup()
        await as_runner.cleanup()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return asyncio.run(_drive(tmp_path_factory.mktemp("leaks")))


def leaks(text: str, needles: Mapping[str, set[str]]) -> list[str]:
    """Labels of the secrets some form of which occurs in ``text``."""
    return sorted(
        f"{label} ({form[:10]}...)"
        for label, forms in needles.items()
        for form in forms
        if form in text
    )


# --------------------------------------------------------------------------- the scenario ran


def test_scenario_produced_every_outcome(run: Artifacts) -> None:
    """The search below is only meaningful if the failures really happened."""
    st = run.statuses
    for name in ("hdr", "qry", "basic", "bearer", "hmac", "jwt", "cc"):
        for kind in ("api_key", "bearer", "basic"):
            assert st[f"{name}/{kind}"] == 200, (name, kind, st)
    assert st["tx/bearer"] == 200
    assert st["tx/api_key"] == st["tx/basic"] == 503  # nothing to exchange
    assert st["bad/api_key"] == st["bad/password"] == 401
    assert st["bad/expired"] == st["bad/tampered"] == 401
    assert st["bad/api_key_twice"] == st["bad/query_token"] == st["bad/token_twice"] == 400
    assert st["fail/cc_wrong"] == st["fail/cc_down"] == st["fail/tx_rejected"] == 503
    assert st["fail/upstream_down"] == 502
    assert st["fail/crlf_secret"] in (500, 503)  # 503 once the header-safety bug is fixed
    assert "/crlf/" not in run.upstream_seen  # ... and never forwarded either way
    assert st["reflect/redirect"] == 301
    assert st["gone/before"] == 200
    assert st["fail/secret_removed"] == 503
    assert st["admin/wrong"] == 401
    assert st["admin/right"] == 200
    assert run.exit_code == 0


def test_needles_are_found_where_secrets_belong(run: Artifacts) -> None:
    """Not vacuous: the encodings searched for are the ones that really travel."""
    up = run.upstream_seen
    for label in ("backend_header_key", "backend_query_key", "backend_bearer",
                  "backend_basic_pair", "as_cc_token", "as_tx_token"):  # fmt: skip
        assert leaks(up, {label: run.needles[label]}), label
    for label in ("cc_secret_basic_pair_billing", "cc_secret_basic_pair_agentgate",
                  "cc_wrong_secret_basic_pair_billing"):  # fmt: skip
        assert leaks(run.as_seen, {label: run.needles[label]}), label
    assert leaks(run.as_seen, {"good_token": run.needles["good_token"]})  # the exchange subject
    # ... and the inbound credentials never reached the upstream.
    inbound = ("inbound_api_key", "inbound_password", "inbound_basic_pair", "good_token")
    assert leaks(up, {k: run.needles[k] for k in inbound}) == []


# --------------------------------------------------------------------------- the sinks


def test_gateway_logs_hold_no_secret(run: Artifacts) -> None:
    assert "agentgate listening" in run.stderr  # the log really was captured
    assert "refused" in run.stderr  # ... including the failure lines
    assert leaks(run.stderr, run.needles) == []
    assert leaks(run.stdout, run.needles) == []


def test_responses_to_clients_hold_no_secret(run: Artifacts) -> None:
    found = {
        label: hits
        for label, _, text in run.responses
        if not label.startswith("reflect/") and (hits := leaks(text, run.needles))
    }
    assert found == {}


def test_upstream_redirect_does_not_reflect_the_query_credential(run: Artifacts) -> None:
    (text,) = [t for label, _, t in run.responses if label == "reflect/redirect"]
    assert "Location: /qry/redirect/?" in text  # the redirect itself is relayed
    assert leaks(text, run.needles) == []


def test_metrics_hold_no_secret(run: Artifacts) -> None:
    assert "agentgate_requests_total" in run.metrics
    assert leaks(run.metrics, run.needles) == []


def test_decision_log_holds_no_secret(run: Artifacts) -> None:
    assert run.decision_log, "decision_log file was configured but not written"
    lines = [json.loads(line) for line in run.decision_log.splitlines()]
    assert len(lines) >= 20
    assert leaks(run.decision_log, run.needles) == []


def test_audit_log_holds_no_secret(run: Artifacts) -> None:
    assert run.audit_log is not None, "telemetry.audit_log is configured but no file was written"
    assert run.audit_log.strip(), "the audit log is empty: nothing was checked"
    assert leaks(run.audit_log, run.needles) == []


# --------------------------------------------------------------------------- check-config


def check_config(path: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_success_prints_no_secret(run: Artifacts) -> None:
    # The secret file removed during the run is back, so the whole file validates.
    (run.config_path.parent / "gone.secret").write_text(S["gone_secret"])
    result = check_config(run.config_path, run.env)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert leaks(result.stdout + result.stderr, run.needles) == []


def _mutate(config: dict[str, Any], route: str, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(config))
    for r in out["routes"]:
        if r["name"] == route:
            r["credential"].update(changes)
    return out


def _broken_configs(base: dict[str, Any], directory: Path) -> Iterator[tuple[str, Any, str]]:
    """(case, config (dict, or raw text), secret that must not be echoed)."""
    value = S["backend_header_key"]
    yield "inline-secret-value", _mutate(base, "hdr", secret=value), value
    yield "unknown-key-holding-a-secret", _mutate(base, "hdr", sekret=value), value
    yield "secret-as-a-number", _mutate(base, "jwt", ttl_s=value), value
    yield "secret-as-auth-method", _mutate(base, "cc", auth_method=value), value
    yield "secret-as-a-list", _mutate(base, "basic", username=[value]), value
    password = S["backend_password"]
    url = json.loads(json.dumps(base))
    url["routes"][0]["upstream"] = f"http://svc:{quote(password, safe='')}@127.0.0.1:1"
    yield "credentials-in-upstream-url", url, quote(password, safe="")
    redis = json.loads(json.dumps(base))
    redis["state"] = {"backend": "redis", "redis_url": f"redis://:{S['admin_token']}@127.0.0.1:1"}
    yield "inline-redis-url", redis, S["admin_token"]
    intro = json.loads(json.dumps(base))
    intro["issuers"][0]["introspection"] = {
        "endpoint": "http://127.0.0.1:1/introspect",
        "client_id": "gw",
        "client_secret": S["cc_secret"],
    }
    yield "inline-introspection-secret", intro, S["cc_secret"]
    admin = json.loads(json.dumps(base))
    admin["admin"] = {"token": S["admin_token"]}
    yield "inline-admin-token", admin, S["admin_token"]
    # Operator errors inside credential files.
    pasted = directory / "pasted-key.yaml"
    pasted.write_text(
        f"keys:\n  - id: partner-1\n    sha256: {S['inbound_api_key']}\n    subject: p\n"
    )
    keys = json.loads(json.dumps(base))
    keys["authn"]["api_key"]["keys_file"] = str(pasted)
    yield "api-key-pasted-instead-of-its-hash", keys, S["inbound_api_key"]
    plain = directory / "plain-users.yaml"
    plain.write_text(f"users:\n  - username: ops\n    hash: '{S['inbound_password']}'\n")
    users = json.loads(json.dumps(base))
    users["authn"]["basic"]["users_file"] = str(plain)
    yield "plaintext-password-in-users-file", users, S["inbound_password"]
    hmac_keys = directory / "hmac-keys.yaml"
    hmac_keys.write_text(f"keys:\n  - id: a\n    secret: {S['hmac_secret']}\n    subject: a\n")
    inline_hmac = json.loads(json.dumps(base))
    inline_hmac["authn"]["hmac"] = {"keys_file": str(hmac_keys)}
    yield "inline-secret-in-hmac-keys-file", inline_hmac, S["hmac_secret"]
    short = directory / "short.secret"
    short.write_text("LEAKshort-" + "s" * 8)
    short_keys = directory / "hmac-short.yaml"
    short_keys.write_text(f"keys:\n  - id: a\n    secret: file:{short}\n    subject: a\n")
    short_hmac = json.loads(json.dumps(base))
    short_hmac["authn"]["hmac"] = {"keys_file": str(short_keys)}
    yield "too-short-hmac-secret", short_hmac, "LEAKshort-" + "s" * 8
    garbage = directory / "garbage.key"
    garbage.write_text(f"-----BEGIN PRIVATE KEY-----\n{_b64(value.encode())}\n"
                       "-----END PRIVATE KEY-----\n")  # fmt: skip
    yield "signing-key-not-a-key", _mutate(base, "jwt", key=str(garbage)), value
    text = yaml.safe_dump(_mutate(base, "hdr", secret="env:LEAK_BACKEND_HEADER_KEY"))
    text = text.replace("env:LEAK_BACKEND_HEADER_KEY", f"'{value}\n  - [")
    yield "yaml-error-on-a-secret-line", text, value


def test_check_config_failures_print_no_secret(run: Artifacts, tmp_path: Path) -> None:
    base = yaml.safe_load(run.config_path.read_text())
    (run.config_path.parent / "gone.secret").write_text(S["gone_secret"])
    problems: dict[str, str] = {}
    for case, config, secret in _broken_configs(base, tmp_path):
        path = run.config_path.parent / f"broken-{case}.yaml"
        if isinstance(config, str):
            path.write_text(config, encoding="utf-8")
        else:
            write_config(path, config)
        result = check_config(path, run.env)
        output = result.stdout + result.stderr
        if result.returncode != 2 or not output.strip():
            problems[case] = f"exit {result.returncode}, expected 2 with a message:\n{output}"
            continue
        found = leaks(output, {case: encodings(secret), **run.needles})
        if found:
            problems[case] = f"leaks {found}:\n{output}"
    assert problems == {}, "\n\n".join(f"[{k}] {v}" for k, v in problems.items())


# --------------------------------------------------------------------------- repr


def test_settings_repr_str_and_dump_hold_no_secret(
    run: Artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)
    (run.config_path.parent / "gone.secret").write_text(S["gone_secret"])
    settings = load_settings(run.config_path)
    texts = {
        "repr": repr(settings),
        "str": str(settings),
        "json": settings.model_dump_json(),
        "dict": repr(settings.model_dump()),
        "routes": "\n".join(repr(r) + str(r.credential) for r in settings.routes),
        "admin": repr(settings.admin),
    }
    assert "env:LEAK_BACKEND_HEADER_KEY" in texts["json"]  # the references are shown ...
    found = {k: hits for k, t in texts.items() if (hits := leaks(t, run.needles))}
    assert found == {}  # ... the values never are
    with contextlib.suppress(AttributeError):
        # The one way to the value is explicit.
        assert settings.admin.token is not None
        assert settings.admin.token.reveal_str() == S["admin_token"]
    assert os.environ["LEAK_ADMIN_TOKEN"] == S["admin_token"]


def test_removed_secret_file_error_names_the_path_not_the_value(run: Artifacts) -> None:
    """The 503 log line for a removed secret says which file, never what it held."""
    lines = [line for line in run.stderr.splitlines() if "secret_unavailable" in line]
    assert lines, run.stderr[-2000:]
    assert any("gone.secret" in line for line in lines)
    assert leaks("\n".join(lines), run.needles) == []


# Values that only ever reach the query string must still be searched in decoded form too.
def test_query_secret_search_covers_its_wire_form(run: Artifacts) -> None:
    query_lines = [line for line in run.upstream_seen.splitlines() if line.startswith("GET /qry/")]
    assert query_lines
    values = [
        v
        for line in query_lines
        for k, v in parse_qsl(line.split(" ", 1)[1].partition("?")[2])
        if k == "key"
    ]
    assert values
    assert all(v == S["backend_query_key"] for v in values)
