package examples.business_hours_test

import data.examples.business_hours

# 2026-12-07 was a Monday. 1796601600 s is 2026-12-07T00:00:00Z.
monday_midnight_ns := 1796601600 * 1000000000

hours(n) := n * 3600000000000

at(ns) := {"route": {"tags": ["business-hours"]}, "request": {"time_ns": ns}}

test_monday_morning_is_open if {
	count(business_hours.deny) == 0 with input as at(monday_midnight_ns + hours(9))
}

test_monday_evening_is_closed if {
	business_hours.deny == {"example:outside_business_hours"} with input as at(monday_midnight_ns + hours(18))
}

test_saturday_noon_is_closed if {
	business_hours.deny == {"example:outside_business_hours"} with input as at(monday_midnight_ns + hours((5 * 24) + 12))
}

test_untagged_route_is_not_affected if {
	count(business_hours.deny) == 0 with input as {"route": {"tags": []}, "request": {"time_ns": monday_midnight_ns}}
}
