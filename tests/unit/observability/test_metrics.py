"""gateway.observability.metrics: the series the admin /metrics serves, with bounded labels."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.net.tls_acceptor import _OPENSSL_REASONS, _VERIFY_REASONS, refusal_reason
from gateway.observability.metrics import TLS_HANDSHAKE_REASONS, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_fresh_registry_per_instance() -> None:
    a, b = Metrics(), Metrics()
    a.observe_request("r", 200, "ok", 0.01)
    assert ("agentgate_requests_total", (("reason", "ok"), ("route", "r"), ("status", "200"))) in (
        samples(a)
    )
    assert not any(name == "agentgate_requests_total" for name, _ in samples(b))


@pytest.mark.parametrize(
    ("record", "series", "labels"),
    [
        pytest.param(
            lambda m: m.observe_request("flights", 403, "policy_denied", 0.002),
            "agentgate_requests_total",
            {"route": "flights", "status": "403", "reason": "policy_denied"},
            id="requests",
        ),
        pytest.param(
            lambda m: m.observe_stage("decide", 0.0003),
            "agentgate_stage_duration_seconds_count",
            {"stage": "decide"},
            id="stage-latency",
        ),
        pytest.param(
            lambda m: m.observe_pdp("opa", 0.004, "allow"),
            "agentgate_pdp_decisions_total",
            {"engine": "opa", "outcome": "allow"},
            id="pdp-decisions",
        ),
        pytest.param(
            lambda m: m.observe_pdp("opa", 0.004, "deny"),
            "agentgate_pdp_duration_seconds_count",
            {"engine": "opa"},
            id="pdp-latency",
        ),
        pytest.param(
            lambda m: m.pdp_error("opa", "timeout"),
            "agentgate_pdp_errors_total",
            {"engine": "opa", "kind": "timeout"},
            id="pdp-errors",
        ),
        pytest.param(
            lambda m: m.jwks_refresh("corp", ok=False),
            "agentgate_jwks_refreshes_total",
            {"issuer": "corp", "outcome": "error"},
            id="jwks-refreshes",
        ),
        pytest.param(
            lambda m: m.upstream_error("flights", "upstream_timeout"),
            "agentgate_upstream_errors_total",
            {"route": "flights", "kind": "upstream_timeout"},
            id="upstream-errors",
        ),
        pytest.param(
            lambda m: m.txn_token_minted("flights"),
            "agentgate_txn_tokens_minted_total",
            {"route": "flights"},
            id="txn-tokens",
        ),
        pytest.param(
            lambda m: m.rate_limited("flights"),
            "agentgate_rate_limited_total",
            {"route": "flights"},
            id="rate-limited",
        ),
        pytest.param(
            lambda m: m.audit_dropped(), "agentgate_audit_dropped_total", {}, id="audit-dropped"
        ),
    ],
)
def test_each_recorder_moves_its_series(
    record: Callable[[Metrics], None], series: str, labels: dict[str, str]
) -> None:
    metrics = Metrics()
    record(metrics)
    record(metrics)
    assert samples(metrics)[(series, tuple(sorted(labels.items())))] == 2


def test_unknown_stage_and_outcome_fold_into_bounded_labels() -> None:
    metrics = Metrics()
    metrics.observe_stage("authenticate /flights/42 alice", 0.001)  # a bug, not a new series
    metrics.observe_pdp("embedded", 0.001, "maybe")
    got = samples(metrics)
    assert got[("agentgate_stage_duration_seconds_count", (("stage", "other"),))] == 1
    assert got[("agentgate_pdp_decisions_total", (("engine", "embedded"), ("outcome", "error")))]


def test_behavior_gauge_reads_the_store_at_scrape_time() -> None:
    metrics = Metrics()
    size = [3]
    metrics.watch_behavior(lambda: size[0])
    assert samples(metrics)[("agentgate_behavior_agents", ())] == 3
    size[0] = 7
    assert samples(metrics)[("agentgate_behavior_agents", ())] == 7


def test_stage_histogram_has_sub_millisecond_buckets() -> None:
    metrics = Metrics()
    metrics.observe_stage("mint", 0.0002)
    got = samples(metrics)
    assert got[("agentgate_stage_duration_seconds_bucket", (("le", "0.00025"), ("stage", "mint")))]
    assert not got[
        ("agentgate_stage_duration_seconds_bucket", (("le", "0.0001"), ("stage", "mint")))
    ]


def _ssl_error(code: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, code)
    exc.reason = code
    return exc


def _verify_error(message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, message)
    exc.verify_message, exc.reason = message, "CERTIFICATE_VERIFY_FAILED"
    return exc


# One failed handshake per reason refusal_reason can answer (and two it folds).
_HANDSHAKES = [
    pytest.param(TimeoutError(), "timeout", id="timeout"),
    pytest.param(_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_cert", id="no-cert"),
    pytest.param(_verify_error("unable to get local issuer certificate"), "unknown_ca", id="ca"),
    pytest.param(_verify_error("certificate has expired"), "expired", id="expired"),
    pytest.param(_verify_error("certificate is not yet valid"), "not_yet_valid", id="not-yet"),
    pytest.param(_verify_error("certificate revoked"), "revoked", id="revoked"),
    pytest.param(_verify_error("invalid CA certificate"), "bad_certificate", id="bad-cert"),
    pytest.param(_ssl_error("NO_SHARED_CIPHER"), "protocol", id="protocol"),
    pytest.param(_ssl_error("HTTP_REQUEST"), "not_tls", id="not-tls"),
    pytest.param(ConnectionResetError(), "closed", id="closed"),
    pytest.param(_ssl_error("SOMETHING_NEW"), "other", id="other-ssl"),
    pytest.param(ValueError(), "other", id="other"),
]


@pytest.mark.parametrize(("exc", "reason"), _HANDSHAKES)
def test_tls_handshake_reasons_are_the_listed_ones(exc: BaseException, reason: str) -> None:
    assert refusal_reason(exc)[0] == reason
    assert reason in TLS_HANDSHAKE_REASONS


def test_tls_handshake_reasons_cover_the_acceptor_tables_and_keep_the_help_text() -> None:
    tables = {r for _, r in _VERIFY_REASONS} | set(_OPENSSL_REASONS.values())
    assert tables <= set(TLS_HANDSHAKE_REASONS)
    assert {reason for _, reason in (p.values for p in _HANDSHAKES)} == set(TLS_HANDSHAKE_REASONS)
    # The help text as it was before the list became Reason members (byte for byte).
    assert (
        "# HELP agentgate_tls_handshake_failures_total TLS handshakes the main listener refused,"
        " by reason (no_client_cert, unknown_ca, expired, not_yet_valid, revoked,"
        " bad_certificate, protocol, not_tls, timeout, closed, other).\n"
    ) in Metrics().render().decode()
