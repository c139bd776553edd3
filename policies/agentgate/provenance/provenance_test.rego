package agentgate.provenance_test

import data.agentgate.provenance

prov_data := {
	"max_depth": 2,
	"human_genesis_tags": ["payments"],
	"issuers": ["spiffe://example.org/gateway"],
	"max_ttl_s": 600,
	"agents": {
		"spiffe://example.org/agent/travel": ["flights.read", "flights.book"],
		"spiffe://example.org/agent/": ["flights.read"],
	},
}

travel := "spiffe://example.org/agent/travel"

flight := "spiffe://example.org/agent/travel/flight"

pay := "spiffe://example.org/agent/travel/flight/pay"

pricing := "spiffe://example.org/agent/pricing"

# `doc` with the value at JSON pointer `path` replaced.
patched(doc, path, value) := json.patch(doc, [{"op": "replace", "path": path, "value": value}])

block(agent, cid, scope, depth) := {
	"agent": agent,
	"credential_id": cid,
	"scope": scope,
	"iat": 1767261600,
	"exp": 1767261900,
	"depth": depth,
}

# A request on `route` (tags `tags`) by the leaf of `chain`, started by a `genesis_type`.
request(route, tags, genesis_type, chain) := {
	"request": {"method": "GET", "path": "/flights/42"},
	"route": {"name": route, "tags": tags},
	"subject": {"id": "alice", "type": "user"},
	"authn": {"methods": ["agent_credential"]},
	"provenance": {
		"genesis": {"type": genesis_type, "sub": "alice"},
		"issuer": "spiffe://example.org/gateway",
		"chain": chain,
		"depth": count(chain) - 1,
		"credential_id": chain[count(chain) - 1].credential_id,
	},
}

root_only := [block(travel, "c0-aaaaaaaaaaaaaaaa", ["flights.read"], 2)]

two_deep := array.concat(root_only, [
	block(flight, "c1-aaaaaaaaaaaaaaaa", ["flights.read"], 1),
	block(pay, "c2-aaaaaaaaaaaaaaaa", ["flights.read"], 0),
])

x_agent := "spiffe://example.org/agent/x"

three_deep := array.concat(two_deep, [block(x_agent, "c3-aaaaaaaaaaaaaaaa", ["flights.read"], 0)])

request_cases := {
	"root credential on a plain route": {
		"input": request("flights", [], "user", root_only),
		"want": set(),
	},
	"depth at the limit": {
		"input": request("flights", [], "user", two_deep),
		"want": set(),
	},
	"depth over the limit": {
		"input": request("flights", [], "user", three_deep),
		"want": {"provenance:too_deep"},
	},
	"depth missing fails closed": {
		"input": json.remove(request("flights", [], "user", root_only), ["provenance/depth"]),
		"want": {"provenance:too_deep"},
	},
	"payments route with a user genesis": {
		"input": request("pay", ["payments"], "user", two_deep),
		"want": set(),
	},
	"payments route with a task genesis": {
		"input": request("pay", ["payments"], "task", two_deep),
		"want": {"provenance:genesis_not_human"},
	},
	"payments route without a genesis type": {
		"input": json.remove(request("pay", ["payments"], "user", root_only), ["provenance/genesis/type"]),
		"want": {"provenance:genesis_not_human"},
	},
	"task genesis on an untagged route": {
		"input": request("flights", ["partner-facing"], "task", root_only),
		"want": set(),
	},
	"untrusted issuer": {
		"input": patched(request("flights", [], "user", root_only), "/provenance/issuer", "spiffe://evil.org/gw"),
		"want": {"provenance:issuer_not_trusted"},
	},
	"issuer missing": {
		"input": json.remove(request("flights", [], "user", root_only), ["provenance/issuer"]),
		"want": {"provenance:issuer_not_trusted"},
	},
	"task genesis, too deep, payments: every reason": {
		"input": request("pay", ["payments"], "task", three_deep),
		"want": {"provenance:too_deep", "provenance:genesis_not_human"},
	},
	"no credential: nothing applies": {
		"input": patched(request("pay", ["payments"], "task", three_deep), "/provenance", {}),
		"want": set(),
	},
}

test_request[name] if {
	some name, c in request_cases
	got := provenance.deny with input as c.input with data.provenance as prov_data
	got == c.want
}

