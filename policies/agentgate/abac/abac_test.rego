package agentgate.abac_test

import data.agentgate.abac

fixture := {"routes": {
	"billing": {
		"callers": ["agent"],
		"subject_types": ["agent"],
		"require_sender_constraint": true,
		"require_attestation": true,
	},
	"internal": {"hours_utc": [6, 22]},
}}

# 2026-01-01T10:00:00Z and 23:00:00Z
ten_am := 1767261600000000000

eleven_pm := 1767308400000000000

good := {
	"route": {"name": "billing"},
	"caller": "agent",
	"subject": {"type": "agent"},
	"authn": {"sender_constrained": "mtls"},
	"attestation": {"status": "affirming", "tv": {"executables": 2, "hardware": 0}},
	"request": {"time_ns": ten_am},
}

with_patch(patch) := object.union(good, patch)

test_all_requirements_met if {
	count(abac.deny) == 0 with input as good with data.abac as fixture
}

test_route_without_rules_has_no_requirements if {
	count(abac.deny) == 0 with input as {"route": {"name": "other"}} with data.abac as fixture
	not abac.time_dependent with input as {"route": {"name": "other"}} with data.abac as fixture
}

test_caller_type if {
	abac.deny == {"abac:caller_type"} with input as with_patch({"caller": "human_browser"}) with data.abac as fixture
}

test_missing_caller_denies if {
	doc := json.remove(good, ["caller"])
	abac.deny == {"abac:caller_type"} with input as doc with data.abac as fixture
}

test_subject_type if {
	abac.deny == {"abac:subject_type"} with input as with_patch({"subject": {"type": "user"}}) with data.abac as fixture
}

test_sender_constraint_required if {
	doc := with_patch({"authn": {"sender_constrained": "none"}})
	abac.deny == {"abac:sender_constraint"} with input as doc with data.abac as fixture
	count(abac.deny) == 0 with input as with_patch({"authn": {"sender_constrained": "dpop"}}) with data.abac as fixture
}

test_attestation_must_be_affirming if {
	doc := with_patch({"attestation": {"status": "warning"}})
	abac.deny == {"abac:attestation"} with input as doc with data.abac as fixture
}

test_attestation_missing_denies if {
	doc := object.union(object.remove(good, {"attestation"}), {"attestation": {}})
	abac.deny == {"abac:attestation"} with input as doc with data.abac as fixture
}

test_contraindicated_claim_denies_despite_affirming_status if {
	doc := with_patch({"attestation": {"tv": {"executables": 96}}})
	abac.deny == {"abac:attestation"} with input as doc with data.abac as fixture
}

test_reserved_claim_value_is_not_affirming if {
	doc := with_patch({"attestation": {"tv": {"executables": -1}}})
	abac.deny == {"abac:attestation"} with input as doc with data.abac as fixture
}

test_time_window_inside if {
	doc := {"route": {"name": "internal"}, "request": {"time_ns": ten_am}}
	count(abac.deny) == 0 with input as doc with data.abac as fixture
	abac.time_dependent with input as doc with data.abac as fixture
}

test_time_window_outside if {
	doc := {"route": {"name": "internal"}, "request": {"time_ns": eleven_pm}}
	abac.deny == {"abac:time_window"} with input as doc with data.abac as fixture
}

test_time_window_without_time_denies if {
	abac.deny == {"abac:time_window"} with input as {"route": {"name": "internal"}} with data.abac as fixture
}
