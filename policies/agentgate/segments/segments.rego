# METADATA
# title: Network segments
# description: |
#   No lateral movement: a caller from segment S may reach a route in segment T only when
#   S == T or data.segments.flows[S] lists T. input.source.segment is "external" for
#   callers without a client certificate (see gateway/authz/input.py).
#   A quarantined agent (revocation kind quarantine, issue 18) speaks from the segment
#   "quarantine": it reaches routes of that segment only (say, a remediation or heartbeat
#   route), whatever data.segments.flows says (segments:quarantined).
package agentgate.segments

deny contains "segments:lateral_movement" if {
	not quarantined
	not flow_allowed
}

deny contains "segments:quarantined" if {
	quarantined
	input.route.segment != "quarantine"
}

quarantined if input.source.segment == "quarantine"

flow_allowed if input.source.segment == input.route.segment

flow_allowed if input.route.segment in data.segments.flows[input.source.segment]
