# METADATA
# title: MCP tools and A2A skills
# description: |
#   Tool-level decisions on routes of kind mcp and a2a. The gateway puts the JSON-RPC
#   message being decided under input.mcp = {method, tool, arguments, resource, prompt,
#   session} or input.a2a = {method, skill, task_id, context_id}; arguments holds only the
#   keys the route's mcp.arguments allowlists. A tools/list (agent card) is filtered by
#   asking once per listed tool (skill) with input.mcp.listing (input.a2a.listing) true and
#   the call's facts, so a tool this module would deny is never shown.
#
#   Rules, from data.mcp.routes[<route>] (data.a2a.routes[<route>] for skills):
#     tools.<name> = {scopes: [..], read_only: bool, arguments: {<arg>: {max, min,
#       one_of, max_length, required}}}   (skills.<id> = {scopes: [..]} for A2A)
#     allow_unknown_tools: false (default: a tool not listed is denied, mcp:unknown_tool)
#     read_only_subjects: [ids], read_only_subject_types: ["agent", ..]
#       (such callers may only call tools with read_only: true, mcp:read_only)
#     require_skill: false (A2A: a message without metadata.skill is denied, a2a:skill_required)
#   Deny reasons: mcp:unknown_tool, mcp:read_only, mcp:argument_invalid,
#   mcp:argument_missing, a2a:unknown_skill, a2a:skill_required. A tool (skill) whose scopes
#   the subject does not all hold is insufficient_scope: authz answers 403 with
#   required_scopes = every scope of the tool, so a client steps up once.
#   A route without data here is not constrained by this module.
package agentgate.mcp

tool_rules := data.mcp.routes[input.route.name]

skill_rules := data.a2a.routes[input.route.name]

tool_call if input.mcp.method == "tools/call"

tool := tool_rules.tools[input.mcp.tool]

default allow_unknown := false

allow_unknown if tool_rules.allow_unknown_tools == true

read_only_caller if input.subject.id in tool_rules.read_only_subjects

read_only_caller if input.subject.type in tool_rules.read_only_subject_types

tool_read_only if tool.read_only == true

# Argument constraints are checked on calls, not on listings (a listing has no arguments).
constrained_call if {
	tool_call
	not input.mcp.listing
}

has_argument(name) if _ = input.mcp.arguments[name]

argument_ok(rule, value) if {
	number_ok(rule, value)
	string_ok(rule, value)
	choice_ok(rule, value)
}

# A numeric bound needs a number: a string "1e9" never passes an amount limit.
number_ok(rule, _) if {
	not rule.max
	not rule.min
}

number_ok(rule, value) if {
	is_number(value)
	not above_max(rule, value)
	not below_min(rule, value)
}

above_max(rule, value) if value > rule.max

below_min(rule, value) if value < rule.min

string_ok(rule, _) if not rule.max_length

string_ok(rule, value) if {
	is_string(value)
	count(value) <= rule.max_length
}

choice_ok(rule, _) if not rule.one_of

choice_ok(rule, value) if value in rule.one_of

# Scopes: every scope of the tool (skill) must be held.
required_scopes := {s | some s in tool.scopes} if tool_call

required_scopes := {s | some s in skill_rules.skills[input.a2a.skill].scopes} if has_skill

# A2A has no standard skill field: the gateway reads message metadata.skill (null if absent).
has_skill if is_string(input.a2a.skill)

held_scopes := {s | some s in input.subject.scopes}

insufficient_scope if count(required_scopes - held_scopes) > 0

message_method if input.a2a.method in {"message/send", "message/stream", "SendMessage", "SendStreamingMessage"}

deny contains "mcp:unknown_tool" if {
	tool_call
	tool_rules
	not tool
	not allow_unknown
}

deny contains "mcp:read_only" if {
	tool_call
	read_only_caller
	not tool_read_only
}

deny contains "mcp:argument_missing" if {
	constrained_call
	some name, rule in tool.arguments
	rule.required == true
	not has_argument(name)
}

deny contains "mcp:argument_invalid" if {
	constrained_call
	some name, rule in tool.arguments
	value := input.mcp.arguments[name]
	not argument_ok(rule, value)
}

# A2A skills.
deny contains "a2a:unknown_skill" if {
	skill_rules
	has_skill
	not skill_rules.skills[input.a2a.skill]
}

deny contains "a2a:skill_required" if {
	skill_rules.require_skill == true
	message_method
	not has_skill
}
