"""gateway.authn.registry: one handler per authn type, declared by the handler itself."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from gateway.authn import registry
from gateway.authn.registry import BuildEnv, build, lookup, method_types, register
from gateway.errors import ConfigError
from gateway.settings import AUTHN_TYPES, parse_settings
from gateway.settings.authn import AuthnMethod
from gateway.state.memory import MemoryReplayCache


def _settings_models() -> dict[str, type]:
    union = typing.get_args(AuthnMethod)[0]  # Annotated[A | B | ..., Field(discriminator)]
    return {m.model_fields["type"].default: m for m in typing.get_args(union)}


def test_every_settings_type_has_exactly_its_handler() -> None:
    handlers = method_types()
    models = _settings_models()
    assert sorted(handlers) == sorted(models) == sorted(AUTHN_TYPES)
    for type_id, handler in handlers.items():
        assert handler.type_id == type_id
        assert handler.config_model is models[type_id]


def test_primary_ranks_are_a_strict_order() -> None:
    ranks = [h.primary_rank for h in method_types().values()]
    assert len(set(ranks)) == len(ranks)


@pytest.mark.parametrize(
    ("type_id", "scoped"),
    [("bearer", True), ("txn_token", True), ("api_key", False), ("mtls", False)],
)
def test_only_token_credentials_carry_scopes(type_id: str, scoped: bool) -> None:
    assert method_types()[type_id].scoped is scoped


def test_an_unknown_type_is_a_config_error_naming_the_method() -> None:
    with pytest.raises(ConfigError) as info:
        lookup("partner", "kerberos")
    assert info.value.lines() == ["authn.partner.type: unknown authentication method 'kerberos'"]


def test_a_second_handler_for_a_type_is_refused() -> None:
    class Impostor:
        type_id = "api_key"

    with pytest.raises(TypeError, match="registered twice"):
        register(Impostor)
    assert registry.method_types()["api_key"].__name__ == "APIKeyAuthenticator"


def test_a_handler_without_a_type_id_is_refused() -> None:
    class Anonymous:
        pass

    with pytest.raises(TypeError, match="declares no type_id"):
        register(Anonymous)


def test_build_makes_one_handler_per_configured_method(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("keys: []\n")
    settings = parse_settings(
        {
            "authn": {
                "api_key": {"keys_file": "keys.yaml"},
                "peer": {"type": "mtls"},
            }
        },
        tmp_path,
    )
    methods = build(BuildEnv(settings, MemoryReplayCache()))
    assert {name: type(m).__name__ for name, m in methods.items()} == {
        "api_key": "APIKeyAuthenticator",
        "peer": "MTLSAuthenticator",
    }
