"""Heartbeats (issue 18): the observed-action chain and its comparison, pure functions only.

The chain. The gateway gives every request of an identified agent a sequence number from
the shared :class:`gateway.state.actions.ActionLog` before forwarding it, returns it in the
response header ``Agentgate-Action: seq=<n>`` beside ``X-Request-Id``, and records the
request's canonical action under it when the request is done. The agent
(:class:`gateway.sdk.heartbeat.ActionRecorder`) records the same action from the response.
The chain covers only what BOTH sides know exactly::

    canonical_action(seq, request_id, method, status)
        = json.dumps({"method", "request_id", "seq", "status"}, sort_keys=True,
                     separators=(",", ":"))   # UTF-8, ASCII-escaped
    h_0 = 32 zero bytes
    h_n = SHA-256(h_{n-1} || canonical_action_n)   over the window's actions in seq order

The gateway's audit record keeps the route, normalised path, MCP tool, decision and time of
each call; those are deliberately NOT in the chain: the agent cannot know the gateway's
normalisation, route choice, decisions or clock, so putting them in would make every honest
heartbeat fail. The request id and sequence number bind each action to one gateway answer.

The heartbeat. ``POST /agents/heartbeat`` carries (JSON)
``{"agent": str, "count": int, "digest": "<64 hex>", "window": {"from": int, "to": int}}``:
the agent's own actions with ``from < seq <= to``, ``from`` being the ``to`` of its previous
heartbeat (0 at first). :func:`parse_heartbeat` checks it strictly;
:func:`compare` sets it against the gateway's records of the same range: equal counts and
digests and nothing missing -> ``healthy``; anything else -> ``mismatch`` (the gateway saw
more: someone else uses the identity; the agent saw more or other: it acts outside the
gateway, or lies). :func:`status` turns the last verdict and its age into what
``input.behavior.heartbeat`` says.

The MAC. This module does not MAC anything: the heartbeat request is authenticated by the
route's authentication method. With an agent credential (RFC 9421 ``hmac-sha256`` signature
covering ``content-digest``, RFC 9530) the body is MACed with the credential's key: no
public-key operation per heartbeat.

Nothing here does I/O or reads a clock; callers pass ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, Literal

from gateway.jose.errors import JOSEError
from gateway.jose.jws import strict_json_object

GENESIS = bytes(32)
MAX_WINDOW = 4096  # seqs per heartbeat: the log keeps at most this many actions per agent
MAX_AGENT_LEN = 2048
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MEMBERS = frozenset({"agent", "count", "digest", "window"})
_WINDOW_MEMBERS = frozenset({"from", "to"})

Verdict = Literal["healthy", "mismatch"]
Status = Literal["healthy", "mismatch", "stale", "unknown"]


class HeartbeatInvalid(ValueError):
    """A heartbeat body that is not well-formed; the message is safe to show."""


def canonical_action(seq: int, request_id: str, method: str, status: int) -> bytes:
    """The chain's form of one action: compact, key-sorted, ASCII-escaped JSON (UTF-8).

    Byte for byte ``json.dumps({...}, sort_keys=True, separators=(",", ":"))``, written
    out by hand because this runs once per proxied request.
    """
    return (
        f'{{"method":{_json_str(method)},"request_id":{_json_str(request_id)},'
        f'"seq":{int(seq)},"status":{int(status)}}}'
    ).encode("ascii")


def chain(actions: Iterable[bytes], start: bytes = GENESIS) -> bytes:
    """``h_n = SHA-256(h_{n-1} || action_n)`` from ``start`` over ``actions`` in order."""
    h = start
    sha = hashlib.sha256
    for action in actions:
        h = sha(h + action).digest()
    return h


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One parsed heartbeat: the agent's ``count`` actions with ``first < seq <= last``."""

    agent: str
    count: int
    digest: bytes
    first: int
    last: int


def _int(value: Any, name: str) -> int:
    # bool is an int subclass: ``true`` is not a count.
    if type(value) is not int or value < 0:
        raise HeartbeatInvalid(f"{name} must be a non-negative integer")
    return value


