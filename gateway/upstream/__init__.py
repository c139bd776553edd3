"""Everything between the policy decision and the upstream: routes, path and header hygiene."""
