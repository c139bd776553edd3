package examples.read_only_agents_test

import data.examples.read_only_agents

test_agent_may_read if {
	count(read_only_agents.deny) == 0 with input as {"subject": {"type": "agent"}, "request": {"method": "GET"}}
}

test_agent_may_not_write if {
	read_only_agents.deny == {"example:agent_read_only"} with input as {
		"subject": {"type": "agent"},
		"request": {"method": "POST"},
	}
}

test_user_may_write if {
	count(read_only_agents.deny) == 0 with input as {"subject": {"type": "user"}, "request": {"method": "DELETE"}}
}
