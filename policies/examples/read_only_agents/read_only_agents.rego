# METADATA
# title: Read-only agents
# description: |
#   Example. Agents (input.subject.type == "agent") may only read: any other method is
#   denied with "example:agent_read_only". Humans and services are not affected.
#   Opt in from agentgate/authz/authz.rego:
#     import data.examples.read_only_agents
#     deny_reasons contains reason if some reason in read_only_agents.deny
package examples.read_only_agents

read_methods := {"GET", "HEAD", "OPTIONS"}

deny contains "example:agent_read_only" if {
	input.subject.type == "agent"
	not input.request.method in read_methods
}
