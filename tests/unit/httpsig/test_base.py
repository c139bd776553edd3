"""gateway.httpsig.base: RFC 9421 §2 component values and the §2.5 signature base."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.httpsig import ComponentUnavailable, Request, signature_base
from gateway.httpsig.sfv import InnerList, Item, parse_dictionary
from tests.unit.httpsig import vectors as v
from tests.unit.httpsig.vectors import fields_of


def _params(signature_input: str) -> InnerList:
    (member,) = parse_dictionary(signature_input).values()
    assert isinstance(member, InnerList)
    return member


@pytest.mark.parametrize(
    ("signature_input", "base"),
    [
        pytest.param(v.B21_INPUT, v.B21_BASE, id="B.2.1-minimal"),
        pytest.param(v.B23_INPUT, v.B23_BASE, id="B.2.3-full"),
        pytest.param(v.B25_INPUT, v.B25_BASE, id="B.2.5-hmac"),
        pytest.param(v.B26_INPUT, v.B26_BASE, id="B.2.6-ed25519"),
    ],
)
def test_rfc9421_appendix_b2_signature_bases(signature_input: str, base: str) -> None:
    assert signature_base(_params(signature_input), v.REQUEST.component).decode() == base


def test_b26_base_verifies_with_the_rfc_signature() -> None:
    # An independent check of the base bytes: the RFC's Ed25519 signature verifies over them.
    key = load_pem_public_key(v.ED25519_PUBLIC_PEM)
    assert isinstance(key, ed25519.Ed25519PublicKey)
    (member,) = parse_dictionary(v.B26_SIGNATURE).values()
    assert isinstance(member, Item)
    assert isinstance(member.value, bytes)
    key.verify(member.value, signature_base(_params(v.B26_INPUT), v.REQUEST.component))


def test_b22_query_param_is_unsupported() -> None:
    # RFC 9421 §2.2.8 @query-param is not implemented: the base cannot be built (§2.5).
    with pytest.raises(ComponentUnavailable, match="unsupported derived component"):
        signature_base(_params(v.B22_INPUT), v.REQUEST.component)


DERIVED = [
    # (component, scheme, authority, target, value)
    ("@method", "https", "h", "/", "POST"),
    ("@target-uri", "https", "www.example.com", "/path?param=value",
     "https://www.example.com/path?param=value"),  # §2.2.2
    ("@target-uri", "HTTPS", "h", "/a/../b//c?x=%41", "https://h/a/../b//c?x=%41"),
    ("@authority", "https", "WWW.Example.COM:443", "/", "www.example.com"),  # §2.2.3
    ("@authority", "http", "example.com:80", "/", "example.com"),
    ("@authority", "http", "example.com:443", "/", "example.com:443"),
    ("@authority", "https", "[::1]:8443", "/", "[::1]:8443"),
    ("@scheme", "HTTP", "h", "/", "http"),  # §2.2.4
    ("@request-target", "https", "h", "/path?param=value", "/path?param=value"),  # §2.2.5
    ("@path", "https", "h", "/path?param=value", "/path"),  # §2.2.6
    ("@path", "https", "h", "?x", "/"),
    ("@path", "https", "h", "/a%2Fb/../c", "/a%2Fb/../c"),
    ("@query", "https", "h", "/path?param=value&foo=bar&baz=bat%2Dman",
     "?param=value&foo=bar&baz=bat%2Dman"),  # §2.2.7
    ("@query", "https", "h", "/path?queryString", "?queryString"),
    ("@query", "https", "h", "/path", "?"),
    ("@query", "https", "h", "/path?", "?"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("component", "scheme", "authority", "target", "value"),
    [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(DERIVED)],
)
def test_derived_components(
    component: str, scheme: str, authority: str, target: str, value: str
) -> None:
    request = Request(method="POST", scheme=scheme, authority=authority, target=target)
    assert request.component(component) == value


@pytest.mark.parametrize(
    ("lines", "value"),
    [
        pytest.param(["  a "], "a", id="trimmed"),
        pytest.param(["a", "b,  c\t"], "a, b,  c", id="lines-joined-inner-spaces-kept"),
        pytest.param(["", "x"], ", x", id="empty-line-kept"),
    ],
)
def test_header_field_values(lines: list[str], value: str) -> None:
    headers = [("X-Multi", line) for line in lines]
    request = Request("GET", "https", "h", "/", fields_of(headers))  # type: ignore[arg-type]
    assert request.component("x-multi") == value


@pytest.mark.parametrize(
    "component", ["@status", "@query-param", "@signature-params", "@unknown", "x-absent"]
)
def test_unavailable_components(component: str) -> None:
    with pytest.raises(ComponentUnavailable):
        v.REQUEST.component(component)


def test_non_ascii_base_is_refused() -> None:
    headers = [("X-Name", "café")]
    request = Request("GET", "https", "h", "/", fields_of(headers))  # type: ignore[arg-type]
    params = InnerList((Item("x-name"),), (("keyid", "k"),))
    with pytest.raises(ComponentUnavailable, match="non-ASCII"):
        signature_base(params, request.component)


def test_signature_params_line_is_canonical() -> None:
    # Whatever spelling the signer used, the last line is the canonical serialisation.
    params = _params('s=( "@method"   "@path" );keyid="k";created=1')
    base = signature_base(params, v.REQUEST.component).decode()
    assert base.splitlines()[-1] == '"@signature-params": ("@method" "@path");keyid="k";created=1'