# Defaults when data.provenance is absent: depth 4, tag "payments", no issuer check.
default_cases := {
	"4 delegations pass": {"depth": 4, "genesis": "user", "tags": [], "want": set()},
	"5 delegations are too deep": {"depth": 5, "genesis": "user", "tags": [], "want": {"provenance:too_deep"}},
	"payments tag by default": {
		"depth": 1, "genesis": "task", "tags": ["payments"],
		"want": {"provenance:genesis_not_human"},
	},
}

test_defaults[name] if {
	some name, c in default_cases
	doc := json.patch(request("r", c.tags, c.genesis, root_only), [
		{"op": "replace", "path": "/provenance/depth", "value": c.depth},
		{"op": "replace", "path": "/provenance/issuer", "value": "spiffe://anyone/gw"},
	])
	got := provenance.deny with input as doc with data.provenance as {}
	got == c.want
}

# POST /agents/credentials
issue(peer, agent, scope, ttl_s, depth) := {
	"action": "credential.issue",
	"request": {"method": "POST", "path": "/agents/credentials"},
	"route": {"name": "agent-credentials", "tags": []},
	"subject": {"id": "alice", "type": "user"},
	"source": {"peer": {"spiffe_id": peer}},
	"provenance": {},
	"credential": {
		"agent": agent,
		"genesis": {"type": "user", "sub": "alice"},
		"scope": scope,
		"ttl_s": ttl_s,
		"depth": depth,
	},
}

issue_cases := {
	"travel agent, its own scopes": {
		"input": issue(travel, travel, ["flights.read", "flights.book"], 300, 2),
		"want": set(),
	},
	"no scope at all": {
		"input": issue(travel, travel, [], 300, 2),
		"want": set(),
	},
	"other agent under the domain prefix, read only": {
		"input": issue(pricing, pricing, ["flights.read"], 300, 0),
		"want": set(),
	},
	"other agent asks for a scope only travel may hold": {
		"input": issue(pricing, pricing, ["flights.read", "flights.book"], 300, 0),
		"want": {"credential:scope_not_allowed"},
	},
	"agent outside every prefix": {
		"input": issue("spiffe://evil.org/agent/x", "spiffe://evil.org/agent/x", ["flights.read"], 300, 0),
		"want": {"credential:scope_not_allowed"},
	},
	"depth over the limit": {
		"input": issue(travel, travel, ["flights.read"], 300, 3),
		"want": {"credential:too_deep"},
	},
	"depth missing": {
		"input": json.remove(issue(travel, travel, ["flights.read"], 300, 2), ["credential/depth"]),
		"want": {"credential:too_deep"},
	},
	"ttl over the limit": {
		"input": issue(travel, travel, ["flights.read"], 601, 2),
		"want": {"credential:ttl_too_long"},
	},
	"ttl at the limit": {
		"input": issue(travel, travel, ["flights.read"], 600, 2),
		"want": set(),
	},
	"no client certificate": {
		"input": json.remove(issue(travel, travel, ["flights.read"], 300, 2), ["source/peer/spiffe_id"]),
		"want": {"credential:agent_not_identified"},
	},
	"credential for another agent than the caller": {
		"input": issue(pricing, travel, ["flights.read"], 300, 2),
		"want": {"credential:agent_mismatch"},
	},
	"scope is not a list": {
		"input": issue(travel, travel, "flights.read", 300, 2),
		"want": {"credential:malformed"},
	},
	"scope holds a non-string": {
		"input": issue(travel, travel, ["flights.read", 7], 300, 2),
		"want": {"credential:malformed", "credential:scope_not_allowed"},
	},
	"another action: nothing applies": {
		"input": object.union(issue("", "x", ["anything"], 99999, 99), {"action": "token.exchange"}),
		"want": set(),
	},
}

test_issue[name] if {
	some name, c in issue_cases
	got := provenance.deny with input as c.input with data.provenance as prov_data
	got == c.want
}

test_issue_without_max_ttl_is_not_limited if {
	got := provenance.deny with input as issue(travel, travel, ["flights.read"], 86400, 2)
		with data.provenance as json.remove(prov_data, ["max_ttl_s"])
	got == set()
}
