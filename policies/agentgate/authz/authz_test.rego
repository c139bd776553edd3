package agentgate.authz_test

import data.agentgate.authz

# End-to-end cases against policies/data.json (the demo data), one per module outcome.

# 2026-01-01T10:00:00Z and 23:00:00Z
ten_am := 1767261600000000000

eleven_pm := 1767308400000000000

travel_agent := {
	"request": {"method": "GET", "path": "/flights/42", "time_ns": ten_am},
	"source": {"segment": "agent"},
	"route": {"name": "flights", "segment": "booking", "tags": []},
	"subject": {"id": "spiffe://example.org/agent/travel", "type": "agent", "scopes": [], "roles": []},
	"actors": [],
	"mode": "self",
	"caller": "agent",
	"authn": {"methods": ["mtls"], "sender_constrained": "mtls"},
	"attestation": {"status": "affirming", "tv": {"executables": 2}},
}

alice_via_agents := object.union(travel_agent, {
	"subject": {"id": "alice", "type": "user", "scopes": ["flights.read", "flights.book"]},
	"actors": [{"sub": "spiffe://example.org/agent/pricing"}, {"sub": "spiffe://example.org/agent/travel"}],
	"mode": "obo_user",
	"authn": {"methods": ["mtls", "bearer"]},
})

partner := object.union(travel_agent, {
	"request": {"path": "/flights/"},
	"source": {"segment": "external"},
	"subject": {"id": "partner-agent-1", "roles": ["partner"]},
	"authn": {"methods": ["api_key"], "sender_constrained": "none"},
})

test_mtls_agent_allowed if {
	authz.decision == {
		"allow": true,
		"reason": "rbac:travel-agent",
		"scopes": ["flights.read"],
		"obligations": {},
	} with input as travel_agent
}

test_user_via_two_agents_gets_the_chain_scopes if {
	d := authz.decision with input as alice_via_agents
	d.allow == true
	d.reason == "rbac:traveller"
	d.scopes == ["flights.read"]
}

test_partner_allowed_read_only if {
	d := authz.decision with input as partner
	d.reason == "rbac:partner"
	d.scopes == ["flights.read"]
	denied := authz.decision with input as object.union(partner, {"request": {"method": "POST"}})
	denied == {"allow": false, "reason": "rbac:no_permission", "status": 403}
}

test_booking_not_delegated_to_the_chain if {
	doc := object.union(alice_via_agents, {"request": {"method": "POST", "path": "/flights/42/bookings"}})
	d := authz.decision with input as doc
	d.allow == false
	d.reason == "rebac:scope_not_delegated"
}

test_insufficient_scope if {
	doc := object.union(alice_via_agents, {
		"request": {"method": "POST", "path": "/flights/42/bookings"},
		"subject": {"scopes": ["flights.read"]},
		"actors": [{"sub": "spiffe://example.org/agent/travel"}],
	})
	authz.decision == {
		"allow": false,
		"reason": "rbac:insufficient_scope",
		"status": 403,
		"obligations": {"required_scopes": ["flights.book"]},
	} with input as doc
}

test_lateral_movement if {
	# an external caller may reach "booking" but not "finance", whatever its roles
	doc := object.union(partner, {"route": {"name": "reports", "segment": "finance"}})
	authz.decision == {
		"allow": false,
		"reason": "segments:lateral_movement",
		"status": 403,
		"obligations": {},
	} with input as doc
}

test_billing_requires_sender_constraint if {
	doc := object.union(travel_agent, {
		"request": {"path": "/billing/invoices", "method": "POST"},
		"route": {"name": "billing-legacy", "segment": "finance"},
		"subject": {"id": "spiffe://example.org/agent/billing"},
		"source": {"peer": {"spiffe_id": "spiffe://example.org/agent/billing"}},
	})
	allowed := authz.decision with input as doc
	allowed.reason == "rbac:billing-agent"
	unbound := authz.decision with input as object.union(doc, {"authn": {"sender_constrained": "none"}})
	unbound.reason == "abac:sender_constraint"
}

test_attestation_is_enforced_where_data_requires_it if {
	doc := object.union(travel_agent, {
		"request": {"path": "/billing/invoices", "method": "POST"},
		"route": {"name": "billing-legacy", "segment": "finance"},
		"subject": {"id": "spiffe://example.org/agent/billing"},
		"source": {"peer": {"spiffe_id": "spiffe://example.org/agent/billing"}},
		"attestation": {"status": "warning"},
	})
	required := object.union(data.abac, {"routes": {"billing-legacy": {"require_attestation": true}}})
	unattested := authz.decision with input as doc with data.abac as required
	unattested.reason == "abac:attestation"
}

