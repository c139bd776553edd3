"""Backend credentials made from key material held by the gateway.

* ``mtls`` -- a client certificate presented on the upstream TLS connection.
  The SSL context is built once per credential, so each credential gets its
  own pooled connections (aiohttp keys its pool by SSL context).
* ``signed_jwt`` -- a static signing key becomes a short-lived credential: a
  JWT (RFC 7519) minted per request with ``iss``/``aud`` from config, ``sub``
  the verified subject, ``iat``/``exp`` (``ttl_s`` <= 300 s) and a fresh ``jti``.
"""

from __future__ import annotations

import ssl
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.credentials import ConvertContext, Outbound
from gateway.settings import MTLSCredential, SignedJWTCredential, UpstreamTLS


class MTLSConverter:
    def __init__(
        self, name: str, cfg: MTLSCredential, upstream_tls: UpstreamTLS | None = None
    ) -> None:
        self.name = name
        # The credential's own CA, else the route's upstream_tls.ca, else the system store.
        ca = cfg.ca or (upstream_tls.ca if upstream_tls is not None else None)
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
        self._ssl = ctx

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        out.ssl_context = self._ssl


class SignedJWTConverter:
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

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

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
        token = jwt.encode(claims, self._key, algorithm=self._cfg.algorithm, headers={"typ": "JWT"})
        if self._cfg.header.lower() == "authorization":
            out.headers["Authorization"] = "Bearer " + token
        else:
            out.headers[self._cfg.header] = token
