package agentgate.rebac_test

import data.agentgate.rebac

delegations := {
	"alice": {"travel": {"routes": ["flights"], "scopes": ["flights.read", "flights.book"]}},
	"travel": {"pricing": {"routes": ["flights"], "scopes": ["flights.read"]}},
	"pricing": {"quotes": {"routes": ["*"]}},
	"bob": {"travel": {"routes": ["billing"]}},
}

chain(actors, mode) := {
	"subject": {"id": "alice"},
	"route": {"name": "flights"},
	"mode": mode,
	"actors": [{"sub": a} | some a in actors],
}

limits := {"max_depth": 2}

test_self_call_needs_no_delegation if {
	d := rebac.deny with input as chain([], "self") with data.delegations as delegations with data.rebac as limits
	count(d) == 0
}

test_one_hop_granted if {
	doc := chain(["travel"], "obo_user")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	count(d) == 0
	rebac.scope_limit == {"flights.read", "flights.book"} with input as doc with data.delegations as delegations
}

test_two_hops_granted_and_scopes_narrow_along_the_chain if {
	doc := chain(["pricing", "travel"], "obo_user")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	count(d) == 0
	rebac.scope_limit == {"flights.read"} with input as doc with data.delegations as delegations
}

test_reversed_chain_is_not_delegated if {
	doc := chain(["travel", "pricing"], "obo_user")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	d == {"rebac:not_delegated"}
}

test_unknown_actor_is_not_delegated if {
	doc := chain(["mallory"], "obo_user")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	d == {"rebac:not_delegated"}
}

test_grant_for_another_route_is_not_enough if {
	doc := object.union(chain(["travel"], "obo_user"), {"subject": {"id": "bob"}})
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	d == {"rebac:not_delegated"}
}

test_wildcard_route_grant if {
	doc := object.union(chain(["quotes"], "obo_agent"), {"subject": {"id": "pricing"}})
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	count(d) == 0
	not rebac.limits_scopes with input as doc with data.delegations as delegations
}

test_depth_limit if {
	doc := chain(["quotes", "pricing", "travel"], "obo_user")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	d == {"rebac:depth_exceeded"}
}

test_obo_mode_without_actors if {
	d := rebac.deny with input as chain([], "obo_user") with data.delegations as delegations with data.rebac as limits
	d == {"rebac:mode_mismatch"}
}

test_self_mode_with_actors if {
	doc := chain(["travel"], "self")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	d == {"rebac:mode_mismatch"}
}

test_default_max_depth_is_one if {
	doc := chain(["pricing", "travel"], "obo_user")
	ds := rebac.deny with input as doc with data.delegations as delegations with data.rebac as {}
	ds == {"rebac:depth_exceeded"}
}
