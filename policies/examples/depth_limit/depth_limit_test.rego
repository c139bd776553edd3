package examples.depth_limit_test

import data.examples.depth_limit

chain(n) := [{"sub": sprintf("agent-%d", [i])} | some i in numbers.range(1, n)]

test_three_hops_pass if {
	count(depth_limit.deny) == 0 with input as {"actors": chain(3)}
}

test_four_hops_are_denied if {
	depth_limit.deny == {"example:delegation_too_deep"} with input as {"actors": chain(4)}
}

test_no_actor_passes if {
	count(depth_limit.deny) == 0 with input as {"actors": []}
}
