"""``authn`` (the methods, keyed by name) and ``callers``, and the ``any_of``/``all_of`` tree of
a route (DESIGN.md §4)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.settings.base import Algorithm, FilePath, Strict
from gateway.settings.issuers import IntrospectMode

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


class AgentCredentialMethod(Strict):
    """Agent credentials with provenance (``Agent-Credential`` + RFC 9421, gateway.agents);
    keys and limits come from the ``agent_credentials`` section."""

    type: Literal["agent_credential"] = "agent_credential"


AuthnMethod = Annotated[
    MTLSMethod
    | BearerMethod
    | APIKeyMethod
    | BasicMethod
    | HMACMethod
    | JWTAssertionMethod
    | TxnTokenMethod
    | AgentCredentialMethod,
    Field(discriminator="type"),
]


AUTHN_TYPES = (
    "mtls",
    "bearer",
    "api_key",
    "basic",
    "hmac",
    "jwt_assertion",
    "txn_token",
    "agent_credential",
)


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


class AnyOf(Strict):
    """``{any_of: [...]}``: holds when one child holds."""

    any_of: tuple[AuthnTree, ...] = Field(min_length=1)


class AllOf(Strict):
    """``{all_of: [...], bind: ...}``: holds when every child holds; may bind identities."""

    all_of: tuple[AuthnTree, ...] = Field(min_length=1)
    bind: Bind | None = None

    @field_validator("bind", mode="before")
    @classmethod
    def _explicit(cls, value: Any) -> Any:
        # `bind:` with no value is still an explicit bind (no binding), unlike no key at all.
        return {} if value is None else value


# A route's ``authn``: a method name, or an operator node over further trees. The raw YAML is
# checked by :func:`check_tree` first, so that every problem names its position in the tree.
AuthnTree = str | AnyOf | AllOf


def tree_node(node: AnyOf | AllOf) -> tuple[str, tuple[AuthnTree, ...], Bind | None]:
    """(operator, children, explicit bind or None) of a tree node."""
    if isinstance(node, AnyOf):
        return "any_of", node.any_of, None
    return "all_of", node.all_of, node.bind


MAX_AUTHN_DEPTH = 16  # nested any_of/all_of levels; deeper trees are refused


def check_tree(node: Any, path: str = "", depth: int = 0) -> None:
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
        check_tree(child, f"{inner}.{i}", depth + 1)


def tree_names(node: AuthnTree) -> set[str]:
    if isinstance(node, str):
        return {node}
    names: set[str] = set()
    for child in tree_node(node)[1]:
        names |= tree_names(child)
    return names


AnyOf.model_rebuild()
AllOf.model_rebuild()
