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
#
#   Continuous authentication (issue 18, with continuous_auth configured) adds
#   input.behavior.heartbeat (healthy | mismatch | stale | unknown), input.behavior.drift
#   ({score, features}: the call against the agent's learned baseline) and baseline_age:
#   - behavior:heartbeat_mismatch: the agent's own record of its calls disagrees with the
#     gateway's (someone else uses its identity, or it acts outside the gateway) -> quarantine;
#   - behavior:heartbeat_stale: no heartbeat for heartbeat_interval_s x grace (refused until
#     the next healthy one);
#   - behavior:drift: drift score >= thresholds.max_drift -> quarantine;
#   - step_down (not a deny): drift >= thresholds.step_down_drift narrows the granted scopes
#     to data.behavior.step_down_scopes (default: the scopes ending in ".read").
#   quarantine is what agentgate.authz turns into the obligation {"quarantine": true}.
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
	# drift against the agent's baseline (0..1): deny and quarantine at max_drift, keep
	# only read scopes from step_down_drift
	"max_drift": 0.8,
	"step_down_drift": 0.5,
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

deny contains "behavior:heartbeat_mismatch" if input.behavior.heartbeat == "mismatch"

deny contains "behavior:heartbeat_stale" if input.behavior.heartbeat == "stale"

deny contains "behavior:drift" if input.behavior.drift.score >= thresholds.max_drift

quarantine if input.behavior.heartbeat == "mismatch"

quarantine if input.behavior.drift.score >= thresholds.max_drift

step_down if input.behavior.drift.score >= thresholds.step_down_drift

default step_down_scopes := {"*.read"}

step_down_scopes := {s | some s in data.behavior.step_down_scopes} if data.behavior.step_down_scopes

# A scope survives a step-down when it matches one of step_down_scopes (glob, "." separated).
kept_scopes(scopes) := {s | some s in scopes; some pattern in step_down_scopes; glob.match(pattern, ["."], s)}

default anomalous := false

anomalous if count(deny) > 0

reason := min(deny) if count(deny) > 0
