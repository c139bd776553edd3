# METADATA
# title: Agent-credential provenance
# description: |
#   Two kinds of input, both from the agent-credential feature (issue 16):
#   - A request authenticated with an agent credential carries input.provenance =
#     {genesis: {type, sub, iss?}, issuer, chain: [{agent, credential_id, scope, iat, exp,
#     depth, ...}] (root first), depth, credential_id}; {} on every other request. The
#     gateway has already verified the chain (MACs, narrowing, expiry, revocation, request
#     signature); these rules are the deployment's own limits on top:
#     - provenance:too_deep: more than data.provenance.max_depth delegations below the root
#       (default 4; the gateway's agent_credentials.max_depth is the hard limit);
#     - provenance:genesis_not_human: a route tagged with one of
#       data.provenance.human_genesis_tags (default ["payments"]) needs a user genesis,
#       not a task that an agent started alone;
#     - provenance:issuer_not_trusted: the credential was minted by an issuer that
#       data.provenance.issuers does not list (no list: not checked);
#     The leaf's scope is input.subject.scopes and agent_credential is one of
#     data.rbac.scoped_methods, so RBAC requires one of its scopes as for a bearer token
#     (an empty scope grants nothing). agentgate.rebac does not apply its act-chain rules
#     (data.delegations grants, max_depth, peer binding) to such a chain: every link of it
#     is a signed, narrowing delegation the gateway verified, and the holder proved
#     possession by signing the request, so there is no mTLS peer to bind to.
#   - The genesis call (POST /agents/credentials) has input.action "credential.issue" and
#     input.credential = {agent, genesis, scope: [..], ttl_s, depth, routes?, segments?,
#     tools?, methods?}. authz.rego allows it (reason credential_issue) unless one of:
#     - credential:malformed: input.credential.scope is not a list of strings;
#     - credential:agent_not_identified: the caller presented no SPIFFE ID
#       (input.source.peer.spiffe_id): only an mTLS-authenticated workload gets a root;
#     - credential:agent_mismatch: input.credential.agent is not that SPIFFE ID;
#     - credential:too_deep: input.credential.depth > max_depth;
#     - credential:ttl_too_long: input.credential.ttl_s > data.provenance.max_ttl_s (when set);
#     - credential:scope_not_allowed: a requested scope is in no allowlist of
#       data.provenance.agents whose key (a SPIFFE ID prefix) the agent starts with; an
#       agent no prefix matches gets nothing.
package agentgate.provenance

# ---------------------------------------------------------------- deny reasons

# Requests that presented an agent credential.

deny contains "provenance:too_deep" if {
	credentialed
	not chain_depth_within
}

deny contains "provenance:genesis_not_human" if {
	credentialed
	requires_human_genesis
	not human_genesis
}

deny contains "provenance:issuer_not_trusted" if {
	credentialed
	data.provenance.issuers
	not issuer_trusted
}

# The genesis call (credential.issue).

deny contains "credential:malformed" if {
	issuing
	not well_formed
}

deny contains "credential:agent_not_identified" if {
	issuing
	not peer_identified
}

deny contains "credential:agent_mismatch" if {
	issuing
	peer_identified
	not agent_is_peer
}

deny contains "credential:too_deep" if {
	issuing
	not credential_depth_within
}

deny contains "credential:ttl_too_long" if {
	issuing
	data.provenance.max_ttl_s
	not ttl_within
}

deny contains "credential:scope_not_allowed" if {
	issuing
	some scope in input.credential.scope
	not scope_allowed(scope)
}

# ---------------------------------------------------------------- helpers

credentialed if input.provenance.credential_id

issuing if input.action == "credential.issue"

default max_depth := 4

max_depth := data.provenance.max_depth

default human_genesis_tags := ["payments"]

human_genesis_tags := data.provenance.human_genesis_tags

# Helper rules instead of `not x in coll`: a missing field must deny in both engines
# (policies/README.md, "Writing policies that both engines run alike", item 1).
requires_human_genesis if {
	some tag in input.route.tags
	tag in human_genesis_tags
}

human_genesis if input.provenance.genesis.type == "user"

# A missing or non-numeric depth is not within the limit (fail closed).
chain_depth_within if depth_within(input.provenance.depth)

credential_depth_within if depth_within(input.credential.depth)

depth_within(depth) if {
	is_number(depth)
	depth <= max_depth
}

issuer_trusted if input.provenance.issuer in data.provenance.issuers

peer := input.source.peer.spiffe_id

# The decision's scopes are input.credential.scope: it must be there, a list of strings.
well_formed if {
	is_array(input.credential.scope)
	every scope in input.credential.scope {
		is_string(scope)
	}
}

peer_identified if startswith(peer, "spiffe://")

agent_is_peer if input.credential.agent == peer

ttl_within if input.credential.ttl_s <= data.provenance.max_ttl_s

# Scopes the allowlists of every prefix the agent matches grant it.
allowed_scopes contains scope if {
	some prefix, scopes in data.provenance.agents
	startswith(input.credential.agent, prefix)
	some scope in scopes
}

scope_allowed(scope) if scope in allowed_scopes
