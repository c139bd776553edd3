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
from collections.abc import Mapping
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

from gateway.errors import ConfigError

# --------------------------------------------------------------------------- helpers


class Secret:
    """A resolved secret. The value is reachable only through :meth:`reveal`."""

    __slots__ = ("_value", "ref")

    def __init__(self, ref: str, value: bytes) -> None:
        self.ref = ref  # e.g. "env:BILLING_KEY": safe to show
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def reveal_str(self) -> str:
        return self._value.decode("utf-8")

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)


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
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    # A trailing newline in a secret file is an editor artefact, never part of the secret.
    return Secret(f"file:{path}", data.rstrip(b"\r\n"))


def _secret(value: Any, info: ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a secret reference 'env:NAME' or 'file:path'")
    return resolve_secret(value, _base_dir(info))


def _existing_file(value: Any, info: ValidationInfo) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = _base_dir(info) / path
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _existing_dir(value: Any, info: ValidationInfo) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = _base_dir(info) / path
    if not path.is_dir():
        raise ValueError(f"directory not found: {path}")
    return path


def _any_path(value: Any, info: ValidationInfo) -> Path:
    path = Path(value)
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

    @model_validator(mode="after")
    def _ca_needed(self) -> Self:
        if self.client_cert != "off" and self.client_ca is None:
            raise ValueError("client_ca is required unless client_cert is 'off'")
        return self


class Limits(Strict):
    max_header_bytes: int = Field(16384, ge=1024, le=1 << 20)
    max_headers: int = Field(100, ge=8, le=1000)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)


class Timeouts(Strict):
    header_read_s: float = Field(10.0, gt=0)
    idle_s: float = Field(75.0, gt=0)
    upstream_connect_s: float = Field(2.0, gt=0)
    upstream_total_s: float = Field(30.0, gt=0)
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

    @model_validator(mode="after")
    def _keys(self) -> Self:
        if (self.jwks_uri is None) == (self.jwks_file is None) and self.introspection is None:
            raise ValueError("exactly one of jwks_uri or jwks_file is required")
        if self.jwks_uri is not None and self.jwks_file is not None:
            raise ValueError("jwks_uri and jwks_file are mutually exclusive")
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
    # SPIFFE path prefix -> subject type; first match wins, default "service".
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
    type: Literal["bearer"] = "bearer"
    issuers: tuple[str, ...]
    require_typ: str | None = "at+jwt"
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


class JWTAssertionMethod(Strict):
    type: Literal["jwt_assertion"] = "jwt_assertion"
    agents_file: FilePath
    audience: str | None = None  # default: https://<trust_domain>/ (the gateway)
    algorithms: tuple[Algorithm, ...] = ("ES256", "EdDSA")
    max_lifetime_s: float = Field(300.0, gt=0, le=3600)
    leeway_s: float = Field(30.0, ge=0, le=300)


AuthnMethod = Annotated[
    MTLSMethod | BearerMethod | APIKeyMethod | BasicMethod | HMACMethod | JWTAssertionMethod,
    Field(discriminator="type"),
]
AUTHN_TYPES = ("mtls", "bearer", "api_key", "basic", "hmac", "jwt_assertion")


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
    decision_log: Literal["stdout", "off"] | AnyPath = "off"

    @model_validator(mode="after")
    def _engine(self) -> Self:
        if self.engine == "embedded" and self.policies is None:
            raise ValueError("policies is required for the embedded engine")
        return self


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


CredentialSettings = Annotated[NoCredential, Field(discriminator="type")]

AuthnTree = str | dict[str, list[Any]]


def _check_tree(node: Any, path: str = "authn") -> None:
    if isinstance(node, str):
        return
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(
            f"{path}: must be a method name or one of {{any_of: [...]}} {{all_of: [...]}}"
        )
    ((op, children),) = node.items()
    if op not in ("any_of", "all_of"):
        raise ValueError(f"{path}: unknown operator {op!r} (any_of | all_of)")
    if not isinstance(children, list) or not children:
        raise ValueError(f"{path}.{op}: must be a non-empty list")
    for i, child in enumerate(children):
        _check_tree(child, f"{path}.{op}.{i}")


def tree_names(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    names: set[str] = set()
    for children in node.values():
        for child in children:
            names |= tree_names(child)
    return names


class Route(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: RouteMatch = RouteMatch()
    authn: AuthnTree | None = None
    upstream: str
    upstream_tls: UpstreamTLS | None = None
    strip_prefix: bool = False
    segment: str = "default"
    tags: tuple[str, ...] = ()
    policy_headers: tuple[str, ...] = ()  # request headers the policy may see
    credential: CredentialSettings = NoCredential(type="none")

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value.rstrip("/")

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
        issuer_names = {iss.name for iss in self.issuers}
        for name, method in self.authn.items():
            if isinstance(method, BearerMethod):
                for iss in method.issuers:
                    if iss not in issuer_names:
                        problems.append(f"authn.{name}.issuers: issuer {iss!r} is not defined")
        if problems:
            raise ValueError("\n".join(problems))
        return self


# --------------------------------------------------------------------------- loading


def _loc(loc: tuple[int | str, ...]) -> str:
    # pydantic puts union/discriminator tags in loc; drop the ones that are not keys.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _TAGS))]
    return ".".join(parts)


_TAGS = frozenset({"str", "dict[str,list[any]]", "none"})


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return f"'type' is required (one of {', '.join(AUTHN_TYPES)})"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"unknown type {ctx.get('tag')!r} (one of {ctx.get('expected_tags')})"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False):
        path, msg = _loc(err["loc"]), _message(err)
        if not path and "\n" in msg:
            # Cross-field checks report "path: message" lines of their own.
            for line in msg.splitlines():
                key, _, text = line.partition(": ")
                out.append((key, text))
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


def load_settings(path: Path) -> Settings:
    """Read and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([("", f"{path}: invalid YAML{where}")]) from None
    return parse_settings(data, path.resolve().parent)


def json_schema() -> str:
    return json.dumps(Settings.model_json_schema(), indent=2, sort_keys=True) + "\n"
