"""gateway.sdk.agent, property tests: no derivation widens, no tampering survives.

What is proved here (hypothesis; each test's budget keeps the file under 20 s):

* **Derivations only narrow.** From a root minted with random scope, depth and restrictions,
  a random sequence of :meth:`~gateway.sdk.agent.AgentCredential.derive` calls (agents in and
  out of the trust domain, scopes that are subsets or supersets of the parent's, earlier or
  later expiries, any depth, narrower or wider restrictions) is refused with
  :class:`~gateway.sdk.agent.CredentialError` **exactly** when a model of the chain rules says
  it widens (so the test cannot pass by refusing everything), and otherwise yields a chain in
  which every block's scope is a subset of its parent's, its expiry no later, its remaining
  depth strictly lower, every parent restriction kept and narrowed, at most ``MAX_BLOCKS``
  blocks, a header the gateway parses back unchanged and the MAC the root key gives. Each run
  asserts that derivations succeeded and that every kind of widening was drawn and refused.
* **Tampering never keeps the MAC.** Any single-byte change of a header (as text, or of one
  block's JSON bytes), removing any block (the last one: truncation), reordering or duplicating
  blocks makes :func:`~gateway.sdk.agent.parse_header` raise or changes
  :func:`~gateway.sdk.agent.chain_tag`, so no request signature can verify. A few draws go
  end to end through :class:`~gateway.authn.agent_credential.AgentCredentialAuthenticator`,
  signed by the real holder over the tampered header: 401 each time, while the untampered
  credential is accepted in the same draw.
* **A hand-built widened block with a correct MAC** (encoded JSON, MAC chained with the real
  tag, so only the narrowing rules stand in the way) is refused by ``parse_header``, by the
  holder form's ``AgentCredential.parse`` and by the authenticator: a table of every widening
  and a property over random child blocks (refused iff the block widens).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from gateway.authn.agent_credential import AgentCredentialAuthenticator
from gateway.errors import Unauthorized
from gateway.jose.jws import b64url_decode, b64url_encode
from gateway.sdk import agent as sdk
from gateway.sdk.agent import MAX_BLOCKS, RESTRICTIONS, AgentCredential, CredentialError
from gateway.settings.agents import AgentCredentialSettings
from gateway.state.memory import MemoryReplayCache
from tests.unit.authn.agent_requests import HOST, facts, request
from tests.unit.sdk import ISSUER, NOW, ROOT_AGENT, ROOT_KEY, child_members, holder_form, raws

DOMAIN = "example.org"
SCOPES = ("flights.read", "flights.write", "hotels.read", "pay", "admin")
VALUES: Mapping[str, tuple[str, ...]] = {
    "routes": ("flights", "hotels", "payments", "admin"),
    "segments": ("eu", "us", "apac"),
    "tools": ("search", "book", "refund"),
    "methods": ("GET", "POST", "PUT", "DELETE"),
}
IN_DOMAIN = tuple(f"spiffe://{DOMAIN}/{name}" for name in ("flights", "pay", "hotels", "a/b"))
# Outside the root's trust domain: another SPIFFE domain, a look-alike, not a SPIFFE ID.
FOREIGN = ("spiffe://evil.example/flights", "spiffe://example.org.evil/x", "flights-agent")

# Hypothesis settings: no example database (the file must not depend on earlier runs), no
# deadline (a loaded two-core machine), budgets sized so that the whole file stays < 20 s.
_QUICK = {"deadline": None, "database": None}
_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


# --------------------------------------------------------------------------- strategies


def _restrictions(min_names: int = 0) -> st.SearchStrategy[dict[str, list[str]]]:
    """Some restriction lists: a few names, each a (possibly empty) subset of its values."""
    return st.lists(st.sampled_from(RESTRICTIONS), unique=True, min_size=min_names).flatmap(
        lambda names: st.fixed_dictionaries(
            {name: st.sets(st.sampled_from(VALUES[name])).map(sorted) for name in names}
        )
    )


ROOTS = st.fixed_dictionaries(
    {
        "scope": st.sets(st.sampled_from(SCOPES), min_size=1).map(sorted),
        "depth": st.integers(0, MAX_BLOCKS - 1),
        "ttl_s": st.integers(60, 3600),
        "restrictions": _restrictions(),
    }
)
STEPS = st.fixed_dictionaries(
    {
        "agent": st.sampled_from(IN_DOMAIN * 3 + FOREIGN),  # mostly in the domain
        "scope": st.none() | st.sets(st.sampled_from(SCOPES)).map(sorted),
        "ttl_s": st.none() | st.integers(1, 7200),  # earlier or later than the parent's exp
        "now": st.integers(0, 900),
        "depth": st.none() | st.integers(-1, MAX_BLOCKS),
        "restrictions": _restrictions(),
    }
)


def _mint(spec: Mapping[str, Any], now: int = NOW, key: bytes = ROOT_KEY) -> AgentCredential:
    return sdk.mint_root(
        key,
        kid="2026-12",
        issuer=ISSUER,
        genesis={"type": "user", "sub": "alice"},
        agent=ROOT_AGENT,
        scope=spec["scope"],
        ttl_s=spec["ttl_s"],
        depth=spec["depth"],
        restrictions=spec["restrictions"],
        now=now,
    )


def _refusals(cred: AgentCredential, step: Mapping[str, Any]) -> list[str]:
    """The model: what the chain rules must say about ``step`` (empty: it must succeed).

    Every reason that applies is listed; the error must name one of them (which one depends on
    the order of the checks, which is not part of the contract).
    """
    parent = cred.blocks[-1]
    if len(cred.blocks) >= MAX_BLOCKS:
        return [f"more than {MAX_BLOCKS} blocks"]
    reasons = []
    if parent.depth < 1:
        reasons.append("delegation depth exhausted")
    depth = step["depth"]
    if depth is not None and depth < 0:
        reasons.append("depth must be an integer")
    elif depth is not None and depth > parent.depth - 1:
        reasons.append("widens depth")
    if step["scope"] is not None and not set(step["scope"]) <= parent.scope:
        reasons.append("widens scope")
    for name, values in step["restrictions"].items():
        if name in parent.restrictions and not set(values) <= parent.restrictions[name]:
            reasons.append(f"widens {name}")
    if sdk.trust_domain(step["agent"]) != DOMAIN:
        reasons.append("outside the trust domain")
    return reasons


def _assert_narrows(parent: sdk.Block, child: sdk.Block) -> None:
    assert child.scope <= parent.scope
    assert child.exp <= parent.exp
    assert child.depth < parent.depth
    for name, held in parent.restrictions.items():
        assert name in child.restrictions, f"{name} dropped"
        assert child.restrictions[name] <= held, f"{name} widened"
    assert sdk.trust_domain(child.agent) == DOMAIN


def _assert_gateway_accepts(cred: AgentCredential) -> None:
    """The chain reads back unchanged and carries the MAC the root key gives its blocks."""
    blocks = sdk.parse_header(cred.header())
    assert [b.raw for b in blocks] == raws(cred)
    assert cred.serialize() == holder_form(raws(cred))  # the held tag = chain_tag(K, blocks)


# --------------------------------------------------------------------------- derivations


def test_no_sequence_of_derivations_widens() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=120, **_QUICK)
    @given(ROOTS, st.lists(STEPS, min_size=1, max_size=MAX_BLOCKS + 2))
    def run(root_spec: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        cred = _mint(root_spec)
        for step in steps:
            expected = _refusals(cred, step)
            kwargs = {"scope": step["scope"], "ttl_s": step["ttl_s"], "depth": step["depth"]}
            try:
                child = cred.derive(
                    step["agent"], now=NOW + step["now"], **kwargs, **step["restrictions"]
                )
            except CredentialError as exc:
                error = str(exc)
            else:
                error = ""
            if error:
                assert expected, f"a narrowing derivation was refused: {error} ({step})"
                assert any(reason in error for reason in expected), (error, expected)
                seen.update(expected)
                event("refused")
                continue
            assert not expected, f"a widening derivation was accepted: {expected} ({step})"
            parent, block = cred.blocks[-1], child.blocks[-1]
            assert raws(child)[:-1] == raws(cred), "derive changed an existing block"
            assert len(child.blocks) == len(cred.blocks) + 1 <= MAX_BLOCKS
            _assert_narrows(parent, block)
            # What was asked is what was granted (defaults: the parent's, depth one less).
            assert block.scope == (parent.scope if step["scope"] is None else set(step["scope"]))
            issued = NOW + step["now"]
            ttl = step["ttl_s"]
            assert block.exp == (parent.exp if ttl is None else min(parent.exp, issued + ttl))
            want_depth = parent.depth - 1 if step["depth"] is None else step["depth"]
            assert block.depth == want_depth
            for name, values in step["restrictions"].items():
                assert block.restrictions[name] == set(values)
            seen["derived"] += 1
            event("derived")
            cred = child
        # The whole chain, block by block, and as the gateway reads it.
        for index in range(1, len(cred.blocks)):
            _assert_narrows(cred.blocks[index - 1], cred.blocks[index])
        _assert_gateway_accepts(cred)
        target(float(len(cred.blocks)), label="chain length")

    run()
    # Not vacuous: derivations succeeded, and every kind of widening was drawn and refused.
    assert seen["derived"] >= 50, seen
    for reason in (
        "widens scope",
        "widens depth",
        "delegation depth exhausted",
        "outside the trust domain",
    ):
        assert seen[reason] > 0, (reason, seen)
    assert any(seen[f"widens {name}"] for name in RESTRICTIONS), seen


def test_no_derivation_goes_past_max_blocks() -> None:
    """The longest chain the random walk rarely reaches: MAX_BLOCKS blocks, then refusal."""
    cred = _mint({"scope": ["pay"], "depth": MAX_BLOCKS - 1, "ttl_s": 60, "restrictions": {}})
    for _ in range(MAX_BLOCKS - 1):
        cred = cred.derive(IN_DOMAIN[0], now=NOW)
    assert len(cred.blocks) == MAX_BLOCKS
    _assert_gateway_accepts(cred)
    with pytest.raises(CredentialError, match=f"more than {MAX_BLOCKS} blocks"):
        cred.derive(IN_DOMAIN[1], depth=0, now=NOW)
    # Nor by hand: one more block (its MAC chained correctly) is refused by the parser.
    extra = sdk.encode_block(child_members(cred.blocks[-1], depth=0))
    with pytest.raises(CredentialError, match=f"more than {MAX_BLOCKS} blocks"):
        sdk.parse_header(sdk.header_value([*raws(cred), extra]))


# --------------------------------------------------------------------------- tampering


@st.composite
def chains(draw: st.DrawFn, now: int = NOW, key: bytes = ROOT_KEY) -> AgentCredential:
    """A valid chain of 1..MAX_BLOCKS blocks, each child narrowing at random (a ``methods``
    restriction always allows GET, the method of the end-to-end requests)."""
    restrictions = draw(_restrictions())
    if "methods" in restrictions:
        restrictions["methods"] = sorted({*restrictions["methods"], "GET"})
    cred = _mint(
        {
            "scope": list(SCOPES),
            "depth": MAX_BLOCKS - 1,
            "ttl_s": 600,
            "restrictions": restrictions,
        },
        now,
        key,
    )
    for _ in range(draw(st.integers(0, MAX_BLOCKS - 1))):
        scope = draw(st.sets(st.sampled_from(SCOPES))) & cred.blocks[-1].scope
        cred = cred.derive(draw(st.sampled_from(IN_DOMAIN)), scope=scope, now=now)
    return cred


@st.composite
def tamperings(draw: st.DrawFn, cred: AgentCredential) -> tuple[str, str]:
    """(kind, tampered header) for one tampering of ``cred``'s header."""
    header, blocks = cred.header(), raws(cred)
    n = len(blocks)
    kinds = ["header byte", "block byte", "remove"]
    if n >= 2:
        kinds += ["reorder"]
    if n < MAX_BLOCKS:
        kinds += ["duplicate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "header byte":
        at = draw(st.integers(0, len(header) - 1))
        byte = draw(st.integers(0, 255).filter(lambda b: chr(b) != header[at]))
        return kind, header[:at] + chr(byte) + header[at + 1 :]
    if kind == "block byte":
        index = draw(st.integers(0, n - 1))
        at = draw(st.integers(0, len(blocks[index]) - 1))
        flip = draw(st.integers(1, 255))
        changed = bytearray(blocks[index])
        changed[at] ^= flip
        blocks[index] = bytes(changed)
    elif kind == "remove":
        index = draw(st.integers(0, n - 1))
        kind = "truncate" if index == n - 1 and n > 1 else kind
        del blocks[index]
    elif kind == "reorder":
        order = draw(st.permutations(range(n)).filter(lambda p: list(p) != list(range(n))))
        blocks = [blocks[i] for i in order]
    else:
        source, at = draw(st.integers(0, n - 1)), draw(st.integers(0, n))
        blocks.insert(at, blocks[source])
    # An empty header (the root removed from a one-block chain) is the bare prefix.
    return kind, ".".join((sdk.PREFIX, *(b64url_encode(raw) for raw in blocks)))


def _forged_tag(header: str) -> bytes | None:
    """The tag the gateway would derive from a header, or None when it refuses to parse it."""
    try:
        blocks = sdk.parse_header(header)
    except CredentialError:
        return None
    return sdk.chain_tag(ROOT_KEY, [block.raw for block in blocks])


def test_tampering_is_refused_or_breaks_the_mac() -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=160, derandomize=True, **_QUICK)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        cred = data.draw(chains())
        kind, tampered = data.draw(tamperings(cred))
        assert tampered != cred.header()
        genuine = sdk.chain_tag(ROOT_KEY, raws(cred))
        tag = _forged_tag(tampered)
        outcome = "refused" if tag is None else "other MAC"
        assert tag != genuine, f"{kind}: the tampered header keeps the genuine MAC"
        outcomes[kind] += 1
        outcomes[outcome] += 1
        event(f"{kind}: {outcome}")

    run()
    # "truncate" is drawn only when "remove" picks the last block: not in every run, so the
    # property it states is also checked once directly.
    for kind in ("header byte", "block byte", "remove", "reorder", "duplicate"):
        assert outcomes[kind] > 0, (kind, outcomes)
    child = sdk.mint_root(
        ROOT_KEY,
        kid="2026-12",
        issuer=ISSUER,
        genesis={"type": "user", "sub": "alice"},
        agent=ROOT_AGENT,
        scope=["a"],
        ttl_s=60,
        depth=2,
        now=NOW,
    ).derive(ROOT_AGENT + "/child", now=NOW)
    truncated = child.header().rpartition(".")[0]
    assert _forged_tag(truncated) not in (None, sdk.chain_tag(ROOT_KEY, raws(child)))
    # Both defences were exercised: the parser's refusal and the MAC (truncation parses).
    assert outcomes["refused"] > 0, outcomes
    assert outcomes["other MAC"] > 0, outcomes


