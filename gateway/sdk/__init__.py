"""What agents and internal services import: Txn-Token verification, next sub-agent credentials.

The SDK depends on nothing else of the gateway except the JOSE and RFC 9421 layers.
"""
