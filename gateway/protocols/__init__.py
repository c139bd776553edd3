"""Protocol parsers: pure views of the inbound request (its body; next, JSON-RPC, MCP, A2A)."""
