"""Typed, strict configuration (DESIGN.md §4).

This is the only module that reads the environment or configuration files.
Every model forbids unknown keys, so a misspelt key is an error that names its
path. Relative paths resolve against the folder of the config file. Secret
references (``env:NAME`` / ``file:path``) are resolved once, at load time, into
:class:`Secret` values whose ``repr``/``str`` never show the value.

``load_settings`` raises :class:`gateway.errors.ConfigError` listing every
problem as ``path.to.key: message``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import string
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.functional_serializers import PlainSerializer

from gateway.errors import ConfigError, ServiceUnavailable

# --------------------------------------------------------------------------- helpers


class SecretUnavailable(ServiceUnavailable):
    reason = "secret_unavailable"


class Secret:
    """A resolved secret. The value is reachable only through :meth:`reveal`.

    ``file:`` secrets follow their file: a change is picked up on the next use
    (the file is stat'ed at most once a second); a file that has become
    unreadable raises :class:`SecretUnavailable` (503), never an empty value.
    """

    __slots__ = ("_failed", "_mtime", "_next_check", "_path", "_value", "ref")

    def __init__(self, ref: str, value: bytes, path: Path | None = None) -> None:
        self.ref = ref  # e.g. "env:BILLING_KEY": safe to show
        self._value = value
        self._path = path
        self._mtime = _mtime(path) if path is not None else 0
        self._next_check = time.monotonic() + 1.0
        self._failed = False

    def reveal(self) -> bytes:
        # SECURITY: once the file has become unreadable, every use re-checks it (and fails)
        # until it is readable again; the old value is never served in between.
        if self._path is not None and (self._failed or time.monotonic() >= self._next_check):
            self._refresh(self._path)
        return self._value

    def reveal_str(self) -> str:
        """The value as text fit for a header or a form: UTF-8, no control characters."""
        try:
            text = self.reveal().decode("utf-8")
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret {self.ref} is not UTF-8 text") from None
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise SecretUnavailable(f"secret {self.ref} holds control characters") from None
        return text

    def _refresh(self, path: Path) -> None:
        self._next_check = time.monotonic() + 1.0
        try:
            mtime = _mtime(path)
            if mtime != self._mtime:
                self._value = _read_secret_file(path)
                self._mtime = mtime
        except OSError:
            # SECURITY: fail closed; the reference (a path) is safe to name, the value is not.
            self._failed = True
            raise SecretUnavailable(f"secret {self.ref} became unreadable") from None
        self._failed = False

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)


def _mtime(path: Path) -> int:
    st = path.stat()
    return st.st_mtime_ns ^ st.st_size


def _read_secret_file(path: Path) -> bytes:
    # A trailing newline in a secret file is an editor artefact, never part of the secret.
    return path.read_bytes().rstrip(b"\r\n")


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context if isinstance(info.context, Mapping) else {}
    base = ctx.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def resolve_secret(ref: str, base_dir: Path) -> Secret:
    """Resolve ``env:NAME`` or ``file:path``; raise ValueError naming the reference only."""
    kind, sep, target = ref.partition(":")
    if not sep or not target or kind not in ("env", "file"):
        raise ValueError("must be a secret reference 'env:NAME' or 'file:path', not a value")
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise ValueError(f"environment variable {target} is not set")
        return Secret(ref, value.encode("utf-8"))
    path = Path(target)
    if not path.is_absolute():
        path = base_dir / path
    try:
        data = _read_secret_file(path)
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return Secret(f"file:{path}", data, path)


def _secret(value: Any, info: ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a secret reference 'env:NAME' or 'file:path'")
    return resolve_secret(value, _base_dir(info))


def _as_path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("must be a path")
    return Path(value)


def _existing_file(value: Any, info: ValidationInfo) -> Path:
    path = _as_path(value)
    if not path.is_absolute():
        path = _base_dir(info) / path
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _existing_dir(value: Any, info: ValidationInfo) -> Path:
    path = _as_path(value)
    if not path.is_absolute():
        path = _base_dir(info) / path
    if not path.is_dir():
        raise ValueError(f"directory not found: {path}")
    return path


def _any_path(value: Any, info: ValidationInfo) -> Path:
    path = _as_path(value)
    return path if path.is_absolute() else _base_dir(info) / path


SecretRef = Annotated[
    Secret,
    BeforeValidator(_secret),
    PlainSerializer(lambda s: s.ref, return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^(env|file):.+$"}),
]
FilePath = Annotated[Path, BeforeValidator(_existing_file)]
DirPath = Annotated[Path, BeforeValidator(_existing_dir)]
AnyPath = Annotated[Path, BeforeValidator(_any_path)]


def _parse_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    # Port 0 asks the kernel for a free port (tests, the demo); the bound port is logged.
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("must be 'host:port' with a port in 0..65535")
    host = host.strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("host must be an IP address or 'localhost'") from None
    return value


Listen = Annotated[str, AfterValidator(_parse_listen)]


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# --------------------------------------------------------------------------- server


class TLSSettings(Strict):
    cert: FilePath
    key: FilePath
    client_ca: FilePath | None = None
    client_cert: Literal["required", "optional", "off"] = "required"
    crl: FilePath | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # agentgate_server_certificate_expiring turns 1 this long before notAfter.
    expiry_warning_days: float = Field(14.0, ge=0, le=365)

    @model_validator(mode="after")
    def _ca_needed(self) -> Self:
        if self.client_cert != "off" and self.client_ca is None:
            raise ValueError("client_ca is required unless client_cert is 'off'")
        return self


class Limits(Strict):
    max_header_bytes: int = Field(16384, ge=1024, le=1 << 20)
    max_headers: int = Field(100, ge=8, le=1000)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    # Open connections per listener (per worker); past it a new connection's first request
    # gets 503 + Connection: close, and past that plus 32 it is closed on accept.
    max_connections: int = Field(1024, ge=1, le=1_000_000)


class Timeouts(Strict):
    header_read_s: float = Field(10.0, gt=0)
    idle_s: float = Field(75.0, gt=0)  # keep-alive: an idle connection is closed after this
    # Longest gap between two request body reads while the gateway waits for the body (408).
    body_read_s: float = Field(30.0, gt=0)
    # Longest a response write may wait for a caller that does not read (connection aborted).
    send_s: float = Field(30.0, gt=0)
    upstream_connect_s: float = Field(2.0, gt=0)
    # Non-stream routes: the whole exchange, response body included. Stream routes: unused.
    upstream_total_s: float = Field(30.0, gt=0)
    upstream_headers_s: float = Field(30.0, gt=0)  # request sent -> response head received
    upstream_idle_s: float = Field(30.0, gt=0)  # longest gap between body chunks / ws frames
    pdp_s: float = Field(0.5, gt=0)
    drain_s: float = Field(15.0, ge=0)


class Forwarded(Strict):
    trusted_hops: int = Field(0, ge=0, le=16)


class ServerSettings(Strict):
    listen: Listen = "127.0.0.1:8443"
    tls: TLSSettings | None = None
    admin_listen: Listen = "127.0.0.1:9901"
    trust_domain: str = "example.org"
    spiffe_id: str | None = None  # the gateway's own identity; default spiffe://<td>/gateway
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    forwarded: Forwarded = Forwarded()
    strip_headers: tuple[str, ...] = ()  # extra identity headers never forwarded

    @field_validator("strip_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)

    @property
    def gateway_spiffe_id(self) -> str:
        return self.spiffe_id or f"spiffe://{self.trust_domain}/gateway"


# --------------------------------------------------------------------------- issuers

Algorithm = Literal[
    "ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
]


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


# --------------------------------------------------------------------------- authn


SubjectKind = Literal["user", "agent", "service", "device"]
_DEFAULT_SUBJECT_TYPES: dict[str, SubjectKind] = {
    "/agent/": "agent",
    "/device/": "device",
    "/user/": "user",
}


class MTLSMethod(Strict):
    type: Literal["mtls"] = "mtls"
    # SPIFFE path prefix -> subject type; the longest matching prefix wins, default "service".
    subject_types: dict[str, SubjectKind] = Field(
        default_factory=lambda: dict(_DEFAULT_SUBJECT_TYPES)
    )
    require_spiffe_id: bool = True
    trust_domains: tuple[str, ...] = ()  # empty: only server.trust_domain


class DPoPSettings(Strict):
    algorithms: tuple[Algorithm, ...] = ("ES256", "EdDSA")
    iat_window_s: float = Field(60.0, gt=0, le=600)
    require_nonce: bool = False
    nonce_ttl_s: float = Field(300.0, gt=0)


class BearerMethod(Strict):
    """``require_typ`` and ``introspect`` left unset inherit each issuer's; set (``null``
    included: no typ check) they override it for this method."""

    type: Literal["bearer"] = "bearer"
    issuers: tuple[str, ...]
    require_typ: str | None = "at+jwt"
    introspect: IntrospectMode | None = None
    sender_constraint: Literal["off", "optional", "required"] = "optional"
    max_token_bytes: int = Field(8192, ge=256, le=65536)
    dpop: DPoPSettings = DPoPSettings()
    verified_cache_entries: int = Field(10000, ge=0)


class APIKeyMethod(Strict):
    type: Literal["api_key"] = "api_key"
    header: str = "X-API-Key"
    query_param: str | None = None
    keys_file: FilePath


class BasicMethod(Strict):
    type: Literal["basic"] = "basic"
    users_file: FilePath
    realm: str = "agentgate"
    max_concurrent_verifications: int = Field(4, ge=1, le=256)
    success_cache_s: float = Field(60.0, ge=0)


class HMACMethod(Strict):
    type: Literal["hmac"] = "hmac"
    keys_file: FilePath
    max_skew_s: float = Field(30.0, gt=0, le=600)
    replay_window_s: float = Field(300.0, gt=0)
    required_components: tuple[str, ...] = ("@method", "@target-uri", "content-digest", "created")


class TxnTokenMethod(Strict):
    """East-west: verify the gateway's own Txn-Tokens (DESIGN.md §2)."""

    type: Literal["txn_token"] = "txn_token"
    leeway_s: float = Field(5.0, ge=0, le=60)


