"""The one framing rule (gateway/net/framing.py), table by table.

Each row is one request head as an aiohttp parser hands it over (method, raw target, version,
raw header bytes); the raw-socket corpus in tests/integration/test_framing_corpus.py sends the
same tricks through both real parsers.
"""

from __future__ import annotations

import pytest

from gateway.net.framing import FramingError, RawHeaders, check_head

HOST = (b"Host", b"gw.test")


def head(
    *headers: tuple[bytes, bytes],
    method: str = "GET",
    target: str = "/a",
    version: tuple[int, int] = (1, 1),
    scheme: str = "http",
) -> str | None:
    raw: RawHeaders = headers
    return check_head(method, target, version, raw, scheme=scheme)


def refused(status: int, reason: str, **kwargs: object) -> tuple[int, str, dict[str, object]]:
    return status, reason, kwargs


ACCEPTED = [
    pytest.param({"headers": (HOST,)}, id="plain-get"),
    pytest.param({"headers": (HOST,), "version": (1, 0)}, id="http10-with-host"),
    pytest.param({"headers": ((b"host", b"GW.test:8080"),)}, id="host-with-port-any-case"),
    pytest.param({"headers": ((b"Host", b"[::1]:8443"),)}, id="host-ipv6-literal"),
    pytest.param({"headers": ((b"Host", b"10.0.0.7"),)}, id="host-ipv4"),
    pytest.param(
        {"headers": (HOST, (b"Transfer-Encoding", b"chunked")), "method": "POST"},
        id="chunked",
    ),
    pytest.param(
        {"headers": (HOST, (b"Transfer-Encoding", b" \tCHUNKED\t ")), "method": "POST"},
        id="chunked-ows-and-case",
    ),
    pytest.param({"headers": (HOST, (b"Content-Length", b"003"))}, id="content-length-zeros"),
    pytest.param({"headers": (HOST, (b"X-Name", "é".encode()))}, id="utf8-value"),
    pytest.param({"headers": (HOST, (b"X-A", b"a\tb c"))}, id="tab-and-space-in-value"),
    pytest.param({"headers": (HOST,), "method": "M-SEARCH"}, id="extension-method"),
    pytest.param({"headers": (HOST,), "method": "OPTIONS", "target": "*"}, id="asterisk-form"),
]


@pytest.mark.parametrize("kwargs", ACCEPTED)
def test_accepted_heads_keep_their_target(kwargs: dict[str, object]) -> None:
    headers = kwargs.pop("headers")
    assert isinstance(headers, tuple)
    assert head(*headers, **kwargs) in (None, kwargs.get("target"))  # type: ignore[arg-type]


ABSOLUTE = [
    pytest.param("http://gw.test/a?b=1", (b"Host", b"gw.test"), "/a?b=1", id="same-host"),
    pytest.param("HTTP://GW.TEST/a", (b"Host", b"gw.test"), "/a", id="case-insensitive"),
    pytest.param("http://gw.test:80/a", (b"Host", b"gw.test"), "/a", id="explicit-default-port"),
    pytest.param("http://gw.test", (b"Host", b"gw.test:80"), "/", id="empty-path"),
    pytest.param("http://gw.test?x", (b"Host", b"gw.test"), "/?x", id="query-only"),
    pytest.param("http://[::1]:9/a", (b"Host", b"[::1]:9"), "/a", id="ipv6"),
]


@pytest.mark.parametrize(("target", "host", "origin"), ABSOLUTE)
def test_absolute_form_naming_this_host_becomes_origin_form(
    target: str, host: tuple[bytes, bytes], origin: str
) -> None:
    assert head(host, target=target) == origin


def test_absolute_form_must_use_the_listener_scheme() -> None:
    assert head(HOST, target="https://gw.test/a", scheme="https") == "/a"
    with pytest.raises(FramingError) as err:
        head(HOST, target="https://gw.test/a", scheme="http")
    assert err.value.reason == "bad_host"


