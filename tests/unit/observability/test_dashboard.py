"""deploy/grafana/continuous-auth.json only queries series the gateway exports."""

from __future__ import annotations

import json
import re

from prometheus_client import generate_latest

from gateway.observability.metrics import Metrics
from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "continuous-auth.json"


def exported_series() -> set[str]:
    metrics = Metrics()
    metrics.heartbeat("healthy")
    metrics.drift_observed("r", 0.5)
    metrics.quarantined("r")
    metrics.observe_request("r", 403, "policy_denied", 0.01)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_every_panel_queries_an_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"agentgate_[a-z_]+", expr)}
    assert used, "the dashboard queries nothing"
    assert used <= exported_series()
    assert {"agentgate_heartbeats_total", "agentgate_quarantines_total"} <= used
    assert any(name.startswith("agentgate_drift_score") for name in used)
