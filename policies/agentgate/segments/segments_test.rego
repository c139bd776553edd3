package agentgate.segments_test

import data.agentgate.segments

flows := {"external": ["booking"], "agent": ["booking", "finance"]}

flow(source, target) := {"source": {"segment": source}, "route": {"segment": target}}

test_same_segment if {
	count(segments.deny) == 0 with input as flow("internal", "internal") with data.segments.flows as flows
}

test_listed_flow if {
	count(segments.deny) == 0 with input as flow("agent", "finance") with data.segments.flows as flows
}

test_lateral_movement if {
	d := segments.deny with input as flow("external", "finance") with data.segments.flows as flows
	d == {"segments:lateral_movement"}
}

test_unknown_source_segment if {
	d := segments.deny with input as flow("rogue", "booking") with data.segments.flows as flows
	d == {"segments:lateral_movement"}
}

test_missing_source_segment if {
	d := segments.deny with input as {"route": {"segment": "booking"}} with data.segments.flows as flows
	d == {"segments:lateral_movement"}
}

test_quarantined_agent_is_isolated if {
	segments.deny == {"segments:quarantined"} with input as {
		"source": {"segment": "quarantine"},
		"route": {"segment": "booking"},
	}
		with data.segments.flows as {"quarantine": ["booking"]}
}

test_quarantined_agent_reaches_the_quarantine_segment if {
	count(segments.deny) == 0 with input as {
		"source": {"segment": "quarantine"},
		"route": {"segment": "quarantine"},
	}
}
