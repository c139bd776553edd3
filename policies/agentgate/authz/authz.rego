# METADATA
# title: agentgate authorization decision
# description: |
#   The one document the gateway queries (DESIGN.md §7): data.agentgate.authz.decision.
#   Any deny reason from abac, behavior, mcp, provenance, rebac, segments or txn wins (the
#   lexically first is reported); then a tool (skill) whose scopes the subject does not all
#   hold is insufficient_scope (agentgate.mcp); otherwise RBAC decides. An allow carries
#   the scopes the RBAC grant confers, narrowed by the delegation chain; the gateway
#   intersects them with the subject's own scopes.
#   obligations.no_cache marks decisions that depend on the clock.
package agentgate.authz

import data.agentgate.abac
import data.agentgate.behavior
import data.agentgate.mcp
import data.agentgate.provenance
import data.agentgate.rbac
import data.agentgate.rebac
import data.agentgate.segments
import data.agentgate.txn

# METADATA
# entrypoint: true
default decision := {"allow": false, "reason": "rbac:no_permission", "status": 403}

decision := denied(min(deny_reasons)) if {
	count(deny_reasons) > 0
} else := exchange_allowed if {
	exchange
} else := credential_issue_allowed if {
	provenance.issuing
} else := {"allow": true, "reason": "public", "scopes": [], "obligations": obligations} if {
	public_route
	not authenticated
} else := tool_insufficient_scope if {
	mcp.insufficient_scope
} else := allowed if {
	rbac.allow
} else := insufficient_scope if {
	rbac.insufficient_scope
}

public_route if "public" in input.route.tags

# POST /token (the Transaction Token Service): the gateway has already checked that the
# requester is an allowlisted workload and that the scope only narrows; the policy decides
# whether this workload may obtain a token for this subject at all.
exchange if input.action == "token.exchange"

exchange_client_allowed if {
	some prefix in data.token_exchange.clients
	startswith(input.exchange.client, prefix)
}

exchange_allowed := {
	"allow": true,
	"reason": "token_exchange",
	"scopes": input.exchange.requested_scopes,
} if {
	exchange_client_allowed
	authenticated
}

# POST /agents/credentials (genesis of an agent credential): the gateway has already
# authenticated the agent and the user it acts for and checked the request's shape; the
# policy decides whether this agent may hold these scopes, this long and this deep
# (agentgate.provenance's credential:* reasons). The scopes granted are the requested ones.
credential_issue_allowed := {
	"allow": true,
	"reason": "credential_issue",
	"scopes": input.credential.scope,
} if {
	authenticated
}

authenticated if input.subject.id

deny_reasons contains "exchange:client_not_allowed" if {
	exchange
	not exchange_client_allowed
}

deny_reasons contains reason if some reason in abac.deny

deny_reasons contains reason if some reason in behavior.deny

deny_reasons contains reason if some reason in mcp.deny

deny_reasons contains reason if some reason in provenance.deny

deny_reasons contains reason if some reason in rebac.deny

deny_reasons contains reason if some reason in segments.deny

deny_reasons contains reason if some reason in txn.deny

# The delegation chain allows none of the scopes the RBAC grant confers.
deny_reasons contains "rebac:scope_not_delegated" if {
	rebac.limits_scopes
	count(rbac.scopes) > 0
	count(rbac.scopes & rebac.scope_limit) == 0
}

deny_reasons contains "authn:unauthenticated" if {
	not authenticated
	not public_route
}

default obligations := {}

obligations := {"no_cache": true} if {
	abac.time_dependent
	not behavior.quarantine
}

# agentgate.behavior: the agent's heartbeat disagrees or it drifts far from its baseline;
# the gateway moves it to the quarantine segment on every node.
obligations := {"quarantine": true} if {
	behavior.quarantine
	not abac.time_dependent
}

obligations := {"no_cache": true, "quarantine": true} if {
	behavior.quarantine
	abac.time_dependent
}

denied(reason) := {"allow": false, "reason": reason, "status": 403, "obligations": obligations}

allowed := {
	"allow": true,
	"reason": rbac.reason,
	"scopes": sort(allowed_scopes),
	"obligations": obligations,
}

# A tools/call (skill) allowed by agentgate.mcp also grants the tool's scopes (the subject
# holds them all, or the decision is insufficient_scope), narrowed by the delegation chain:
# the Txn-Token of a book_flight call carries flights.book.
all_scopes := granted_scopes | tool_scopes if {
	tool_scopes
} else := granted_scopes

# A drifting agent keeps only its read scopes (agentgate.behavior.step_down).
allowed_scopes := behavior.kept_scopes(all_scopes) if behavior.step_down

allowed_scopes := all_scopes if not behavior.step_down

tool_scopes := mcp.required_scopes if not rebac.limits_scopes

tool_scopes := mcp.required_scopes & rebac.scope_limit if rebac.limits_scopes

granted_scopes := rbac.scopes & rebac.scope_limit if {
	rebac.limits_scopes
} else := rbac.scopes

insufficient_scope := {
	"allow": false,
	"reason": "rbac:insufficient_scope",
	"status": 403,
	"obligations": object.union(obligations, {"required_scopes": sort(rbac.required_scopes)}),
}

tool_insufficient_scope := {
	"allow": false,
	"reason": "mcp:insufficient_scope",
	"status": 403,
	"obligations": object.union(obligations, {"required_scopes": sort(mcp.required_scopes)}),
}
