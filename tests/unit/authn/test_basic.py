"""gateway.authn.basic: RFC 7617 Basic against argon2id/bcrypt, bounded and timing-safe."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import argon2
import bcrypt
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.authn.basic import BasicAuthenticator, verify_password
from gateway.context import RequestFacts
from gateway.errors import BadRequest, ServiceUnavailable, Unauthorized
from gateway.settings import BasicMethod
from tests.support import inbound

ALICE_PW = "correct horse"
BOB_PW = "battery staple"
LONG_PW = "L" * 72  # exactly bcrypt's limit
CHEAP_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


class CountingVerifier:
    """Wraps the real :func:`verify_password`; counts calls and the peak of parallel calls."""

    def __init__(self, *, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.active = 0
        self.peak = 0
        self._delay = delay_s
        self._gate = gate
        self._lock = threading.Lock()

    def __call__(self, encoded: str, password: bytes) -> bool:
        with self._lock:
            self.calls.append(encoded)
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if self._gate is not None:
                self._gate.wait(10)
            if self._delay:
                time.sleep(self._delay)
            return verify_password(encoded, password)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("basic") / "users.yaml"
    users = [
        {"username": "alice", "hash": CHEAP_ARGON2.hash(ALICE_PW), "roles": ["operator"]},
        {
            "username": "bob",
            "hash": bcrypt.hashpw(BOB_PW.encode(), bcrypt.gensalt(4)).decode(),
            "type": "service",
        },
        {"username": "carol", "hash": bcrypt.hashpw(LONG_PW.encode(), bcrypt.gensalt(4)).decode()},
    ]
    path.write_text(yaml.safe_dump({"users": users}))
    return path


def _facts() -> RequestFacts:
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
        peer=None,
        time_ns=1_700_000_000 * 10**9,
    )


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _request(*authorization: str) -> Any:
    headers = CIMultiDict(("Authorization", value) for value in authorization)
    return inbound(make_mocked_request("GET", "/x", headers=headers))


@pytest.fixture
async def make(users_file: Path) -> AsyncIterator[Any]:
    started: list[BasicAuthenticator] = []

    async def _make(verifier: Any = verify_password, **cfg: Any) -> BasicAuthenticator:
        max_waiting = cfg.pop("max_waiting", None)
        method = BasicAuthenticator(
            "basic",
            BasicMethod(users_file=users_file, **cfg),
            verifier=verifier,
            max_waiting=max_waiting,
        )
        await method.start()
        started.append(method)
        return method

    yield _make
    for method in started:
        await method.close()


# --------------------------------------------------------------------------- outcomes

SUCCESS_CASES = [
    pytest.param("alice", ALICE_PW, "user", ("operator",), id="argon2id-user"),
    pytest.param("bob", BOB_PW, "service", (), id="bcrypt-user"),
    pytest.param("carol", LONG_PW, "user", (), id="bcrypt-72-byte-password"),
]


@pytest.mark.parametrize(("user", "password", "kind", "roles"), SUCCESS_CASES)
async def test_correct_password(
    make: Any, user: str, password: str, kind: str, roles: tuple[str, ...]
) -> None:
    method = await make()
    principal = await method.authenticate(_request(_basic(user, password)), _facts())
    assert principal is not None
    assert (principal.method, principal.subject, principal.subject_type) == ("basic", user, kind)
    assert principal.roles == roles
    assert principal.amr == ("pwd",)


FAILURE_CASES = [
    pytest.param("alice", "n0t-the-pw", id="wrong-password-argon2id"),
    pytest.param("bob", "n0t-the-pw", id="wrong-password-bcrypt"),
    pytest.param("alice", "", id="empty-password"),
    pytest.param("mallory", ALICE_PW, id="unknown-user"),
    pytest.param("", ALICE_PW, id="empty-user"),
    pytest.param("carol", LONG_PW + "suffix", id="bcrypt-no-truncation-beyond-72-bytes"),
]


@pytest.mark.parametrize(("user", "password"), FAILURE_CASES)
async def test_bad_credentials_are_401_with_basic_challenge(
    make: Any, user: str, password: str
) -> None:
    verifier = CountingVerifier()
    method = await make(verifier)
    with pytest.raises(Unauthorized) as exc:
        await method.authenticate(_request(_basic(user, password)), _facts())
    assert exc.value.status == 401
    assert exc.value.headers["WWW-Authenticate"] == 'Basic realm="agentgate"'
    # SECURITY: every failure, unknown user included, costs exactly one real hash check.
    assert len(verifier.calls) == 1
    if password:
        for text in (str(exc.value), exc.value.detail, exc.value.public, repr(exc.value)):
            assert password not in text


async def test_unknown_user_is_checked_against_a_dummy_like_the_real_hashes(
    make: Any, users_file: Path
) -> None:
    stored = [u["hash"] for u in yaml.safe_load(users_file.read_text())["users"]]  # noqa: ASYNC240
    verifier = CountingVerifier()
    method = await make(verifier)
    with pytest.raises(Unauthorized):
        await method.authenticate(_request(_basic("nobody", "x")), _facts())
    (encoded,) = verifier.calls
    assert encoded not in stored
    # Same algorithm and cost as the first user's hash, so the time spent matches.
    real = argon2.extract_parameters(stored[0])
    dummy = argon2.extract_parameters(encoded)
    assert (dummy.time_cost, dummy.memory_cost, dummy.parallelism) == (
        real.time_cost,
        real.memory_cost,
        real.parallelism,
    )


NOT_MINE_CASES = [
    pytest.param((), id="no-authorization"),
    pytest.param(("Bearer abc.def.ghi",), id="bearer-scheme"),
    pytest.param(("Digest username=alice",), id="digest-scheme"),
]


@pytest.mark.parametrize("authorization", NOT_MINE_CASES)
async def test_not_mine(make: Any, authorization: tuple[str, ...]) -> None:
    method = await make()
    assert await method.authenticate(_request(*authorization), _facts()) is None


MALFORMED_CASES = [
    pytest.param(("Basic %%%",), id="not-base64"),
    pytest.param(("Basic YWxpY2U",), id="unpadded-base64"),
    pytest.param(("Basic " + base64.b64encode(b"alice").decode(),), id="no-colon"),
    pytest.param(("Basic " + base64.b64encode(b"alice:\xff\xfe").decode(),), id="not-utf8"),
    pytest.param(("Basic " + base64.b64encode(b"alice:pw\x00").decode(),), id="control-char"),
    pytest.param(("Basic " + "QUFB" * 1100,), id="too-long"),
    pytest.param((_basic("alice", ALICE_PW), _basic("alice", ALICE_PW)), id="sent-twice"),
    pytest.param(("Basic",), id="no-credentials"),
]


@pytest.mark.parametrize("authorization", MALFORMED_CASES)
async def test_malformed_is_400_without_hashing(make: Any, authorization: tuple[str, ...]) -> None:
    verifier = CountingVerifier()
    method = await make(verifier)
    with pytest.raises(BadRequest) as exc:
        await method.authenticate(_request(*authorization), _facts())
    assert (exc.value.status, exc.value.reason) == (400, "invalid_request")
    assert verifier.calls == []


async def test_scheme_is_case_insensitive(make: Any) -> None:
    method = await make()
    header = _basic("alice", ALICE_PW).replace("Basic", "bAsIc")
    assert await method.authenticate(_request(header), _facts()) is not None


async def test_challenge_uses_configured_realm(make: Any) -> None:
    assert (await make()).challenge() == 'Basic realm="agentgate"'
    assert (await make(realm="ops")).challenge() == 'Basic realm="ops"'


# --------------------------------------------------------------------------- success cache


async def test_success_cache_skips_the_hasher(make: Any) -> None:
    verifier = CountingVerifier()
    method = await make(verifier, success_cache_s=60)
    for _ in range(3):
        assert await method.authenticate(_request(_basic("alice", ALICE_PW)), _facts())
    assert len(verifier.calls) == 1


async def test_failures_are_never_cached(make: Any) -> None:
    verifier = CountingVerifier()
    method = await make(verifier, success_cache_s=60)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await method.authenticate(_request(_basic("alice", "nope")), _facts())
    assert len(verifier.calls) == 3


async def test_cache_hit_needs_the_same_password(make: Any) -> None:
    verifier = CountingVerifier()
    method = await make(verifier, success_cache_s=60)
    assert await method.authenticate(_request(_basic("alice", ALICE_PW)), _facts())
    with pytest.raises(Unauthorized):
        await method.authenticate(_request(_basic("alice", ALICE_PW + "x")), _facts())
    assert len(verifier.calls) == 2


async def test_cache_disabled_with_zero(make: Any) -> None:
    verifier = CountingVerifier()
    method = await make(verifier, success_cache_s=0)
    for _ in range(2):
        assert await method.authenticate(_request(_basic("alice", ALICE_PW)), _facts())
    assert len(verifier.calls) == 2


# --------------------------------------------------------------------------- CPU bound


async def test_twenty_concurrent_verifications_run_at_most_two_at_once(make: Any) -> None:
    verifier = CountingVerifier(delay_s=0.02)
    method = await make(verifier, max_concurrent_verifications=2, success_cache_s=0, max_waiting=20)
    results = await asyncio.gather(
        *(method.authenticate(_request(_basic("alice", ALICE_PW)), _facts()) for _ in range(20))
    )
    assert all(r is not None and r.subject == "alice" for r in results)
    assert len(verifier.calls) == 20
    assert verifier.peak == 2


async def test_overload_beyond_the_wait_queue_is_a_fast_503(make: Any) -> None:
    gate = threading.Event()
    verifier = CountingVerifier(gate=gate)
    method = await make(verifier, max_concurrent_verifications=1, success_cache_s=0)
    # Default queue: 4x the limit may wait, so 1 running + 4 waiting are admitted.
    tasks = [
        asyncio.ensure_future(method.authenticate(_request(_basic("alice", ALICE_PW)), _facts()))
        for _ in range(8)
    ]
    try:
        for _ in range(500):  # until the one admitted verification is inside the hasher
            if verifier.calls:
                break
            await asyncio.sleep(0.01)
        rejected = [t for t in tasks if t.done()]
        assert len(rejected) == 3
        for task in rejected:
            exc = task.exception()
            assert isinstance(exc, ServiceUnavailable)
            assert (exc.status, exc.reason) == (503, "authn_overloaded")
        assert len(verifier.calls) == 1  # the rest wait for the single slot
    finally:
        gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(1 for r in done if not isinstance(r, BaseException)) == 5
    assert verifier.peak == 1
    # Once the backlog drains the method accepts work again.
    assert await method.authenticate(_request(_basic("alice", ALICE_PW)), _facts())


def test_repr_hides_hashes(users_file: Path) -> None:
    method = BasicAuthenticator("basic", BasicMethod(users_file=users_file))
    assert repr(method) == "BasicAuthenticator('basic', users=3)"


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", id="argon2-m-1"
        ),
        pytest.param("$2b$04$" + "." * 53, id="bcrypt-degenerate"),
        pytest.param("not-a-hash", id="unknown-scheme"),
    ],
)
def test_verify_password_never_raises_on_odd_hashes(encoded: str) -> None:
    assert verify_password(encoded, b"x") is False
