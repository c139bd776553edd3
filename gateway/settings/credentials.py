"""``routes[].credential(s)``: the backend credential each converter produces (DESIGN.md §9).

Each model's ``type`` is the id of its converter in :mod:`gateway.credentials`."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    model_validator,
)

from gateway.settings.base import FilePath, SecretRef, Strict


class NoCredential(Strict):
    """Forward with no backend credential at all (public backends)."""

    type: Literal["none"]


class TxnTokenCredential(Strict):
    """The gateway's Transaction Token in ``txn_tokens.header`` (DESIGN.md §8)."""

    type: Literal["txn_token"]


class APIKeyCredential(Strict):
    type: Literal["api_key"]
    secret: SecretRef
    header: str | None = "X-API-Key"
    query_param: str | None = None  # instead of a header, for backends that insist

    @model_validator(mode="after")
    def _where(self) -> Self:
        if (self.header is None) == (self.query_param is None):
            raise ValueError("give exactly one of header or query_param")
        return self


class BasicCredential(Strict):
    type: Literal["basic"]
    username: str
    password: SecretRef


class BearerStaticCredential(Strict):
    type: Literal["bearer_static"]
    token: SecretRef


class OAuthClientCredentials(Strict):
    """RFC 6749 §4.4 client credentials grant against the backend's AS."""

    type: Literal["oauth_client_credentials"]
    token_endpoint: str
    client_id: str
    client_secret: SecretRef
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    scope: str | None = None
    audience: str | None = None
    refresh_before_s: float = Field(30.0, ge=0)
    timeout_s: float = Field(2.0, gt=0)


class TokenExchangeCredential(Strict):
    """RFC 8693 token exchange at an external AS, per subject and audience."""

    type: Literal["token_exchange"]
    token_endpoint: str
    client_id: str
    client_secret: SecretRef
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    subject: Literal["inbound", "txn_token"] = "inbound"
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    requested_token_type: str = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
    timeout_s: float = Field(2.0, gt=0)
    max_cache_entries: int = Field(10_000, ge=0)


class MTLSCredential(Strict):
    """A client certificate for the upstream connection (one connector, built once)."""

    type: Literal["mtls"]
    cert: FilePath
    key: FilePath
    ca: FilePath | None = None


class HMACSignCredential(Strict):
    """RFC 9421 signature with a shared secret (hmac-sha256)."""

    type: Literal["hmac_sign"]
    # Written into Signature-Input as an RFC 8941 sf-string and a dictionary key: printable
    # ASCII only (RFC 8941 §3.3.3), and a lowercase key (§3.2), or no request could be signed.
    key_id: str = Field(pattern=r"^[\x20-\x7e]{1,256}$")
    secret: SecretRef
    label: str = Field("sig1", pattern=r"^[a-z*][a-z0-9_.*-]{0,63}$")


class SignedJWTCredential(Strict):
    """A short-lived JWT minted per request from a static signing key."""

    type: Literal["signed_jwt"]
    key: FilePath  # PEM private key (EC P-256 for ES256, Ed25519 for EdDSA)
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    issuer: str
    audience: str
    ttl_s: float = Field(60.0, gt=0, le=300)
    header: str = "Authorization"  # sent as "Bearer <jwt>" in Authorization, raw otherwise


CredentialSettings = Annotated[
    NoCredential
    | TxnTokenCredential
    | APIKeyCredential
    | BasicCredential
    | BearerStaticCredential
    | OAuthClientCredentials
    | TokenExchangeCredential
    | MTLSCredential
    | HMACSignCredential
    | SignedJWTCredential,
    Field(discriminator="type"),
]
