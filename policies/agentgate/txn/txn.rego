# METADATA
# title: Transactions (east-west hops)
# description: |
#   input.txn is the verified transaction of the Txn-Token an east-west request presented
#   ({} on every other request; see gateway/authz/input.py). For such a hop:
#   - the transaction must have started on a route this route accepts transactions from:
#     data.txn.routes[route name].origins lists the tctx.route values ("*" = any); a route
#     without an entry accepts every origin;
#   - a transaction crosses at most data.txn.max_hops hops (rctx.a2a.hop counts them;
#     default 8);
#   - the scopes the RBAC grant for this hop confers must meet the transaction's scope: a
#     hop never does what the transaction was not granted (defence in depth next to RBAC's
#     own scope check on input.subject.scopes).
package agentgate.txn

import data.agentgate.rbac

east_west if input.txn.id

default max_hops := 8

max_hops := data.txn.max_hops

rules := object.get(data.txn.routes, input.route.name, {})

deny contains "txn:origin_not_allowed" if {
	east_west
	rules.origins
	not origin_allowed
}

deny contains "txn:too_many_hops" if {
	east_west
	input.txn.rctx.a2a.hop >= max_hops
}

deny contains "txn:scope_not_in_transaction" if {
	east_west
	count(rbac.scopes) > 0
	count(rbac.scopes & held_scopes) == 0
}

# Helper rules instead of `not x in coll`: a missing field must deny in both engines
# (policies/README.md, "Writing policies that both engines run alike", item 1).
origin_allowed if "*" in rules.origins

origin_allowed if input.txn.tctx.route in rules.origins

held_scopes contains scope if some scope in input.txn.scope
