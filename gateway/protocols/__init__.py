"""Protocol parsers: pure views of the inbound request and of what answers it.

``body`` (the bounded read-once body), ``jsonrpc`` (JSON-RPC 2.0 envelopes and error
bodies), ``mcp`` (``input.mcp`` facts, listing filters), ``a2a`` (``input.a2a`` facts, agent
card filtering and RFC 8785 signing) and ``sse`` (an incremental Server-Sent Events
splitter). No I/O: the pipeline and the forwarder call them.
"""
