"""Load and validate the YAML credential files of DESIGN.md §4 into typed records.

One loader per file, each returning a tuple of frozen records or raising
:class:`gateway.errors.ConfigError` that lists *every* problem as
``<file>:<dotted.path>: message`` (e.g. ``/etc/agentgate/keys.yaml:keys.0.sha256``):

=====================  =====================================================================
loader                 file shape
=====================  =====================================================================
:func:`load_api_keys`  ``keys: [{id, sha256, subject, roles?, type?}]`` (type default service)
:func:`load_users`     ``users: [{username, hash, roles?, type?}]`` (type default user)
:func:`load_hmac_keys` ``keys: [{id, secret, encoding?, subject, roles?, type?}]``
:func:`load_agents`    ``agents: [{id, jwks: {keys: [...]}, subject?, roles?, type?}]``
=====================  =====================================================================

Rules shared by all four: unknown keys are errors, YAML duplicate keys are errors (PyYAML
would silently keep the last one), values are not coerced (``id: 42`` is an error, not
``"42"``), ids/usernames are unique within a file.

Secrets never appear here in clear: API keys are stored as a SHA-256 digest (64 lowercase hex),
passwords as argon2id or bcrypt hashes only (checked at load), HMAC secrets as ``env:``/``file:``
references (resolved relative to the keys file's folder; at least 32 bytes once decoded,
RFC 8725 §3.5 / RFC 2104 §3), agent JWKs as *public* keys only, each with an ``alg``
(RFC 8725 §3.1: a key is used for exactly one algorithm). No error message contains a value
read from a file; records keep hashes and secrets out of their ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import argon2
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.context import SubjectType
from gateway.errors import ConfigError
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import public_key_from_jwk
from gateway.jose.jws import PublicKey
from gateway.settings.base import SecretRef

MIN_HMAC_KEY_BYTES = 32  # SECURITY: RFC 8725 §3.5 / RFC 2104 §3: >= 256 bits for HMAC-SHA256

# Algorithms an agent key may be pinned to: asymmetric signatures only (RFC 8725 §3.2).
ASSERTION_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
# The JWK key type each JWS algorithm family needs (RFC 7518 §3.1, RFC 8037 §3.1).
_KTY = {"ES": "EC", "Ed": "OKP", "RS": "RSA", "PS": "RSA"}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

_ID_PATTERN = r"^[A-Za-z0-9_.:@/+-]{1,128}$"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")

Id = Annotated[StrictStr, Field(pattern=_ID_PATTERN)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=2048)]
# YAML gives lists; the container is lax (list -> tuple) while every item stays strict.
Roles = Annotated[
    tuple[Annotated[StrictStr, Field(min_length=1, max_length=128)], ...], Field(strict=False)
]


class _Record(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True
    )


# --------------------------------------------------------------------------- api keys


class APIKeyRecord(_Record):
    """One API key, stored as the SHA-256 of the presented key (the key is high-entropy)."""

    id: Id
    sha256: str = Field(repr=False)
    subject: Text
    roles: Roles = ()
    type: SubjectType = "service"

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256_HEX.fullmatch(value):
            raise ValueError("must be the SHA-256 of the key as 64 lowercase hex characters")
        return value


class _APIKeysFile(_Record):
    keys: tuple[APIKeyRecord, ...] = Field(strict=False)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _unique_by(self.keys, "id", "keys")
        _unique_by(self.keys, "sha256", "keys", label="key digest")
        return self


# --------------------------------------------------------------------------- basic users


class BasicUserRecord(_Record):
    """One user of HTTP Basic authentication (RFC 7617) with an argon2id or bcrypt hash."""

    username: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    hash: str = Field(repr=False)
    roles: Roles = ()
    type: SubjectType = "user"

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        # RFC 7617 §2: the user-id cannot contain a colon; control characters are never valid.
        if ":" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("must not contain ':' or control characters (RFC 7617 §2)")
        return value

    @field_validator("hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if hash_scheme(value) is None:
            # SECURITY: only slow, salted password hashes; never plain, MD5, SHA or argon2i/d.
            raise ValueError("must be an argon2id ($argon2id$) or bcrypt ($2b$/$2a$/$2y$) hash")
        return value


def hash_scheme(encoded: str) -> Literal["argon2id", "bcrypt"] | None:
    """``argon2id`` / ``bcrypt`` for a well-formed hash of an accepted kind, else None."""
    if encoded.startswith("$argon2id$"):
        try:
            argon2.extract_parameters(encoded)
        except argon2.exceptions.InvalidHashError:
            return None
        return "argon2id"
    match = _BCRYPT.fullmatch(encoded)
    if match is not None and 4 <= int(match.group(1)) <= 31:
        return "bcrypt"
    return None


class _UsersFile(_Record):
    users: tuple[BasicUserRecord, ...] = Field(strict=False)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _unique_by(self.users, "username", "users")
        return self


# --------------------------------------------------------------------------- hmac keys


class HMACKeyRecord(_Record):
    """A pre-shared secret for RFC 9421 ``hmac-sha256`` signatures."""

    id: Id
    secret: SecretRef
    encoding: Literal["raw", "base64", "hex"] = "raw"  # how the referenced value is written
    subject: Text
    roles: Roles = ()
    type: SubjectType = "service"

    @model_validator(mode="after")
    def _length(self) -> Self:
        if len(self.key()) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"secret is shorter than {MIN_HMAC_KEY_BYTES} bytes once decoded")
        return self

    def key(self) -> bytes:
        """The HMAC key bytes (decoded per ``encoding``); raises ValueError, never shows it."""
        raw = self.secret.reveal()
        try:
            if self.encoding == "base64":
                return base64.b64decode(raw, validate=True)
            if self.encoding == "hex":
                return bytes.fromhex(raw.decode("ascii"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise ValueError(f"secret is not valid {self.encoding}") from None
        return raw


class _HMACKeysFile(_Record):
    keys: tuple[HMACKeyRecord, ...] = Field(strict=False)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _unique_by(self.keys, "id", "keys")
        return self


# --------------------------------------------------------------------------- agents


class _JWK(BaseModel):
    """A public verification key (RFC 7517 §4, RFC 7518 §6) pinned to one ``alg``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kty: Literal["EC", "OKP", "RSA"]
    alg: StrictStr
    kid: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    use: Literal["sig"] | None = None
    key_ops: tuple[StrictStr, ...] | None = Field(None, strict=False)
    crv: StrictStr | None = None
    x: StrictStr | None = None
    y: StrictStr | None = None
    n: StrictStr | None = None
    e: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _public_only(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            private = [m for m in _PRIVATE_JWK_MEMBERS if m in data]
            if private:
                # SECURITY: a private or symmetric key in a trust file is a leak, not a key.
                raise ValueError("private or symmetric key material is not allowed")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.alg not in ASSERTION_ALGORITHMS:
            raise ValueError(f"alg must be one of {', '.join(sorted(ASSERTION_ALGORITHMS))}")
        if self.key_ops is not None and "verify" not in self.key_ops:
            raise ValueError("key_ops must include 'verify'")
        parse_jwk(self.model_dump(exclude_none=True, mode="json"))
        return self


@dataclass(frozen=True, slots=True)
class AgentKey:
    kid: str | None
    alg: str
    key: PublicKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """A registered agent and the public keys its JWT assertions may be signed with."""

    id: str
    subject: str
    roles: tuple[str, ...]
    type: SubjectType
    keys: tuple[AgentKey, ...]


class _JWKS(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    keys: tuple[_JWK, ...] = Field(min_length=1, strict=False)

    @model_validator(mode="after")
    def _kids(self) -> Self:
        kids = [k.kid for k in self.keys]
        if len(self.keys) > 1 and None in kids:
            raise ValueError("every key needs a kid when an agent has more than one key")
        if len(set(kids)) != len(kids):
            raise ValueError("kid values must be unique within an agent")
        return self


class _AgentEntry(_Record):
    id: Id
    jwks: _JWKS
    subject: Text | None = None
    roles: Roles = ()
    type: SubjectType = "agent"


class _AgentsFile(_Record):
    agents: tuple[_AgentEntry, ...] = Field(strict=False)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _unique_by(self.agents, "id", "agents")
        return self


def parse_jwk(data: dict[str, Any]) -> AgentKey:
    """Parse one public JWK and check that its key type fits its ``alg``; ValueError if not.

    The JWK itself is read by :func:`gateway.jose.jwk.public_key_from_jwk` (points on the
    curve, full-length coordinates, RSA of at least 2048 bits, no private members).
    """
    alg = str(data.get("alg"))
    if data.get("kty") != _KTY.get(alg[:2]):
        raise ValueError("not a valid public JWK for its alg")
    try:
        key, algs = public_key_from_jwk(data)
    except JOSEError as exc:
        if str(exc) == "RSA key too small":
            raise ValueError(f"key type, curve or size does not fit alg {alg}") from None
        raise ValueError("not a valid public JWK for its alg") from None
    if alg not in algs:
        # SECURITY: RFC 8725 §3.1 -- e.g. a P-384 key named ES256.
        raise ValueError(f"key type, curve or size does not fit alg {alg}")
    kid = data.get("kid")
    return AgentKey(kid=kid if isinstance(kid, str) else None, alg=alg, key=key)


# --------------------------------------------------------------------------- loaders


def load_api_keys(path: Path) -> tuple[APIKeyRecord, ...]:
    return _load(path, _APIKeysFile).keys


def load_users(path: Path) -> tuple[BasicUserRecord, ...]:
    return _load(path, _UsersFile).users


def load_hmac_keys(path: Path) -> tuple[HMACKeyRecord, ...]:
    return _load(path, _HMACKeysFile).keys


def load_agents(path: Path) -> tuple[AgentRecord, ...]:
    entries = _load(path, _AgentsFile).agents
    return tuple(
        AgentRecord(
            id=entry.id,
            subject=entry.subject or entry.id,
            roles=entry.roles,
            type=entry.type,
            keys=tuple(parse_jwk(k.model_dump(exclude_none=True)) for k in entry.jwks.keys),
        )
        for entry in entries
    )


_M = TypeVar("_M", bound=BaseModel)


def _load(path: Path, model: type[_M]) -> _M:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError([(where, f"cannot read credential file: {reason}")]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        why = f": {problem}" if isinstance(problem, str) and problem.startswith("duplicate") else ""
        raise ConfigError([(where, f"invalid YAML{at}{why}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([(where, "must be a mapping at the top level")])
    try:
        return model.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(_problems(where, exc)) from None


def _problems(where: str, exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        nested = _NESTED.fullmatch(msg)
        if nested is not None:
            # A cross-entry check names the exact entry itself: "keys.3.id: duplicate id".
            loc = ".".join(p for p in (loc, nested.group(1)) if p)
            msg = nested.group(2)
        out.append((f"{where}:{loc}" if loc else where, msg))
    return out


_NESTED = re.compile(r"([a-z_]+\.\d+\.[a-z0-9_]+): (.+)", re.DOTALL)


def _unique_by(items: tuple[Any, ...], attr: str, where: str, *, label: str = "") -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            # The value itself is never echoed: for digests it is secret-derived.
            raise ValueError(
                f"{where}.{i}.{attr}: duplicate {label or attr} (same as {where}.{seen[value]})"
            )
        seen[value] = i


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "unhashable key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
