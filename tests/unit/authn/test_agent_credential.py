"""gateway.authn.agent_credential: every refusal, key rotation, the verified-chain cache.

Requests are built with aiohttp's mocked request and signed with the SDK the agents use
(:meth:`gateway.sdk.agent.AgentCredential.sign`); the replay store is the real memory one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.authn.agent_credential import AgentCredentialAuthenticator
from gateway.context import Inbound, RequestFacts
from gateway.errors import Unauthorized
from gateway.jose.jws import b64url_encode
from gateway.sdk.agent import AgentCredential, mint_root
from gateway.settings.agents import AgentCredentialSettings
from gateway.state.memory import MemoryReplayCache
from tests.unit.authn.agent_requests import HOST, facts, request

ISSUER = "spiffe://example.org/gateway"
ROOT = "spiffe://example.org/agent/travel"
KEY_1 = b"1" * 32
KEY_2 = b"2" * 40


def _settings(monkeypatch: pytest.MonkeyPatch, keys: list[tuple[str, bytes]]) -> Any:
    for kid, value in keys:
        monkeypatch.setenv(f"AC_KEY_{kid}", value.decode())
    return AgentCredentialSettings.model_validate(
        {
            "issuer": ISSUER,
            "keys": [{"id": kid, "secret": f"env:AC_KEY_{kid}"} for kid, _ in keys],
            "max_skew_s": 30,
        }
    )


@pytest.fixture
def method(monkeypatch: pytest.MonkeyPatch) -> AgentCredentialAuthenticator:
    cfg = _settings(monkeypatch, [("k2", KEY_2), ("k1", KEY_1)])
    return AgentCredentialAuthenticator("agents", cfg, MemoryReplayCache(), 1024 * 1024)


def root(key: bytes = KEY_1, kid: str = "k1", issuer: str = ISSUER, **kw: Any) -> AgentCredential:
    args: dict[str, Any] = {
        "genesis": {"type": "user", "sub": "alice"},
        "agent": ROOT,
        "scope": ["flights:read", "pay"],
        "ttl_s": 300,
        "depth": 3,
    }
    args.update(kw)
    return mint_root(key, kid=kid, issuer=issuer, **args)


def signed(
    credential: AgentCredential, method: str = "GET", path: str = "/flights/1", **kw: Any
) -> dict[str, str]:
    return credential.sign(method, f"https://{HOST}{path}", **kw)


async def refused(
    method: AgentCredentialAuthenticator, req: Inbound, text: str, f: RequestFacts | None = None
) -> None:
    with pytest.raises(Unauthorized) as caught:
        await method.authenticate(req, f or facts(req.method))
    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith("AgentCredential "), challenge
    assert text in challenge, challenge


async def test_not_mine_without_the_header(method: AgentCredentialAuthenticator) -> None:
    assert await method.authenticate(request({}), facts()) is None


async def test_principal_and_provenance(method: AgentCredentialAuthenticator) -> None:
    child = root().derive(f"{ROOT}/flight", scope=["flights:read"]).derive(f"{ROOT}/flight/pay")
    principal = await method.authenticate(request(signed(child)), facts())
    assert principal is not None
    assert principal.subject == "alice"
    assert principal.subject_type == "user"
    assert principal.scopes == ("flights:read",)
    assert principal.client_id == f"{ROOT}/flight/pay"
    assert [a.sub for a in principal.actors] == [f"{ROOT}/flight/pay", f"{ROOT}/flight", ROOT]
    assert principal.token_id == child.credential_id
    assert principal.provenance is not None
    document = principal.provenance.as_input()
    assert document["depth"] == 2
    assert document["genesis"] == {"type": "user", "sub": "alice"}
    assert [b["agent"] for b in document["chain"]] == [ROOT, f"{ROOT}/flight", f"{ROOT}/flight/pay"]
    assert document["credential_id"] == child.credential_id


async def test_task_genesis_is_a_service_subject(method: AgentCredentialAuthenticator) -> None:
    cred = root(genesis={"type": "task", "sub": "T-42"})
    principal = await method.authenticate(request(signed(cred)), facts())
    assert principal is not None
    assert (principal.subject, principal.subject_type) == (
        "T-42",
        "service",
    )


async def test_rotation_both_keys_verify(method: AgentCredentialAuthenticator) -> None:
    for key, kid in ((KEY_1, "k1"), (KEY_2, "k2")):
        assert await method.authenticate(request(signed(root(key, kid))), facts()) is not None


def _swap(headers: dict[str, str], **changes: str) -> dict[str, str]:
    return {**headers, **changes}


def _now() -> int:
    """The clock when a case runs (a module-level constant goes stale in a long suite)."""
    return int(time.time())


CASES: list[tuple[str, Callable[[], tuple[Inbound, RequestFacts | None]], str]] = [
    (
        "other-issuer",
        lambda: (request(signed(root(issuer="spiffe://evil/gw"))), None),
        "another issuer",
    ),
    ("unknown-kid", lambda: (request(signed(root(kid="gone"))), None), "key unknown"),
    ("wrong-root-key", lambda: (request(signed(root(key=b"x" * 32))), None), "signature mismatch"),
    ("expired", lambda: (request(signed(root(ttl_s=10, now=_now() - 60))), None), "expired"),
    (
        "not-yet-valid",
        lambda: (request(signed(root(now=_now() + 600), created=_now())), None),
        "not yet valid",
    ),
    (
        "two-headers",
        lambda: (request([("Agent-Credential", root().header())] * 2), None),
        "more than one",
    ),
    (
        "unsigned",
        lambda: (request({"Agent-Credential": root().header()}), None),
        "without a request signature",
    ),
    (
        "keyid-of-another-credential",
        lambda: (request(_swap(signed(root()), **{"Agent-Credential": root().header()})), None),
        "keyid",
    ),
    (
        "created-too-old",
        lambda: (request(signed(root(now=_now() - 100), created=_now() - 100)), None),
        "clock skew",
    ),
    (
        "body-not-covered",
        lambda: (request(signed(root(), "POST"), "POST", body=b"{}"), None),
        "content-digest",
    ),
    (
        "other-path",
        lambda: (request(signed(root(), path="/flights/1"), path="/flights/2"), None),
        "signature mismatch",
    ),
    (
        "other-method",
        lambda: (request(signed(root(), "GET"), "DELETE"), facts("DELETE")),
        "signature mismatch",
    ),
    (
        "method-restriction",
        lambda: (
            request(signed(root(restrictions={"methods": ["GET"]}), "DELETE"), "DELETE"),
            facts("DELETE"),
        ),
        "does not allow this method",
    ),
    (
        "malformed-signature-input",
        lambda: (request(_swap(signed(root()), **{"Signature-Input": "agent=("})), None),
        "request signature",
    ),
]


@pytest.mark.parametrize(("make", "text"), [pytest.param(m, t, id=i) for i, m, t in CASES])
async def test_refusals(
    method: AgentCredentialAuthenticator,
    make: Callable[[], tuple[Inbound, RequestFacts | None]],
    text: str,
) -> None:
    req, f = make()
    await refused(method, req, text, f)


async def test_replay_is_refused_and_cache_does_not_skip_checks(
    method: AgentCredentialAuthenticator,
) -> None:
    cred = root(ttl_s=5)
    headers = signed(cred)
    assert await method.authenticate(request(headers), facts()) is not None
    await refused(method, request(headers), "replayed")
    # The chain is cached now; expiry is still checked per request.
    await refused(method, request(signed(cred)), "expired", facts(now=time.time() + 10))


async def test_body_with_digest(method: AgentCredentialAuthenticator) -> None:
    cred = root()
    body = b'{"amount": 42}'
    ok = signed(cred, "POST", body=body)
    assert await method.authenticate(request(ok, "POST", body=body), facts("POST")) is not None
    bad = signed(cred, "POST", body=body)
    await refused(
        method,
        request(bad, "POST", body=b'{"amount": 43}'),
        "Content-Digest does not match",
        facts("POST"),
    )


def test_repr_shows_no_key(method: AgentCredentialAuthenticator) -> None:
    text = repr(method) + repr(method.chains)
    assert KEY_1.decode() not in text
    assert KEY_2.decode() not in text


async def test_a_forged_header_takes_no_cache_slot(method: AgentCredentialAuthenticator) -> None:
    """Only a chain whose request signature verified is cached (no cache pollution)."""
    forged = root(key=b"f" * 32)  # well-formed blocks, MAC from a key the gateway lacks
    await refused(method, request(signed(forged)), "signature mismatch")
    assert forged.header() not in method.chains._cache
    good = root()
    assert await method.authenticate(request(signed(good)), facts()) is not None
    assert good.header() in method.chains._cache


async def test_a_child_of_a_known_chain_is_verified_from_the_parent_tag(
    method: AgentCredentialAuthenticator,
) -> None:
    """Once a child verified, its parent is known: a sibling verifies, a forged one does not."""
    parent = root().derive("spiffe://example.org/agent/planner")
    first = parent.derive("spiffe://example.org/agent/w0")
    assert await method.authenticate(request(signed(first)), facts()) is not None
    assert parent.header() in method.chains._known  # the parent, never called itself
    sibling = parent.derive("spiffe://example.org/agent/w1", scope=["pay"])
    principal = await method.authenticate(request(signed(sibling)), facts())
    assert principal is not None
    assert principal.scopes == ("pay",)
    assert [a.sub for a in principal.actors] == [
        "spiffe://example.org/agent/w1",
        "spiffe://example.org/agent/planner",
        ROOT,
    ]
    # The same blocks under the known parent, but the MAC chained from a wrong tag.
    forged = AgentCredential(sibling.blocks, b"\x00" * 32)
    await refused(method, request(signed(forged)), "signature mismatch")
    # A widened block under the known parent: the chain rule, not the MAC, refuses it.
    widened = AgentCredential(parent.blocks, b"\x00" * 32)
    block = parent.derive("spiffe://example.org/agent/w2").blocks[-1]
    raw = block.raw.replace(b'"scope":["flights:read","pay"]', b'"scope":["admin","pay"]')
    assert raw != block.raw
    text = widened.header() + "." + b64url_encode(raw)
    await refused(method, request({**signed(sibling), "Agent-Credential": text}), "widens scope")
    # A repeated credential id under the known parent.
    again = parent.header() + "." + b64url_encode(parent.blocks[-1].raw)
    await refused(method, request({**signed(sibling), "Agent-Credential": again}), "block 2")
