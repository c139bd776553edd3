"""gateway.authz.decision.parse_decision: only ``{"allow": true, ...}`` allows (DESIGN.md §7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from gateway.authz.decision import (
    GATEWAY_OWNED_HEADERS,
    REASON_DENIED,
    REASON_MALFORMED,
    parse_decision,
)

DENIED = {"allow": False, "reason": REASON_DENIED}
MALFORMED = {"allow": False, "reason": REASON_MALFORMED}
ALLOW: dict[str, Any] = {"allow": True, "reason": "", "scopes": None, "headers": {}}
HELD = ("flights.read", "flights.book")

# (id, raw PDP result, subject scopes, expected Decision fields)
CASES: list[tuple[str, object, Sequence[str] | None, dict[str, Any]]] = [
    # --- not an object with a boolean allow
    ("false", False, HELD, DENIED),
    ("true-boolean", True, HELD, MALFORMED),
    ("null", None, HELD, MALFORMED),
    ("string", "allow", HELD, MALFORMED),
    ("list", [{"allow": True}], HELD, MALFORMED),
    ("number", 1, HELD, MALFORMED),
    ("empty-object", {}, HELD, MALFORMED),
    ("allow-string-yes", {"allow": "yes"}, HELD, MALFORMED),
    ("allow-int-1", {"allow": 1}, HELD, MALFORMED),
    ("allow-null", {"allow": None}, HELD, MALFORMED),
    ("allow-list", {"allow": [True]}, HELD, MALFORMED),
    # --- denies
    ("deny-plain", {"allow": False}, HELD, DENIED),
    (
        "deny-reason-status",
        {"allow": False, "reason": "rbac:no_permission", "status": 451},
        HELD,
        {"allow": False, "reason": "rbac:no_permission", "status": 451},
    ),
    ("deny-status-503", {"allow": False, "status": 503}, HELD, {"allow": False, "status": 503}),
    ("deny-status-2xx", {"allow": False, "status": 200}, HELD, MALFORMED),
    ("deny-status-bool", {"allow": False, "status": True}, HELD, MALFORMED),
    ("deny-status-string", {"allow": False, "status": "403"}, HELD, MALFORMED),
    ("deny-reason-not-string", {"allow": False, "reason": 7}, HELD, MALFORMED),
    (
        "deny-keeps-obligations",
        {"allow": False, "reason": "x", "obligations": {"required_scopes": ["a"]}},
        HELD,
        {"allow": False, "reason": "x", "obligations": {"required_scopes": ["a"]}},
    ),
    # --- allows
    ("allow-minimal", {"allow": True}, HELD, ALLOW),
    (
        "allow-reason",
        {"allow": True, "reason": "rbac:reader"},
        HELD,
        {**ALLOW, "reason": "rbac:reader"},
    ),
    ("allow-reason-not-string", {"allow": True, "reason": ["x"]}, HELD, MALFORMED),
    ("allow-ignores-status", {"allow": True, "status": "garbage"}, HELD, {**ALLOW, "status": None}),
    ("allow-ignores-unknown-keys", {"allow": True, "txn_scope": 5}, HELD, ALLOW),
    # --- scopes only narrow
    (
        "scopes-intersect",
        {"allow": True, "scopes": ["flights.read", "admin"]},
        HELD,
        {"scopes": ("flights.read",)},
    ),
    (
        "scopes-policy-order-dedup",
        {"allow": True, "scopes": ["flights.book", "flights.read", "flights.book"]},
        HELD,
        {"scopes": ("flights.book", "flights.read")},
    ),
    ("scopes-empty-list", {"allow": True, "scopes": []}, HELD, {"allow": True, "scopes": ()}),
    (
        "scopes-subject-holds-none",
        {"allow": True, "scopes": ["flights.read"]},
        (),
        {"allow": True, "scopes": ()},
    ),
    (
        "scopes-scope-free-subject",
        {"allow": True, "scopes": ["flights.read", "x"]},
        None,
        {"scopes": ("flights.read", "x")},
    ),
    (
        "scopes-null-is-absent",
        {"allow": True, "scopes": None},
        HELD,
        {"allow": True, "scopes": None},
    ),
    ("scopes-string", {"allow": True, "scopes": "flights.read"}, HELD, MALFORMED),
    ("scopes-non-string-item", {"allow": True, "scopes": ["a", 1]}, HELD, MALFORMED),
    ("scopes-space-in-token", {"allow": True, "scopes": ["flights.read admin"]}, HELD, MALFORMED),
    ("scopes-quote-in-token", {"allow": True, "scopes": ['a"b']}, HELD, MALFORMED),
    # --- headers: bad container denies, bad entries are dropped
    (
        "headers-added-lowercased",
        {"allow": True, "headers": {"X-Policy": "v7"}},
        HELD,
        {"headers": {"x-policy": "v7"}},
    ),
    (
        "headers-owned-dropped",
        {"allow": True, "headers": {"Txn-Token": "forged", "x-ok": "1"}},
        HELD,
        {"allow": True, "headers": {"x-ok": "1"}},
    ),
    (
        "headers-authorization-dropped",
        {"allow": True, "headers": {"Authorization": "Bearer x"}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    (
        "headers-xff-dropped",
        {"allow": True, "headers": {"X-Forwarded-For": "1.2.3.4"}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    (
        "headers-underscore-dropped",
        {"allow": True, "headers": {"x_user": "root"}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    (
        "headers-space-in-name-dropped",
        {"allow": True, "headers": {"x user": "1"}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    (
        "headers-crlf-value-dropped",
        {"allow": True, "headers": {"x-a": "1\r\nx-b: 2"}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    (
        "headers-nul-value-dropped",
        {"allow": True, "headers": {"x-a": "1\x00"}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    (
        "headers-non-string-value-dropped",
        {"allow": True, "headers": {"x-n": 5}},
        HELD,
        {"allow": True, "headers": {}},
    ),
    ("headers-list", {"allow": True, "headers": [["x-a", "1"]]}, HELD, MALFORMED),
    ("headers-string", {"allow": True, "headers": "x-a: 1"}, HELD, MALFORMED),
    # --- credential and obligations
    (
        "credential",
        {"allow": True, "credential": "legacy"},
        HELD,
        {"allow": True, "credential": "legacy"},
    ),
    ("credential-empty", {"allow": True, "credential": ""}, HELD, MALFORMED),
    ("credential-not-string", {"allow": True, "credential": {"name": "x"}}, HELD, MALFORMED),
    (
        "obligations",
        {"allow": True, "obligations": {"no_cache": True}},
        HELD,
        {"allow": True, "obligations": {"no_cache": True}},
    ),
    ("obligations-list", {"allow": True, "obligations": ["no_cache"]}, HELD, MALFORMED),
]


@pytest.mark.parametrize(
    ("raw", "subject_scopes", "expected"),
    [pytest.param(raw, held, exp, id=name) for name, raw, held, exp in CASES],
)
def test_parse_decision(
    raw: object, subject_scopes: Sequence[str] | None, expected: dict[str, Any]
) -> None:
    decision = parse_decision(raw, "d-1", subject_scopes)
    assert decision.decision_id == "d-1"
    for field, value in expected.items():
        got = getattr(decision, field)
        if field in ("headers", "obligations"):
            got = dict(got)
        assert got == value, field


def test_malformed_allow_never_keeps_anything() -> None:
    decision = parse_decision({"allow": True, "scopes": "x", "headers": {"x-a": "1"}}, "d", HELD)
    assert decision.allow is False
    assert decision.scopes is None
    assert dict(decision.headers) == {}


@pytest.mark.parametrize("name", sorted(GATEWAY_OWNED_HEADERS))
def test_every_gateway_owned_header_is_dropped(name: str) -> None:
    decision = parse_decision({"allow": True, "headers": {name: "x", "x-kept": "1"}}, "d", HELD)
    assert decision.allow is True
    assert dict(decision.headers) == {"x-kept": "1"}


def test_route_reserved_headers_are_dropped() -> None:
    raw = {"allow": True, "headers": {"X-Billing-Key": "forged", "x-kept": "1"}}
    decision = parse_decision(raw, "d", HELD, reserved_headers={"x-billing-key"})
    assert dict(decision.headers) == {"x-kept": "1"}


def test_dropped_header_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    parse_decision({"allow": True, "headers": {"Txn-Token": "x"}}, "d-9", HELD)
    assert "d-9" in caplog.text
    assert "txn-token" in caplog.text


def test_decision_mappings_are_read_only() -> None:
    decision = parse_decision(
        {"allow": True, "headers": {"x-a": "1"}, "obligations": {"k": 1}}, "d", HELD
    )
    with pytest.raises(TypeError):
        decision.headers["x-b"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        decision.obligations["k"] = 2  # type: ignore[index]
