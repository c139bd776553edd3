"""The root model: every section together and the checks that span sections."""

from __future__ import annotations

from typing import Self

from pydantic import (
    Field,
    model_validator,
)

from gateway.settings.admin import AdminSettings
from gateway.settings.agents import AgentCredentialSettings
from gateway.settings.authn import (
    AgentCredentialMethod,
    AuthnMethods,
    BearerMethod,
    CallerRules,
    TxnTokenMethod,
    tree_names,
)
from gateway.settings.authz import PDPSettings
from gateway.settings.base import Strict
from gateway.settings.continuous import ContinuousAuthSettings
from gateway.settings.issuers import Issuer
from gateway.settings.routes import Route
from gateway.settings.server import ServerSettings
from gateway.settings.state import StateSettings
from gateway.settings.telemetry import TelemetrySettings
from gateway.settings.tokens import TxnTokenSettings


class Settings(Strict):
    server: ServerSettings = ServerSettings()
    issuers: tuple[Issuer, ...] = ()
    authn: AuthnMethods = Field(default_factory=dict)
    callers: CallerRules = CallerRules()
    pdp: PDPSettings | None = None
    txn_tokens: TxnTokenSettings | None = None
    agent_credentials: AgentCredentialSettings | None = None
    continuous_auth: ContinuousAuthSettings | None = None
    telemetry: TelemetrySettings = TelemetrySettings()
    state: StateSettings = StateSettings()
    admin: AdminSettings = AdminSettings()
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
        tts = self.txn_tokens is not None and self.txn_tokens.token_service_clients
        if tts and self.pdp is None:
            problems.append("txn_tokens.token_service_clients: POST /token needs a pdp")
        if self.txn_tokens is None:
            for name, method in self.authn.items():
                if isinstance(method, TxnTokenMethod):
                    problems.append(f"authn.{name}: the txn_token method needs txn_tokens")
        if self.agent_credentials is None:
            for name, method in self.authn.items():
                if isinstance(method, AgentCredentialMethod):
                    problems.append(f"authn.{name}: agent_credential needs agent_credentials")
        for i, route in enumerate(self.routes):
            if route.kind != "agent_credentials":
                continue
            if self.agent_credentials is None:
                problems.append(f"routes.{i}: kind agent_credentials needs agent_credentials")
            if self.pdp is None:
                problems.append(f"routes.{i}: kind agent_credentials needs a pdp (fail closed)")
            if route.authn is None:
                problems.append(f"routes.{i}: kind agent_credentials needs authn")
        for i, route in enumerate(self.routes):
            if route.kind == "agent_heartbeat" and self.continuous_auth is None:
                problems.append(f"routes.{i}: kind agent_heartbeat needs continuous_auth")
            if route.kind == "agent_heartbeat" and route.authn is None:
                problems.append(f"routes.{i}: kind agent_heartbeat needs authn")
        for i, route in enumerate(self.routes):
            card = route.a2a.agent_card if route.a2a is not None else None
            if card is not None and card.sign and self.txn_tokens is None:
                problems.append(
                    f"routes.{i}.a2a.agent_card.sign: needs txn_tokens (the card is signed with"
                    " the gateway's token key)"
                )
        issuer_names = {iss.name for iss in self.issuers}
        by_name = {iss.name: iss for iss in self.issuers}
        for name, method in self.authn.items():
            if isinstance(method, BearerMethod):
                for iss in method.issuers:
                    if iss not in issuer_names:
                        problems.append(f"authn.{name}.issuers: issuer {iss!r} is not defined")
                    elif method.introspect == "always" and by_name[iss].introspection is None:
                        problems.append(
                            f"authn.{name}.introspect: issuer {iss!r} has no introspection"
                        )
        if problems:
            raise ValueError("\n".join(problems))
        return self