class JWTAssertionMethod(Strict):
    type: Literal["jwt_assertion"] = "jwt_assertion"
    agents_file: FilePath
    audience: str | None = None  # default: https://<trust_domain>/ (the gateway)
    algorithms: tuple[Algorithm, ...] = ("ES256", "EdDSA")
    max_lifetime_s: float = Field(300.0, gt=0, le=3600)
    leeway_s: float = Field(30.0, ge=0, le=300)


AuthnMethod = Annotated[
    MTLSMethod
    | BearerMethod
    | APIKeyMethod
    | BasicMethod
    | HMACMethod
    | JWTAssertionMethod
    | TxnTokenMethod,
    Field(discriminator="type"),
]
AUTHN_TYPES = ("mtls", "bearer", "api_key", "basic", "hmac", "jwt_assertion", "txn_token")


def _default_type(value: Any) -> Any:
    """``authn: {bearer: {...}}`` means type bearer; other names must say ``type``."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for name, body in value.items():
        body = {} if body is None else body
        if isinstance(body, dict) and "type" not in body and name in AUTHN_TYPES:
            body = {**body, "type": name}
        out[name] = body
    return out


AuthnMethods = Annotated[dict[str, AuthnMethod], BeforeValidator(_default_type)]


class CallerRules(Strict):
    """How the caller type (DESIGN.md §7 ``caller``) is classified."""

    agent_client_ids: tuple[str, ...] = ()  # OAuth clients that are registered agents
    device_spiffe_paths: tuple[str, ...] = ("/device/",)
    agent_spiffe_paths: tuple[str, ...] = ("/agent/",)
    browser_hints: bool = True  # Sec-Fetch-* / a browser User-Agent with a user token


# --------------------------------------------------------------------------- pdp


class DecisionCache(Strict):
    ttl_s: float = Field(1.0, ge=0, le=60)
    max_entries: int = Field(10000, ge=0)


class PDPSettings(Strict):
    engine: Literal["embedded", "opa"] = "embedded"
    policies: DirPath | None = None
    data: FilePath | None = None
    url: str = "http://127.0.0.1:8181"
    decision: str = "agentgate/authz/decision"
    cache: DecisionCache = DecisionCache()

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError for a port that does not parse
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _engine(self) -> Self:
        if self.engine == "embedded" and self.policies is None:
            raise ValueError("policies is required for the embedded engine")
        return self


# --------------------------------------------------------------------------- txn tokens


class TxnTokenSettings(Strict):
    """Transaction Tokens minted by the gateway (DESIGN.md §8, SPECS.md §1)."""

    issuer: str = "https://gateway.example.org"
    ttl_s: float = Field(60.0, gt=0, le=300)  # SECURITY: hard max 300 s
    # PEM private keys; the first is the active signing key, the others are still
    # published (rotation). ``signing_key`` is the single-key shorthand.
    signing_key: FilePath | None = None
    keys: tuple[FilePath, ...] = ()
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    header: str = "Txn-Token"
    jwks_max_age_s: int = Field(300, ge=0, le=86400)
    # Workloads (SPIFFE IDs, exact or prefix ending in "/") allowed to call POST /token.
    token_service_clients: tuple[str, ...] = ()
    replay_check: bool = False  # east-west: refuse a (txn, route) pair seen before

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if (self.signing_key is None) == (not self.keys):
            raise ValueError("give exactly one of signing_key or keys")
        return self

    @property
    def key_files(self) -> tuple[Path, ...]:
        return (self.signing_key,) if self.signing_key is not None else self.keys


# --------------------------------------------------------------------------- telemetry


class BehaviorSettings(Strict):
    """Per-agent sliding windows exposed to policy as ``input.behavior``."""

    enabled: bool = True
    window_s: float = Field(60.0, gt=0, le=3600)
    max_agents: int = Field(100_000, ge=1)


# The fields of telemetry.access_log_format (gateway.observability.access_log fills them).
ACCESS_LOG_FIELDS = frozenset(
    {
        "time",  # RFC 3339 UTC, milliseconds
        "client",  # the client address (after forwarded.trusted_hops)
        "peer",  # the TCP peer address
        "method",
        "path",  # normalised, no query (a query may carry a credential)
        "host",
        "status",
        "reason",  # the stable reason code: ok, policy_denied, ...
        "duration_ms",
        "route",
        "subject",
        "agent",
        "decision_id",
        "request_id",
        "trace_id",
        "txn",
    }
)
ACCESS_LOG_FORMAT = (
    '{time} {client} "{method} {path}" {status} {duration_ms}ms route={route} '
    "subject={subject} reason={reason} request_id={request_id}"
)


class TelemetrySettings(Strict):
    service_name: str = "agentgate"
    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318 (OTLP/HTTP); None: no export
    sample_ratio: float = Field(1.0, ge=0, le=1)
    # Whether a caller's traceparent may start our trace. Internal callers presenting a
    # verified Txn-Token are always continued; external ones only when this is true.
    trust_inbound_trace: bool = False
    otlp_metrics: bool = False
    audit_log: Literal["stdout", "off"] | AnyPath = "stdout"
    decision_log: Literal["stdout", "off"] | AnyPath = "off"
    # One readable line per request (gateway.observability.access_log); off by default, as the
    # audit record already goes to stdout.
    access_log: Literal["stdout", "stderr", "off"] | AnyPath = "off"
    access_log_format: str = ACCESS_LOG_FORMAT
    behavior: BehaviorSettings = BehaviorSettings()

    @field_validator("audit_log", "decision_log", "access_log", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; that is what the operator meant.
        return "off" if value is False else value

    @field_validator("access_log_format")
    @classmethod
    def _access_log_fields(cls, value: str) -> str:
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"not a format template: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in ACCESS_LOG_FIELDS:
                known = ", ".join(sorted(ACCESS_LOG_FIELDS))
                raise ValueError(f"unknown field {{{name}}}; known: {known}")
            if spec or conversion:
                raise ValueError(f"{{{name}}}: no format spec or conversion")
        return value


# --------------------------------------------------------------------------- state


class StateSettings(Strict):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: SecretRef | None = None  # a reference: the URL may carry a password
    key_prefix: str = "agentgate:"
    timeout_s: float = Field(0.25, gt=0, le=5)
    revocation_poll_s: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _url(self) -> Self:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("redis_url is required for the redis backend")
        return self


class AdminSettings(Strict):
    """The admin API (revocation) on the admin listener; never open."""

    token: SecretRef | None = None  # bearer token for /admin/*; None: admin API disabled


# --------------------------------------------------------------------------- routes


class UpstreamTLS(Strict):
    ca: FilePath | None = None  # default: the system trust store
    cert: FilePath | None = None  # client certificate presented to the upstream
    key: FilePath | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        return self


class RouteMatch(Strict):
    path_prefix: str = "/"
    methods: tuple[str, ...] = ()  # empty: any method
    hosts: tuple[str, ...] = ()  # empty: any host; "*.example.org" wildcards one label+

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in value)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower() for h in value)


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


AuthnTree = str | dict[str, Any]
BIND_KINDS = ("actor", "assertion")  # bearer act.sub / jwt_assertion iss, against the peer


class Bind(Strict):
    """Identity binding across methods (README "Binding identities"): each key names a
    credential whose claimed workload must be the mTLS peer. Empty: no binding."""

    actor: Literal["peer"] | None = None
    assertion: Literal["peer"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        # `bind: off` (YAML 1.1 reads it as false) and `bind: {}` both mean "no binding".
        return {} if value is False or value == "off" or value is None else value


def parse_bind(value: Any) -> Bind:
    """A ``bind`` value of a route or an ``all_of`` node; ValueError if malformed."""
    try:
        return Bind.model_validate(value)
    except ValidationError:
        raise ValueError("bind must be off, {} or a mapping of actor/assertion to 'peer'") from None


def tree_node(node: dict[str, Any]) -> tuple[str, list[Any], Bind | None]:
    """(operator, children, explicit bind or None) of a validated tree node."""
    op = next(k for k in node if k != "bind")
    return op, node[op], parse_bind(node["bind"]) if "bind" in node else None


MAX_AUTHN_DEPTH = 16  # nested any_of/all_of levels; deeper trees are refused


def _check_tree(node: Any, path: str = "", depth: int = 0) -> None:
    # Problems carry their position inside the tree as "<at:any_of.1> ..." so that
    # _problems can append it to the key path of the route's ``authn``.
    at = f"<at:{path}> " if path else ""
    if isinstance(node, str):
        return
    if depth >= MAX_AUTHN_DEPTH:
        # Bounded here, so that no recursion over the tree (here, tree_names, the composed
        # authenticator) can exhaust the stack: a RecursionError is not a ConfigError.
        raise ValueError(f"{at}nested deeper than {MAX_AUTHN_DEPTH} levels")
    ops = [k for k in node if k != "bind"] if isinstance(node, dict) else []
    if len(ops) != 1:
        raise ValueError(f"{at}must be a method name or one of {{any_of: [...]}} {{all_of: [...]}}")
    op, children = ops[0], node[ops[0]]
    if op not in ("any_of", "all_of"):
        raise ValueError(f"{at}unknown operator {op!r} (any_of | all_of)")
    if "bind" in node:
        where = f"<at:{path}.bind>" if path else "<at:bind>"
        if op != "all_of":
            raise ValueError(f"{where} only an all_of node (or the route) can bind")
        try:
            parse_bind(node["bind"])
        except ValueError as exc:
            raise ValueError(f"{where} {exc}") from None
    inner = f"{path}.{op}" if path else op
    if not isinstance(children, list) or not children:
        raise ValueError(f"<at:{inner}> must be a non-empty list")
    for i, child in enumerate(children):
        _check_tree(child, f"{inner}.{i}", depth + 1)


def tree_names(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    names: set[str] = set()
    for child in tree_node(node)[1]:
        names |= tree_names(child)
    return names


class RateLimit(Strict):
    """A token bucket: ``rate`` tokens per second, ``burst`` deep, per key."""

    per: Literal["agent", "subject", "route", "client"] = "subject"
    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class RouteTimeouts(Strict):
    """Per-route overrides of ``server.timeouts.upstream_*``; ``None``: the server's value."""

    connect_s: float | None = Field(None, gt=0)
    headers_s: float | None = Field(None, gt=0)
    idle_s: float | None = Field(None, gt=0)
    total_s: float | None = Field(None, gt=0)  # non-stream routes only
    max_s: float | None = Field(None, gt=0)  # stream/websocket routes: lifetime cap (None: none)


