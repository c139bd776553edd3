"""Parse a PDP result into a :class:`gateway.context.Decision`, in exactly one place.

Contract (DESIGN.md §5, §7): :func:`parse_decision` is pure apart from a warning log line and
never raises. Only an object whose ``allow`` is exactly ``true`` allows; anything else denies:

=========================================  ===========================================
PDP result                                 Decision
=========================================  ===========================================
``false``                                  deny, reason ``policy_denied``
``true``, a string, a list, ``null``...    deny, reason ``policy_malformed``
object without a boolean ``allow``         deny, reason ``policy_malformed``
object with ``allow: false``               deny, reason = the policy's ``reason`` (or
                                           ``policy_denied``), ``status`` if 400..599
object with ``allow: true``                allow, if every optional field is well-formed;
                                           otherwise deny, reason ``policy_malformed``
=========================================  ===========================================

Undefined (no result at all) never reaches this function: the engine maps it to a deny with
reason ``policy_undefined`` (:data:`REASON_UNDEFINED`).

Optional fields (``null`` counts as absent; unknown keys are ignored):

- ``reason``: string.
- ``scopes``: list of RFC 6749 §3.3 scope-tokens. It can only narrow: the result is the
  policy's list (order kept, duplicates dropped) intersected with ``subject_scopes``. Pass
  ``subject_scopes=None`` for a subject whose credential has no notion of scope (mTLS, API key,
  basic, HMAC): the policy is then the only authority and its list is kept as is. An empty
  sequence means the subject holds no scope, so nothing survives. Absent ``scopes`` gives
  ``Decision.scopes = None``: the policy did not narrow, the subject's own scopes apply.
- ``status``: int 400..599, kept on denies only (an allow ignores it entirely).
- ``headers``: object of string -> string, headers the forwarder *adds*. A malformed
  container denies; a single bad entry (a name that is not an RFC 9110 token, contains ``_``,
  or is one the gateway owns; a value with control characters) is dropped and logged. Dropping
  only ever removes something the policy asked to add, so it cannot widen access.
- ``credential``: non-empty string naming a route credential.
- ``obligations``: object; passed through (``no_cache: true`` is read by the decision cache).

The obligations the gateway enforces are parsed here too, where they are applied
(:func:`obligation_limit`, called by the limits stage): one that cannot be enforced denies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from gateway.context import Decision
from gateway.errors import Forbidden
from gateway.settings.routes import RateLimit

log = logging.getLogger("agentgate.authz")

REASON_DENIED = "policy_denied"
REASON_UNDEFINED = "policy_undefined"
REASON_MALFORMED = "policy_malformed"

# RFC 9110 §5.6.2 token, minus "_" (DESIGN.md §5: no header with "_" reaches an upstream).
_TOKEN = re.compile(r"[!#$%&'*+\-.^`|~0-9A-Za-z]+")
# RFC 9110 §5.5 field value: visible ASCII, SP and HTAB; no CR, LF, NUL or other controls.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
# RFC 6749 §3.3 scope-token.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")

# SECURITY: headers the gateway sets or strips itself; a decision may never set these
# (DESIGN.md §5: a decision's headers "never replace the ones the gateway sets").
GATEWAY_OWNED_HEADERS: frozenset[str] = frozenset(
    {
        # set by the gateway
        "txn-token",
        "traceparent",
        "tracestate",
        "baggage",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "via",
        "host",
        "authorization",
        # framing and connection management (RFC 9110 §7.6.1, RFC 9112)
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "proxy-authenticate",
        # identity relays the gateway strips inbound
        "x-forwarded-client-cert",
        "client-cert",
        "client-cert-chain",
        "x-client-cert",
        "x-ssl-client-cert",
        "x-spiffe-id",
        "x-real-ip",
        "dpop",
        "cookie",
        "signature",
        "signature-input",
        "workload-identity-token",
    }
)


class _Malformed(Exception):
    """A decision field has the wrong shape (internal to this module)."""


def parse_decision(
    raw: object,
    decision_id: str,
    subject_scopes: Sequence[str] | None,
    *,
    reserved_headers: Collection[str] = (),
) -> Decision:
    """Turn the PDP's raw result into a :class:`Decision` (see the module docstring).

    ``reserved_headers`` adds header names the decision may not set (lowercase), e.g. the
    header the route's backend credential is written to.
    """
    if raw is False:
        return Decision(allow=False, decision_id=decision_id, reason=REASON_DENIED)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("allow"), bool):
        return _malformed(decision_id, "decision is not an object with a boolean 'allow'")
    try:
        reason = _optional(raw, "reason", str)
        if raw["allow"] is not True:
            status = _optional(raw, "status", int)
            if status is not None and (isinstance(status, bool) or not 400 <= status <= 599):
                raise _Malformed("'status' must be an integer in 400..599")
            return Decision(
                allow=False,
                decision_id=decision_id,
                reason=reason or REASON_DENIED,
                status=status,
                obligations=_obligations(raw),
            )
        return Decision(
            allow=True,
            decision_id=decision_id,
            reason=reason or "",
            scopes=_scopes(raw, subject_scopes),
            headers=_headers(raw, decision_id, reserved_headers),
            credential=_credential(raw),
            obligations=_obligations(raw),
        )
    except _Malformed as exc:
        return _malformed(decision_id, str(exc))


def _malformed(decision_id: str, why: str) -> Decision:
    log.warning("decision %s denied: malformed policy result: %s", decision_id, why)
    return Decision(allow=False, decision_id=decision_id, reason=REASON_MALFORMED)


def _optional(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    if value is not None and not isinstance(value, kind):
        raise _Malformed(f"{key!r} must be a {kind.__name__}")
    return value


def _scopes(raw: Mapping[str, Any], subject_scopes: Sequence[str] | None) -> tuple[str, ...] | None:
    value = _optional(raw, "scopes", list)
    if value is None:
        return None
    for scope in value:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise _Malformed("'scopes' must be a list of scope-token strings")
    wanted = dict.fromkeys(value)  # order kept, duplicates dropped
    if subject_scopes is None:
        return tuple(wanted)
    # SECURITY: a decision can only narrow what the subject holds (DESIGN.md §7).
    held = frozenset(subject_scopes)
    return tuple(scope for scope in wanted if scope in held)


def _headers(
    raw: Mapping[str, Any], decision_id: str, reserved: Collection[str]
) -> Mapping[str, str]:
    value = _optional(raw, "headers", Mapping)
    if not value:
        return MappingProxyType({})
    out: dict[str, str] = {}
    for name, text in value.items():
        key = name.lower() if isinstance(name, str) else ""
        if (
            not _TOKEN.fullmatch(key)
            or key in GATEWAY_OWNED_HEADERS
            or key in reserved
            or not isinstance(text, str)
            or not _FIELD_VALUE.fullmatch(text)
        ):
            # SECURITY: never let a policy smuggle or override a header; drop just this one.
            log.warning("decision %s: dropped header %r the policy may not set", decision_id, key)
            continue
        out[key] = text
    return MappingProxyType(out)


def _credential(raw: Mapping[str, Any]) -> str | None:
    value = _optional(raw, "credential", str)
    if value is not None and not value:
        raise _Malformed("'credential' must be a non-empty string")
    return value


def _obligations(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    value = _optional(raw, "obligations", Mapping)
    return MappingProxyType(dict(value)) if value else MappingProxyType({})


class InvalidObligation(Forbidden):
    """The PDP asked for a rate limit the PEP cannot enforce: deny (never ignore it)."""

    reason = "obligation_invalid"


def obligation_limit(decision: Decision | None) -> RateLimit | None:
    """The decision's ``obligations.rate_limit``, validated; None when absent."""
    raw = decision.obligations.get("rate_limit") if decision is not None else None
    if raw is None:
        return None
    try:
        return RateLimit.model_validate(raw)
    except ValidationError:
        raise InvalidObligation("malformed rate_limit obligation") from None