# --------------------------------------------------------------------------- end to end

URL = f"https://{HOST}/flights/1"
# The gateway's root key is the env value's bytes (a secret reference reads text).
GATEWAY_KEY = b"gateway-root-key-for-properties!"


def _authenticator(monkeypatch: pytest.MonkeyPatch) -> AgentCredentialAuthenticator:
    monkeypatch.setenv("AC_PROPERTY_KEY", GATEWAY_KEY.decode())
    cfg = AgentCredentialSettings.model_validate(
        {
            "issuer": ISSUER,
            "keys": [{"id": "2026-12", "secret": "env:AC_PROPERTY_KEY"}],
            "max_skew_s": 30,
        }
    )
    return AgentCredentialAuthenticator("agents", cfg, MemoryReplayCache(), 1024 * 1024)


async def _authenticate(method: AgentCredentialAuthenticator, headers: Mapping[str, str]) -> Any:
    return await method.authenticate(request(dict(headers)), facts())


async def _refused(method: AgentCredentialAuthenticator, headers: Mapping[str, str]) -> str:
    with pytest.raises(Unauthorized) as caught:
        await _authenticate(method, headers)
    assert caught.value.status == 401
    challenge: str = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith("AgentCredential "), challenge
    return challenge


def _held_tag(cred: AgentCredential) -> bytes:
    """The holder's secret tag, read from its holder form (the attacker *is* the holder)."""
    return sdk._from_macaroon(b64url_decode(cred.serialize()))[2]


