"""Rate limits before authentication, after it, and as decision obligations (one stage)."""
