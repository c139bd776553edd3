"""gateway.authn.hmac_signature: RFC 9421 ``hmac-sha256`` signatures (+ RFC 9530 digests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from multidict import CIMultiDict

from gateway.authn.hmac_signature import HMACSignatureAuthenticator, message
from gateway.context import Principal, RequestFacts
from gateway.errors import BadRequest, GatewayError, ServiceUnavailable, Unauthorized
from gateway.httpsig import ComponentUnavailable, signature_base
from gateway.httpsig.sfv import InnerList, Item, parse_dictionary, serialize_inner_list
from gateway.settings import HMACMethod
from gateway.state.memory import MemoryReplayCache
from tests.support import inbound

# RFC 9421 Appendix B.1.3 shared secret and the B.2 test request (values copied from the RFC).
RFC_KEY_B64 = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_CREATED = 1618884473
RFC_HEADERS = [
    ("Host", "example.com"),
    ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("Content-Type", "application/json"),
    (
        "Content-Digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    ),
    ("Content-Length", "18"),
]
RFC_B25_INPUT = (
    'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
)
RFC_B25_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
RFC_B25_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type")'
    ';created=1618884473;keyid="test-shared-secret"'
)
RFC_B23_INPUT = (
    'sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" '
    '"content-length");created=1618884473;keyid="test-key-rsa-pss"'
)
RFC_B23_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@method": POST\n'
    '"@path": /foo\n'
    '"@query": ?param=Value&Pet=dog\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"content-digest": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNye'
    "aldVLvRwEmTHWXvJwew==:\n"
    '"content-length": 18\n'
    '"@signature-params": ("date" "@method" "@path" "@query" "@authority" "content-type" '
    '"content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss"'
)

AGENT_SECRET = b"agent-7-shared-secret-0123456789abcdef!"
NOW = 1_700_000_000
HOST = "gw.example.org"
BODY = b'{"amount": 42}'


def _sha256_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


@pytest.fixture
def keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGENTGATE_TEST_RFC9421_KEY", RFC_KEY_B64)
    monkeypatch.setenv("AGENTGATE_TEST_AGENT7", AGENT_SECRET.decode())
    path = tmp_path / "hmac-keys.yaml"
    keys = [
        {
            "id": "test-shared-secret",
            "secret": "env:AGENTGATE_TEST_RFC9421_KEY",
            "encoding": "base64",
            "subject": "rfc-client",
        },
        {
            "id": "legacy-agent-7",
            "secret": "env:AGENTGATE_TEST_AGENT7",
            "subject": "legacy-agent-7",
            "roles": ["legacy"],
            "type": "agent",
        },
    ]
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def _facts(host: str = HOST, now: int = NOW, scheme: str = "https") -> RequestFacts:
    return RequestFacts(
        request_id="r1",
        method="POST",
        scheme=scheme,
        host=host,
        path="/x",
        raw_query="",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto=scheme,
        forwarded_host=host,
        peer=None,
        time_ns=now * 10**9,
    )


def _method(
    keys_file: Path, replay: Any = None, *, max_body_bytes: int = 1024, **cfg: Any
) -> HMACSignatureAuthenticator:
    return HMACSignatureAuthenticator(
        "hmac",
        HMACMethod(keys_file=keys_file, **cfg),
        replay if replay is not None else MemoryReplayCache(),
        max_body_bytes=max_body_bytes,
    )


def _base(request: Any, facts: RequestFacts, params: InnerList) -> bytes:
    """The signature base the verifier computes for this request (via gateway.httpsig)."""
    return signature_base(params, message(request, facts).component)


def _mocked(method: str, target: str, headers: Sequence[tuple[str, str]]) -> Any:
    return inbound(make_mocked_request(method, target, headers=CIMultiDict(headers)))


# --------------------------------------------------------------------------- RFC vectors


async def test_rfc9421_b25_hmac_sha256_vector(keys_file: Path) -> None:
    headers = [*RFC_HEADERS, ("Signature-Input", RFC_B25_INPUT), ("Signature", RFC_B25_SIGNATURE)]
    request = _mocked("POST", "/foo?param=Value&Pet=dog", headers)
    facts = _facts(host="example.com", now=RFC_CREATED)
    # The signature base, byte for byte.
    (params,) = parse_dictionary(RFC_B25_INPUT).values()
    assert isinstance(params, InnerList)
    assert _base(request, facts, params).decode() == RFC_B25_BASE
    # The signature value.
    key = base64.b64decode(RFC_KEY_B64)
    mac = hmac.new(key, RFC_B25_BASE.encode(), hashlib.sha256).digest()
    assert f"sig-b25=:{base64.b64encode(mac).decode()}:" == RFC_B25_SIGNATURE
    # And the method verifies it.
    method = _method(keys_file, required_components=("created",))
    principal = await method.authenticate(request, facts)
    assert principal is not None
    assert (principal.subject, principal.client_id, principal.amr) == (
        "rfc-client",
        "test-shared-secret",
        ("swk",),
    )
    assert principal.claims["label"] == "sig-b25"
    assert principal.claims["covered"] == ["date", "@authority", "content-type"]


def test_rfc9421_b23_signature_base_with_derived_components() -> None:
    request = _mocked("POST", "/foo?param=Value&Pet=dog", RFC_HEADERS)
    (params,) = parse_dictionary(RFC_B23_INPUT).values()
    assert isinstance(params, InnerList)
    base = _base(request, _facts(host="example.com", now=RFC_CREATED), params)
    assert base.decode() == RFC_B23_BASE


DERIVED_CASES = [
    pytest.param(
        "@target-uri",
        "https",
        "www.example.com",
        "/path?param=value",
        "https://www.example.com/path?param=value",
        id="target-uri-rfc-2.2.2",
    ),
    pytest.param(
        "@target-uri",
        "https",
        HOST,
        "/a/../b//c?x=%41",
        f"https://{HOST}/a/../b//c?x=%41",
        id="target-uri-raw-as-received",
    ),
    pytest.param(
        "@authority",
        "https",
        "WWW.Example.COM:443",
        "/",
        "www.example.com",
        id="authority-lowercase-default-port-dropped",
    ),
    pytest.param(
        "@authority",
        "http",
        "example.com:8080",
        "/",
        "example.com:8080",
        id="authority-keeps-other-port",
    ),
    pytest.param("@path", "https", HOST, "/a/../b?q", "/a/../b", id="path-as-received"),
    pytest.param("@query", "https", HOST, "/p", "?", id="query-empty-is-question-mark"),
    pytest.param("@query", "https", HOST, "/p?", "?", id="query-bare-question-mark"),
    pytest.param("@request-target", "https", HOST, "/p?a=b", "/p?a=b", id="request-target"),
    pytest.param("@scheme", "http", HOST, "/p", "http", id="scheme-of-listener"),
    pytest.param("@method", "https", HOST, "/p", "POST", id="method"),
]


@pytest.mark.parametrize(("component", "scheme", "host", "target", "value"), DERIVED_CASES)
def test_derived_component_values(
    component: str, scheme: str, host: str, target: str, value: str
) -> None:
    request = _mocked("POST", target, [("Host", host)])
    params = InnerList((Item(component),), (("keyid", "k"),))
    base = _base(request, _facts(host=host, scheme=scheme), params).decode()
    assert base.splitlines()[0] == f'"{component}": {value}'


def test_header_values_trimmed_and_joined() -> None:
    request = _mocked("GET", "/", [("X-Multi", "  a "), ("x-multi", "b,  c\t")])
    params = InnerList((Item("x-multi"),), (("keyid", "k"),))
    assert _base(request, _facts(), params).decode().splitlines()[0] == ('"x-multi": a, b,  c')


def test_signature_params_serialisation_roundtrip() -> None:
    text = '("@method" "content-digest");created=1;expires=2;keyid="a\\"b";alg="hmac-sha256"'
    (value,) = parse_dictionary(f"sig1={text}").values()
    assert isinstance(value, InnerList)
    assert serialize_inner_list(value) == text


# --------------------------------------------------------------------------- signing helper

Signer = Callable[..., list[tuple[str, str]]]


def sign(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    *,
    components: Sequence[str] = ("@method", "@target-uri", "content-digest"),
    params: Sequence[tuple[str, Any]] | None = None,
    key: bytes = AGENT_SECRET,
    label: str = "sig1",
    facts: RequestFacts | None = None,
) -> list[tuple[str, str]]:
    """``headers`` plus ``Signature-Input``/``Signature`` for an RFC 9421 hmac-sha256 signature."""
    if params is None:
        params = [("created", NOW), ("keyid", "legacy-agent-7"), ("alg", "hmac-sha256")]
    inner = InnerList(tuple(Item(c) for c in components), tuple(params))
    try:
        base = _base(_mocked(method, target, headers), facts or _facts(), inner)
    except ComponentUnavailable:  # a component the request cannot produce: any MAC will do
        base = b""
    mac = base64.b64encode(hmac.new(key, base, hashlib.sha256).digest()).decode()
    return [
        *headers,
        ("Signature-Input", f"{label}={serialize_inner_list(inner)}"),
        ("Signature", f"{label}=:{mac}:"),
    ]


BASE_HEADERS = [("Host", HOST), ("Content-Digest", _sha256_digest(b""))]


async def test_signed_request_without_body(keys_file: Path) -> None:
    request = _mocked("GET", "/flights/42?x=1", sign("GET", "/flights/42?x=1", BASE_HEADERS))
    principal = await _method(keys_file).authenticate(request, _facts())
    assert isinstance(principal, Principal)
    assert (principal.subject, principal.subject_type, principal.roles) == (
        "legacy-agent-7",
        "agent",
        ("legacy",),
    )
    assert principal.claims["created"] == NOW
    assert request.body.buffered is None  # nothing to buffer: the request had no body


async def test_no_signature_input_is_not_mine(keys_file: Path) -> None:
    request = _mocked("GET", "/", [("Host", HOST), ("Signature", "sig1=:AAAA:")])
    assert await _method(keys_file).authenticate(request, _facts()) is None


def _swap(headers: list[tuple[str, str]], name: str, value: str | None) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in headers if k.lower() != name.lower()]
    return out if value is None else [*out, (name, value)]


def _flip(signature_field: str) -> str:
    label, _, value = signature_field.partition("=")
    raw = bytearray(base64.b64decode(value.strip(":")))
    raw[0] ^= 1
    return f"{label}=:{base64.b64encode(bytes(raw)).decode()}:"


def _with(name: str, value: str | None) -> Callable[[list[tuple[str, str]]], Any]:
    return lambda h: _swap(h, name, value)


UNAUTHORIZED_CASES: list[Any] = [
    pytest.param(
        dict(components=("@method", "content-digest")),
        {},
        None,
        "signature does not cover the required components",
        id="target-uri-not-covered",
    ),
    pytest.param(
        dict(components=("@method", "@target-uri")),
        {},
        None,
        "signature does not cover the required components",
        id="content-digest-not-covered",
    ),
    pytest.param(
        dict(params=[("keyid", "legacy-agent-7")]),
        {},
        None,
        "signature does not cover the required components",
        id="created-missing",
    ),
    pytest.param(
        dict(params=[("created", NOW - 31), ("keyid", "legacy-agent-7")]),
        {},
        None,
        "signature created outside the allowed clock skew",
        id="created-too-old",
    ),
    pytest.param(
        dict(params=[("created", NOW + 31), ("keyid", "legacy-agent-7")]),
        {},
        None,
        "signature created outside the allowed clock skew",
        id="created-in-future",
    ),
    pytest.param(
        dict(params=[("created", NOW - 5), ("expires", NOW - 1), ("keyid", "legacy-agent-7")]),
        {},
        None,
        "signature expired",
        id="expired",
    ),
    pytest.param(
        dict(params=[("created", NOW), ("keyid", "legacy-agent-7"), ("alg", "hmac-sha512")]),
        {},
        None,
        "unsupported signature algorithm",
        id="alg-not-hmac-sha256",
    ),
    pytest.param(
        dict(params=[("created", NOW), ("keyid", "legacy-agent-7"), ("alg", "rsa-pss-sha512")]),
        {},
        None,
        "unsupported signature algorithm",
        id="alg-asymmetric",
    ),
    pytest.param(
        dict(params=[("created", NOW), ("keyid", "nobody")]),
        {},
        None,
        "unknown signature key",
        id="unknown-keyid",
    ),
    pytest.param(
        dict(key=b"another-secret-that-is-long-enough-000"),
        {},
        None,
        "signature mismatch",
        id="wrong-key",
    ),
    pytest.param(
        dict(key=base64.b64decode(RFC_KEY_B64)),
        {},
        None,
        "signature mismatch",
        id="other-clients-key-same-keyid",
    ),
    pytest.param(
        {},
        {},
        _with("Host", "evil.example"),
        "signature mismatch",
        id="host-changed",
    ),
    pytest.param(
        {},
        {"method": "DELETE"},
        None,
        "signature mismatch",
        id="method-changed",
    ),
    pytest.param(
        {},
        {"target": "/flights/43"},
        None,
        "signature mismatch",
        id="target-changed",
    ),
    pytest.param(
        dict(components=("@method", "@target-uri", "content-digest", "x-tenant")),
        {},
        None,
        "covered component missing or unsupported",
        id="covered-header-absent",
    ),
    pytest.param(
        dict(components=("@method", "@target-uri", "content-digest", "@status")),
        {},
        None,
        "covered component missing or unsupported",
        id="response-only-component",
    ),
    pytest.param(
        {},
        {},
        _with("Content-Digest", "sha-256=:" + "A" * 43 + "=:"),
        "signature mismatch",
        id="digest-header-swapped-after-signing",
    ),
    pytest.param(
        {},
        {},
        lambda h: [(k, _flip(v) if k == "Signature" else v) for k, v in h],
        "signature mismatch",
        id="signature-bytes-altered",
    ),
]


@pytest.mark.parametrize(("sign_kw", "request_kw", "mutate", "public"), UNAUTHORIZED_CASES)
async def test_verification_failures_are_401(
    keys_file: Path,
    sign_kw: dict[str, Any],
    request_kw: dict[str, str],
    mutate: Callable[[list[tuple[str, str]]], list[tuple[str, str]]] | None,
    public: str,
) -> None:
    headers = sign("GET", "/flights/42", BASE_HEADERS, **sign_kw)
    if mutate is not None:
        headers = mutate(headers)
    request = _mocked(
        request_kw.get("method", "GET"), request_kw.get("target", "/flights/42"), headers
    )
    host = dict(headers).get("Host", HOST)
    with pytest.raises(Unauthorized) as exc:
        await _method(keys_file).authenticate(request, _facts(host=host))
    assert exc.value.status == 401
    challenge = exc.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="agentgate", error="invalid_token"')
    assert f'error_description="{public}"' in challenge
    assert AGENT_SECRET.decode() not in str(exc.value) + exc.value.detail


def _fields(headers: list[tuple[str, str]], **replace: str | None) -> list[tuple[str, str]]:
    for name, value in replace.items():
        headers = _swap(headers, name.replace("_", "-"), value)
    return headers


_SIGNED = sign("GET", "/p", BASE_HEADERS)
_SIG = dict(_SIGNED)["Signature"].partition("=")[2]
_INPUT = dict(_SIGNED)["Signature-Input"].partition("=")[2]

BAD_REQUEST_CASES = [
    pytest.param(_fields(_SIGNED, Signature=None), id="signature-missing"),
    pytest.param(
        _fields(_SIGNED, Signature_Input=f"sig1={_INPUT}, sig2={_INPUT}"), id="two-labels"
    ),
    pytest.param([*_SIGNED, ("Signature-Input", f"sig2={_INPUT}")], id="two-labels-two-lines"),
    pytest.param(_fields(_SIGNED, Signature=f"other={_SIG}"), id="label-mismatch"),
    pytest.param(
        _fields(_SIGNED, Signature_Input=f"sig1={_INPUT}, sig1={_INPUT}"), id="duplicate-label"
    ),
    pytest.param(_fields(_SIGNED, Signature_Input='sig1=("@method"'), id="unterminated-list"),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1="@method";keyid="k"'), id="not-an-inner-list"
    ),
    pytest.param(_fields(_SIGNED, Signature='sig1="notbytes"'), id="signature-not-bytes"),
    pytest.param(_fields(_SIGNED, Signature="sig1=:not base64:"), id="signature-bad-base64"),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=(@method);keyid="legacy-agent-7"'),
        id="component-is-a-token",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@Method");keyid="legacy-agent-7"'),
        id="component-uppercase",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method" "@method");keyid="k"'),
        id="component-repeated",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@signature-params");keyid="k"'),
        id="signature-params-covered",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");created="1";keyid="k"'),
        id="created-not-integer",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");created=?1;keyid="k"'),
        id="created-boolean",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");created=1.5;keyid="k"'),
        id="created-decimal",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");keyid=k'), id="keyid-token-not-string"
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");created=1'), id="keyid-missing"
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");keyid="k";keyid="j"'),
        id="duplicate-parameter",
    ),
    pytest.param(
        _fields(_SIGNED, Signature_Input='sig1=("@method");keyid="k",'), id="trailing-comma"
    ),
    pytest.param(_fields(_SIGNED, Signature_Input='sig1=("é");keyid="k"'), id="non-ascii"),
]


@pytest.mark.parametrize("headers", BAD_REQUEST_CASES)
async def test_malformed_signature_fields_are_400(
    keys_file: Path, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(BadRequest) as exc:
        await _method(keys_file).authenticate(_mocked("GET", "/p", headers), _facts())
    assert (exc.value.status, exc.value.reason) == (400, "invalid_request")


async def test_component_parameters_are_unsupported(keys_file: Path) -> None:
    headers = _fields(
        _SIGNED, Signature_Input='sig1=("@query-param";name="a");keyid="legacy-agent-7"'
    )
    with pytest.raises(Unauthorized):
        await _method(keys_file).authenticate(_mocked("GET", "/p?a=1", headers), _facts())


async def test_required_components_are_configurable(keys_file: Path) -> None:
    headers = sign("GET", "/p", [("Host", HOST), ("Date", "x")], components=("date",))
    method = _method(keys_file, required_components=("date",))
    assert await method.authenticate(_mocked("GET", "/p", headers), _facts()) is not None


async def test_replay_is_refused(keys_file: Path) -> None:
    method = _method(keys_file)
    headers = sign("GET", "/p", BASE_HEADERS)
    assert await method.authenticate(_mocked("GET", "/p", headers), _facts()) is not None
    with pytest.raises(Unauthorized) as exc:
        await method.authenticate(_mocked("GET", "/p", headers), _facts(now=NOW + 1))
    assert "signature replayed" in exc.value.headers["WWW-Authenticate"]


async def test_unusable_replay_store_is_503(keys_file: Path) -> None:
    method = _method(keys_file, MemoryReplayCache(max_entries=0))
    with pytest.raises(ServiceUnavailable) as exc:
        await method.authenticate(_mocked("GET", "/p", sign("GET", "/p", BASE_HEADERS)), _facts())
    assert exc.value.status == 503


# --------------------------------------------------------------------------- bodies (real server)


@pytest.fixture
async def client(keys_file: Path, aiohttp_client: Any) -> TestClient[Any, Any]:
    method = _method(keys_file, max_body_bytes=64)

    async def handler(request: web.Request) -> web.Response:
        facts = _facts(host=request.headers["Host"])
        seen = inbound(request, max_body_bytes=64)
        try:
            principal = await method.authenticate(seen, facts)
        except GatewayError as exc:
            return web.json_response({"reason": exc.public}, status=exc.status)
        buffered = seen.body.buffered
        return web.json_response(
            {
                "subject": principal.subject if principal else None,
                "buffered": buffered.decode() if isinstance(buffered, bytes) else None,
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    result: TestClient[Any, Any] = await aiohttp_client(app)
    return result


def _body_headers(body: bytes, digest: str | None = None) -> list[tuple[str, str]]:
    headers = [("Host", HOST), ("Content-Digest", digest or _sha256_digest(body))]
    return sign("POST", "/pay", headers)


async def test_body_digest_verified_and_body_buffered(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/pay", data=BODY, headers=_body_headers(BODY))
    assert resp.status == 200
    assert await resp.json() == {"subject": "legacy-agent-7", "buffered": BODY.decode()}


async def test_sha512_digest_accepted(client: TestClient[Any, Any]) -> None:
    digest = "sha-512=:" + base64.b64encode(hashlib.sha512(BODY).digest()).decode() + ":"
    resp = await client.post("/pay", data=BODY, headers=_body_headers(BODY, digest))
    assert resp.status == 200


async def test_chunked_body_digest_verified(client: TestClient[Any, Any]) -> None:
    async def chunks() -> Any:
        yield BODY[:5]
        yield BODY[5:]

    resp = await client.post("/pay", data=chunks(), headers=_body_headers(BODY))
    assert resp.status == 200
    assert (await resp.json())["buffered"] == BODY.decode()


BODY_FAILURES = [
    pytest.param(b'{"amount": 4200}', None, 401, id="body-differs-from-digest"),
    pytest.param(
        BODY, "sha-256=:" + base64.b64encode(b"x" * 32).decode() + ":", 401, id="wrong-digest"
    ),
    pytest.param(
        BODY,
        _sha256_digest(BODY) + ", sha-512=:" + base64.b64encode(b"y" * 64).decode() + ":",
        401,
        id="one-of-two-digests-wrong",
    ),
    pytest.param(
        BODY,
        "md5=:"
        + base64.b64encode(hashlib.md5(BODY, usedforsecurity=False).digest()).decode()
        + ":",
        401,
        id="only-unsupported-algorithm",
    ),
    pytest.param(BODY, "sha-256=abc", 400, id="digest-not-bytes"),
    pytest.param(b"x" * 65, None, 413, id="body-over-limit"),
]


@pytest.mark.parametrize(("body", "digest", "status"), BODY_FAILURES)
async def test_body_failures(
    client: TestClient[Any, Any], body: bytes, digest: str | None, status: int
) -> None:
    signed_for = BODY if digest is None and status == 401 else body
    headers = _body_headers(signed_for, digest)
    resp = await client.post("/pay", data=body, headers=headers)
    assert resp.status == status


async def test_chunked_body_over_limit_is_413(client: TestClient[Any, Any]) -> None:
    big = b"z" * 100

    async def chunks() -> Any:
        for i in range(0, len(big), 10):
            yield big[i : i + 10]

    resp = await client.post("/pay", data=chunks(), headers=_body_headers(big))
    assert resp.status == 413


async def test_body_replay_is_refused(client: TestClient[Any, Any]) -> None:
    headers = _body_headers(BODY)
    assert (await client.post("/pay", data=BODY, headers=headers)).status == 200
    assert (await client.post("/pay", data=BODY, headers=headers)).status == 401


def test_repr_hides_secrets(keys_file: Path) -> None:
    method = _method(keys_file)
    assert repr(method) == "HMACSignatureAuthenticator('hmac', keys=2)"
    assert method.credential_headers() == ("Signature", "Signature-Input")