def test_tampered_headers_are_401_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    method = _authenticator(monkeypatch)
    kinds: Counter[str] = Counter()

    @settings(max_examples=15, suppress_health_check=_FIXTURES, **_QUICK)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        now = int(time.time())
        cred = data.draw(chains(now=now, key=GATEWAY_KEY))
        kind, tampered = data.draw(tamperings(cred))
        try:
            blocks = sdk.parse_header(tampered)
        except CredentialError:
            # Unparseable: the holder's genuine signature, the header swapped.
            headers = {**cred.sign("GET", URL), sdk.HEADER: tampered}
        else:
            # Parseable: the holder signs the tampered chain with the key it really holds,
            # keyid = the tampered leaf's cid. Only the MAC recomputed from the root key differs.
            headers = AgentCredential(blocks, _held_tag(cred)).sign("GET", URL)
            assert headers[sdk.HEADER] == tampered
        asyncio.run(_refused(method, headers))
        # Control: the untampered credential, freshly signed, passes in the same draw.
        principal = asyncio.run(_authenticate(method, cred.sign("GET", URL)))
        assert principal.token_id == cred.credential_id
        kinds[kind] += 1

    run()
    assert sum(kinds.values()) == 15, kinds


# --------------------------------------------------------------------------- hand-built widening


