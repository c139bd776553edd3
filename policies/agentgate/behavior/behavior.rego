# METADATA
# title: Behaviour feedback
# description: |
#   Anomaly rules over input.behavior: the calling agent's sliding window as the gateway
#   counted it before this request (gateway/observability/behavior.py), i.e. requests,
#   errors, denies, distinct_routes, deny_rate and error_rate over window_s seconds.
#   deny is a set of "behavior:<code>" reasons for data.agentgate.authz to fold into its
#   own deny reasons; anomalous is true iff deny is not empty; reason is the lexically
#   first. Thresholds come from data.behavior.thresholds, each key defaulting to
#   default_thresholds. A request without input.behavior (tracking off, or no verified
#   agent to key on) is never denied here. Because the gateway also counts the requests
#   it refuses, an agent that keeps calling while cut off stays cut off; one that pauses
#   for window_s seconds starts again from a clean window.
package agentgate.behavior

default_thresholds := {
	# more requests than this in one window is a flood
	"max_requests": 600,
	# at least deny_burst policy denials, making up at least deny_rate of the requests
	"deny_burst": 10,
	"deny_rate": 0.5,
	# at least error_burst failed calls (status >= 400, not denials) at error_rate or more
	"error_burst": 20,
	"error_rate": 0.5,
	# more distinct routes than this in one window looks like enumeration
	"max_distinct_routes": 20,
}

default overrides := {}

overrides := data.behavior.thresholds

thresholds := object.union(default_thresholds, overrides)

deny contains "behavior:deny_burst" if {
	input.behavior.denies >= thresholds.deny_burst
	input.behavior.deny_rate >= thresholds.deny_rate
}

deny contains "behavior:request_flood" if {
	input.behavior.requests > thresholds.max_requests
}

deny contains "behavior:error_burst" if {
	input.behavior.errors >= thresholds.error_burst
	input.behavior.error_rate >= thresholds.error_rate
}

deny contains "behavior:route_scan" if {
	input.behavior.distinct_routes > thresholds.max_distinct_routes
}

default anomalous := false

anomalous if count(deny) > 0

reason := min(deny) if count(deny) > 0
