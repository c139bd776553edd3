"""Inbound authentication methods (one module per method; config key = module id)."""
