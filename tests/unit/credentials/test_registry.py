"""gateway.credentials.registry: one converter per settings credential type, and no other."""

from __future__ import annotations

import typing
from typing import Literal

import pytest
from pydantic import BaseModel

from gateway.credentials.registry import MODULES, REGISTRY, BuildContext, build
from gateway.settings import CredentialSettings, NoCredential


def _settings_models() -> dict[str, type[BaseModel]]:
    union = typing.get_args(CredentialSettings)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (literal,) = typing.get_args(model.model_fields["type"].annotation)
        models[literal] = model
    return models


def test_every_settings_type_has_exactly_one_converter_and_vice_versa() -> None:
    models = _settings_models()
    assert set(models) == set(REGISTRY)
    assert len(MODULES) == len(REGISTRY)  # no module registers a type twice
    for type_id, registration in REGISTRY.items():
        assert registration.config is models[type_id], type_id


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_id_is_module_name_and_config_type(module: object) -> None:
    registration = module.REGISTRATION  # type: ignore[attr-defined]
    assert module.__name__ == f"gateway.credentials.{registration.id}"  # type: ignore[attr-defined]
    (literal,) = typing.get_args(registration.config.model_fields["type"].annotation)
    assert literal == registration.id


class CarrierPigeon(BaseModel):
    type: Literal["carrier_pigeon"] = "carrier_pigeon"


class FakeNone(BaseModel):
    """A model that claims a registered type but is not that type's config model."""

    type: Literal["none"] = "none"


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(CarrierPigeon(), id="unknown-type"),
        pytest.param(FakeNone(), id="known-type-foreign-model"),
    ],
)
def test_unknown_type_is_a_config_error(cfg: BaseModel) -> None:
    with pytest.raises(ValueError, match=r"^routes\.3\.credential: unknown credential type"):
        build("default", cfg, BuildContext(None), where="routes.3.credential")


def test_build_uses_the_registered_factory() -> None:
    conv = build("x", NoCredential(type="none"), BuildContext(None))
    assert type(conv).__module__ == "gateway.credentials.none"
