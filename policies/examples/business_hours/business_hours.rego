# METADATA
# title: Business hours
# description: |
#   Example. Requests to routes tagged "business-hours" are allowed Monday to Friday,
#   08:00-18:00 UTC only; otherwise "example:outside_business_hours". The clock is
#   input.request.time_ns, read with integer arithmetic: the embedded engine's
#   time.weekday/time.clock with a time zone abort the process (policies/README.md, note 2).
#   A decision that reads the clock must not be cached: add
#   "obligations": {"no_cache": true} to it (authz.rego does so when abac.time_dependent).
package examples.business_hours

open_hour := 8

close_hour := 18

ns_per_hour := 3600000000000

# 1970-01-01 was a Thursday: (days + 3) % 7 counts Monday as 0.
weekday := (floor(input.request.time_ns / (24 * ns_per_hour)) + 3) % 7

hour := floor(input.request.time_ns / ns_per_hour) % 24

applies if "business-hours" in input.route.tags

open_now if {
	weekday < 5
	hour >= open_hour
	hour < close_hour
}

deny contains "example:outside_business_hours" if {
	applies
	not open_now
}
