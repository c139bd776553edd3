"""The registry of authentication methods: type id -> handler class (Oathkeeper's shape).

Each method module declares, on its handler class, the ``type`` it implements (the config
key ``authn.<name>.type``, which is also how the YAML shorthand ``authn: {bearer: {...}}``
names it), the settings model it reads, and how it is built from the configuration::

    @register
    class APIKeyAuthenticator:
        type_id = "api_key"
        config_model = APIKeyMethod
        primary_rank = 4       # which success becomes the subject (lower wins)
        scoped = False         # does the credential carry OAuth scopes?

        @classmethod
        def from_settings(cls, name, cfg, env): ...

:func:`build` looks the type of each configured method up; an unknown type, or a settings
model that does not belong to the handler, is a :class:`gateway.errors.ConfigError` naming
``authn.<name>``. Settings itself refuses unknown types first (a discriminated union); the
registry is the second lock, and ``tests/unit/authn/test_registry.py`` checks that both list
the same types.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from gateway.authn.base import Method
from gateway.authn.jwks import DevKeys
from gateway.errors import ConfigError
from gateway.sdk.txn import TxnTokenVerifier
from gateway.settings.root import Settings
from gateway.state import ReplayCache

# The modules that hold the handlers, imported once on first use (so that importing the
# registry alone does not pull in every verifier's dependencies).
METHOD_MODULES = (
    "gateway.authn.mtls",
    "gateway.authn.jwt_bearer",
    "gateway.authn.api_key",
    "gateway.authn.basic",
    "gateway.authn.hmac_signature",
    "gateway.authn.jwt_assertion",
    "gateway.authn.txn_token",
    "gateway.authn.agent_credential",
)


@dataclass(frozen=True, slots=True)
class BuildEnv:
    """What a handler may need besides its own settings."""

    settings: Settings
    replay: ReplayCache
    txn_verifier: TxnTokenVerifier | None = None
    dev_keys: DevKeys | None = None  # development issuers' key loader (devtools, wired by app)


class MethodType(Protocol):
    type_id: ClassVar[str]
    config_model: ClassVar[type[Any]]
    primary_rank: ClassVar[int]
    scoped: ClassVar[bool]

    @classmethod
    def from_settings(cls, name: str, cfg: Any, env: BuildEnv) -> Method: ...


_T = TypeVar("_T")
_REGISTRY: dict[str, type[MethodType]] = {}


def register(cls: type[_T]) -> type[_T]:
    """Class decorator: add a handler under its ``type_id`` (a duplicate is a bug)."""
    type_id = getattr(cls, "type_id", None)
    if not isinstance(type_id, str) or not type_id:
        raise TypeError(f"{cls.__name__} declares no type_id")
    if type_id in _REGISTRY and _REGISTRY[type_id] is not cls:
        raise TypeError(f"authn type {type_id!r} registered twice")
    _REGISTRY[type_id] = cls  # type: ignore[assignment]
    return cls


def _load() -> dict[str, type[MethodType]]:
    for module in METHOD_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def method_types() -> dict[str, type[MethodType]]:
    """Every registered handler class by type id."""
    return dict(_load())


def lookup(name: str, type_id: str) -> type[MethodType]:
    handler = _load().get(type_id)
    if handler is None:
        raise ConfigError([(f"authn.{name}.type", f"unknown authentication method {type_id!r}")])
    return handler


def build(env: BuildEnv) -> dict[str, Method]:
    """One handler per configured method, in configuration order."""
    methods: dict[str, Method] = {}
    for name, cfg in env.settings.authn.items():
        handler = lookup(name, cfg.type)
        if not isinstance(cfg, handler.config_model):
            raise ConfigError([(f"authn.{name}", f"settings of type {cfg.type!r} do not match")])
        methods[name] = handler.from_settings(name, cfg, env)
    return methods


def factory(type_id: str) -> Callable[..., Method]:
    """The handler class of ``type_id`` (tests and tools build single methods with it)."""
    return lookup(type_id, type_id)  # type: ignore[return-value]