class Route(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: RouteMatch = RouteMatch()
    authn: AuthnTree | None = None
    # None: the defaults (every all_of combining mtls with bearer/jwt_assertion binds them);
    # a value binds the whole tree; `off` / {} also switches the defaults off.
    bind: Bind | None = None
    upstream: str
    upstream_tls: UpstreamTLS | None = None
    strip_prefix: bool = False
    segment: str = "default"
    tags: tuple[str, ...] = ()
    policy_headers: tuple[str, ...] = ()  # request headers the policy may see
    # The default backend credential; ``None`` means txn_token when txn_tokens is
    # configured, otherwise none. ``credentials`` are named alternatives a decision may
    # pick (decision ``credential: <name>``).
    credential: CredentialSettings | None = None
    credentials: dict[str, CredentialSettings] = Field(default_factory=dict)
    send_txn_token: bool = True  # the minted Txn-Token goes upstream with any credential
    rate_limits: tuple[RateLimit, ...] = ()
    # A long-lived response (SSE, MCP event stream): no total cap, only idle_s and max_s.
    stream: bool = False
    # WebSocket upgrades are proxied (after authn and the decision); elsewhere refused (403).
    websocket: bool = False
    websocket_max_message_bytes: int = Field(1024 * 1024, ge=125, le=64 * 1024 * 1024)
    timeouts: RouteTimeouts = RouteTimeouts()

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _mtls_needs_https(self) -> Self:
        # SECURITY: a client certificate only exists on a TLS connection; on http:// the
        # credential would silently vanish and the request go out with none.
        creds = [self.credential, *self.credentials.values()]
        if not self.upstream.startswith("https:") and any(
            isinstance(c, MTLSCredential) for c in creds
        ):
            raise ValueError("an mtls credential needs an https:// upstream")
        return self

    @field_validator("authn")
    @classmethod
    def _authn(cls, value: AuthnTree | None) -> AuthnTree | None:
        if value is not None:
            _check_tree(value)
        return value

    @field_validator("policy_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)


# --------------------------------------------------------------------------- root


class Settings(Strict):
    server: ServerSettings = ServerSettings()
    issuers: tuple[Issuer, ...] = ()
    authn: AuthnMethods = Field(default_factory=dict)
    callers: CallerRules = CallerRules()
    pdp: PDPSettings | None = None
    txn_tokens: TxnTokenSettings | None = None
    telemetry: TelemetrySettings = TelemetrySettings()
    state: StateSettings = StateSettings()
    admin: AdminSettings = AdminSettings()
    routes: tuple[Route, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems: list[str] = []
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.name in seen:
                problems.append(f"routes.{i}.name: duplicate route name {route.name!r}")
            seen.add(route.name)
            if route.authn is not None:
                for name in sorted(tree_names(route.authn) - set(self.authn)):
                    problems.append(f"routes.{i}.authn: method {name!r} is not defined in authn")
        tts = self.txn_tokens is not None and self.txn_tokens.token_service_clients
        if tts and self.pdp is None:
            problems.append("txn_tokens.token_service_clients: POST /token needs a pdp")
        if self.txn_tokens is None:
            for name, method in self.authn.items():
                if isinstance(method, TxnTokenMethod):
                    problems.append(f"authn.{name}: the txn_token method needs txn_tokens")
        issuer_names = {iss.name for iss in self.issuers}
        by_name = {iss.name: iss for iss in self.issuers}
        for name, method in self.authn.items():
            if isinstance(method, BearerMethod):
                for iss in method.issuers:
                    if iss not in issuer_names:
                        problems.append(f"authn.{name}.issuers: issuer {iss!r} is not defined")
                    elif method.introspect == "always" and by_name[iss].introspection is None:
                        problems.append(
                            f"authn.{name}.introspect: issuer {iss!r} has no introspection"
                        )
        if problems:
            raise ValueError("\n".join(problems))
        return self


# --------------------------------------------------------------------------- loading


def _loc(loc: tuple[int | str, ...]) -> str:
    # pydantic puts union members and discriminator tags in loc; keep only real keys.
    parts: list[str] = []
    for p in loc:
        if isinstance(p, str) and ("[" in p or p in _TAGS):
            continue
        if isinstance(p, str) and p in _DISCRIMINATED and _tagged_position(parts):
            continue
        parts.append(_key_text(str(p)))
    return ".".join(parts)


_PLAIN_KEY = re.compile(r'[^\s."\\]+')


def _key_text(key: str) -> str:
    """A key as a path component: quoted (JSON, ASCII) when it is empty, holds a '.', a
    quote, a backslash, whitespace or anything unprintable, so that a path stays one
    unambiguous line (a key "a.b" is not the path a -> b; a newline cannot split a line)."""
    return key if _PLAIN_KEY.fullmatch(key) and key.isprintable() else json.dumps(key)


def _tagged_position(parts: list[str]) -> bool:
    """After ``credential``, ``authn.<name>`` or ``credentials.<name>`` comes a union tag."""
    if parts and parts[-1] == "credential":
        return True
    return len(parts) >= 2 and parts[-2] in ("authn", "credentials")


_TAGS = frozenset({"str", "dict[str,any]"})
_DISCRIMINATED = frozenset(
    {
        *AUTHN_TYPES,
        "none",
        "txn_token",
        "api_key",
        "basic",
        "bearer_static",
        "oauth_client_credentials",
        "token_exchange",
        "mtls",
        "hmac_sign",
        "signed_jwt",
    }
)


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return "'type' is required"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"unknown type {ctx.get('tag')!r} (one of {ctx.get('expected_tags')})"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False):
        path, msg = _loc(err["loc"]), _message(err)
        if msg.startswith("<at:"):
            inner, _, msg = msg[4:].partition("> ")
            path = f"{path}.{inner}" if path else inner
            out.append((path, msg))
        elif not path:
            # Cross-field checks report "path: message" lines of their own.
            for line in msg.splitlines():
                key, sep, text = line.partition(": ")
                out.append((key, text) if sep else ("", line))
        else:
            out.append((path, msg))
    return out


def parse_settings(data: Any, base_dir: Path) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", "the configuration must be a mapping at the top level")])
    try:
        return Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


MAX_YAML_DEPTH = 64  # nested mappings/sequences in a configuration file


def _check_yaml_depth(text: str, path: Path) -> None:
    """Refuse deeper nesting than MAX_YAML_DEPTH before PyYAML's recursive composer runs.

    PyYAML's composer recurses once per level (a RecursionError near 1000 levels), and its
    pure-Python scanner is quadratic in the depth of flow collections ('[[[[...': half a
    second for 4 KB). The events come from libyaml when it is installed (linear, and it
    stops at 1000 levels by itself); only the depth is decided here.
    """
    too_deep = ConfigError([("", f"{path}: nested deeper than {MAX_YAML_DEPTH} levels")])
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            _yaml_depth(yaml.parse(text, Loader=loader), too_deep)
            return
        except yaml.YAMLError as exc:
            if "maximum nesting depth" in str(exc):
                raise too_deep from None
            # Any other libyaml complaint: let PyYAML itself judge the file, as always.
    _yaml_depth(yaml.parse(text, Loader=yaml.SafeLoader), too_deep)


def _yaml_depth(events: Iterator[yaml.Event], too_deep: ConfigError) -> None:
    depth = 0
    for event in events:
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise too_deep
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_settings(path: Path) -> Settings:
    """Read and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"{path}: not UTF-8 text (byte {exc.start})")]) from None
    try:
        _check_yaml_depth(text, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([("", f"{path}: invalid YAML{where}")]) from None
    except ValueError as exc:
        # PyYAML's constructors raise plain ValueErrors, e.g. for the date 2001-02-30.
        raise ConfigError([("", f"{path}: invalid YAML value: {str(exc)[:100]}")]) from None
    if data is None:
        raise ConfigError([("", f"{path}: the configuration file is empty")])
    return parse_settings(data, path.resolve().parent)


def json_schema() -> str:
    return json.dumps(Settings.model_json_schema(), indent=2, sort_keys=True) + "\n"
