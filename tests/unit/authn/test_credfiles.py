"""gateway.authn.credfiles: the credential files of DESIGN.md §4, strictly validated."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import argon2
import bcrypt
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.authn.credfiles import (
    load_agents,
    load_api_keys,
    load_hmac_keys,
    load_users,
)
from gateway.errors import ConfigError

DIGEST = hashlib.sha256(b"key-one").hexdigest()
ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
BCRYPT = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
SECRET_VALUE = "s3cr3t-" + "x" * 40  # 47 bytes, long enough


def _write(tmp_path: Path, data: Any, name: str = "creds.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _problems(exc: pytest.ExceptionInfo[ConfigError], path: Path) -> list[tuple[str, str]]:
    prefix = f"{path}:"
    return [(p.removeprefix(prefix), m) for p, m in exc.value.problems]


def _public_jwk(key: Any, alg: str, **extra: Any) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    data: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    return {**data, "alg": alg, **extra}


EC_KEY = ec.generate_private_key(ec.SECP256R1())

# --------------------------------------------------------------------------- api keys

API_KEY_CASES = [
    pytest.param(
        {"keys": [{"id": "k", "sha256": DIGEST.upper(), "subject": "s"}]},
        ("keys.0.sha256", "must be the SHA-256 of the key as 64 lowercase hex characters"),
        id="uppercase-hex",
    ),
    pytest.param(
        {"keys": [{"id": "k", "sha256": DIGEST[:-2], "subject": "s"}]},
        ("keys.0.sha256", "must be the SHA-256 of the key as 64 lowercase hex characters"),
        id="short-digest",
    ),
    pytest.param(
        {"keys": [{"id": "k", "sha256": DIGEST, "subject": "s", "colour": "red"}]},
        ("keys.0.colour", "unknown key"),
        id="unknown-key",
    ),
    pytest.param(
        {"keys": [{"id": "k", "sha256": DIGEST}]},
        ("keys.0.subject", "required key is missing"),
        id="missing-subject",
    ),
    pytest.param(
        {"keys": [{"id": 42, "sha256": DIGEST, "subject": "s"}]},
        ("keys.0.id", "Input should be a valid string"),
        id="int-id-not-coerced",
    ),
    pytest.param(
        {"keys": [{"id": "k", "sha256": DIGEST, "subject": "s", "roles": "admin"}]},
        ("keys.0.roles", "Input should be a valid tuple"),
        id="roles-not-a-list",
    ),
    pytest.param(
        {"keys": [{"id": "k", "sha256": DIGEST, "subject": "s", "type": "robot"}]},
        ("keys.0.type", "Input should be 'user', 'agent', 'service' or 'device'"),
        id="bad-type",
    ),
    pytest.param(
        {
            "keys": [
                {"id": "k", "sha256": DIGEST, "subject": "s"},
                {"id": "k", "sha256": "0" * 64, "subject": "t"},
            ]
        },
        ("keys.1.id", "duplicate id (same as keys.0)"),
        id="duplicate-id",
    ),
    pytest.param(
        {
            "keys": [
                {"id": "a", "sha256": DIGEST, "subject": "s"},
                {"id": "b", "sha256": DIGEST, "subject": "t"},
            ]
        },
        ("keys.1.sha256", "duplicate key digest (same as keys.0)"),
        id="duplicate-digest",
    ),
    pytest.param({"keys": None}, ("keys", "Input should be a valid tuple"), id="keys-null"),
    pytest.param({}, ("keys", "required key is missing"), id="no-keys"),
]


@pytest.mark.parametrize(("data", "problem"), API_KEY_CASES)
def test_api_keys_file_problems_name_file_and_path(
    tmp_path: Path, data: Any, problem: tuple[str, str]
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_api_keys(path)
    assert problem in _problems(exc, path)
    assert DIGEST not in str(exc.value)


def test_api_keys_file_loads_records_with_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"keys": [{"id": "partner-1", "sha256": DIGEST, "subject": "p1", "roles": ["partner"]}]},
    )
    (record,) = load_api_keys(path)
    assert (record.id, record.subject, record.roles, record.type) == (
        "partner-1",
        "p1",
        ("partner",),
        "service",
    )
    assert DIGEST not in repr(record)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("keys: [", "invalid YAML at line", id="broken-yaml"),
        pytest.param("- a\n- b\n", "must be a mapping at the top level", id="top-level-list"),
        pytest.param("keys: []\nkeys: []\n", "duplicate key 'keys'", id="duplicate-yaml-key"),
    ],
)
def test_yaml_level_problems(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_api_keys(path)
    ((where, msg),) = exc.value.problems
    assert where == str(path)
    assert message in msg


def test_duplicate_key_inside_an_entry_is_refused(tmp_path: Path) -> None:
    text = f"keys:\n  - id: a\n    sha256: {DIGEST}\n    subject: s\n    subject: t\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="duplicate key 'subject'"):
        load_api_keys(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read credential file"):
        load_api_keys(tmp_path / "absent.yaml")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"keys": [{"id": "a", "sha256": "bad", "subject": "s"}, {"id": "b", "subject": "t"}]},
    )
    with pytest.raises(ConfigError) as exc:
        load_api_keys(path)
    paths = [p for p, _ in _problems(exc, path)]
    assert paths == ["keys.0.sha256", "keys.1.sha256"]


# --------------------------------------------------------------------------- users

HASH_CASES = [
    pytest.param(ARGON2, True, id="argon2id"),
    pytest.param(BCRYPT, True, id="bcrypt-2b"),
    pytest.param(BCRYPT.replace("$2b$", "$2a$"), True, id="bcrypt-2a"),
    pytest.param(BCRYPT.replace("$2b$", "$2y$"), True, id="bcrypt-2y"),
    pytest.param(ARGON2.replace("$argon2id$", "$argon2i$"), False, id="argon2i-refused"),
    pytest.param(ARGON2.replace("$argon2id$", "$argon2d$"), False, id="argon2d-refused"),
    pytest.param("$argon2id$garbage", False, id="argon2id-malformed"),
    pytest.param(BCRYPT.replace("$2b$04$", "$2b$03$"), False, id="bcrypt-cost-below-4"),
    pytest.param(BCRYPT[:-1], False, id="bcrypt-truncated"),
    pytest.param("$1$saltsalt$abcdefghijklmnopqrstuv", False, id="md5-crypt"),
    pytest.param(hashlib.sha256(b"pw").hexdigest(), False, id="bare-sha256"),
    pytest.param("hunter2", False, id="plaintext"),
]


@pytest.mark.parametrize(("hash_value", "accepted"), HASH_CASES)
def test_users_file_accepts_only_argon2id_and_bcrypt(
    tmp_path: Path, hash_value: str, accepted: bool
) -> None:
    path = _write(tmp_path, {"users": [{"username": "ops", "hash": hash_value}]})
    if accepted:
        (user,) = load_users(path)
        assert (user.username, user.type, user.roles) == ("ops", "user", ())
        assert hash_value not in repr(user)
        return
    with pytest.raises(ConfigError) as exc:
        load_users(path)
    assert _problems(exc, path) == [
        ("users.0.hash", "must be an argon2id ($argon2id$) or bcrypt ($2b$/$2a$/$2y$) hash")
    ]
    assert hash_value not in str(exc.value)


@pytest.mark.parametrize(
    ("username", "path_msg"),
    [
        pytest.param(
            "a:b",
            ("users.0.username", "must not contain ':' or control characters (RFC 7617 §2)"),
            id="colon",
        ),
        pytest.param(
            "a\x01b",
            ("users.0.username", "must not contain ':' or control characters (RFC 7617 §2)"),
            id="control-char",
        ),
        pytest.param(
            "", ("users.0.username", "String should have at least 1 character"), id="empty"
        ),
    ],
)
def test_users_file_username_rules(
    tmp_path: Path, username: str, path_msg: tuple[str, str]
) -> None:
    path = _write(tmp_path, {"users": [{"username": username, "hash": ARGON2}]})
    with pytest.raises(ConfigError) as exc:
        load_users(path)
    assert path_msg in _problems(exc, path)


def test_users_file_duplicate_username(tmp_path: Path) -> None:
    users = [{"username": "ops", "hash": ARGON2}, {"username": "ops", "hash": BCRYPT}]
    path = _write(tmp_path, {"users": users})
    with pytest.raises(ConfigError) as exc:
        load_users(path)
    assert _problems(exc, path) == [("users.1.username", "duplicate username (same as users.0)")]


# --------------------------------------------------------------------------- hmac keys


def test_hmac_keys_resolve_env_and_relative_file_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTGATE_TEST_HMAC", SECRET_VALUE)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "k2").write_text(base64.b64encode(b"\x01" * 32).decode() + "\n")
    path = _write(
        tmp_path,
        {
            "keys": [
                {"id": "k1", "secret": "env:AGENTGATE_TEST_HMAC", "subject": "legacy-1"},
                {
                    "id": "k2",
                    "secret": "file:secrets/k2",
                    "encoding": "base64",
                    "subject": "legacy-2",
                    "type": "agent",
                },
            ]
        },
    )
    k1, k2 = load_hmac_keys(path)
    assert k1.key() == SECRET_VALUE.encode()
    assert k2.key() == b"\x01" * 32
    assert k2.type == "agent"
    assert SECRET_VALUE not in repr(k1)
    assert "env:AGENTGATE_TEST_HMAC" in repr(k1)


HMAC_CASES = [
    pytest.param(
        {"id": "k", "secret": SECRET_VALUE, "subject": "s"},
        ("keys.0.secret", "must be a secret reference 'env:NAME' or 'file:path', not a value"),
        id="inline-secret-refused",
    ),
    pytest.param(
        {"id": "k", "secret": "env:AGENTGATE_TEST_UNSET_VAR", "subject": "s"},
        ("keys.0.secret", "environment variable AGENTGATE_TEST_UNSET_VAR is not set"),
        id="unset-env",
    ),
    pytest.param(
        {"id": "k", "secret": "env:AGENTGATE_TEST_SHORT", "subject": "s"},
        ("keys.0", "secret is shorter than 32 bytes once decoded"),
        id="short-secret",
    ),
    pytest.param(
        {"id": "k", "secret": "env:AGENTGATE_TEST_HMAC", "encoding": "base64", "subject": "s"},
        ("keys.0", "secret is not valid base64"),
        id="not-base64",
    ),
]


@pytest.mark.parametrize(("entry", "problem"), HMAC_CASES)
def test_hmac_keys_file_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any], problem: Any
) -> None:
    monkeypatch.setenv("AGENTGATE_TEST_HMAC", SECRET_VALUE + "!")
    monkeypatch.setenv("AGENTGATE_TEST_SHORT", "short-secret")
    monkeypatch.delenv("AGENTGATE_TEST_UNSET_VAR", raising=False)
    path = _write(tmp_path, {"keys": [entry]})
    with pytest.raises(ConfigError) as exc:
        load_hmac_keys(path)
    assert problem in _problems(exc, path)
    assert SECRET_VALUE not in str(exc.value)
    assert "short-secret" not in str(exc.value)


# --------------------------------------------------------------------------- agents


def test_agents_file_loads_public_keys_pinned_to_alg(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    path = _write(
        tmp_path,
        {
            "agents": [
                {"id": "planner", "jwks": {"keys": [_public_jwk(EC_KEY, "ES256")]}},
                {
                    "id": "travel",
                    "subject": "spiffe://example.org/agent/travel",
                    "roles": ["booker"],
                    "jwks": {
                        "keys": [
                            _public_jwk(EC_KEY, "ES256", kid="a", use="sig"),
                            _public_jwk(ed, "EdDSA", kid="b", key_ops=["verify"]),
                        ]
                    },
                },
            ]
        },
    )
    planner, travel = load_agents(path)
    assert (planner.subject, planner.type, planner.keys[0].alg) == ("planner", "agent", "ES256")
    assert travel.subject == "spiffe://example.org/agent/travel"
    assert [(k.kid, k.alg) for k in travel.keys] == [("a", "ES256"), ("b", "EdDSA")]


def _agent(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"agents": [{"id": "a1", "jwks": {"keys": list(keys)}}]}


_EC = _public_jwk(EC_KEY, "ES256")
_EC_PRIVATE = {**_EC, "d": "AAAA"}
_RSA_SMALL = _public_jwk(rsa.generate_private_key(65537, 1024), "RS256")  # noqa: S505
_P384 = _public_jwk(ec.generate_private_key(ec.SECP384R1()), "ES384")

AGENT_CASES = [
    pytest.param(
        _agent(_EC_PRIVATE),
        ("agents.0.jwks.keys.0", "private or symmetric key material is not allowed"),
        id="private-key-refused",
    ),
    pytest.param(
        _agent({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}),
        ("agents.0.jwks.keys.0", "private or symmetric key material is not allowed"),
        id="symmetric-key-refused",
    ),
    pytest.param(
        _agent({**_EC, "alg": "HS256"}),
        (
            "agents.0.jwks.keys.0",
            "alg must be one of ES256, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, "
            "RS512",
        ),
        id="hs256-alg-refused",
    ),
    pytest.param(
        _agent({k: v for k, v in _EC.items() if k != "alg"}),
        ("agents.0.jwks.keys.0.alg", "required key is missing"),
        id="alg-required",
    ),
    pytest.param(
        _agent({**_P384, "alg": "ES256"}),
        ("agents.0.jwks.keys.0", "key type, curve or size does not fit alg ES256"),
        id="curve-does-not-fit-alg",
    ),
    pytest.param(
        _agent({**_EC, "alg": "RS256"}),
        ("agents.0.jwks.keys.0", "not a valid public JWK for its alg"),
        id="kty-does-not-fit-alg",
    ),
    pytest.param(
        _agent(_RSA_SMALL),
        ("agents.0.jwks.keys.0", "key type, curve or size does not fit alg RS256"),
        id="rsa-1024-refused",
    ),
    pytest.param(
        _agent(_EC, _P384),
        ("agents.0.jwks", "every key needs a kid when an agent has more than one key"),
        id="kid-needed-with-two-keys",
    ),
    pytest.param(
        _agent({**_EC, "kid": "x"}, {**_P384, "kid": "x"}),
        ("agents.0.jwks", "kid values must be unique within an agent"),
        id="duplicate-kid",
    ),
    pytest.param(
        _agent({**_EC, "x5u": "https://attacker.example/cert"}),
        ("agents.0.jwks.keys.0.x5u", "unknown key"),
        id="unknown-jwk-member",
    ),
    pytest.param(
        _agent(),
        ("agents.0.jwks.keys", "Tuple should have at least 1 item after validation, not 0"),
        id="no-keys",
    ),
    pytest.param(
        {"agents": [{"id": "a", "jwks": {"keys": [_EC]}}, {"id": "a", "jwks": {"keys": [_EC]}}]},
        ("agents.1.id", "duplicate id (same as agents.0)"),
        id="duplicate-agent",
    ),
]


@pytest.mark.parametrize(("data", "problem"), AGENT_CASES)
def test_agents_file_problems(tmp_path: Path, data: Any, problem: tuple[str, str]) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_agents(path)
    assert problem in _problems(exc, path)
    assert "AAAA" not in str(exc.value)
