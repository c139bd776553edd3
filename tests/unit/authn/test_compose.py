"""gateway.authn.compose: which binding each tree gets, and how identities compare (issue 13).

The request-level behaviour (401 ``authn_binding_mismatch`` before the PDP, through the real
listener) is in ``tests/integration/test_identity_binding.py``; here the pure parts: the
defaults of :func:`compile_bindings`, :func:`claimed_workload`, and the ``bind`` /
``claims`` / ``introspect`` configuration keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import TypeAdapter

from gateway.authn.compose import claimed_workload, compile_bindings
from gateway.context import Actor, Principal
from gateway.errors import ConfigError
from gateway.settings import AuthnTree, Bind, parse_settings, tree_node

TYPES = {
    "mtls": "mtls",
    "bearer": "bearer",
    "kc": "bearer",
    "jwt_assertion": "jwt_assertion",
    "api_key": "api_key",
    "txn_token": "txn_token",
}


def _pairs(parsed: Any, raw: Any) -> Iterator[tuple[Any, Any]]:
    """(parsed node, the YAML value it came from), walking both trees side by side."""
    yield parsed, raw
    if isinstance(parsed, str):
        return
    op, children, _ = tree_node(parsed)
    for child, raw_child in zip(children, raw[op], strict=True):
        yield from _pairs(child, raw_child)


def kinds(tree: Any, route_bind: Bind | None = None) -> list[tuple[Any, tuple[str, ...]]]:
    """The bindings of ``tree`` (as written in YAML), each reported as its YAML node."""
    parsed = TypeAdapter(AuthnTree).validate_python(tree)
    raw = {id(node): value for node, value in _pairs(parsed, tree)}
    return [(raw[id(b.node)], b.kinds) for b in compile_bindings(parsed, route_bind, TYPES)]


MTLS_BEARER = {"all_of": ["mtls", "bearer"]}


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        pytest.param(MTLS_BEARER, [(MTLS_BEARER, ("actor",))], id="mtls-and-bearer"),
        pytest.param(
            {"all_of": ["mtls", "kc"]}, [({"all_of": ["mtls", "kc"]}, ("actor",))], id="by-type"
        ),
        pytest.param(
            {"all_of": ["mtls", {"any_of": ["bearer", "jwt_assertion"]}]},
            [
                (
                    {"all_of": ["mtls", {"any_of": ["bearer", "jwt_assertion"]}]},
                    ("actor", "assertion"),
                )
            ],
            id="readme-tree",
        ),
        pytest.param(
            {"any_of": [MTLS_BEARER, "api_key"]}, [(MTLS_BEARER, ("actor",))], id="nested-all-of"
        ),
        pytest.param({"all_of": ["mtls", "txn_token"]}, [], id="txn-token-not-bound"),
        pytest.param({"all_of": ["bearer", "jwt_assertion"]}, [], id="no-mtls"),
        pytest.param({"any_of": ["mtls", "bearer"]}, [], id="any-of-never-by-default"),
        pytest.param("bearer", [], id="single-method"),
    ],
)
def test_defaults(tree: Any, expected: list[tuple[Any, tuple[str, ...]]]) -> None:
    assert kinds(tree) == expected


def test_node_opt_out_and_explicit() -> None:
    off = {"all_of": ["mtls", "bearer"], "bind": False}
    assert kinds(off) == []
    assert kinds({"all_of": ["mtls", "bearer"], "bind": {}}) == []
    explicit = {"all_of": ["mtls", "jwt_assertion", "bearer"], "bind": {"assertion": "peer"}}
    assert kinds(explicit) == [(explicit, ("assertion",))]  # only what it names


def test_route_bind_replaces_the_defaults() -> None:
    assert kinds(MTLS_BEARER, Bind()) == []  # bind: off on the route
    tree = {"any_of": [MTLS_BEARER, "bearer"]}
    assert kinds(tree, Bind(actor="peer")) == [(tree, ("actor",))]  # the whole tree, once
    # An explicit node binding inside still counts.
    inner = {"all_of": ["mtls", "jwt_assertion"], "bind": {"assertion": "peer"}}
    assert kinds({"any_of": [inner, "bearer"]}, Bind()) == [(inner, ("assertion",))]


def principal(**kw: Any) -> Principal:
    base: dict[str, Any] = {"method": "m", "subject": "alice", "subject_type": "user"}
    return Principal(**(base | kw))


@pytest.mark.parametrize(
    ("kind", "who", "expected"),
    [
        pytest.param(
            "actor",
            principal(actors=(Actor("spiffe://example.org/agent/b"), Actor("x"))),
            ("spiffe://example.org/agent/b",),
            id="current-actor",
        ),
        pytest.param(
            "actor",
            principal(actors=(Actor("travel-agent"),)),
            ("travel-agent",),
            id="non-spiffe-actor",
        ),
        pytest.param(
            "actor",
            principal(subject="spiffe://example.org/agent/a", subject_type="agent"),
            ("spiffe://example.org/agent/a",),
            id="self-acting-workload",
        ),
        pytest.param("actor", principal(), (), id="user-without-act"),
        pytest.param(
            "actor", principal(subject="53f8-uuid", subject_type="agent"), (), id="idp-id"
        ),
        pytest.param(
            "assertion",
            principal(
                subject="spiffe://example.org/agent/a",
                claims=MappingProxyType({"iss": "agent-a", "sub": "agent-a"}),
            ),
            ("agent-a", "spiffe://example.org/agent/a"),
            id="assertion-agent-and-subject",
        ),
    ],
)
def test_claimed_workload(kind: str, who: Principal, expected: tuple[str, ...]) -> None:
    assert claimed_workload(kind, who) == expected


# --------------------------------------------------------------------------- configuration


def settings(**top: Any) -> Any:
    return parse_settings(top, Path("."))


ISSUER = {
    "name": "kc",
    "issuer": "https://kc.example/realms/r",
    "jwks_uri": "https://kc.example/j",
    "audience": "a",
}
ROUTE = {"name": "r", "upstream": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        pytest.param(
            {
                "authn": {"mtls": {}},
                "routes": [{**ROUTE, "authn": {"any_of": ["mtls"], "bind": {}}}],
            },
            "routes.0.authn.bind: only an all_of node (or the route) can bind",
            id="bind-on-any-of",
        ),
        pytest.param(
            {
                "authn": {"mtls": {}},
                "routes": [{**ROUTE, "authn": {"all_of": ["mtls"], "bind": {"actor": "me"}}}],
            },
            "routes.0.authn.bind: bind must be off, {} or a mapping of actor/assertion to 'peer'",
            id="bind-bad-value",
        ),
        pytest.param(
            {"routes": [{**ROUTE, "bind": {"peer": "actor"}}]},
            "routes.0.bind.peer: unknown key",
            id="route-bind-unknown-key",
        ),
        pytest.param(
            {"issuers": [{**ISSUER, "claims": {"id": "preferred_username"}}]},
            "'id' is a reserved input.subject key",
            id="claims-reserved",
        ),
        pytest.param(
            {"issuers": [{**ISSUER, "claims": {"username": "a..b"}}]},
            "is not a dotted claim path",
            id="claims-bad-path",
        ),
        pytest.param(
            {"issuers": [{**ISSUER, "introspect": "always"}]},
            "introspect: always needs introspection settings",
            id="issuer-introspect-without-endpoint",
        ),
        pytest.param(
            {"issuers": [ISSUER], "authn": {"bearer": {"issuers": ["kc"], "introspect": "always"}}},
            "authn.bearer.introspect: issuer 'kc' has no introspection",
            id="method-introspect-without-endpoint",
        ),
    ],
)
def test_config_errors(config: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**config)
    assert error in str(info.value)


def test_bind_off_spellings() -> None:
    for value in (False, "off", {}):
        route = settings(routes=[{**ROUTE, "bind": value}]).routes[0]
        assert route.bind == Bind()
    assert settings(routes=[ROUTE]).routes[0].bind is None  # unset: the defaults


def test_require_typ_null_is_kept_distinct_from_unset() -> None:
    s = settings(
        issuers=[ISSUER],
        authn={
            "a": {"type": "bearer", "issuers": ["kc"], "require_typ": None},
            "b": {"type": "bearer", "issuers": ["kc"]},
        },
    )
    assert "require_typ" in s.authn["a"].model_fields_set
    assert "require_typ" not in s.authn["b"].model_fields_set
