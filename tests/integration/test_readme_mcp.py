"""The README's "MCP and A2A" section runs as written (issue 17).

Its route block (``kind: mcp``) and its ``data.mcp`` block configure a real gateway in front
of a real MCP server (the SDK bank of tests/integration/mcp_servers.py); its Python client
block is executed as written with only the gateway URL pointed at that gateway and the token
in ``AGENT_TOKEN``, and what it prints is what the section promises: the tools the caller may
call, a balance, and a transfer over the limit denied with a decision id.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from gateway.devtools.devissuer import access_token_claims, load_or_create, sign_access_token
from gateway.settings import parse_settings
from tests.integration.conftest import BASE_SERVER, base_url, merge
from tests.integration.mcp_servers import bank_server, mcp_app, serve
from tests.support import ROOT

pytestmark = [pytest.mark.integration]

README = (ROOT / "README.md").read_text("utf-8")
SECTION = README.split("## MCP and A2A\n", 1)[1].split("\n## ", 1)[0]
DOC_URL = "https://gateway.example.org/mcp"
IDP = "https://idp.example.org"


def _block(language: str, needle: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", SECTION, re.MULTILINE | re.DOTALL)
    [block] = [b for b in blocks if needle in b]
    return block


def _config(tmp_path: Path, upstream: str) -> dict[str, Any]:
    route = yaml.safe_load(_block("yaml", "kind: mcp"))["routes"][0]
    route["upstream"] = upstream
    data = json.loads(_block("json", '"mcp"'))
    # RBAC lets the caller reach the route at all (the section says so); the tools decide.
    data["rbac"] = {
        "roles": {"bank": [{"methods": ["*"], "paths": ["/mcp", "/mcp/**"], "scopes": []}]},
        "subjects": {"alice": ["bank"]},
    }
    shipped = json.loads((ROOT / "policies" / "data.json").read_text("utf-8"))
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies" / "agentgate", policies / "agentgate")
    (tmp_path / "data.json").write_text(json.dumps(merge(shipped, data)))
    return {
        "server": BASE_SERVER,
        "issuers": [
            {
                "name": "idp",
                "issuer": IDP,
                "dev_signing_key": str(tmp_path / "idp.pem"),
                "audience": route["mcp"]["resource"],
                "algorithms": ["ES256"],
            }
        ],
        "authn": {"bearer": {"issuers": ["idp"]}},
        "pdp": {
            "engine": "embedded",
            "policies": str(policies),
            "data": str(tmp_path / "data.json"),
        },
        "telemetry": {"audit_log": "off"},
        "routes": [route],
    }


async def test_the_mcp_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _block("python", "streamable_http_client")
    assert example.count(DOC_URL) == 1
    monkeypatch.setenv("BANK_MCP_KEY", "bank-upstream-key-0123456789")
    async with serve(mcp_app(bank_server())) as upstream:
        key, _ = load_or_create(tmp_path / "idp.pem", ["ES256"])
        config = _config(tmp_path, upstream.url)
        gateway = Gateway(parse_settings(config, tmp_path))
        await gateway.start()
        try:
            claims = access_token_claims(
                issuer=IDP, audience=config["routes"][0]["mcp"]["resource"], sub="alice",
                scopes=["accounts.read", "payments.write"], client_id="bank-agent",
            )  # fmt: skip
            monkeypatch.setenv("AGENT_TOKEN", sign_access_token(key, claims))
            code = example.replace(DOC_URL, base_url(gateway) + "/mcp")
            # The block ends in asyncio.run(main()): run it in a thread, beside this loop.
            code = code.replace("asyncio.run(main())", "")
            namespace: dict[str, Any] = {"__name__": "readme_mcp"}
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                await asyncio.wait_for(namespace["main"](), 30)
        finally:
            await gateway.stop()
        seen = [r.body for r in upstream.recorder.seen]
    out = printed.getvalue()
    # delete_account and slow_count are not in data.mcp: unknown tools are never shown.
    assert "visible: ['get_balance', 'transfer_funds']" in out, out
    assert "balance: {'account': 'acc-1', 'balance': 1234, 'currency': 'EUR'}" in out, out
    assert re.search(r"^denied: -32001 [0-9a-f-]{36}$", out, re.M), out
    assert not any(b'"amount":5000' in body or b'"amount": 5000' in body for body in seen)
    assert "asyncio.run(main())" in example  # the block as a user runs it
