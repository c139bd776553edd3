package examples.obo_requires_grant_test

import data.examples.obo_requires_grant

grants := {"alice": {"spiffe://example.org/agent/travel": {"routes": ["flights"]}}}

obo(actor, route) := {
	"mode": "obo_user",
	"subject": {"id": "alice"},
	"actors": [{"sub": actor}],
	"route": {"name": route},
}

test_granted_agent_is_allowed if {
	count(obo_requires_grant.deny) == 0 with input as obo("spiffe://example.org/agent/travel", "flights")
		with data.delegations as grants
}

denied := {"example:obo_without_grant"}

test_other_route_is_denied if {
	request := obo("spiffe://example.org/agent/travel", "billing-legacy")
	obo_requires_grant.deny == denied with input as request with data.delegations as grants
}

test_agent_without_grant_is_denied if {
	request := obo("spiffe://example.org/agent/evil", "flights")
	obo_requires_grant.deny == denied with input as request with data.delegations as grants
}

test_self_mode_is_not_affected if {
	count(obo_requires_grant.deny) == 0 with input as {"mode": "self", "subject": {"id": "bot"}, "actors": []}
		with data.delegations as grants
}