test_internal_time_window_is_not_cached if {
	doc := object.union(travel_agent, {
		"request": {"path": "/internal/flags", "method": "PUT"},
		"source": {"segment": "service"},
		"route": {"name": "internal", "segment": "internal"},
		"subject": {"id": "spiffe://example.org/service/scheduler", "type": "service"},
	})
	day := authz.decision with input as doc
	day == {"allow": true, "reason": "rbac:operator", "scopes": ["internal.admin"], "obligations": {"no_cache": true}}
	night := authz.decision with input as object.union(doc, {"request": {"time_ns": eleven_pm}})
	night == {"allow": false, "reason": "abac:time_window", "status": 403, "obligations": {"no_cache": true}}
}

test_unauthenticated_denied if {
	doc := object.union(travel_agent, {"subject": null, "caller": null, "mode": null})
	d := authz.decision with input as doc
	d.allow == false
	d.reason == "abac:caller_type"
}

test_unauthenticated_public_route_allowed if {
	doc := object.union(travel_agent, {
		"subject": null,
		"route": {"name": "status", "segment": "public", "tags": ["public"]},
		"mode": null,
	})
	authz.decision == {"allow": true, "reason": "public", "scopes": [], "obligations": {}} with input as doc
}

test_unauthenticated_non_public_route if {
	doc := object.union(travel_agent, {"subject": null, "route": {"name": "status", "segment": "booking"}, "mode": null})
	d := authz.decision with input as doc
	d.reason == "authn:unauthenticated"
}

test_behavior_anomaly_denies if {
	doc := object.union(travel_agent, {"behavior": {"requests": 10000}})
	d := authz.decision with input as doc
	d.reason == "behavior:request_flood"
}

test_no_role_is_no_permission if {
	doc := object.union(travel_agent, {"subject": {"id": "spiffe://example.org/agent/unknown"}})
	authz.decision == {"allow": false, "reason": "rbac:no_permission", "status": 403} with input as doc
}

exchange_input(client) := {
	"action": "token.exchange",
	"request": {"method": "POST", "path": "/token", "headers": {}, "query": {}},
	"source": {"segment": "service", "peer": {"spiffe_id": client}},
	"route": {"name": "token-service", "segment": "service", "tags": ["token-service"]},
	"subject": {"id": "alice", "type": "user", "scopes": ["flights.read", "flights.book"]},
	"actors": [],
	"authn": {"methods": ["txn_token"]},
	"exchange": {
		"kind": "replacement",
		"client": client,
		"requested_scopes": ["flights.read"],
		"current_scopes": ["flights.book", "flights.read"],
	},
}

test_token_exchange_allowed_for_domain_workload if {
	d := authz.decision with input as exchange_input("spiffe://example.org/service/booking")
	d.allow == true
	d.scopes == ["flights.read"]
}

test_token_exchange_denied_for_foreign_workload if {
	d := authz.decision with input as exchange_input("spiffe://evil.org/service/x")
	d.allow == false
	d.reason == "exchange:client_not_allowed"
}

# An east-west hop (mtls + txn_token) through the shipped data: data.txn.routes.internal
# accepts transactions that started on route flights only.
ops_east_west := {
	"request": {"method": "GET", "path": "/internal/jobs", "time_ns": ten_am},
	"source": {"segment": "service"},
	"route": {"name": "internal", "segment": "internal", "tags": []},
	"subject": {"id": "ops", "type": "user", "scopes": ["internal.admin"], "roles": []},
	"actors": [{"sub": "spiffe://example.org/service/scheduler"}],
	"mode": "obo_user",
	"caller": "agent",
	"authn": {"methods": ["mtls", "txn_token"], "sender_constrained": "none"},
	"txn": {
		"id": "0b6c5d2e-1111-4222-8333-944455556666",
		"scope": ["internal.admin"],
		"tctx": {"route": "flights"},
		"rctx": {"a2a": {"hop": 1}},
	},
}

test_east_west_hop_from_allowed_origin if {
	d := authz.decision with input as ops_east_west
		with data.delegations.ops as {"spiffe://example.org/service/scheduler": {"routes": ["internal"]}}
	d.allow == true
}

test_east_west_hop_from_other_origin_is_denied if {
	doc := json.patch(ops_east_west, [{"op": "replace", "path": "/txn/tctx/route", "value": "billing-legacy"}])
	d := authz.decision with input as doc
		with data.delegations.ops as {"spiffe://example.org/service/scheduler": {"routes": ["internal"]}}
	d.allow == false
	d.reason == "txn:origin_not_allowed"
}

# POST /agents/credentials (credential.issue) against the demo data.
travel := "spiffe://example.org/agent/travel"

