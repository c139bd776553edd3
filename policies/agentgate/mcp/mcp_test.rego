package agentgate.mcp_test

import data.agentgate.authz
import data.agentgate.mcp

rules := {"routes": {"bank": {
	"read_only_subject_types": ["agent"],
	"tools": {
		"get_balance": {"scopes": ["accounts.read"], "read_only": true},
		"transfer_funds": {
			"scopes": ["payments.write", "accounts.read"],
			"arguments": {
				"amount": {"max": 1000, "min": 1, "required": true},
				"currency": {"one_of": ["EUR", "USD"]},
				"memo": {"max_length": 8},
			},
		},
	},
}}}

call(tool, arguments) := {
	"route": {"name": "bank"},
	"subject": {"id": "alice", "type": "user", "scopes": ["accounts.read", "payments.write"]},
	"mcp": {"method": "tools/call", "tool": tool, "arguments": arguments},
}

transfer(arguments) := call("transfer_funds", arguments)

test_allowed_call_has_no_deny if {
	count(mcp.deny) == 0 with input as transfer({"amount": 10, "currency": "EUR"})
		with data.mcp as rules
}

test_unknown_tool_denied if {
	mcp.deny == {"mcp:unknown_tool"} with input as call("delete_account", {}) with data.mcp as rules
}

test_unknown_tool_allowed_when_configured if {
	open_rules := json.patch(rules, [{"op": "add", "path": "/routes/bank/allow_unknown_tools", "value": true}])
	count(mcp.deny) == 0 with input as call("delete_account", {}) with data.mcp as open_rules
}

test_amount_over_limit if {
	mcp.deny == {"mcp:argument_invalid"} with input as transfer({"amount": 5000}) with data.mcp as rules
}

test_amount_under_minimum if {
	mcp.deny == {"mcp:argument_invalid"} with input as transfer({"amount": 0}) with data.mcp as rules
}

test_amount_as_string_is_invalid if {
	mcp.deny == {"mcp:argument_invalid"} with input as transfer({"amount": "10"}) with data.mcp as rules
}

test_amount_missing if {
	mcp.deny == {"mcp:argument_missing"} with input as transfer({"currency": "EUR"}) with data.mcp as rules
}

test_currency_not_in_list if {
	mcp.deny == {"mcp:argument_invalid"} with input as transfer({"amount": 5, "currency": "BTC"})
		with data.mcp as rules
}

test_memo_too_long if {
	mcp.deny == {"mcp:argument_invalid"} with input as transfer({"amount": 5, "memo": "a long memo"})
		with data.mcp as rules
}

test_listing_ignores_arguments if {
	listing := json.patch(transfer({}), [{"op": "add", "path": "/mcp/listing", "value": true}])
	count(mcp.deny) == 0 with input as listing with data.mcp as rules
}

test_read_only_agent_may_read if {
	agent := json.patch(call("get_balance", {}), [{"op": "replace", "path": "/subject/type", "value": "agent"}])
	count(mcp.deny) == 0 with input as agent with data.mcp as rules
}

test_read_only_agent_may_not_transfer if {
	agent := json.patch(transfer({"amount": 5}), [{"op": "replace", "path": "/subject/type", "value": "agent"}])
	mcp.deny == {"mcp:read_only"} with input as agent with data.mcp as rules
}

test_missing_scope_names_every_scope_of_the_tool if {
	weak := json.patch(transfer({"amount": 5}), [{"op": "replace", "path": "/subject/scopes", "value": ["accounts.read"]}])
	mcp.insufficient_scope with input as weak with data.mcp as rules
	mcp.required_scopes == {"payments.write", "accounts.read"} with input as weak with data.mcp as rules
}

test_other_routes_unconstrained if {
	other := json.patch(call("anything", {}), [{"op": "replace", "path": "/route/name", "value": "flights"}])
	count(mcp.deny) == 0 with input as other with data.mcp as rules
	not mcp.insufficient_scope with input as other with data.mcp as rules
}

test_non_call_methods_unconstrained if {
	listing := {"route": {"name": "bank"}, "subject": {"id": "alice", "type": "agent"}, "mcp": {"method": "tools/list"}}
	count(mcp.deny) == 0 with input as listing with data.mcp as rules
}

skills := {"routes": {"research": {"require_skill": true, "skills": {"search": {"scopes": ["research.read"]}}}}}

message(skill) := {
	"route": {"name": "research"},
	"subject": {"id": "alice", "type": "user", "scopes": []},
	"a2a": {"method": "message/send", "skill": skill},
}

test_unknown_skill_denied if {
	mcp.deny == {"a2a:unknown_skill"} with input as message("hack") with data.a2a as skills
}

test_skill_required if {
	mcp.deny == {"a2a:skill_required"} with input as message(null) with data.a2a as skills
}

test_skill_scope_required if {
	mcp.insufficient_scope with input as message("search") with data.a2a as skills
	mcp.required_scopes == {"research.read"} with input as message("search") with data.a2a as skills
}

# Through the whole decision: the challenge names every scope; a deny reason wins over it.
authz_input(scopes, arguments) := {
	"route": {"name": "bank", "tags": [], "segment": "default"},
	"source": {"segment": "default"},
	"request": {"method": "POST", "path": "/mcp"},
	"subject": {"id": "alice", "type": "user", "scopes": scopes, "roles": []},
	"actors": [],
	"mcp": {"method": "tools/call", "tool": "transfer_funds", "arguments": arguments},
}

test_decision_insufficient_scope if {
	decision := authz.decision with input as authz_input(["accounts.read"], {"amount": 5})
		with data.mcp as rules
	decision.allow == false
	decision.reason == "mcp:insufficient_scope"
	decision.obligations.required_scopes == ["accounts.read", "payments.write"]
}

test_decision_argument_deny_wins if {
	decision := authz.decision with input as authz_input(["accounts.read"], {"amount": 5000})
		with data.mcp as rules
	decision.reason == "mcp:argument_invalid"
}
