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

peer_doc(actor, peer) := {
	"subject": {"id": "alice", "type": "user"},
	"actors": [{"sub": actor}],
	"mode": "obo_user",
	"source": {"peer": {"spiffe_id": peer}},
	"route": {"name": "flights"},
}

test_peer_must_be_the_acting_agent if {
	doc := peer_doc("spiffe://example.org/agent/travel", "spiffe://example.org/agent/rogue")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	"rebac:peer_mismatch" in d
}

test_peer_that_is_the_acting_agent_passes if {
	doc := peer_doc("spiffe://example.org/agent/travel", "spiffe://example.org/agent/travel")
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	not "rebac:peer_mismatch" in d
}

test_agent_subject_must_match_its_certificate if {
	doc := {
		"subject": {"id": "spiffe://example.org/agent/travel", "type": "agent"},
		"actors": [],
		"mode": "self",
		"source": {"peer": {"spiffe_id": "spiffe://example.org/agent/rogue"}},
		"route": {"name": "flights"},
	}
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	"rebac:peer_mismatch" in d
}

test_no_certificate_no_peer_check if {
	doc := object.remove(peer_doc("spiffe://example.org/agent/travel", ""), ["source"])
	d := rebac.deny with input as doc with data.delegations as delegations with data.rebac as limits
	not "rebac:peer_mismatch" in d
}
