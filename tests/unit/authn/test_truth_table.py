"""The truth table of ``any_of``/``all_of`` composition (gateway.authn.compose, issue 14.10).

The security argument of composition lives in four sentences of ``compose``'s docstring:
every method named in the tree runs exactly once; an invalid credential rejects the request
even when another branch succeeds (fail closed); ``any_of`` holds when one child holds and
``all_of`` when all do; a tree that does not hold, with nothing invalid, is 401 with the
tree's challenges. This test checks them exhaustively: for each tree, every combination of
each method's outcome in {absent, valid, invalid} (3^n rows), against a reference evaluator
written here from those sentences alone, through a real :class:`AuthnService` built from
configuration with real methods:

* ``a``: ``api_key`` (``X-API-Key``: a known key, an unknown key, or none);
* ``b``: ``basic`` (bcrypt; the right password, a wrong one, or no ``Authorization``);
* ``c``: ``mtls`` (a verified peer in our trust domain, one in a foreign trust domain, or
  no client certificate).

A method outside the route's tree gets an *invalid* credential on every row: it must not run,
so it cannot matter. ``tests/unit/authn/test_compose.py`` covers the bindings and the
configuration keys; the requests through the real listener are in the integration tests.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import bcrypt
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.authn.base import REALM, challenge
from gateway.authn.compose import AuthnService
from gateway.context import Identity, Inbound, Peer, Principal, RequestFacts
from gateway.errors import GatewayError
from gateway.routing import CompiledRoute
from gateway.settings import Settings, parse_settings
from gateway.state.memory import MemoryReplayCache
from tests.support import inbound

Outcome = Literal["absent", "valid", "invalid"]
OUTCOMES: tuple[Outcome, ...] = ("absent", "valid", "invalid")
METHODS = ("a", "b", "c")

KEY, WRONG_KEY = "agk_7f3c0e9b5d2a4e81b6c9d0f1a2b3c4d5", "agk_00000000000000000000000000000000"
PASSWORD, WRONG_PASSWORD = "correct horse", "battery staple"

TREES: list[Any] = [
    "a",
    {"any_of": ["a", "b"]},
    {"all_of": ["a", "b"]},
    {"any_of": ["a", {"all_of": ["b", "c"]}]},
    {"all_of": ["a", {"any_of": ["b", "c"]}]},
    # b in both branches: it still runs once, and its one outcome counts in both.
    {"all_of": [{"any_of": ["a", "b"]}, {"any_of": ["b", "c"]}]},
]


# --------------------------------------------------------------------------- the reference


class Invalid(Exception):
    """The reference evaluator's "raise": an invalid credential anywhere in the tree."""


def names_in(tree: Any) -> list[str]:
    """The tree's methods, once each, in tree order."""
    if isinstance(tree, str):
        return [tree]
    ((_, children),) = tree.items()
    return list(dict.fromkeys(n for child in children for n in names_in(child)))


def holds(tree: Any, row: Mapping[str, Outcome]) -> bool:
    """absent -> False, valid -> True (``invalid`` never reaches here: it raised first)."""
    if isinstance(tree, str):
        return row[tree] == "valid"
    ((op, children),) = tree.items()
    results = [holds(child, row) for child in children]
    return any(results) if op == "any_of" else all(results)


def reference(tree: Any, row: Mapping[str, Outcome]) -> bool:
    """True: authenticated; False: 401 with challenges; raises :class:`Invalid`: 401 from the
    first invalid method (in tree order). Fail closed comes first, whatever the tree says."""
    if any(row[name] == "invalid" for name in names_in(tree)):
        raise Invalid
    return holds(tree, row)


def show(tree: Any, row: Mapping[str, Outcome]) -> str:
    if isinstance(tree, str):
        return f"{tree}={row[tree]}"
    ((op, children),) = tree.items()
    return f"{op}[{','.join(show(child, row) for child in children)}]"


def rows() -> Iterator[Any]:
    for number, tree in enumerate(TREES):
        names = names_in(tree)
        for outcomes in itertools.product(OUTCOMES, repeat=len(names)):
            # Methods outside the tree carry an invalid credential: they must not run.
            row: dict[str, Outcome] = dict.fromkeys(METHODS, "invalid")
            row |= zip(names, outcomes, strict=True)
            yield pytest.param(number, row, id=show(tree, row))


# --------------------------------------------------------------------------- the real service


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("truth-table")
    keys = [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "subject": "svc-a"}]
    (path / "keys.yaml").write_text(yaml.safe_dump({"keys": keys}))
    # bcrypt at its lowest cost: a wrong password is hashed on every row that sends one.
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (path / "users.yaml").write_text(
        yaml.safe_dump({"users": [{"username": "bob", "hash": digest}]})
    )
    return path


@pytest.fixture(scope="module")
def settings(config_dir: Path) -> Settings:
    config = {
        "authn": {
            "a": {"type": "api_key", "keys_file": str(config_dir / "keys.yaml")},
            "b": {"type": "basic", "users_file": str(config_dir / "users.yaml")},
            "c": {"type": "mtls"},
        },
        "routes": [
            {
                "name": f"t{number}",
                "upstream": "http://127.0.0.1:9",
                "match": {"path_prefix": f"/t{number}/"},
                "authn": tree,
            }
            for number, tree in enumerate(TREES)
        ],
    }
    return parse_settings(config, config_dir)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[AuthnService]:
    authn = AuthnService(settings, MemoryReplayCache())
    await authn.start()
    try:
        yield authn
    finally:
        await authn.close()


