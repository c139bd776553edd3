"""The one JOSE layer: compact JWS, JWK and JWK Sets for every token the gateway touches.

Modules are named after what they implement:

* :mod:`gateway.jose.jws` -- RFC 7515 compact serialization, verify and sign, with the
  RFC 8725 rules (a per-call algorithm allowlist, no ``none``, no HMAC, a key bound to its
  algorithms, ``crit``/``b64`` refused, ``jku``/``x5u``/``x5c``/``jwk`` never followed, size
  caps, strict base64url and JSON, ``typ`` checks for callers that type their tokens);
* :mod:`gateway.jose.jwk` -- RFC 7517/7518 §6/8037 JWK import and export, RFC 7638
  thumbprints;
* :mod:`gateway.jose.jwks` -- RFC 7517 §5 key sets and the one cached JWKS fetcher;
* :mod:`gateway.jose.errors` -- :class:`JOSEError`, the only exception, with a stable code.

Users: the gateway's authentication methods (bearer, DPoP, ``jwt_assertion``,
introspection), the Token Service (keys, Txn-Token minting), the internal services' kit
(:mod:`gateway.sdk.txn`, which the gateway's ``txn_token`` method also runs: two verifiers of
the same tokens share this one code path), the development tools and ``check-config``.

Layer rule: this package imports nothing of the gateway (no settings, errors, outbound
sessions or devtools), so :mod:`gateway.sdk` can ship with it alone. Callers map
:class:`JOSEError` to their own answers where they call it.

Library choice. The primitives are ``cryptography``'s (the library PyJWT itself delegates
to); the JOSE rules are ours, over PyJWT's shoulders rather than through it. PyJWT (2.15,
the runtime dependency) stays what the tests and the demo cross-check against, and
``joserfc`` (dev only) the independent verifier of the integration tests. Why not verify
through ``jwt.decode``:

* RFC 8725 §2.6: PyJWT parses with ``json.loads``, which keeps the last of two duplicate
  member names and accepts ``NaN``/``Infinity``; a second, stricter parse before it would
  mean two parsers reading the same bytes -- the very hazard §2.6 describes;
* PyJWT implements RFC 7797 (``b64: false``) and takes any ``kid``; we refuse the first and
  bound the second before any key lookup (RFC 8725 §2.9);
* RFC 8725 §3.1: a key is bound here to the algorithms its JWK names, and ECDSA signatures
  must be the fixed-size ``R || S`` with ``0 < r, s < n`` (CVE-2022-21449);
* the hot path: one strict parse, a per-issuer cache of checked headers and a direct
  ``cryptography`` call; ``bench/bench_txn_tokens.py`` (one pinned core, a shared 2-vCPU
  host) measured 1.4-2x the Txn-Token verifications per CPU-second of ``jwt.decode``.
"""
