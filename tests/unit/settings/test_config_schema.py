"""``config/gateway.schema.json`` is the schema of the code (issue 15.8).

Editors and CI validate configurations against the checked-in file; it must be exactly what
``agentgate config-schema`` prints for this code. Regenerate with ``make schema``.
"""

from __future__ import annotations

import json

from gateway.settings import json_schema
from tests.support import ROOT

SCHEMA = ROOT / "config" / "gateway.schema.json"


def test_the_checked_in_schema_is_current() -> None:
    assert SCHEMA.is_file(), "config/gateway.schema.json is missing: run `make schema`"
    assert SCHEMA.read_text("utf-8") == json_schema(), "stale schema: run `make schema`"


def test_the_schema_forbids_unknown_top_level_keys() -> None:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    assert schema["additionalProperties"] is False
    assert {"server", "routes", "authn", "pdp"} <= set(schema["properties"])
