# METADATA
# title: Role-based access control
# description: |
#   A subject's roles come from its verified credential (input.subject.roles, e.g. an
#   API-key or basic-auth record) and from data.rbac.subjects (keyed by subject id).
#   Each role in data.rbac.roles lists permissions: HTTP methods ("*" = any) and path
#   globs ("/" is the separator, "**" crosses segments). A permission that lists scopes
#   also needs one of them when the subject is scope-bearing (it carries OAuth scopes, or
#   authenticated with a method named in data.rbac.scoped_methods).
package agentgate.rbac

# Roles held by the subject.
roles contains role if {
	some role in input.subject.roles
}

roles contains role if {
	some role in data.rbac.subjects[input.subject.id]
}

# Permissions of held roles that match the request's method and path.
matches contains {"role": role, "scopes": object.get(perm, "scopes", [])} if {
	some role in roles
	some perm in data.rbac.roles[role]
	method_matches(perm.methods, input.request.method)
	path_matches(perm.paths, input.request.path)
}

method_matches(methods, _) if "*" in methods

method_matches(methods, method) if method in methods

path_matches(patterns, path) if {
	some pattern in patterns
	glob.match(pattern, ["/"], path)
}

scope_bearing if count(input.subject.scopes) > 0

scope_bearing if {
	some method in input.authn.methods
	method in data.rbac.scoped_methods
}

# Matching permissions whose scope requirement the subject meets.
granted contains perm if {
	some perm in matches
	not scope_bearing
}

granted contains perm if {
	some perm in matches
	count(perm.scopes) == 0
}

granted contains perm if {
	some perm in matches
	some scope in perm.scopes
	scope in input.subject.scopes
}

allow if count(granted) > 0

# The lexically first granting role names the decision, so that both engines agree.
reason := sprintf("rbac:%s", [min({perm.role | some perm in granted})])

# Scopes the granting permissions confer; the gateway intersects them with the subject's.
scopes contains scope if {
	some perm in granted
	some scope in perm.scopes
}

# A role permits the method and path, but the subject's token lacks every listed scope.
insufficient_scope if {
	count(granted) == 0
	count(matches) > 0
}

required_scopes contains scope if {
	insufficient_scope
	some perm in matches
	some scope in perm.scopes
}
