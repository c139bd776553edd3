"""``issuers``: token issuers, their JWKS cache, introspection and claims mapping."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from gateway.settings.base import Algorithm, AnyPath, FilePath, SecretRef, Strict


class Introspection(Strict):
    """RFC 7662 introspection for opaque tokens of this issuer."""

    endpoint: str
    client_id: str
    client_secret: SecretRef
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    max_cache_s: float = Field(60.0, ge=0)


class JWKSCache(Strict):
    min_refresh_s: float = Field(30.0, ge=0)  # unknown-kid refetch at most once per interval
    default_ttl_s: float = Field(300.0, gt=0)  # when the JWKS response has no Cache-Control
    max_ttl_s: float = Field(86400.0, gt=0)
    max_stale_s: float = Field(3600.0, ge=0)  # serve stale keys while the endpoint is down
    fetch_timeout_s: float = Field(2.0, gt=0)


# Names of input.subject that a claims mapping may not take over (``roles`` merges instead).
RESERVED_SUBJECT_KEYS = frozenset({"id", "type", "issuer", "scopes", "client_id", "claims"})


_CLAIM_TARGET = r"^[a-z][a-z0-9_]{0,31}$"


_CLAIM_PATH = r"^[A-Za-z0-9_:\-]+(\.[A-Za-z0-9_:\-]+){0,7}$"


IntrospectMode = Literal["opaque", "always"]


def _claim_mapping(value: dict[str, str]) -> dict[str, str]:
    for target, path in value.items():
        if not re.fullmatch(_CLAIM_TARGET, target):
            raise ValueError(f"claims: {target!r} must match {_CLAIM_TARGET}")
        if target in RESERVED_SUBJECT_KEYS:
            raise ValueError(f"claims: {target!r} is a reserved input.subject key")
        if not re.fullmatch(_CLAIM_PATH, path):
            raise ValueError(f"claims.{target}: {path!r} is not a dotted claim path")
    return value


class Issuer(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    issuer: str
    jwks_uri: str | None = None
    jwks_file: FilePath | None = None
    audience: str | tuple[str, ...]
    algorithms: tuple[Algorithm, ...] = ("ES256",)
    leeway_s: float = Field(30.0, ge=0, le=300)
    require_typ: str | None = "at+jwt"  # None: accept a JWT without typ (not recommended)
    jwks_cache: JWKSCache = JWKSCache()
    introspection: Introspection | None = None
    # "always": a verified JWT is also introspected (revocation that only the AS knows).
    introspect: IntrospectMode = "opaque"
    # input.subject.<name> <- the claim at a dotted path; "roles" merges into subject.roles.
    claims: Annotated[dict[str, str], AfterValidator(_claim_mapping)] = Field(default_factory=dict)
    # A token without a user session whose preferred_username starts with this prefix is a
    # service account (Keycloak: "service-account-<client>"), i.e. an agent. None: off.
    service_account_prefix: str | None = "service-account-"

    # A development issuer (gateway/devtools/devissuer.py): this key file, created 0600 at start if
    # missing, is the issuer's JWKS; `agentgate token mint-access` signs with it. Not with
    # jwks_uri or jwks_file, and never in production.
    dev_signing_key: AnyPath | None = None

    @model_validator(mode="after")
    def _keys(self) -> Self:
        if self.dev_signing_key is not None:
            if self.jwks_uri is not None or self.jwks_file is not None:
                raise ValueError("dev_signing_key excludes jwks_uri and jwks_file")
            if "ES256" not in self.algorithms and "EdDSA" not in self.algorithms:
                raise ValueError("dev_signing_key needs ES256 or EdDSA in algorithms")
        elif (self.jwks_uri is None) == (self.jwks_file is None) and self.introspection is None:
            raise ValueError("exactly one of jwks_uri, jwks_file or dev_signing_key is required")
        if self.jwks_uri is not None and self.jwks_file is not None:
            raise ValueError("jwks_uri and jwks_file are mutually exclusive")
        if self.introspect == "always" and self.introspection is None:
            raise ValueError("introspect: always needs introspection settings")
        return self
