package agentgate.behavior_test

import data.agentgate.behavior

window(overrides) := object.union(
	{
		"window_s": 60,
		"requests": 0,
		"errors": 0,
		"denies": 0,
		"distinct_routes": 0,
		"deny_rate": 0,
		"error_rate": 0,
	},
	overrides,
)

test_quiet_agent_is_not_denied if {
	w := window({"requests": 12, "distinct_routes": 2})
	count(behavior.deny) == 0 with input.behavior as w
	not behavior.anomalous with input.behavior as w
}

test_missing_behavior_is_never_denied if {
	count(behavior.deny) == 0 with input as {"request": {"method": "GET"}}
	count(behavior.deny) == 0 with input.behavior as {}
	not behavior.anomalous with input as {}
}

test_deny_burst_at_threshold if {
	w := window({"requests": 20, "denies": 10, "deny_rate": 0.5})
	behavior.deny == {"behavior:deny_burst"} with input.behavior as w
	behavior.anomalous with input.behavior as w
}

test_deny_burst_needs_the_rate if {
	w := window({"requests": 30, "denies": 12, "deny_rate": 0.4})
	count(behavior.deny) == 0 with input.behavior as w
}

test_deny_burst_needs_the_count if {
	w := window({"requests": 9, "denies": 9, "deny_rate": 1})
	count(behavior.deny) == 0 with input.behavior as w
}

test_request_flood_is_strictly_more_than_the_limit if {
	count(behavior.deny) == 0 with input.behavior as window({"requests": 600})
	behavior.deny == {"behavior:request_flood"} with input.behavior as window({"requests": 601})
}

test_error_burst if {
	burst := window({"requests": 30, "errors": 20, "error_rate": 0.6667})
	behavior.deny == {"behavior:error_burst"} with input.behavior as burst
	diluted := window({"requests": 100, "errors": 20, "error_rate": 0.2})
	count(behavior.deny) == 0 with input.behavior as diluted
}

test_route_scan if {
	scan := window({"requests": 21, "distinct_routes": 21})
	behavior.deny == {"behavior:route_scan"} with input.behavior as scan
	wide := window({"requests": 20, "distinct_routes": 20})
	count(behavior.deny) == 0 with input.behavior as wide
}

test_thresholds_from_data_override_defaults_key_by_key if {
	limits := {"max_requests": 5}
	behavior.deny == {"behavior:request_flood"} with input.behavior as window({"requests": 6})
		with data.behavior.thresholds as limits
	behavior.thresholds.deny_burst == 10 with data.behavior.thresholds as limits
}

test_reason_is_the_lexically_first if {
	w := window({"requests": 700, "denies": 400, "deny_rate": 0.5714})
	behavior.deny == {"behavior:deny_burst", "behavior:request_flood"} with input.behavior as w
	behavior.reason == "behavior:deny_burst" with input.behavior as w
}

test_no_reason_without_anomaly if {
	not behavior.reason with input.behavior as window({"requests": 1})
}

test_heartbeat_mismatch_denies_and_quarantines if {
	behavior.deny == {"behavior:heartbeat_mismatch"} with input as {"behavior": {"heartbeat": "mismatch"}}
	behavior.quarantine with input as {"behavior": {"heartbeat": "mismatch"}}
}

test_stale_heartbeat_denies_without_quarantine if {
	behavior.deny == {"behavior:heartbeat_stale"} with input as {"behavior": {"heartbeat": "stale"}}
	not behavior.quarantine with input as {"behavior": {"heartbeat": "stale"}}
}

test_healthy_and_unknown_heartbeats_pass if {
	count(behavior.deny) == 0 with input as {"behavior": {"heartbeat": "healthy"}}
	count(behavior.deny) == 0 with input as {"behavior": {"heartbeat": "unknown"}}
}

test_high_drift_denies_and_quarantines if {
	drift := {"behavior": {"drift": {"score": 0.85, "features": []}}}
	behavior.deny == {"behavior:drift"} with input as drift
	behavior.quarantine with input as drift
}

test_moderate_drift_steps_scopes_down if {
	drift := {"behavior": {"drift": {"score": 0.6, "features": []}}}
	count(behavior.deny) == 0 with input as drift
	behavior.step_down with input as drift
	behavior.kept_scopes({"flights.read", "flights.book"}) == {"flights.read"} with input as drift
}

test_low_drift_is_usual if {
	not behavior.step_down with input as {"behavior": {"drift": {"score": 0.1, "features": []}}}
}
