# METADATA
# title: Delegation depth limit
# description: |
#   Example. At most max_depth agents may stand between the subject and the gateway
#   (input.actors, current actor first); a deeper chain is denied with
#   "example:delegation_too_deep". The shipped agentgate.rebac module reads the limit from
#   data.rebac.max_depth; this one keeps it in the module.
package examples.depth_limit

max_depth := 3

deny contains "example:delegation_too_deep" if count(input.actors) > max_depth
