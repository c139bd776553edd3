"""A real Keycloak for the OAuth credential-conversion tests.

``scripts/bootstrap.sh`` installs the Keycloak distribution from Maven Central
(``org.keycloak:keycloak-quarkus-dist``) under ``.tools/``; it runs on the
machine's OpenJDK 17. The fixture starts it in dev mode with an in-memory
database on a free loopback port, creates the ``agentgate-test`` realm from
``tests/fixtures/keycloak/realm.json`` through the admin REST API, and stops
it at the end of the session.

When Keycloak is missing and ``CI=true`` the tests fail; elsewhere they skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
REALM_FILE = ROOT / "tests" / "fixtures" / "keycloak" / "realm.json"
REALM = "agentgate-test"
ADMIN_PASSWORD = "admin-test-password"


def require_real(component: str, present: bool) -> None:
    """Fail under CI (a skipped test proves nothing there), skip elsewhere."""
    if present:
        return
    message = f"{component} is not installed (run scripts/bootstrap.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def keycloak_home() -> Path | None:
    env = os.environ.get("AGENTGATE_KEYCLOAK_HOME")
    if env:
        return Path(env)
    link = ROOT / ".tools" / "keycloak"
    return link if (link / "bin" / "kc.sh").exists() else None


@dataclass(frozen=True)
class Keycloak:
    base: str

    @property
    def issuer(self) -> str:
        return f"{self.base}/realms/{REALM}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    def password_token(self, username: str, password: str, client_id: str) -> str:
        form = {
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": password,
        }
        return str(_post_form(self.token_endpoint, form)["access_token"])


def _post_form(url: str, form: dict[str, str], token: str | None = None) -> dict[str, object]:
    req = urllib.request.Request(  # noqa: S310 - loopback URL built by the fixture
        url, data=urllib.parse.urlencode(form).encode(), method="POST"
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return dict(json.load(resp))


def _wait_ready(base: str, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"keycloak exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/realms/master", timeout=2):  # noqa: S310
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"keycloak not ready after {deadline_s:.0f}s")


def _create_realm(base: str) -> None:
    admin = _post_form(
        f"{base}/realms/master/protocol/openid-connect/token",
        {
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": "admin",
            "password": ADMIN_PASSWORD,
        },
    )
    req = urllib.request.Request(  # noqa: S310
        f"{base}/admin/realms", data=REALM_FILE.read_bytes(), method="POST"
    )
    req.add_header("Authorization", f"Bearer {admin['access_token']}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        if resp.status != 201:
            raise RuntimeError(f"realm creation answered {resp.status}")


def start_keycloak(log_path: Path) -> Iterator[Keycloak]:
    home = keycloak_home()
    require_real("keycloak", home is not None)
    assert home is not None
    port = free_port()
    env = dict(
        os.environ,
        KC_BOOTSTRAP_ADMIN_USERNAME="admin",
        KC_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        JAVA_OPTS_APPEND="-Xms256m -Xmx768m",
    )
    cmd = [
        str(home / "bin" / "kc.sh"),
        "start-dev",
        "--db=dev-mem",
        f"--http-port={port}",
        "--http-host=127.0.0.1",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, deadline_s=240)
        _create_realm(base)
        yield Keycloak(base)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