def peer(trust_domain: str) -> Peer:
    return Peer(
        spiffe_id=f"spiffe://{trust_domain}/agent/c",
        trust_domain=trust_domain,
        cert_sha256="00" * 32,
        cert_x5t_s256="AA",
        subject="CN=c",
        issuer="CN=ca",
        not_after=4_000_000_000.0,
    )


def facts(row: Mapping[str, Outcome]) -> RequestFacts:
    tls_peer = {"absent": None, "valid": peer("example.org"), "invalid": peer("evil.example")}
    return RequestFacts(
        request_id="r1",
        method="GET",
        scheme="https",
        host="gw.example.org",
        path="/x",
        raw_query="",
        client_address="192.0.2.1",
        peer_address="192.0.2.1",
        forwarded_for="192.0.2.1",
        forwarded_proto="https",
        forwarded_host="gw.example.org",
        peer=tls_peer[row["c"]],
        time_ns=1_700_000_000 * 10**9,
    )


def request(row: Mapping[str, Outcome]) -> Inbound:
    """The request for one row: the one place that knows how a request reaches the methods."""
    headers = CIMultiDict[str]()
    if row["a"] != "absent":
        headers["X-API-Key"] = KEY if row["a"] == "valid" else WRONG_KEY
    if row["b"] != "absent":
        password = PASSWORD if row["b"] == "valid" else WRONG_PASSWORD
        basic = base64.b64encode(f"bob:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    return inbound(make_mocked_request("GET", "/x", headers=headers))


class Counting:
    """Delegates to a real method and counts its runs (the service under test is compose)."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.runs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        self.runs += 1
        result: Principal | None = await self.method.authenticate(request, facts)
        return result


async def alone(method: Any, row: Mapping[str, Outcome]) -> GatewayError:
    """The error a method raises on its own for its invalid credential."""
    try:
        await method.authenticate(request(row), facts(row))
    except GatewayError as exc:
        return exc
    raise AssertionError(f"{method!r} accepted an invalid credential")


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(("number", "row"), list(rows()))
async def test_truth_table(
    settings: Settings, service: AuthnService, number: int, row: dict[str, Outcome]
) -> None:
    tree = TREES[number]
    route = CompiledRoute.of(settings.routes[number])
    assert route.name == f"t{number}"
    names = names_in(tree)
    real = dict(service.methods)
    spies = {name: Counting(method) for name, method in real.items()}
    service.methods.update(spies)
    try:
        try:
            expected: bool | Invalid = reference(tree, row)
        except Invalid as exc:
            expected = exc
        try:
            answer: Identity | GatewayError = await service.authenticate(
                route, request(row), facts(row)
            )
        except GatewayError as exc:
            answer = exc
    finally:
        service.methods.update(real)

    # Every method of the tree ran exactly once, whatever the others answered; no other did.
    assert {n: s.runs for n, s in spies.items()} == {n: int(n in names) for n in METHODS}

    if isinstance(expected, Invalid):
        # Fail closed: the first invalid method's own 401, even if the tree would hold.
        first = next(n for n in names if row[n] == "invalid")
        own = await alone(real[first], row)
        assert isinstance(answer, GatewayError)
        assert (answer.status, answer.reason, answer.public, dict(answer.headers)) == (
            401,
            "authn_invalid",
            own.public,
            dict(own.headers),
        )
    elif expected:
        assert isinstance(answer, Identity)
        valid = [n for n in names if row[n] == "valid"]
        assert set(answer.results) == set(valid)
        assert all(p.method == n for n, p in answer.results.items())
        assert answer.principal in answer.results.values()
        if set(valid) - {"c"}:  # a credential's subject beats the certificate that carried it
            assert answer.principal.method != "c"
    else:
        assert isinstance(answer, GatewayError)
        offered = [challenge("Bearer", realm=REALM)]
        offered += [c for n in names if (c := real[n].challenge()) and c not in offered]
        assert (answer.status, answer.reason, dict(answer.headers)) == (
            401,
            "authn_missing",
            {"WWW-Authenticate": ", ".join(offered)},
        )


def test_every_tree_has_its_full_table() -> None:
    counts = [sum(1 for p in rows() if p.values[0] == n) for n in range(len(TREES))]
    assert counts == [3 ** len(names_in(tree)) for tree in TREES] == [3, 9, 9, 27, 27, 27]


async def test_each_invalid_credential_has_its_own_401(service: AuthnService) -> None:
    # What makes "the first invalid method's own 401" above a real check: the three differ.
    row: dict[str, Outcome] = dict.fromkeys(METHODS, "invalid")
    errors = [await alone(service.methods[name], row) for name in METHODS]
    assert [e.status for e in errors] == [401, 401, 401]
    assert len({(e.public, tuple(e.headers.items())) for e in errors}) == 3