def _deep_parent(now: int, key: bytes = ROOT_KEY) -> AgentCredential:
    """root (depth 3, routes restricted) -> one child: the parent of the hand-built block."""
    root = sdk.mint_root(
        key,
        kid="2026-12",
        issuer=ISSUER,
        genesis={"type": "user", "sub": "alice"},
        agent=ROOT_AGENT,
        scope=["flights.read", "pay"],
        ttl_s=600,
        depth=3,
        restrictions={"routes": ["flights", "payments"]},
        now=now,
    )
    return root.derive(f"spiffe://{DOMAIN}/flights", now=now)


def _exhausted_parent(now: int, key: bytes = ROOT_KEY) -> AgentCredential:
    """A parent with depth 0: no block may follow it."""
    return _deep_parent(now, key).derive(f"spiffe://{DOMAIN}/pay", depth=0, now=now)


WIDENINGS: list[tuple[str, Any, dict[str, Any], str]] = [
    ("scope-superset", _deep_parent, {"scope": ["admin", "flights.read", "pay"]}, "widens scope"),
    ("scope-foreign", _deep_parent, {"scope": ["admin"]}, "widens scope"),
    ("expiry-later", _deep_parent, {"exp": "+1"}, "extends expiry"),
    ("depth-equal", _deep_parent, {"depth": "=parent"}, "widens depth"),
    ("depth-greater", _deep_parent, {"depth": 5}, "widens depth"),
    ("depth-exhausted", _exhausted_parent, {"depth": 0}, "delegation depth exhausted"),
    (
        "routes-widened",
        _deep_parent,
        {"routes": ["admin", "flights"]},
        "widens routes",
    ),
    ("routes-dropped", _deep_parent, {"routes": None}, "drops the routes restriction"),
    (
        "other-trust-domain",
        _deep_parent,
        {"agent": "spiffe://evil.example/flights"},
        "outside the trust domain",
    ),
    ("not-spiffe", _deep_parent, {"agent": "flights-agent"}, "outside the trust domain"),
]


