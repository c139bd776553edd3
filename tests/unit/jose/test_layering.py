"""The layer rule: gateway.jose imports nothing of the gateway but itself, and the internal
services' kit (gateway.sdk) nothing but gateway.jose (and gateway.httpsig), so the kit can
ship alone and never drags in settings, errors, outbound sessions or devtools.

Checked in a fresh interpreter, so an import inside a function body counts once it runs at
import time, and nothing this test process already imported can hide one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ALLOWED = {
    "gateway.jose": ("gateway.jose",),
    "gateway.jose.jws": ("gateway.jose",),
    "gateway.jose.jwk": ("gateway.jose",),
    "gateway.jose.jwks": ("gateway.jose",),
    "gateway.sdk.txn": ("gateway.jose", "gateway.httpsig", "gateway.sdk"),
}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_imports_nothing_else_of_the_gateway(module: str) -> None:
    code = (
        "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gateway.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, module], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert module in loaded  # the probe did import it
    others = [m for m in loaded if not m.startswith(ALLOWED[module])]
    assert others == [], f"{module} pulls in {others}"
