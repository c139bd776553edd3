"""``gateway.errors.Reason`` is the one list of reason codes (issue 14.9).

A reason code is the stable snake_case word that the error JSON (``reason``), the audit
record, the access log, the ``agentgate_*`` metric labels, the decision log and the TLS and
listener refusal logs carry. Most modules still write the code as a string literal (the
enum is a ``StrEnum``: ``Reason.POLICY_DENIED == "policy_denied"``), so this test reads every
module under ``gateway/`` with :mod:`ast` and checks both directions:

* every code it finds is a member of :class:`~gateway.errors.Reason` (a new code must be
  added to the list, where the README and the metric documentation can see it);
* every member is found somewhere (a member nothing emits any more is a dead code).

Where a code is found (the *sinks*; ``Reason.X`` counts as its value in each of them):

1. a keyword argument ``reason=`` (``Unauthorized(..., reason="authn_missing")``);
2. a class attribute ``reason = ...`` (the error classes' defaults) and the default value
   of a parameter named ``reason``;
3. a positional argument in the place of a parameter named ``reason`` of a function or class
   defined under ``gateway/`` (``_bad("bad_framing", ...)``, ``_refused(505, ...)``,
   ``certificate_refused("bad_svid")``), the positions learnt from the definitions (a private
   ``_name`` only within its own module);
4. a constant named ``REASON_*``, or ``*_REASONS`` (the values of a dict, the last element of
   each pair in a tuple);
5. a value bound to, or compared with, a variable or attribute named ``reason`` or ``why``
   (``wait, reason = idle_s, "upstream_idle_timeout"``; ``reason in ("policy_undefined", ...)``);
6. a value stored under, or read with a default from, the ``STREAM_CUT`` response key;
7. an ``(HTTP status, reason, public text)`` triple (``answer = (408, "body_timeout", ...)``);
8. the returned tuples of the functions in :data:`RETURNS`, at the position given there.

Rules 1 and 2 only ever hold codes: any string there must be a member. Rules 3 to 8 also meet
free text held under the same names (an OS error message, a policy's own ``rbac:...`` reason
compared in the demo, an assertion's description): there only snake_case words count.
Values built at run time (an f-string, ``exc.reason``) are not collected. Codes that other
layers own are out of the list on purpose: RFC 6749/6750 ``error`` values (``invalid_token``,
``invalid_grant``), the admin API's ``error`` field, and the JOSE and Txn-Token verifiers'
``code`` (they only reach logs and the private detail, never ``reason``).
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import Any

import pytest

from gateway import errors
from gateway.errors import GatewayError, JSONRPCRefused, Reason
from gateway.observability.audit import AuditRecord
from gateway.observability.metrics import Metrics
from gateway.render import error_response
from tests.support import ROOT

GATEWAY = ROOT / "gateway"

# Functions that return a reason code inside a tuple: name -> position in the tuple.
RETURNS = {
    "refusal_reason": 0,  # net/tls_acceptor.py: (reason, detail) of a failed handshake
    "deadline": 1,  # upstream/forward.py Budget.deadline: (monotonic end, reason)
    "pump": 0,  # upstream/forward.py relay_websocket: (reason, close code) of one direction
}
_BINDING_NAMES = frozenset({"reason", "why"})
_STRICT_RULES = ("reason= keyword", "class attribute", "default of")
_CODE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class Found:
    code: str
    where: str  # path:line
    rule: str

    @property
    def strict(self) -> bool:
        return self.rule.startswith(_STRICT_RULES)


# --------------------------------------------------------------------------- the scanner


def _strings(node: ast.AST | None) -> Iterator[str]:
    """The string constants an expression can evaluate to (``a if c else b``, ``x or "y"``,
    the elements of a tuple, ``Reason.X``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Reason"
    ):
        yield Reason[node.attr].value
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body)
        yield from _strings(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _strings(value)
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _strings(element)


def _named(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_status(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and 100 <= node.value <= 599


def _table_values(node: ast.AST) -> ast.AST:
    if isinstance(node, ast.Dict):
        return ast.Tuple(elts=[v for v in node.values if v is not None])
    if isinstance(node, ast.Tuple | ast.List):
        return ast.Tuple(
            elts=[e.elts[-1] for e in node.elts if isinstance(e, ast.Tuple) and e.elts]
        )
    return node


def _bindings(target: ast.AST, value: ast.AST) -> Iterator[ast.AST]:
    """Rule 5: the parts of ``value`` bound to a name ``reason``/``why`` in ``target``."""
    if _named(target) in _BINDING_NAMES:
        yield value
    elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        for t, v in zip(target.elts, value.elts, strict=False):
            yield from _bindings(t, v)


Positions = dict[tuple[str, str], frozenset[int]]  # (module or "", callable name) -> indexes


def reason_positions(trees: dict[str, ast.Module]) -> Positions:
    """Rule 3: callables with a parameter named ``reason`` and its position (self excluded)."""
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    for module, tree in trees.items():
        owners = {
            id(stmt): node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for stmt in node.body
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            if params[:1] in (["self"], ["cls"]):
                params = params[1:]
            if "reason" not in params:
                continue
            name = owners.get(id(node), "") if node.name == "__init__" else node.name
            if name:  # a class is called by its own name
                out[(module if name.startswith("_") else "", name)].add(params.index("reason"))
    return {key: frozenset(p) for key, p in out.items()}


def scan(module: str, tree: ast.Module, positions: Positions) -> Iterator[Found]:
    """Every code one module emits through a sink (module docstring)."""
    for line, expr, rule in _sinks(module, tree, positions):
        for value in _strings(expr):
            if value:  # "": no reason (a Decision or a revocation without one)
                yield Found(value, f"{module}:{getattr(line, 'lineno', 0)}", rule)


def _sinks(
    module: str, tree: ast.Module, positions: Positions
) -> Iterator[tuple[ast.AST, ast.AST, str]]:
    # One branch per rule of the module docstring. A class body's ``reason = ...`` is rule 2
    # (strict), not also rule 5.
    class_body = {
        id(stmt) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for stmt in node.body
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "reason":
                    yield node, keyword.value, "reason= keyword"
            name = _named(node.func) or ""
            key = (module if name.startswith("_") else "", name)
            for index in positions.get(key, ()):
                if index < len(node.args):
                    yield node, node.args[index], f"positional reason of {name}()"
            if (
                _named(node.func) == "get"
                and len(node.args) == 2
                and _named(node.args[0]) == "STREAM_CUT"
            ):
                yield node, node.args[1], "STREAM_CUT default"
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    if any(_named(t) == "reason" for t in targets):
                        yield stmt, stmt.value, f"class attribute {node.name}.reason"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            with_defaults = [
                *zip(
                    positional[len(positional) - len(args.defaults) :], args.defaults, strict=True
                ),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            for arg, default in with_defaults:
                if arg.arg == "reason" and default is not None:
                    yield node, default, f"default of {node.name}(reason=)"
            if node.name in RETURNS:
                index = RETURNS[node.name]
                for sub in ast.walk(node):
                    if (
                        isinstance(sub, ast.Return)
                        and isinstance(sub.value, ast.Tuple)
                        and index < len(sub.value.elts)
                    ):
                        yield sub, sub.value.elts[index], f"returned by {node.name}()"
        elif (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and node.value is not None
            and id(node) not in class_body
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = _named(target) or ""
                if re.fullmatch(r"REASON_[A-Z0-9_]+", name):
                    yield node, node.value, f"constant {name}"
                elif re.fullmatch(r"_?[A-Z0-9_]*REASONS", name):
                    yield node, _table_values(node.value), f"table {name}"
                elif isinstance(target, ast.Subscript) and _named(target.slice) == "STREAM_CUT":
                    yield node, node.value, "STREAM_CUT value"
                else:
                    for value in _bindings(target, node.value):
                        yield node, value, "bound to reason"
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_named(side) in _BINDING_NAMES for side in sides):
                for side in sides:
                    if _named(side) not in _BINDING_NAMES:
                        yield node, side, "compared with reason"
        elif isinstance(node, ast.Tuple) and len(node.elts) >= 3 and _is_status(node.elts[0]):
            yield node, node.elts[1], "(status, reason, public) triple"


def scan_sources(sources: dict[str, str]) -> list[Found]:
    trees = {module: ast.parse(text, module) for module, text in sources.items()}
    positions = reason_positions(trees)
    return [f for module, tree in trees.items() for f in scan(module, tree, positions)]


@cache
def gateway_codes() -> dict[str, tuple[Found, ...]]:
    """Every code found under gateway/, with where (strict finds, and snake_case words)."""
    sources = {
        str(path.relative_to(ROOT)): path.read_text() for path in sorted(GATEWAY.rglob("*.py"))
    }
    out: dict[str, list[Found]] = defaultdict(list)
    for f in scan_sources(sources):
        if f.strict or _CODE.fullmatch(f.code):
            out[f.code].append(f)
    return {code: tuple(finds) for code, finds in sorted(out.items())}


# --------------------------------------------------------------------------- the two directions


@pytest.mark.parametrize("code", list(gateway_codes()))
def test_every_code_the_gateway_emits_is_a_member(code: str) -> None:
    where = ", ".join(f"{f.where} ({f.rule})" for f in gateway_codes()[code])
    assert code in Reason._value2member_map_, f"{code!r} is not a gateway.errors.Reason: {where}"


@pytest.mark.parametrize("member", list(Reason), ids=lambda m: m.name)
def test_every_member_is_emitted_somewhere(member: Reason) -> None:
    assert member.value in gateway_codes(), (
        f"Reason.{member.name} is emitted nowhere under gateway/: remove it, or teach this"
        " test's scanner the sink that emits it"
    )


def test_members_are_their_codes_in_capitals() -> None:
    for member in Reason:
        assert _CODE.fullmatch(member.value), member
        assert member.name == member.value.upper(), member


# --------------------------------------------------------------------------- the scanner's rules

_RULES = [
    pytest.param('raise Unauthorized("x", reason="authn_missing")', ["authn_missing"], id="kw"),
    pytest.param(
        'f(reason="a" if c else "b")\ng(reason=x or "c")', ["a", "b", "c"], id="kw-branches"
    ),
    pytest.param(
        "class E(GatewayError):\n    reason = Reason.NO_ROUTE\n"
        'class F:\n    reason: str = "bad_request"',
        ["no_route", "bad_request"],
        id="class-attribute",
    ),
    pytest.param('def f(d, *, reason="authn_invalid"): ...', ["authn_invalid"], id="default"),
    pytest.param(
        "def _bad(reason, public, status=400): ...\n"
        "class C:\n    def __init__(self, status, reason): ...\n"
        'raise _bad("bad_host", "x")\nC(400, "bad_framing")\nC(400)',
        ["bad_host", "bad_framing"],
        id="positional",
    ),
    pytest.param(
        'REASON_X = "policy_denied"\n_VERIFY_REASONS = (("needle", "unknown_ca"),)\n'
        'OPENSSL_REASONS = {"CODE": "not_tls"}',
        ["policy_denied", "unknown_ca", "not_tls"],
        id="constants",
    ),
    pytest.param(
        'wait, reason = 1.0, "upstream_idle_timeout"\nexc.reason = "closed"\n'
        'if why == "other": ...\nreason in ("policy_undefined", "policy_malformed")',
        ["upstream_idle_timeout", "closed", "other", "policy_undefined", "policy_malformed"],
        id="bound-and-compared",
    ),
    pytest.param(
        'response[STREAM_CUT] = "client_gone" if gone else "upstream_cut"\n'
        'response.get(STREAM_CUT, "ok")',
        ["client_gone", "upstream_cut", "ok"],
        id="stream-cut",
    ),
    pytest.param(
        'answer = (408, "body_timeout", "request body too slow")',
        ["body_timeout"],
        id="status-triple",
    ),
    pytest.param(
        'def refusal_reason(e):\n    return "timeout", "detail"\n'
        'def deadline(s):\n    return s + 1, "stream_max_duration"',
        ["timeout", "stream_max_duration"],
        id="returns",
    ),
    pytest.param(
        'x = "policy_denied"\nf("no_route")\nlog.info("reason %s", "ok")\n(1, "a", "b")\n'
        'reason = f"{REASON_X}: detail"',
        [],
        id="not-sinks",
    ),
]


@pytest.mark.parametrize(("source", "codes"), _RULES)
def test_scanner_rules(source: str, codes: list[str]) -> None:
    assert [f.code for f in scan_sources({"m.py": source})] == codes


def test_a_private_helper_is_only_a_sink_in_its_own_module() -> None:
    # framing.py's _bad(reason, ...) must not make jwt_assertion.py's _bad(description) a sink.
    found = scan_sources(
        {
            "a.py": 'def _bad(reason, public): ...\n_bad("bad_host", "x")',
            "b.py": 'def _bad(description): ...\n_bad("assertion expired")',
        }
    )
    assert [f.code for f in found] == ["bad_host"]


# --------------------------------------------------------------------------- values unchanged

# The default reason of every error class, as the error JSON, audit and metrics had it.
_DEFAULTS = {
    "GatewayError": "internal_error",
    "JSONRPCRefused": "jsonrpc_invalid",
    "BadRequest": "bad_request",
    "InvalidPath": "invalid_path",
    "NotFound": "no_route",
    "MethodNotAllowed": "method_not_allowed",
    "PayloadTooLarge": "body_too_large",
    "URITooLong": "uri_too_long",
    "HeadersTooLarge": "headers_too_large",
    "Unauthorized": "authn_invalid",
    "Forbidden": "policy_denied",
    "ServiceUnavailable": "dependency_unavailable",
    "BadGateway": "upstream_unavailable",
    "GatewayTimeout": "upstream_timeout",
}


def _error_classes() -> list[type[GatewayError]]:
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, GatewayError)
    ]


def test_jsonrpc_refusal_renders_its_own_body() -> None:
    # A JSON-RPC client reads the error from the body: no problem document around it.
    body = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"invalid request"}}'
    exc = JSONRPCRefused(body, "private detail")
    assert exc.reason == Reason.JSONRPC_INVALID
    assert exc.status == 400
    assert repr(exc) == "JSONRPCRefused(status=400, reason='jsonrpc_invalid')"
    response = error_response(exc, "rid")
    assert response.body == body
    assert response.content_type == "application/json"
    assert response.headers["X-Request-Id"] == "rid"
    assert b"private" not in response.body


def test_every_error_class_is_in_the_defaults_table() -> None:
    assert sorted(c.__name__ for c in _error_classes()) == sorted(_DEFAULTS)


@pytest.mark.parametrize(
    "cls", [c for c in _error_classes() if c is not JSONRPCRefused], ids=lambda c: c.__name__
)
def test_error_values_are_byte_identical(cls: type[GatewayError]) -> None:
    code = _DEFAULTS[cls.__name__]
    exc = cls("private detail")
    assert exc.reason == code
    assert isinstance(exc.reason, Reason)
    assert repr(exc) == f"{cls.__name__}(status={exc.status}, reason={code!r})"
    response = error_response(exc, "rid")
    assert isinstance(response.body, bytes)
    title = HTTPStatus(exc.status).phrase
    assert (
        response.body
        == (
            f'{{"type":"about:blank","title":"{title}","status":{exc.status},'
            f'"detail":"{exc.public}","reason":"{code}","request_id":"rid"}}'
        ).encode()
    )
    assert repr(cls(reason="txn_token_missing")) == (
        f"{cls.__name__}(status={exc.status}, reason='txn_token_missing')"
    )


@pytest.mark.parametrize(
    "reason", [Reason.POLICY_DENIED, "policy_denied", None], ids=["member", "literal", "absent"]
)
def test_audit_writes_a_plain_string(reason: Any) -> None:
    event = {"request_id": "r", "status": 403, "latency_s": 0.0, "reason": reason}
    record = AuditRecord.build(event)
    assert type(record["reason"]) is str
    assert record["reason"] == ("policy_denied" if reason else "internal_error")
    assert json.dumps(record["reason"]) == json.dumps(str(reason or "internal_error"))


def test_a_member_and_its_literal_are_one_metric_series() -> None:
    metrics = Metrics()
    metrics.observe_request("r", 403, Reason.POLICY_DENIED, 0.01)
    metrics.observe_request("r", 403, "policy_denied", 0.01)
    metrics.tls_refused(Reason.UNKNOWN_CA)
    text = metrics.render().decode()
    assert 'agentgate_requests_total{reason="policy_denied",route="r",status="403"} 2.0' in text
    assert 'agentgate_tls_handshake_failures_total{reason="unknown_ca"} 1.0' in text
