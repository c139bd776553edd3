"""Shared field types of the configuration: secret references, paths relative to the config
file, listen addresses, and the strict base model (unknown keys are errors)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic.functional_serializers import PlainSerializer

from gateway.secret import Secret, resolve_secret


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context if isinstance(info.context, Mapping) else {}
    base = ctx.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


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


Algorithm = Literal[
    "ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
]
