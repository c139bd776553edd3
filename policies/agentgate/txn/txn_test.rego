package agentgate.txn_test

import data.agentgate.txn

txn_data := {"max_hops": 4, "routes": {"internal": {"origins": ["flights"]}, "open": {"origins": ["*"]}}}

rbac_data := {
	"roles": {"traveller": [{"methods": ["GET"], "paths": ["/internal/**"], "scopes": ["flights.read"]}]},
	"subjects": {},
	"scoped_methods": ["txn_token"],
}

# An east-west hop on `route` of a transaction that started on `origin`.
hop(route, origin, scope, hop_number) := {
	"request": {"method": "GET", "path": "/internal/bookings/42"},
	"route": {"name": route},
	"subject": {"id": "alice", "roles": ["traveller"], "scopes": ["flights.read"]},
	"authn": {"methods": ["mtls", "txn_token"]},
	"txn": {
		"id": "0b6c5d2e-1111-4222-8333-944455556666",
		"scope": scope,
		"tctx": {"route": origin},
		"rctx": {"a2a": {"hop": hop_number}},
	},
}

test_allowed_origin if {
	d := txn.deny with input as hop("internal", "flights", ["flights.read"], 1)
		with data.txn as txn_data
		with data.rbac as rbac_data
	count(d) == 0
}

test_other_origin_denied if {
	d := txn.deny with input as hop("internal", "partner-feed", ["flights.read"], 1)
		with data.txn as txn_data
		with data.rbac as rbac_data
	d == {"txn:origin_not_allowed"}
}

test_missing_origin_denied if {
	doc := json.remove(hop("internal", "flights", ["flights.read"], 1), ["txn/tctx"])
	d := txn.deny with input as doc with data.txn as txn_data with data.rbac as rbac_data
	d == {"txn:origin_not_allowed"}
}

test_wildcard_origin if {
	d := txn.deny with input as hop("open", "anything", ["flights.read"], 1)
		with data.txn as txn_data
		with data.rbac as rbac_data
	count(d) == 0
}

test_route_without_rules_accepts_any_origin if {
	d := txn.deny with input as hop("elsewhere", "anything", ["flights.read"], 1)
		with data.txn as txn_data
		with data.rbac as rbac_data
	count(d) == 0
}

test_too_many_hops if {
	d := txn.deny with input as hop("internal", "flights", ["flights.read"], 4)
		with data.txn as txn_data
		with data.rbac as rbac_data
	d == {"txn:too_many_hops"}
	ok := txn.deny with input as hop("internal", "flights", ["flights.read"], 3)
		with data.txn as txn_data
		with data.rbac as rbac_data
	count(ok) == 0
}

test_default_max_hops if {
	d := txn.deny with input as hop("x", "flights", ["flights.read"], 8)
		with data.txn as {}
		with data.rbac as rbac_data
	d == {"txn:too_many_hops"}
}

# The RBAC grant confers flights.read; the transaction was only granted billing.read.
test_scope_outside_transaction if {
	d := txn.deny with input as hop("internal", "flights", ["billing.read"], 1)
		with data.txn as txn_data
		with data.rbac as rbac_data
	d == {"txn:scope_not_in_transaction"}
}

test_missing_transaction_scope_denies if {
	doc := json.remove(hop("internal", "flights", ["flights.read"], 1), ["txn/scope"])
	d := txn.deny with input as doc with data.txn as txn_data with data.rbac as rbac_data
	d == {"txn:scope_not_in_transaction"}
}

test_not_east_west if {
	doc := object.union(object.remove(hop("internal", "partner-feed", [], 9), ["txn"]), {"txn": {}})
	d := txn.deny with input as doc with data.txn as txn_data with data.rbac as rbac_data
	count(d) == 0
}
