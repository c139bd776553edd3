"""gateway.authz.decision: the obligations the gateway enforces, parsed where applied."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.authz.decision import InvalidObligation, obligation_limit
from gateway.context import Decision
from gateway.settings import RateLimit


@pytest.mark.parametrize(
    ("obligations", "expected"),
    [
        pytest.param({}, None, id="absent"),
        pytest.param(
            {"rate_limit": {"rate": 2, "burst": 4, "per": "agent"}},
            RateLimit(rate=2, burst=4, per="agent"),
            id="valid",
        ),
        pytest.param(
            {"rate_limit": {"rate": 2, "burst": 4}},
            RateLimit(rate=2, burst=4),
            id="per-defaults-to-subject",
        ),
    ],
)
def test_obligation_limit(obligations: dict[str, Any], expected: RateLimit | None) -> None:
    assert obligation_limit(Decision(True, "d", obligations=obligations)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"rate": 0, "burst": 1}, id="zero-rate"),
        pytest.param({"rate": 1}, id="no-burst"),
        pytest.param({"rate": 1, "burst": 1, "per": "planet"}, id="unknown-per"),
        pytest.param({"rate": 1, "burst": 1, "extra": 1}, id="unknown-key"),
        pytest.param("10/s", id="not-an-object"),
    ],
)
def test_obligation_limit_malformed_denies(raw: Any) -> None:
    with pytest.raises(InvalidObligation) as info:
        obligation_limit(Decision(True, "d", obligations={"rate_limit": raw}))
    assert info.value.status == 403
