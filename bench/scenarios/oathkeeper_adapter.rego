# Bench only: lets Ory Oathkeeper's remote_json authorizer ask the same policy as agentgate.
#
# remote_json allows on HTTP 200 and denies on 403 (anything else is an error, i.e. a 500 to the
# client: still fail closed). OPA's v1 data API answers 200 for every decision, allow or deny,
# so Oathkeeper would let denials through. The v0 data API answers 200 with the value when the
# rule is defined and 404 when it is undefined; this rule is defined only for an allow.
# Queried as POST /v0/data/agentgate/bench/oathkeeper_allow with the input document as the body.
package agentgate.bench

import data.agentgate.authz

oathkeeper_allow := authz.decision if authz.decision.allow == true
