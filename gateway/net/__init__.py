"""The network edge: listener, TLS, the SPIFFE peer, HTTP framing, workers, outbound sessions."""
