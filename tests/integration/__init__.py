"""Integration tests: the gateway on real loopback sockets (TLS, upstreams, subprocesses)."""
