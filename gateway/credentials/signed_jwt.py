"""``signed_jwt``: a static signing key becomes a short-lived credential per request.

A JWT (RFC 7519) signed with ``ES256`` or ``EdDSA`` (the key file must match the configured
algorithm, checked at startup) with ``iss``/``aud`` from config, ``sub`` the verified subject
(``anonymous`` on a route without authn), ``iat``/``exp`` (``ttl_s`` <= 300 s) and a fresh
``jti``; header ``typ: JWT``. Sent as ``Authorization: Bearer <jwt>``, or raw in another
configured header.
"""

from __future__ import annotations

import json
import time
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.jose.jws import encode_compact
from gateway.settings.credentials import SignedJWTCredential


class SignedJWTConverter(NoLifecycle):
    def __init__(self, name: str, cfg: SignedJWTCredential) -> None:
        self.name = name
        self._cfg = cfg
        key = serialization.load_pem_private_key(cfg.key.read_bytes(), password=None)
        if cfg.algorithm == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
            self._key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = key
        elif cfg.algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
            self._key = key
        else:
            raise ValueError(f"{cfg.key}: not a key for {cfg.algorithm}")

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        now = int(time.time())
        subject = ctx.identity.principal.subject if ctx.identity else "anonymous"
        claims = {
            "iss": self._cfg.issuer,
            "aud": self._cfg.audience,
            "sub": subject,
            "iat": now,
            "exp": now + int(self._cfg.ttl_s),
            "jti": str(uuid.uuid4()),
        }
        payload = json.dumps(claims, separators=(",", ":")).encode()
        token = encode_compact({"alg": self._cfg.algorithm, "typ": "JWT"}, payload, self._key)
        if self._cfg.header.lower() == "authorization":
            out.headers["Authorization"] = "Bearer " + token
        else:
            out.headers[self._cfg.header] = token


def _build(name: str, cfg: SignedJWTCredential, ctx: BuildContext) -> SignedJWTConverter:
    return SignedJWTConverter(name, cfg)


REGISTRATION = Registration("signed_jwt", SignedJWTCredential, _build)
