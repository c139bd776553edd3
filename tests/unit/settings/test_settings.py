"""gateway.settings: strict config, ``path.to.key: message`` errors, secrets, relative paths
(DESIGN.md §4)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings import Secret, load_settings, parse_settings, resolve_secret

SECRET_VALUE = "s3cr3t-value-that-must-never-show"
UNSET_VAR = "AGENTGATE_TEST_DEFINITELY_UNSET"
SET_VAR = "AGENTGATE_TEST_SECRET"


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder with placeholder files; settings only check that they exist."""
    for name in ("certs/server.pem", "certs/server.key", "certs/ca.pem", "keys.yaml"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder\n")
    (tmp_path / "policies").mkdir()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client.txt").write_text(SECRET_VALUE + "\n")
    monkeypatch.delenv(UNSET_VAR, raising=False)
    monkeypatch.setenv(SET_VAR, SECRET_VALUE)
    # Relative paths must resolve against the config folder, never the working directory.
    monkeypatch.chdir(tmp_path.parent)
    return tmp_path


def lines(data: Any, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, base)
    return info.value.lines()


TLS = {"cert": "certs/server.pem", "key": "certs/server.key", "client_ca": "certs/ca.pem"}
ROUTE = {"name": "r", "upstream": "http://127.0.0.1:9001"}


def introspecting_issuer(secret: Any, **extra: Any) -> dict[str, Any]:
    return {
        "name": "corp",
        "issuer": "https://idp.example.org",
        "audience": "https://gw.example.org",
        "introspection": {
            "endpoint": "https://idp.example.org/introspect",
            "client_id": "gw",
            "client_secret": secret,
            **extra,
        },
    }


# --------------------------------------------------------------------------- error table

ERROR_CASES = [
    # Unknown keys, at every depth, name their full path.
    pytest.param({"serverr": {}}, ["serverr: unknown key"], id="unknown-top-level"),
    pytest.param({"server": {"listne": "x"}}, ["server.listne: unknown key"], id="unknown-server"),
    pytest.param(
        {"server": {"limits": {"max_header_byte": 1}}},
        ["server.limits.max_header_byte: unknown key"],
        id="unknown-limits",
    ),
    pytest.param(
        {"server": {"timeouts": {"drain": 1}}},
        ["server.timeouts.drain: unknown key"],
        id="unknown-timeouts",
    ),
    pytest.param(
        {"server": {"tls": {**TLS, "client_ca_file": "x"}}},
        ["server.tls.client_ca_file: unknown key"],
        id="unknown-tls",
    ),
    pytest.param(
        {"routes": [ROUTE, {**ROUTE, "name": "s", "match": {"path_prefx": "/"}}]},
        ["routes.1.match.path_prefx: unknown key"],
        id="unknown-route-match",
    ),
    pytest.param(
        {"routes": [{**ROUTE, "upstreem": "x"}]},
        ["routes.0.upstreem: unknown key"],
        id="unknown-route",
    ),
    pytest.param(
        {"issuers": [{**introspecting_issuer("env:" + SET_VAR), "jwks_cache": {"ttl": 1}}]},
        ["issuers.0.jwks_cache.ttl: unknown key"],
        id="unknown-issuer-nested",
    ),
    pytest.param(
        {"authn": {"bearer": {"issuers": [], "dpop": {"algorithm": ["ES256"]}}}},
        ["authn.bearer.dpop.algorithm: unknown key"],
        id="unknown-authn-method-nested",
    ),
    pytest.param(
        {"authn": {"partner": {"type": "api_key", "keys_file": "keys.yaml", "heder": "X"}}},
        ["authn.partner.heder: unknown key"],
        id="unknown-authn-named-method",
    ),
    pytest.param(
        {"routes": [{**ROUTE, "credential": {"type": "none", "hedaer": "X"}}]},
        ["routes.0.credential.hedaer: unknown key"],
        id="unknown-route-credential",
    ),
    pytest.param(
        {
            "routes": [
                {
                    **ROUTE,
                    "credential": {"type": "api_key", "secret": "env:" + SET_VAR, "hedaer": "X"},
                }
            ]
        },
        ["routes.0.credential.hedaer: unknown key"],
        id="unknown-route-credential-typed",
    ),
    # Required keys and values.
    pytest.param(
        {"routes": [{"name": "r"}]},
        ["routes.0.upstream: required key is missing"],
        id="missing-upstream",
    ),
    pytest.param(
        {"routes": [{"upstream": "http://h"}]},
        ["routes.0.name: required key is missing"],
        id="missing-route-name",
    ),
    pytest.param(
        {"server": {"listen": "nohost"}},
        ["server.listen: must be 'host:port' with a port in 0..65535"],
        id="listen-without-port",
    ),
    pytest.param(
        {"server": {"listen": "127.0.0.1:65536"}},
        ["server.listen: must be 'host:port' with a port in 0..65535"],
        id="listen-port-too-big",
    ),
    pytest.param(
        {"server": {"listen": "gateway.example.org:8443"}},
        ["server.listen: host must be an IP address or 'localhost'"],
        id="listen-host-name",
    ),
    pytest.param(
        {"server": {"admin_listen": "127.0.0.1"}},
        ["server.admin_listen: must be 'host:port' with a port in 0..65535"],
        id="bad-admin-listen",
    ),
    pytest.param(
        {"server": {"timeouts": {"drain_s": -1}}},
        ["server.timeouts.drain_s: Input should be greater than or equal to 0"],
        id="negative-drain",
    ),
    pytest.param(
        {"routes": [{**ROUTE, "upstream": "ftp://h"}]},
        ["routes.0.upstream: must be an absolute http:// or https:// URL"],
        id="upstream-not-http",
    ),
    pytest.param(
        {"routes": [{**ROUTE, "upstream": "http://user:pw@h/x"}]},
        ["routes.0.upstream: must not carry a query, fragment or credentials"],
        id="upstream-with-credentials",
    ),
    pytest.param(
        {"routes": [{**ROUTE, "match": {"path_prefix": "api/"}}]},
        ["routes.0.match.path_prefix: must start with '/'"],
        id="prefix-without-slash",
    ),
    # Cross-field checks.
    pytest.param(
        {"routes": [ROUTE, {**ROUTE, "upstream": "http://h2"}, ROUTE]},
        ["routes.1.name: duplicate route name 'r'", "routes.2.name: duplicate route name 'r'"],
        id="duplicate-route-names",
    ),
    pytest.param(
        {"routes": [{**ROUTE, "authn": {"any_of": ["mtls", {"all_of": ["bearer", "api_key"]}]}}]},
        [
            "routes.0.authn: method 'api_key' is not defined in authn",
            "routes.0.authn: method 'bearer' is not defined in authn",
            "routes.0.authn: method 'mtls' is not defined in authn",
        ],
        id="route-authn-undefined-methods",
    ),
    pytest.param(
        {"authn": {"mtls": {}}, "routes": [{**ROUTE, "authn": {"one_of": ["mtls"]}}]},
        ["routes.0.authn: unknown operator 'one_of' (any_of | all_of)"],
        id="route-authn-unknown-operator",
    ),
    pytest.param(
        {"authn": {"mtls": {}}, "routes": [{**ROUTE, "authn": {"any_of": ["mtls", {"xor": []}]}}]},
        ["routes.0.authn.any_of.1: unknown operator 'xor' (any_of | all_of)"],
        id="route-authn-nested-unknown-operator",
    ),
    pytest.param(
        {"authn": {"bearer": {"issuers": ["corp"]}}},
        ["authn.bearer.issuers: issuer 'corp' is not defined"],
        id="bearer-issuer-undefined",
    ),
    pytest.param(
        {"server": {"tls": {"cert": TLS["cert"], "key": TLS["key"], "client_cert": "required"}}},
        ["server.tls: client_ca is required unless client_cert is 'off'"],
        id="tls-required-without-client-ca",
    ),
    pytest.param(
        {"server": {"tls": {"cert": TLS["cert"], "key": TLS["key"], "client_cert": "optional"}}},
        ["server.tls: client_ca is required unless client_cert is 'off'"],
        id="tls-optional-without-client-ca",
    ),
    pytest.param(
        {"server": {"tls": {"cert": TLS["cert"], "key": TLS["key"]}}},
        ["server.tls: client_ca is required unless client_cert is 'off'"],
        id="tls-default-is-required",
    ),
    pytest.param(
        {"server": {"tls": {**TLS, "client_cert": "sometimes"}}},
        ["server.tls.client_cert: Input should be 'required', 'optional' or 'off'"],
        id="tls-bad-client-cert-mode",
    ),
    # Secrets: references only; errors name the reference, never a value.
    pytest.param(
        {"issuers": [introspecting_issuer("env:" + UNSET_VAR)]},
        [f"issuers.0.introspection.client_secret: environment variable {UNSET_VAR} is not set"],
        id="secret-env-unset",
    ),
    pytest.param(
        {"issuers": [introspecting_issuer(SECRET_VALUE)]},
        [
            "issuers.0.introspection.client_secret: must be a secret reference "
            "'env:NAME' or 'file:path', not a value"
        ],
        id="secret-inline-value",
    ),
    pytest.param(
        {"issuers": [introspecting_issuer("vault:kv/x")]},
        [
            "issuers.0.introspection.client_secret: must be a secret reference "
            "'env:NAME' or 'file:path', not a value"
        ],
        id="secret-unknown-scheme",
    ),
    # Several problems are all reported at once.
    pytest.param(
        {"server": {"listne": 1, "limits": {"max_body_bytes": -1}}, "routes": [{"name": "r"}]},
        [
            "server.listne: unknown key",
            "server.limits.max_body_bytes: Input should be greater than or equal to 0",
            "routes.0.upstream: required key is missing",
        ],
        id="every-error-at-once",
    ),
]


@pytest.mark.parametrize(("data", "expected"), ERROR_CASES)
def test_config_errors(base: Path, data: dict[str, Any], expected: list[str]) -> None:
    got = lines(data, base)
    assert sorted(got) == sorted(expected)
    for line in got:
        assert SECRET_VALUE not in line


def test_missing_file_is_named_with_its_resolved_path(base: Path) -> None:
    data = {"server": {"tls": {**TLS, "cert": "certs/nope.pem"}}}
    assert lines(data, base) == [f"server.tls.cert: file not found: {base / 'certs/nope.pem'}"]


def test_missing_secret_file_is_named_never_read(base: Path) -> None:
    data = {"issuers": [introspecting_issuer("file:secrets/nope.txt")]}
    [line] = lines(data, base)
    assert line.startswith("issuers.0.introspection.client_secret: cannot read secret file ")
    assert str(base / "secrets/nope.txt") in line


def test_top_level_must_be_a_mapping(base: Path) -> None:
    assert lines(["not", "a", "mapping"], base) == [
        "the configuration must be a mapping at the top level"
    ]


def test_cross_check_problem_keeps_its_path(base: Path) -> None:
    # One cross-field problem must be reported like several: (path, message), not ("", line).
    data = {"routes": [ROUTE, ROUTE]}
    with pytest.raises(ConfigError) as info:
        parse_settings(data, base)
    assert info.value.problems == [("routes.1.name", "duplicate route name 'r'")]


# --------------------------------------------------------------------------- accepted configs


def test_empty_config_gives_loopback_defaults(base: Path) -> None:
    settings = parse_settings({}, base)
    assert settings.server.listen == "127.0.0.1:8443"
    assert settings.server.admin_listen == "127.0.0.1:9901"
    assert settings.server.tls is None
    assert settings.server.forwarded.trusted_hops == 0
    assert settings.routes == ()


def test_port_zero_is_accepted_for_tests_and_the_demo(base: Path) -> None:
    settings = parse_settings(
        {"server": {"listen": "127.0.0.1:0", "admin_listen": "[::1]:0"}}, base
    )
    assert settings.server.listen == "127.0.0.1:0"


def test_tls_off_needs_no_client_ca(base: Path) -> None:
    tls = {"cert": TLS["cert"], "key": TLS["key"], "client_cert": "off"}
    settings = parse_settings({"server": {"tls": tls}}, base)
    assert settings.server.tls is not None
    assert settings.server.tls.client_ca is None


def test_relative_paths_resolve_against_the_config_folder(base: Path) -> None:
    assert Path.cwd() != base
    settings = parse_settings({"server": {"tls": TLS}}, base)
    tls = settings.server.tls
    assert tls is not None
    assert tls.cert == base / "certs/server.pem"
    assert tls.key == base / "certs/server.key"
    assert tls.client_ca == base / "certs/ca.pem"


def test_load_settings_resolves_against_the_yaml_files_folder(base: Path) -> None:
    config = base / "gateway.yaml"
    config.write_text(
        "server:\n  tls:\n    cert: certs/server.pem\n    key: certs/server.key\n"
        "    client_ca: certs/ca.pem\n"
    )
    settings = load_settings(config)
    assert settings.server.tls is not None
    assert settings.server.tls.cert == base / "certs/server.pem"


def test_invalid_yaml_names_the_line(base: Path) -> None:
    config = base / "broken.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:1\n  limits: {max_body_bytes: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    [line] = info.value.lines()
    assert "invalid YAML at line 4" in line


def test_route_match_is_normalised(base: Path) -> None:
    route = {**ROUTE, "match": {"methods": ["get", "Post"], "hosts": ["API.Example.org"]}}
    settings = parse_settings({"routes": [route]}, base)
    match = settings.routes[0].match
    assert match.methods == ("GET", "POST")
    assert match.hosts == ("api.example.org",)
    assert settings.routes[0].upstream == "http://127.0.0.1:9001"


# --------------------------------------------------------------------------- secrets


def test_secret_repr_and_str_never_show_the_value() -> None:
    secret = Secret("env:BILLING_KEY", SECRET_VALUE.encode())
    for text in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        repr([secret]),
        repr({"k": secret}),
    ):
        assert SECRET_VALUE not in text
        assert "env:BILLING_KEY" in text
    assert secret.reveal() == SECRET_VALUE.encode()
    assert secret.reveal_str() == SECRET_VALUE


