"""Typed, strict configuration (DESIGN.md §4), one module per section.

This package is the only code that reads the environment or configuration files. Every model
forbids unknown keys, so a misspelt key is an error that names its path. Relative paths resolve
against the folder of the config file. Secret references (``env:NAME`` / ``file:path``) are
resolved once, at load time, into :class:`gateway.secret.Secret` values whose ``repr``/``str``
never show the value. :func:`load_settings` raises :class:`gateway.errors.ConfigError` listing
every problem as ``path.to.key: message``.
"""

from gateway.secret import Secret, SecretUnavailable, resolve_secret
from gateway.settings.admin import AdminSettings
from gateway.settings.authn import (
    AUTHN_TYPES,
    BIND_KINDS,
    MAX_AUTHN_DEPTH,
    AllOf,
    AnyOf,
    APIKeyMethod,
    AuthnMethod,
    AuthnMethods,
    AuthnTree,
    BasicMethod,
    BearerMethod,
    Bind,
    CallerRules,
    DPoPSettings,
    HMACMethod,
    JWTAssertionMethod,
    MTLSMethod,
    SubjectKind,
    TxnTokenMethod,
    check_tree,
    parse_bind,
    tree_names,
    tree_node,
)
from gateway.settings.authz import DecisionCache, PDPSettings
from gateway.settings.base import (
    Algorithm,
    AnyPath,
    DirPath,
    FilePath,
    Listen,
    SecretRef,
    Strict,
    split_listen,
)
from gateway.settings.credentials import (
    APIKeyCredential,
    BasicCredential,
    BearerStaticCredential,
    CredentialSettings,
    HMACSignCredential,
    MTLSCredential,
    NoCredential,
    OAuthClientCredentials,
    SignedJWTCredential,
    TokenExchangeCredential,
    TxnTokenCredential,
)
from gateway.settings.issuers import (
    RESERVED_SUBJECT_KEYS,
    Introspection,
    IntrospectMode,
    Issuer,
    JWKSCache,
)
from gateway.settings.loading import MAX_YAML_DEPTH, json_schema, load_settings, parse_settings
from gateway.settings.root import Settings
from gateway.settings.routes import RateLimit, Route, RouteMatch, RouteTimeouts, UpstreamTLS
from gateway.settings.server import Forwarded, Limits, ServerSettings, Timeouts, TLSSettings
from gateway.settings.state import StateSettings
from gateway.settings.telemetry import (
    ACCESS_LOG_FIELDS,
    ACCESS_LOG_FORMAT,
    BehaviorSettings,
    TelemetrySettings,
)
from gateway.settings.tokens import TxnTokenSettings

__all__ = [
    "ACCESS_LOG_FIELDS",
    "ACCESS_LOG_FORMAT",
    "AUTHN_TYPES",
    "BIND_KINDS",
    "MAX_AUTHN_DEPTH",
    "MAX_YAML_DEPTH",
    "RESERVED_SUBJECT_KEYS",
    "APIKeyCredential",
    "APIKeyMethod",
    "AdminSettings",
    "Algorithm",
    "AllOf",
    "AnyOf",
    "AnyPath",
    "AuthnMethod",
    "AuthnMethods",
    "AuthnTree",
    "BasicCredential",
    "BasicMethod",
    "BearerMethod",
    "BearerStaticCredential",
    "BehaviorSettings",
    "Bind",
    "CallerRules",
    "CredentialSettings",
    "DPoPSettings",
    "DecisionCache",
    "DirPath",
    "FilePath",
    "Forwarded",
    "HMACMethod",
    "HMACSignCredential",
    "IntrospectMode",
    "Introspection",
    "Issuer",
    "JWKSCache",
    "JWTAssertionMethod",
    "Limits",
    "Listen",
    "MTLSCredential",
    "MTLSMethod",
    "NoCredential",
    "OAuthClientCredentials",
    "PDPSettings",
    "RateLimit",
    "Route",
    "RouteMatch",
    "RouteTimeouts",
    "Secret",
    "SecretRef",
    "SecretUnavailable",
    "ServerSettings",
    "Settings",
    "SignedJWTCredential",
    "StateSettings",
    "Strict",
    "SubjectKind",
    "TLSSettings",
    "TelemetrySettings",
    "Timeouts",
    "TokenExchangeCredential",
    "TxnTokenCredential",
    "TxnTokenMethod",
    "TxnTokenSettings",
    "UpstreamTLS",
    "check_tree",
    "json_schema",
    "load_settings",
    "parse_bind",
    "parse_settings",
    "resolve_secret",
    "split_listen",
    "tree_names",
    "tree_node",
]