def _widened(parent: AgentCredential, overrides: Mapping[str, Any]) -> bytes:
    """The JSON of a child block of ``parent`` with ``overrides`` applied (relative values
    resolved against the parent's block)."""
    leaf = parent.blocks[-1]
    resolved = dict(overrides)
    if resolved.get("exp") == "+1":
        resolved["exp"] = leaf.exp + 1
    if resolved.get("depth") == "=parent":
        resolved["depth"] = leaf.depth
    members = child_members(leaf, **{k: v for k, v in resolved.items() if v is not None})
    for name, value in resolved.items():
        if value is None:
            members.pop(name, None)
    return sdk.encode_block(members)


@pytest.mark.parametrize(
    ("make_parent", "overrides", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in WIDENINGS],
)
async def test_widened_block_with_a_valid_mac_is_refused(
    monkeypatch: pytest.MonkeyPatch, make_parent: Any, overrides: dict[str, Any], message: str
) -> None:
    method = _authenticator(monkeypatch)
    parent = make_parent(int(time.time()), GATEWAY_KEY)
    raw = _widened(parent, overrides)
    blocks = [*raws(parent), raw]
    tag = sdk.chain_tag(GATEWAY_KEY, blocks)  # = mac(parent's tag, raw): a correct MAC
    assert tag == sdk.mac(_held_tag(parent), raw)
    header = sdk.header_value(blocks)

    with pytest.raises(CredentialError, match=message):
        sdk.parse_header(header)
    holder = b64url_encode(sdk._to_macaroon(ISSUER, blocks, tag))
    with pytest.raises(CredentialError, match=message):
        AgentCredential.parse(holder)
    # The request signature is genuine (keyed by the correct tag): only the rules refuse it.
    forged = AgentCredential([*parent.blocks, sdk.parse_block(raw, len(blocks) - 1)], tag)
    challenge = await _refused(method, forged.sign("GET", URL))
    assert message in challenge, challenge
    # Control: the parent itself is accepted.
    assert await _authenticate(method, parent.sign("GET", URL)) is not None