def _members(obj: Any, names: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.keys() != names:
        raise HeartbeatInvalid(f"{what} must have exactly the members {', '.join(sorted(names))}")
    return obj


def parse_heartbeat(body: bytes) -> Heartbeat:
    """The heartbeat in ``body``, or :class:`HeartbeatInvalid`.

    Strict: one JSON object without duplicate or unknown members; integers (not booleans)
    >= 0; ``from <= to``; at most :data:`MAX_WINDOW` seqs; ``count <= to - from``; the
    digest 64 lowercase hex digits.
    """
    try:
        obj = strict_json_object(body)
    except JOSEError:
        raise HeartbeatInvalid("heartbeat is not a JSON object") from None
    obj = _members(obj, _MEMBERS, "heartbeat")
    window = _members(obj["window"], _WINDOW_MEMBERS, "window")
    agent, digest = obj["agent"], obj["digest"]
    if not isinstance(agent, str) or not 0 < len(agent) <= MAX_AGENT_LEN:
        raise HeartbeatInvalid("agent must be a non-empty string")
    if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
        raise HeartbeatInvalid("digest must be 64 lowercase hex digits")
    count = _int(obj["count"], "count")
    first, last = _int(window["from"], "window.from"), _int(window["to"], "window.to")
    if first > last:
        raise HeartbeatInvalid("window.from must not exceed window.to")
    if last - first > MAX_WINDOW:
        raise HeartbeatInvalid(f"window covers more than {MAX_WINDOW} actions")
    if count > last - first:
        raise HeartbeatInvalid("count exceeds the window")
    return Heartbeat(agent, count, bytes.fromhex(digest), first, last)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict and the figures behind it (for the answer, the audit record, metrics)."""

    verdict: Verdict
    gateway_count: int
    agent_count: int
    missing: int  # seqs of the window reserved but never recorded by the gateway

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "gateway_count": self.gateway_count,
            "agent_count": self.agent_count,
            "missing": self.missing,
        }


def compare(
    beat: Heartbeat,
    records: Sequence[tuple[int, bytes]],
    missing: int = 0,
    *,
    expected_first: int | None = None,
    head: int | None = None,
) -> Comparison:
    """``beat`` against the gateway's ``records`` (``(seq, action)`` in seq order) of its window.

    ``missing`` counts seqs of the window the gateway reserved but has no action for (still
    in flight after the caller's bounded wait): they make the verdict ``mismatch``, since
    the gateway cannot vouch for them. With ``expected_first`` (the ``to`` of the agent's
    previous heartbeat, :meth:`gateway.state.actions.ActionLog.last_beat`), a window starting
    anywhere else is a ``mismatch``; with ``head`` (the highest seq reserved,
    :meth:`~gateway.state.actions.ActionLog.head`), so is a window reaching beyond it.
    """
    gateway_count = len(records)
    digest, sha = GENESIS, hashlib.sha256
    for _, action in records:  # chain() inlined: no generator on a 64-action window
        digest = sha(digest + action).digest()
    # SECURITY: constant-time comparison of the digests (pyca/Authlib habit); the counts
    # and the window start are not secret.
    same = hmac.compare_digest(digest, beat.digest)
    healthy = (
        same
        and gateway_count == beat.count
        and missing == 0
        # SECURITY: a window that starts after the previous one would skip actions; one that
        # ends beyond the last seq handed out would let the next window skip future ones.
        and (expected_first is None or beat.first == expected_first)
        and (head is None or beat.last <= head)
    )
    return Comparison("healthy" if healthy else "mismatch", gateway_count, beat.count, missing)


def status(
    last_beat_at: float | None,
    last_verdict: str | None,
    now: float,
    interval_s: float,
    grace: float = 2.0,
) -> Status:
    """What ``input.behavior.heartbeat`` says for an agent.

    Never beat -> ``unknown``; the last verdict ``mismatch`` -> ``mismatch`` (sticky until a
    healthy heartbeat replaces it, however old); the last healthy beat older than
    ``interval_s * grace`` -> ``stale``; else ``healthy``.
    """
    if last_beat_at is None or last_verdict is None:
        return "unknown"
    if last_verdict != "healthy":
        return "mismatch"
    if now - last_beat_at > interval_s * grace:
        return "stale"
    return "healthy"
