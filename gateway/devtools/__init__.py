"""Developer tools: the demo, a dev PKI and a dev token issuer. Never used on the request path."""
