"""The credential converters by id: ``type`` in config = module name = registry key.

Each converter module declares one :class:`Registration`: its id, its config model (the
pydantic class in :mod:`gateway.settings`, whose ``type`` literal is the id) and how to build
it. :data:`REGISTRY` is the table of them, built from the explicit list of modules below (no
import side effects, nothing loaded by name from config). :func:`build` looks a credential up
by its ``type``; a type with no converter is a configuration error (``ValueError``), never a
silent "send no credential": settings already refuse unknown types, so this guards a model
added to settings without a converter.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from gateway.credentials import (
    BuildContext,
    Converter,
    Registration,
    api_key,
    basic,
    bearer_static,
    hmac_sign,
    mtls,
    none,
    oauth_client_credentials,
    signed_jwt,
    token_exchange,
    txn_token,
)

__all__ = ["MODULES", "REGISTRY", "BuildContext", "Registration", "build"]


def _table(modules: Iterable[ModuleType]) -> dict[str, Registration[Any]]:
    table: dict[str, Registration[Any]] = {}
    for module in modules:
        registration: Registration[Any] = module.REGISTRATION
        if registration.id in table:
            raise RuntimeError(f"credential type {registration.id!r} registered twice")
        table[registration.id] = registration
    return table


MODULES: tuple[ModuleType, ...] = (
    none,
    txn_token,
    api_key,
    basic,
    bearer_static,
    oauth_client_credentials,
    token_exchange,
    mtls,
    hmac_sign,
    signed_jwt,
)
REGISTRY: dict[str, Registration[Any]] = _table(MODULES)


def build(name: str, cfg: BaseModel, ctx: BuildContext, *, where: str = "credential") -> Converter:
    """The converter for ``cfg``; ``ValueError`` naming ``where`` if its type has none."""
    kind = getattr(cfg, "type", None)
    registration = REGISTRY.get(kind) if isinstance(kind, str) else None
    if registration is None or not isinstance(cfg, registration.config):
        raise ValueError(f"{where}: unknown credential type {kind!r}")
    return registration.build(name, cfg, ctx)
