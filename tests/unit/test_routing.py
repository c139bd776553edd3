"""gateway.routing: first-match routing and the upstream URL (DESIGN.md §4, §6)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import MethodNotAllowed, NotFound
from gateway.routing import RouteTable
from gateway.settings import Route


def route(name: str, upstream: str = "http://127.0.0.1:9001", **fields: Any) -> Route:
    return Route.model_validate({"name": name, "upstream": upstream, **fields})


TABLE = RouteTable(
    [
        route("post", match={"path_prefix": "/api/", "methods": ["post"]}),
        route(
            "hosted",
            match={"path_prefix": "/api/", "hosts": ["*.example.org", "Exact.test", "[::1]"]},
        ),
        route("api", match={"path_prefix": "/api/"}),
        route("root-get", match={"path_prefix": "/", "methods": ["GET", "HEAD"]}),
    ]
)


@pytest.mark.parametrize(
    ("method", "host", "path", "expected"),
    [
        pytest.param("POST", "a.example.org", "/api/x", "post", id="first-match-wins"),
        pytest.param("GET", "a.example.org", "/api/x", "hosted", id="wildcard-one-label"),
        pytest.param("GET", "deep.a.example.org", "/api/x", "hosted", id="wildcard-many-labels"),
        pytest.param("GET", "A.Example.ORG:8443", "/api/x", "hosted", id="host-case-and-port"),
        pytest.param("GET", "exact.test", "/api/x", "hosted", id="exact-host"),
        pytest.param("GET", "EXACT.test:80", "/api/x", "hosted", id="exact-host-case-port"),
        pytest.param("GET", "[::1]:8443", "/api/x", "hosted", id="ipv6-host-port"),
        pytest.param("GET", "[::1]", "/api/x", "hosted", id="ipv6-host"),
        pytest.param("GET", "example.org", "/api/x", "api", id="wildcard-needs-a-label"),
        pytest.param("GET", "evilexample.org", "/api/x", "api", id="wildcard-needs-a-dot"),
        pytest.param("GET", "a.example.org.evil", "/api/x", "api", id="wildcard-suffix-only"),
        pytest.param("GET", "exact.test.", "/api/x", "api", id="trailing-dot-is-another-name"),
        pytest.param("GET", "notexact.test", "/api/x", "api", id="exact-is-exact"),
        pytest.param("PUT", "gw", "/api/x", "api", id="no-methods-means-any"),
        pytest.param("GET", "gw", "/api", "root-get", id="prefix-is-a-string-prefix"),
        pytest.param("GET", "gw", "/apix", "root-get", id="prefix-with-slash-not-apix"),
        pytest.param("HEAD", "gw", "/", "root-get", id="method-list"),
        pytest.param("DELETE", "gw", "/other", 405, id="path-fits-method-does-not"),
        pytest.param("get", "gw", "/other", 405, id="methods-are-case-sensitive"),
    ],
)
def test_match(method: str, host: str, path: str, expected: str | int) -> None:
    if expected == 405:
        with pytest.raises(MethodNotAllowed) as info:
            TABLE.match(method, host, path)
        assert info.value.status == 405
        assert info.value.headers == {"Allow": "GET, HEAD"}
    else:
        assert TABLE.match(method, host, path).name == expected


def test_allow_lists_every_method_of_every_route_that_fits_host_and_path() -> None:
    table = RouteTable(
        [
            route("read", match={"path_prefix": "/flights/", "methods": ["GET"]}),
            route("book", match={"path_prefix": "/flights/", "methods": ["POST", "GET"]}),
            route(
                "other-host", match={"path_prefix": "/", "methods": ["PUT"], "hosts": ["x.test"]}
            ),
            route("elsewhere", match={"path_prefix": "/billing/", "methods": ["DELETE"]}),
        ]
    )
    with pytest.raises(MethodNotAllowed) as info:
        table.match("DELETE", "gw", "/flights/1")
    assert info.value.headers == {"Allow": "GET, POST"}  # not PUT (host) nor DELETE (path)
    with pytest.raises(NotFound):
        table.match("GET", "gw", "/hotels/1")  # no route covers the path: 404, not 405


def test_empty_table_matches_nothing() -> None:
    with pytest.raises(NotFound) as info:
        RouteTable([]).match("GET", "gw", "/")
    assert info.value.status == 404


def test_order_is_config_order() -> None:
    table = RouteTable(
        [route("broad", match={"path_prefix": "/"}), route("narrow", match={"path_prefix": "/a/"})]
    )
    assert table.match("GET", "gw", "/a/b").name == "broad"
    assert [r.name for r in table] == ["broad", "narrow"]


@pytest.mark.parametrize(
    ("upstream", "fields", "path", "query", "expected"),
    [
        pytest.param("http://h:1", {}, "/a/b", "", "http://h:1/a/b", id="full-path-by-default"),
        pytest.param(
            "http://h:1",
            {"match": {"path_prefix": "/svc/"}},
            "/svc/x",
            "",
            "http://h:1/svc/x",
            id="prefix-kept-without-strip",
        ),
        pytest.param("http://h:1/base", {}, "/a", "", "http://h:1/base/a", id="base-path"),
        pytest.param(
            "http://h:1/base/", {}, "/a", "", "http://h:1/base/a", id="base-path-trailing-slash"
        ),
        pytest.param(
            "http://h:1/base",
            {"match": {"path_prefix": "/svc/"}, "strip_prefix": True},
            "/svc/x/y",
            "",
            "http://h:1/base/x/y",
            id="strip-prefix",
        ),
        pytest.param(
            "http://h:1/base",
            {"match": {"path_prefix": "/svc/"}, "strip_prefix": True},
            "/svc/",
            "",
            "http://h:1/base/",
            id="strip-prefix-to-root",
        ),
        pytest.param(
            "http://h:1",
            {"match": {"path_prefix": "/svc"}, "strip_prefix": True},
            "/svc",
            "",
            "http://h:1/",
            id="strip-prefix-exact",
        ),
        pytest.param(
            "http://h:1",
            {"match": {"path_prefix": "/svc"}, "strip_prefix": True},
            "/svc/x",
            "",
            "http://h:1/x",
            id="strip-prefix-without-slash",
        ),
        pytest.param(
            "https://h:8443/v1",
            {},
            "/a%3Ab%C3%A9",
            "",
            "https://h:8443/v1/a%3Ab%C3%A9",
            id="escapes-kept",
        ),
        pytest.param(
            "http://h:1",
            {},
            "/q",
            "b=%2f&c=d+e&&f=%E9;x=1",
            "http://h:1/q?b=%2f&c=d+e&&f=%E9;x=1",
            id="query-byte-for-byte",
        ),
        pytest.param(
            "http://h:1",
            {},
            "/q",
            "a=../b&c=%zz",
            "http://h:1/q?a=../b&c=%zz",
            id="query-not-normalised",
        ),
        pytest.param(
            "http://h:1/base",
            {"match": {"path_prefix": "/svc/"}, "strip_prefix": True},
            "/svc/x",
            "k=%2F",
            "http://h:1/base/x?k=%2F",
            id="strip-prefix-keeps-query",
        ),
    ],
)
def test_upstream_url(
    upstream: str, fields: dict[str, Any], path: str, query: str, expected: str
) -> None:
    [compiled] = RouteTable([route("r", upstream, **fields)])
    url = compiled.upstream_url(path, query)
    assert str(url) == expected
    # raw_path_qs is what goes on the upstream request line.
    _, _, authority_and_target = expected.partition("://")
    assert url.raw_path_qs == "/" + authority_and_target.split("/", 1)[1]