CHILD_BLOCKS = st.fixed_dictionaries(
    {
        "agent": st.sampled_from(IN_DOMAIN * 3 + FOREIGN),
        "scope": st.sets(st.sampled_from(SCOPES)).map(sorted),
        "exp": st.integers(-120, 120),  # relative to the parent's exp
        "depth": st.integers(0, MAX_BLOCKS - 1),
        "routes": st.none() | st.sets(st.sampled_from(VALUES["routes"])).map(sorted),
    }
)


def _widens(parent: sdk.Block, child: Mapping[str, Any]) -> list[str]:
    """The model for a hand-built child of ``parent`` (see :func:`_refusals`)."""
    reasons = []
    if parent.depth < 1:
        reasons.append("delegation depth exhausted")
    if child["depth"] > parent.depth - 1:
        reasons.append("widens depth")
    if child["exp"] > 0:
        reasons.append("extends expiry")
    if not set(child["scope"]) <= parent.scope:
        reasons.append("widens scope")
    if child["routes"] is None:
        reasons.append("drops the routes restriction")
    elif not set(child["routes"]) <= parent.restrictions["routes"]:
        reasons.append("widens routes")
    if sdk.trust_domain(child["agent"]) != DOMAIN:
        reasons.append("outside the trust domain")
    return reasons


def test_hand_built_child_blocks_are_refused_iff_they_widen() -> None:
    outcomes: Counter[str] = Counter()
    parents = (_deep_parent(NOW), _exhausted_parent(NOW))

    @settings(max_examples=200, **_QUICK)
    @given(st.sampled_from(parents), CHILD_BLOCKS)
    def run(parent: AgentCredential, child: dict[str, Any]) -> None:
        leaf = parent.blocks[-1]
        overrides = {**child, "exp": leaf.exp + child["exp"]}
        members = child_members(leaf, **{k: v for k, v in overrides.items() if v is not None})
        if child["routes"] is None:
            members.pop("routes")
        blocks = [*raws(parent), sdk.encode_block(members)]
        expected = _widens(leaf, child)
        try:
            sdk.parse_header(sdk.header_value(blocks))
        except CredentialError as exc:
            error = str(exc)
        else:
            error = ""
        if error:
            assert expected, f"a narrowing block was refused: {error} ({child})"
            assert any(reason in error for reason in expected), (error, expected)
            outcomes["refused"] += 1
            outcomes.update(expected)
        else:
            assert not expected, f"a widening block was accepted: {expected} ({child})"
            outcomes["accepted"] += 1

    run()
    assert outcomes["accepted"] > 0, outcomes
    assert outcomes["refused"] > 0, outcomes
    for reason in ("widens scope", "extends expiry", "widens depth", "widens routes"):
        assert outcomes[reason] > 0, (reason, outcomes)
