"""gateway.protocols.jsonrpc: JSON-RPC 2.0 envelopes, every refusal, byte-exact error bodies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.protocols.jsonrpc import (
    Envelope,
    InvalidJSONRPC,
    Message,
    error_body,
    error_object,
    parse,
)

VALID = [
    (
        "request-object-params",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}',
        Envelope((Message("request", 1, "tools/call", {"name": "x"}),), batch=False),
    ),
    (
        "request-string-id-array-params",
        b'{"jsonrpc":"2.0","id":"a-1","method":"sum","params":[1,2]}',
        Envelope((Message("request", "a-1", "sum", [1, 2]),), batch=False),
    ),
    (
        "request-no-params",
        b'{"jsonrpc":"2.0","id":0,"method":"ping"}',
        Envelope((Message("request", 0, "ping", None),), batch=False),
    ),
    (
        "notification",
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        Envelope((Message("notification", None, "notifications/initialized", None),), False),
    ),
    (
        "response-result",
        b'{"jsonrpc":"2.0","id":7,"result":{"action":"accept"}}',
        Envelope((Message("response", 7, None, None, {"action": "accept"}),), batch=False),
    ),
    (
        "response-error-null-id",
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
        Envelope(
            (
                Message(
                    "response", None, None, None, None, {"code": -32700, "message": "Parse error"}
                ),
            ),
            batch=False,
        ),
    ),
    (
        "whitespace-around",
        b' \n{"jsonrpc":"2.0","id":1,"method":"m"}\r\n',
        Envelope((Message("request", 1, "m", None),), batch=False),
    ),
    (
        "batch-mixed",
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
        b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"p":1}},'
        b'{"jsonrpc":"2.0","id":"s1","result":{}}]',
        Envelope(
            (
                Message("request", 1, "tools/list", None),
                Message("notification", None, "notifications/progress", {"p": 1}),
                Message("response", "s1", None, None, {}),
            ),
            batch=True,
        ),
    ),
    (
        "batch-of-one",
        b'[{"jsonrpc":"2.0","id":1,"method":"m"}]',
        Envelope((Message("request", 1, "m", None),), batch=True),
    ),
    (
        "non-ascii-utf8",
        '{"jsonrpc":"2.0","id":"é","method":"m","params":{"q":"日本"}}'.encode(),
        Envelope((Message("request", "é", "m", {"q": "日本"}),), batch=False),
    ),
]


@pytest.mark.parametrize(("body", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_bodies_parse(body: bytes, expected: Envelope) -> None:
    assert parse(body) == expected


def _batch(n: int) -> bytes:
    return b"[" + b",".join(b'{"jsonrpc":"2.0","method":"n"}' for _ in range(n)) + b"]"


# (id, body, code, readable id, batch answer)
INVALID: list[tuple[str, bytes, int, object, bool]] = [
    ("not-json", b"{", -32700, None, False),
    ("empty-body", b"", -32700, None, False),
    ("trailing-garbage", b'{"jsonrpc":"2.0","id":1,"method":"m"} x', -32700, None, False),
    (
        "duplicate-member",
        b'{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}',
        -32700,
        None,
        False,
    ),
    ("nan", b'{"jsonrpc":"2.0","id":1,"method":"m","params":[NaN]}', -32700, None, False),
    (
        "infinity",
        b'{"jsonrpc":"2.0","id":1,"method":"m","params":[-Infinity]}',
        -32700,
        None,
        False,
    ),
    ("1e400", b'{"jsonrpc":"2.0","id":1,"method":"m","params":[1e400]}', -32700, None, False),
    ("latin1", b'{"jsonrpc":"2.0","id":"\xe9","method":"m"}', -32700, None, False),
    ("utf8-bom", b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"m"}', -32700, None, False),
    ("utf16", '{"jsonrpc":"2.0"}'.encode("utf-16"), -32700, None, False),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, -32700, None, False),
    ("deep-nesting-unclosed", b'{"a":' * 100_000, -32700, None, False),
    ("scalar", b"1", -32600, None, False),
    ("string", b'"x"', -32600, None, False),
    ("null", b"null", -32600, None, False),
    ("empty-batch", b"[]", -32600, None, False),
    ("batch-too-large", _batch(65), -32600, None, True),
    ("batch-of-non-object", b"[1]", -32600, None, True),
    (
        "batch-one-bad-element",
        b'[{"jsonrpc":"2.0","id":1,"method":"m"},{"jsonrpc":"1.0","id":2,"method":"m"}]',
        -32600,
        2,
        True,
    ),
    ("no-jsonrpc", b'{"id":1,"method":"m"}', -32600, 1, False),
    ("jsonrpc-1.0", b'{"jsonrpc":"1.0","id":1,"method":"m"}', -32600, 1, False),
    ("jsonrpc-number", b'{"jsonrpc":2.0,"id":1,"method":"m"}', -32600, 1, False),
    ("method-empty", b'{"jsonrpc":"2.0","id":1,"method":""}', -32600, 1, False),
    ("method-number", b'{"jsonrpc":"2.0","id":1,"method":5}', -32600, 1, False),
    (
        "method-rpc-reserved",
        b'{"jsonrpc":"2.0","id":"r","method":"rpc.discover"}',
        -32600,
        "r",
        False,
    ),
    ("params-string", b'{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}', -32600, 1, False),
    ("params-null", b'{"jsonrpc":"2.0","id":1,"method":"m","params":null}', -32600, 1, False),
    ("request-id-null", b'{"jsonrpc":"2.0","id":null,"method":"m"}', -32600, None, False),
    ("request-id-bool", b'{"jsonrpc":"2.0","id":true,"method":"m"}', -32600, None, False),
    ("request-id-float", b'{"jsonrpc":"2.0","id":1.5,"method":"m"}', -32600, None, False),
    ("request-id-object", b'{"jsonrpc":"2.0","id":{},"method":"m"}', -32600, None, False),
    ("response-no-id", b'{"jsonrpc":"2.0","result":1}', -32600, None, False),
    ("response-id-bool", b'{"jsonrpc":"2.0","id":false,"result":1}', -32600, None, False),
    (
        "response-null-id-with-result",
        b'{"jsonrpc":"2.0","id":null,"result":1}',
        -32600,
        None,
        False,
    ),
    ("response-both", b'{"jsonrpc":"2.0","id":3,"result":1,"error":{}}', -32600, 3, False),
    ("response-neither", b'{"jsonrpc":"2.0","id":3}', -32600, 3, False),
    ("response-error-not-object", b'{"jsonrpc":"2.0","id":3,"error":"x"}', -32600, 3, False),
    (
        "response-error-code-bool",
        b'{"jsonrpc":"2.0","id":3,"error":{"code":true,"message":"m"}}',
        -32600,
        3,
        False,
    ),
    (
        "response-error-no-message",
        b'{"jsonrpc":"2.0","id":3,"error":{"code":1}}',
        -32600,
        3,
        False,
    ),
]


@pytest.mark.parametrize(
    ("body", "code", "readable_id", "batch"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID]
)
def test_invalid_bodies_raise_with_code_and_id(
    body: bytes, code: int, readable_id: object, batch: bool
) -> None:
    with pytest.raises(InvalidJSONRPC) as info:
        parse(body)
    assert (info.value.code, info.value.id, info.value.batch) == (code, readable_id, batch)


def test_max_batch_is_a_keyword_and_the_limit_is_inclusive() -> None:
    assert len(parse(_batch(64)).messages) == 64
    assert len(parse(_batch(3), max_batch=3).messages) == 3
    with pytest.raises(InvalidJSONRPC) as info:
        parse(_batch(4), max_batch=3)
    assert info.value.code == -32600


def test_public_message_never_echoes_the_input() -> None:
    secret = b"sk-live-0123456789"
    bodies = [
        b'{"jsonrpc":"2.0","id":1,"method":"' + secret + b'","method":"x"}',
        b'{"jsonrpc":"1.0","id":1,"method":"' + secret + b'"}',
        b'{"jsonrpc":"2.0","id":1,"method":"rpc.' + secret + b'"}',
    ]
    for body in bodies:
        with pytest.raises(InvalidJSONRPC) as info:
            parse(body)
        assert secret.decode() not in info.value.message
        assert secret.decode() not in str(info.value)


ERROR_BODIES = [
    (
        "parse-error",
        [error_object(None, -32700, "Parse error")],
        False,
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
    ),
    (
        "with-data",
        [error_object("a", -32001, "Forbidden", {"decision_id": "d-1"})],
        False,
        b'{"jsonrpc":"2.0","id":"a","error":{"code":-32001,"message":"Forbidden",'
        b'"data":{"decision_id":"d-1"}}}',
    ),
    (
        "batch-two",
        [error_object(1, -32600, "Invalid Request"), error_object(2, -32602, "Invalid params")],
        True,
        b'[{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request"}},'
        b'{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Invalid params"}}]',
    ),
    (
        "batch-one",
        [error_object(9, -32600, "Invalid Request")],
        True,
        b'[{"jsonrpc":"2.0","id":9,"error":{"code":-32600,"message":"Invalid Request"}}]',
    ),
    (
        "non-ascii-kept-utf8",
        [error_object("é", -32000, "refusé")],
        False,
        '{"jsonrpc":"2.0","id":"é","error":{"code":-32000,"message":"refusé"}}'.encode(),
    ),
]


@pytest.mark.parametrize(
    ("errors", "batch", "expected"), [v[1:] for v in ERROR_BODIES], ids=[v[0] for v in ERROR_BODIES]
)
def test_error_body_bytes(errors: list[dict[str, object]], batch: bool, expected: bytes) -> None:
    assert error_body(errors, batch) == expected


def test_error_body_refuses_several_errors_outside_a_batch() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        error_body([error_object(1, -1, "a"), error_object(2, -1, "b")], batch=False)


def test_error_from_an_exception_round_trips_through_parse() -> None:
    """What the pipeline will do: InvalidJSONRPC -> error_body, itself valid JSON-RPC."""
    with pytest.raises(InvalidJSONRPC) as info:
        parse(b'{"jsonrpc":"2.0","id":"q","method":""}')
    exc = info.value
    body = error_body([error_object(exc.id, exc.code, exc.message)], exc.batch)
    assert parse(body) == Envelope(
        (
            Message(
                "response", "q", None, None, None, {"code": -32600, "message": "Invalid Request"}
            ),
        ),
        batch=False,
    )


@pytest.mark.parametrize("module", ["jsonrpc", "mcp", "a2a", "sse"])
def test_the_pure_layer_imports_no_io_and_no_settings(module: str) -> None:
    """Checked in a fresh interpreter: gateway.jose and gateway.protocols only, no aiohttp."""
    code = (
        "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('gateway', 'aiohttp', 'pydantic'))))"
    )
    name = f"gateway.protocols.{module}"
    out = subprocess.run(
        [sys.executable, "-c", code, name], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert name in loaded
    assert [m for m in loaded if not m.startswith(("gateway.jose", "gateway.protocols"))] == [
        "gateway"
    ]