issue_input(peer, scope, depth) := {
	"action": "credential.issue",
	"request": {"method": "POST", "path": "/agents/credentials", "time_ns": ten_am},
	"source": {"segment": "agent", "peer": {"spiffe_id": peer}},
	"route": {"name": "agent-credentials", "segment": "booking", "tags": []},
	"subject": {"id": "alice", "type": "user", "scopes": ["flights.read"]},
	"actors": [],
	"mode": "self",
	"caller": "agent",
	"authn": {"methods": ["mtls", "bearer"]},
	"provenance": {},
	"credential": {
		"agent": peer,
		"genesis": {"type": "user", "sub": "alice"},
		"scope": scope,
		"ttl_s": 300,
		"depth": depth,
	},
}

issue_cases := {
	"domain agent, allowlisted scopes": {
		"input": issue_input(travel, ["flights.read", "flights.book"], 4),
		"want": {"allow": true, "reason": "credential_issue", "scopes": ["flights.read", "flights.book"]},
	},
	"scope outside the allowlist": {
		"input": issue_input(travel, ["flights.read", "admin"], 4),
		"want": {"allow": false, "reason": "credential:scope_not_allowed", "status": 403, "obligations": {}},
	},
	"foreign trust domain": {
		"input": issue_input("spiffe://evil.org/agent/x", ["flights.read"], 1),
		"want": {"allow": false, "reason": "credential:scope_not_allowed", "status": 403, "obligations": {}},
	},
	"deeper than data.provenance.max_depth": {
		"input": issue_input(travel, ["flights.read"], 5),
		"want": {"allow": false, "reason": "credential:too_deep", "status": 403, "obligations": {}},
	},
	"unauthenticated caller": {
		"input": object.union(issue_input(travel, ["flights.read"], 1), {"subject": null}),
		"want": {"allow": false, "reason": "authn:unauthenticated", "status": 403, "obligations": {}},
	},
}

test_credential_issue[name] if {
	some name, c in issue_cases
	d := authz.decision with input as c.input
	d == c.want
}

# A request made with a derived agent credential, as the gateway builds it: the genesis user
# is the subject, the chain's agents are the actors (leaf first), the leaf's scope is the
# subject's; no client certificate (an ephemeral sub-agent has none).
flight := "spiffe://example.org/agent/travel/flight"

pay := "spiffe://example.org/agent/travel/flight/pay"

link(agent, cid) := {"agent": agent, "credential_id": cid, "scope": ["flights.read"], "depth": 0}

credential_request(route_tags, genesis_type, agents, leaf_scope) := {
	"request": {"method": "GET", "path": "/flights/42", "time_ns": ten_am},
	"source": {"segment": "agent", "peer": {}},
	"route": {"name": "flights", "segment": "booking", "tags": route_tags},
	"subject": {"id": "alice", "type": "user", "scopes": leaf_scope},
	"actors": [{"sub": agents[(count(agents) - 1) - i]} | some i, _ in agents],
	"mode": "obo_user",
	"caller": "agent",
	"authn": {"methods": ["agent_credential"], "sender_constrained": "none"},
	"provenance": {
		"genesis": {"type": genesis_type, "sub": "alice"},
		"issuer": "spiffe://example.org/gateway",
		"chain": [link(agent, sprintf("cid-%d", [i])) | some i, agent in agents],
		"depth": count(agents) - 1,
		"credential_id": sprintf("cid-%d", [count(agents) - 1]),
	},
}

read := ["flights.read"]

provenance_cases := {
	"root agent": {"input": credential_request([], "user", [travel], read), "reason": "rbac:traveller"},
	"sub-agent of a sub-agent (no data.delegations, no peer)": {
		"input": credential_request([], "user", [travel, flight, pay], read),
		"reason": "rbac:traveller",
	},
	"too deep": {
		"input": credential_request([], "user", [travel, flight, pay, "a", "b", "c"], read),
		"reason": "provenance:too_deep",
	},
	"payments route started by a task": {
		"input": credential_request(["payments"], "task", [travel, flight], read),
		"reason": "provenance:genesis_not_human",
	},
	"payments route started by a user": {
		"input": credential_request(["payments"], "user", [travel, flight], read),
		"reason": "rbac:traveller",
	},
	"leaf scope lacks the route's": {
		"input": credential_request([], "user", [travel, flight], ["billing.read"]),
		"reason": "rbac:insufficient_scope",
	},
	"empty leaf scope grants nothing": {
		"input": credential_request([], "user", [travel, flight], []),
		"reason": "rbac:insufficient_scope",
	},
}

test_provenance[name] if {
	some name, c in provenance_cases
	d := authz.decision with input as c.input
	d.reason == c.reason
}

# Without input.provenance the same act chain is still held to data.delegations.
test_act_chain_without_credential_still_needs_grants if {
	doc := json.patch(credential_request([], "user", [travel, flight], read), [
		{"op": "replace", "path": "/provenance", "value": {}},
		{"op": "replace", "path": "/authn/methods", "value": ["bearer"]},
	])
	d := authz.decision with input as doc
	d.reason == "rebac:not_delegated"
}
