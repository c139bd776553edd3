# METADATA
# title: On-behalf-of only with a delegation grant
# description: |
#   Example. An agent acting for a user (input.mode == "obo_user") needs a grant in
#   data.delegations[<user>][<agent>] that names the route; otherwise
#   "example:obo_without_grant". The current actor is input.actors[0] (DESIGN.md §7).
#   The shipped agentgate.rebac module applies the same rule to the whole chain; this is
#   the one-hop version to start from.
package examples.obo_requires_grant

grant := data.delegations[input.subject.id][input.actors[0].sub]

granted if input.route.name in grant.routes

deny contains "example:obo_without_grant" if {
	input.mode == "obo_user"
	not granted
}
