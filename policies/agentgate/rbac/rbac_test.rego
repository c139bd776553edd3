package agentgate.rbac_test

import data.agentgate.rbac

fixture := {
	"roles": {
		"reader": [{"methods": ["GET"], "paths": ["/flights/**"], "scopes": ["flights.read"]}],
		"booker": [{"methods": ["POST"], "paths": ["/flights/*/bookings"], "scopes": ["flights.book"]}],
		"admin": [{"methods": ["*"], "paths": ["/internal/**"]}],
		"auditor": [{"methods": ["GET"], "paths": ["/flights/**"], "scopes": ["flights.read", "audit"]}],
	},
	"subjects": {"alice": ["reader", "booker"], "root": ["admin"]},
	"scoped_methods": ["bearer", "txn_token"],
}

request(method, path, subject) := {
	"request": {"method": method, "path": path},
	"subject": subject,
	"authn": {"methods": ["bearer"]},
}

alice(scopes) := {"id": "alice", "roles": [], "scopes": scopes}

test_roles_from_data_and_credential if {
	roles := rbac.roles with input.subject as {"id": "alice", "roles": ["auditor"]} with data.rbac as fixture
	roles == {"reader", "booker", "auditor"}
}

test_get_allowed_with_scope if {
	doc := request("GET", "/flights/42", alice(["flights.read"]))
	rbac.allow with input as doc with data.rbac as fixture
	rbac.reason == "rbac:reader" with input as doc with data.rbac as fixture
	rbac.scopes == {"flights.read"} with input as doc with data.rbac as fixture
}

test_post_needs_book_scope if {
	doc := request("POST", "/flights/42/bookings", alice(["flights.read"]))
	not rbac.allow with input as doc with data.rbac as fixture
	rbac.insufficient_scope with input as doc with data.rbac as fixture
	rbac.required_scopes == {"flights.book"} with input as doc with data.rbac as fixture
}

test_wrong_method_is_no_permission_not_insufficient_scope if {
	doc := request("DELETE", "/flights/42", alice(["flights.read"]))
	not rbac.allow with input as doc with data.rbac as fixture
	not rbac.insufficient_scope with input as doc with data.rbac as fixture
}

test_single_star_stays_in_one_segment if {
	doc := request("POST", "/flights/42/bookings/7", alice(["flights.book"]))
	not rbac.allow with input as doc with data.rbac as fixture
}

test_double_star_crosses_segments if {
	rbac.allow with input as request("GET", "/flights/a/b/c", alice(["flights.read"])) with data.rbac as fixture
}

test_prefix_without_slash_does_not_match if {
	not rbac.allow with input as request("GET", "/flightsX/1", alice(["flights.read"])) with data.rbac as fixture
}

test_any_method_and_no_scope_requirement if {
	doc := request("PATCH", "/internal/flags", {"id": "root", "roles": [], "scopes": []})
	rbac.allow with input as doc with data.rbac as fixture
	rbac.scopes == set() with input as doc with data.rbac as fixture
}

test_scope_free_credential_needs_no_scope if {
	doc := {
		"request": {"method": "GET", "path": "/flights/1"},
		"subject": {"id": "partner-1", "roles": ["reader"], "scopes": []},
		"authn": {"methods": ["api_key"]},
	}
	rbac.allow with input as doc with data.rbac as fixture
	rbac.scopes == {"flights.read"} with input as doc with data.rbac as fixture
}

test_token_method_without_scopes_is_insufficient if {
	doc := request("GET", "/flights/1", alice([]))
	not rbac.allow with input as doc with data.rbac as fixture
	rbac.insufficient_scope with input as doc with data.rbac as fixture
}

test_reason_is_lexically_first_role if {
	doc := request("GET", "/flights/1", {"id": "alice", "roles": ["auditor"], "scopes": ["flights.read"]})
	rbac.reason == "rbac:auditor" with input as doc with data.rbac as fixture
}

test_unauthenticated_has_no_roles if {
	doc := {"request": {"method": "GET", "path": "/flights/1"}, "subject": null, "authn": {"methods": []}}
	not rbac.allow with input as doc with data.rbac as fixture
	count(rbac.roles) == 0 with input as doc with data.rbac as fixture
}