def test_env_secret_resolves_and_stays_hidden(base: Path) -> None:
    settings = parse_settings({"issuers": [introspecting_issuer("env:" + SET_VAR)]}, base)
    introspection = settings.issuers[0].introspection
    assert introspection is not None
    assert introspection.client_secret.reveal_str() == SECRET_VALUE
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        repr(settings.model_dump(mode="json")),
    ):
        assert SECRET_VALUE not in text
    assert settings.model_dump(mode="json")["issuers"][0]["introspection"]["client_secret"] == (
        "env:" + SET_VAR
    )


def test_file_secret_is_relative_to_the_config_folder_without_trailing_newline(base: Path) -> None:
    settings = parse_settings({"issuers": [introspecting_issuer("file:secrets/client.txt")]}, base)
    introspection = settings.issuers[0].introspection
    assert introspection is not None
    assert introspection.client_secret.reveal_str() == SECRET_VALUE
    assert introspection.client_secret.ref == f"file:{base / 'secrets/client.txt'}"


def test_resolved_secret_never_appears_in_errors_about_its_neighbours(base: Path) -> None:
    data = {"issuers": [introspecting_issuer("env:" + SET_VAR, auth_method="carrier_pigeon")]}
    got = lines(data, base)
    assert got
    assert all(line.startswith("issuers.0.introspection.auth_method: ") for line in got)
    assert all(SECRET_VALUE not in line for line in got)


def test_resolve_secret_errors_name_the_reference_only(tmp_path: Path) -> None:
    os.environ.pop(UNSET_VAR, None)
    with pytest.raises(ValueError, match=UNSET_VAR) as info:
        resolve_secret("env:" + UNSET_VAR, tmp_path)
    assert SECRET_VALUE not in str(info.value)
