# METADATA
# title: Attribute-based access control
# description: |
#   Per-route requirements from data.abac.routes[route name] (a route without an entry has
#   none): allowed caller types, allowed subject types, a sender-constrained credential
#   (DPoP or mTLS-bound), an affirming attestation result (RATS EAR, SPECS.md §12), and a
#   UTC hour window [from, to). Every check is written as "deny unless the positive fact
#   holds", so a missing input field denies instead of silently passing.
package agentgate.abac

rules := object.get(data.abac.routes, input.route.name, {})

deny contains "abac:caller_type" if {
	rules.callers
	not caller_allowed
}

deny contains "abac:subject_type" if {
	rules.subject_types
	not subject_type_allowed
}

deny contains "abac:sender_constraint" if {
	rules.require_sender_constraint == true
	not sender_constrained
}

deny contains "abac:attestation" if {
	rules.require_attestation == true
	not attested
}

deny contains "abac:time_window" if {
	rules.hours_utc
	not within_hours
}

# The positive facts are separate rules on purpose: `not input.x in coll` is undefined in OPA
# (but true in regopy) when input.x is missing, while `not rule` is true in both.
caller_allowed if input.caller in rules.callers

subject_type_allowed if input.subject.type in rules.subject_types

sender_constrained if input.authn.sender_constrained in {"dpop", "mtls"}

# AR4SI bands: 0 = no claim, 2..31 affirming; anything else is not affirming.
attested if {
	input.attestation.status == "affirming"
	every value in object.get(input.attestation, "tv", {}) {
		affirming_claim(value)
	}
}

affirming_claim(0)

affirming_claim(value) if {
	value >= 2
	value <= 31
}

within_hours if {
	[from, to] := rules.hours_utc

	# Plain nanoseconds are UTC. No timezone argument: in regopy 1.5.2 time.clock with a
	# timezone (and time.weekday) abort the process once aiohttp is loaded (policies/README.md).
	[hour, _, _] := time.clock(input.request.time_ns)
	from <= hour
	hour < to
}

# Decisions that read the clock must not be cached (see gateway/authz/cache.py).
time_dependent if rules.hours_utc