REFUSED = [
    # version and request line
    pytest.param(refused(505, "http_version_not_supported", version=(2, 0)), id="http2-version"),
    pytest.param(refused(505, "http_version_not_supported", version=(1, 2)), id="http12-version"),
    pytest.param(refused(505, "http_version_not_supported", version=(0, 9)), id="http09-version"),
    pytest.param(refused(400, "bad_request_line", method="get"), id="lower-case-method"),
    pytest.param(refused(400, "bad_request_line", method="G{T"), id="method-not-a-token"),
    pytest.param(refused(400, "bad_request_line", method="CONNECT"), id="connect"),
    # Transfer-Encoding and Content-Length
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b"chunked"),), version=(1, 0)),
        id="te-on-http10",
    ),
    pytest.param(
        refused(
            400,
            "bad_framing",
            headers=((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")),
        ),
        id="te-and-cl",
    ),
    pytest.param(
        refused(
            400,
            "bad_framing",
            headers=((b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")),
        ),
        id="te-repeated",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b"chunked, identity"),)),
        id="te-chunked-not-last",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b"chunked, chunked"),)),
        id="te-chunked-twice",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b", chunked"),)),
        id="te-empty-element",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b""),)), id="te-empty"
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b"xchunked"),)),
        id="te-xchunked",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Transfer-Encoding", b'"chunked"'),)),
        id="te-quoted",
    ),
    pytest.param(
        refused(
            501, "unsupported_transfer_coding", headers=((b"Transfer-Encoding", b"gzip, chunked"),)
        ),
        id="te-gzip-chunked",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Content-Length", b"3"), (b"Content-Length", b"3"))),
        id="cl-repeated",
    ),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Content-Length", b"3, 3"),)), id="cl-list"
    ),
    pytest.param(refused(400, "bad_framing", headers=((b"Content-Length", b"-1"),)), id="cl-neg"),
    pytest.param(refused(400, "bad_framing", headers=((b"Content-Length", b"+3"),)), id="cl-plus"),
    pytest.param(
        refused(400, "bad_framing", headers=((b"Content-Length", "٣".encode()),)),
        id="cl-non-ascii-digit",
    ),
    pytest.param(refused(400, "bad_framing", headers=((b"Content-Length", b""),)), id="cl-empty"),
    # header field bytes (controls and non-token names: both parsers refuse them first)
    pytest.param(refused(400, "bad_header", headers=((b"X-A", b"\xe9"),)), id="value-not-utf8"),
]


@pytest.mark.parametrize("row", REFUSED)
def test_refused_heads(row: tuple[int, str, dict[str, object]]) -> None:
    status, reason, kwargs = row
    headers = kwargs.pop("headers", ())
    assert isinstance(headers, tuple)
    with pytest.raises(FramingError) as err:
        head(HOST, *headers, **kwargs)  # type: ignore[arg-type]
    assert (err.value.status, err.value.reason) == (status, reason)
    assert repr(err.value) == f"FramingError(status={status}, reason={reason!r})"


HOSTS = [
    pytest.param((), id="missing"),
    pytest.param(((b"Host", b"a"), (b"Host", b"a")), id="repeated"),
    pytest.param(((b"Host", b""),), id="empty"),
    pytest.param(((b"Host", b"gw.test, evil.test"),), id="list"),
    pytest.param(((b"Host", b"gw.test/evil"),), id="path"),
    pytest.param(((b"Host", b"u@evil.test"),), id="userinfo"),
    pytest.param(((b"Host", b"gw.test:99999"),), id="port-out-of-range"),
    pytest.param(((b"Host", b"gw.test:0"),), id="port-zero"),
    pytest.param(((b"Host", b"gw.test:"),), id="empty-port"),
    pytest.param(((b"Host", b"gw%2etest"),), id="percent-encoded"),
    pytest.param(((b"Host", b"gw test"),), id="space"),
]


@pytest.mark.parametrize("hosts", HOSTS)
@pytest.mark.parametrize("version", [(1, 1), (1, 0)], ids=["http11", "http10"])
def test_host_must_be_one_valid_authority(
    hosts: tuple[tuple[bytes, bytes], ...], version: tuple[int, int]
) -> None:
    with pytest.raises(FramingError) as err:
        head(*hosts, version=version)
    assert (err.value.status, err.value.reason) == (400, "bad_host")


TARGETS = [
    pytest.param("http://evil.test/a", "bad_host", id="another-host"),
    pytest.param("http://gw.test:8080/a", "bad_host", id="another-port"),
    pytest.param("http://u@gw.test/a", "bad_host", id="userinfo"),
    pytest.param("ftp://gw.test/a", "bad_host", id="another-scheme"),
    pytest.param("http:///a", "bad_host", id="no-authority"),
    pytest.param("http://gw.test/a#x", "bad_request_line", id="fragment"),
    pytest.param("http://gw.test:x/a", "bad_request_line", id="bad-port"),
]


@pytest.mark.parametrize(("target", "reason"), TARGETS)
def test_absolute_form_refused(target: str, reason: str) -> None:
    with pytest.raises(FramingError) as err:
        head(HOST, target=target)
    assert (err.value.status, err.value.reason) == (400, reason)
