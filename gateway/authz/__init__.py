"""Policy decisions: the PDP input, decision parsing and the engines."""
