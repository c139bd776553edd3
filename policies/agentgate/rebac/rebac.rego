# METADATA
# title: Relationship-based access control (delegation)
# description: |
#   input.actors is the RFC 8693 "act" chain, outermost (current) actor first. Actor i acts
#   for chain[i + 1]: the next actor, or the subject for the last one. Each link needs a
#   grant data.delegations[principal][actor] whose routes include this route ("*" = all);
#   a grant's optional scopes narrow what the whole chain may do. The chain may be at most
#   data.rebac.max_depth long, and the mode must agree with it.
#   An agent-credential chain (input.provenance.credential_id set) is exempt from the grant,
#   depth and peer-binding rules: its links are signed, narrowing delegations the gateway
#   verified and the holder proved possession by signing the request; agentgate.provenance
#   limits it instead (depth, human genesis, issuer).
package agentgate.rebac

max_depth := object.get(data.rebac, "max_depth", 1)

depth := count(input.actors)

chain := array.concat([actor.sub | some actor in input.actors], [input.subject.id])

# The grant covering link i, when data holds one for this route.
link_grants[i] := grant if {
	some i, actor in input.actors
	grant := data.delegations[chain[i + 1]][actor.sub]
	route_granted(grant.routes, input.route.name)
}

route_granted(routes, _) if "*" in routes

route_granted(routes, route) if route in routes

deny contains "rebac:depth_exceeded" if {
	not credential_chain
	depth > max_depth
}

deny contains "rebac:not_delegated" if {
	not credential_chain
	some i, _ in input.actors
	not link_grants[i]
}

deny contains "rebac:mode_mismatch" if {
	input.mode in {"obo_user", "obo_agent"}
	depth == 0
}

deny contains "rebac:mode_mismatch" if {
	input.mode == "self"
	depth > 0
}

# The workload on this connection must be the one the credential says is acting: the
# current actor of the chain, or an agent subject acting for itself. Only SPIFFE IDs are
# compared, and only when the caller presented a certificate; otherwise a stolen, unbound
# token naming another agent could be replayed by any agent with a certificate.
deny contains "rebac:peer_mismatch" if {
	not credential_chain
	startswith(acting_id, "spiffe://")
	acting_id != input.source.peer.spiffe_id
}

# Scopes every link of the chain allows; undefined when no grant narrows scopes.
scope_limit := intersection({{scope | some scope in grant.scopes} |
	some grant in link_grants
	grant.scopes
})

limits_scopes if count({grant | some grant in link_grants; grant.scopes}) > 0

acting_id := input.actors[0].sub

acting_id := input.subject.id if {
	count(input.actors) == 0
	input.subject.type == "agent"
}

credential_chain if input.provenance.credential_id
