"""Transaction Tokens: signing keys, minting, and the Transaction Token Service.

* :mod:`gateway.tokens.keys` -- the key ring (PEM files, RFC 7638 kids, JWKS, rotation);
* :mod:`gateway.tokens.txn_token` -- minting and replacement claims (pure, no I/O);
* :mod:`gateway.tokens.service` -- ``POST /token`` (RFC 8693 profile);
* :mod:`gateway.tokens.cli` -- ``agentgate keys`` / ``agentgate token``.

Verification lives in :mod:`gateway.sdk.txn`, which internal services import on its own.
"""
