# METADATA
# title: Network segments
# description: |
#   No lateral movement: a caller from segment S may reach a route in segment T only when
#   S == T or data.segments.flows[S] lists T. input.source.segment is "external" for
#   callers without a client certificate (see gateway/authz/input.py).
package agentgate.segments

deny contains "segments:lateral_movement" if not flow_allowed

flow_allowed if input.source.segment == input.route.segment

flow_allowed if input.route.segment in data.segments.flows[input.source.segment]
