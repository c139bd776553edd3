"""``jwt_assertion``: agent-signed JWT assertions in the style of RFC 7523 §3, checked per
RFC 8725 (SPECS.md §3.3, §9).

Transport. The assertion travels in its own request header, ``Agent-Assertion: <jwt>``, so it
never competes with an access token in ``Authorization: Bearer`` (no guessing from ``typ`` or
``iss`` which validator a bearer string belongs to), and the two can be required together
(``all_of``). Header absent: ``None`` (not mine). Sent twice or empty: 400 ``invalid_request``.

Checks (any failure: 401 ``invalid_token`` with a ``Bearer`` challenge; a usable replay store is
required, else 503):

* at most 8 KiB; three strict base64url segments; header and payload UTF-8 JSON objects without
  duplicate member names (RFC 8725 §2.6, §3.7);
* ``alg`` in the configured list, exact case; ``none`` and every ``HS*`` refused in any casing
  (RFC 8725 §2.1, §3.1-3.2); ``crit`` refused; ``jku``/``x5u``/``x5c``/``jwk`` never used
  (RFC 8725 §3.10); ``typ``, if present, ``JWT`` -- any other explicit type belongs to another
  validator (RFC 8725 §3.11-3.12);
* ``iss`` is a registered agent id and ``sub == iss`` (RFC 7523 §3 items 1-2: the agent speaks
  for itself); ``kid`` selects among *that agent's* keys (optional when it has exactly one) and
  the key is used only for the ``alg`` its JWK names;
* signature valid; ``aud`` (string or array) contains the gateway audience (RFC 7523 §3 item 3);
  ``exp`` required and not passed (item 4); ``iat`` required, not in the future, and
  ``exp - iat <= max_lifetime_s``; ``nbf`` honoured (item 5); clock leeway ``leeway_s``;
* ``jti`` required and single-use: ``ReplayCache.first_use("assert:<iss>:<jti>")`` until
  ``exp + leeway`` (item 7).

Principal: ``subject`` = the agent's ``subject`` (default its id), ``subject_type`` from the
agents file (default ``agent``), ``issuer`` = ``client_id`` = the agent id, ``amr = ("swk",)``
(RFC 8176 §2: proof of possession of a software-secured key; the gateway cannot know whether
the key is hardware-backed). Only the registered claims (``iss sub aud iat nbf exp jti``) reach
``claims``: other members are the agent's own say-so and must not drive policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Self

from gateway.authn.base import invalid_request, invalid_token
from gateway.authn.credfiles import AgentKey, AgentRecord, load_agents
from gateway.authn.registry import BuildEnv, register
from gateway.context import Inbound, Principal, RequestFacts
from gateway.errors import GatewayError, ServiceUnavailable, Unauthorized
from gateway.jose.errors import JOSEError
from gateway.jose.jws import (
    VerificationKey,
    b64url_decode,
    check_alg,
    parse_compact,
    strict_json_value,
)
from gateway.settings.authn import JWTAssertionMethod
from gateway.state import ReplayCache

AMR = ("swk",)  # RFC 8176 §2
HEADER = "Agent-Assertion"
MAX_TOKEN_BYTES = 8192
MAX_JTI_CHARS = 256
REGISTERED_CLAIMS = ("iss", "sub", "aud", "iat", "nbf", "exp", "jti")
# gateway.jose's terse refusals -> this method's error_description (unchanged since before the
# JOSE layer existed: clients and the audit trail key on them).
_SYNTAX = {
    "token too large": "assertion too large",
    "not a compact JWS": "assertion is not a compact JWS",
    "missing alg": "assertion header has no alg",
    "malformed token": "assertion is not valid base64url",
    "malformed base64url": "assertion is not valid base64url",
    "missing signature": "assertion is not valid base64url",
}
_BY_CODE = {
    "crit": "assertion has critical header parameters",
    "wrong_typ": "assertion has the wrong typ",
    "bad_kid": "assertion key not found",
}


@register
class JWTAssertionAuthenticator:
    type_id: ClassVar[str] = "jwt_assertion"
    config_model: ClassVar[type[JWTAssertionMethod]] = JWTAssertionMethod
    primary_rank: ClassVar[int] = 3  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, name: str, cfg: JWTAssertionMethod, env: BuildEnv) -> Self:
        audience = f"https://{env.settings.server.trust_domain}/"
        return cls(name, cfg, env.replay, gateway_audience=audience)

    def __init__(
        self,
        name: str,
        cfg: JWTAssertionMethod,
        replay: ReplayCache,
        *,
        gateway_audience: str,
    ) -> None:
        self.name = name
        self._replay = replay
        self._audience = cfg.audience or gateway_audience
        self._algorithms = frozenset(cfg.algorithms)
        self._max_lifetime = cfg.max_lifetime_s
        self._leeway = cfg.leeway_s
        self._agents: dict[str, AgentRecord] = {a.id: a for a in load_agents(cfg.agents_file)}

    def __repr__(self) -> str:
        return f"JWTAssertionAuthenticator({self.name!r}, agents={len(self._agents)})"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def challenge(self) -> str | None:
        return None

    def credential_headers(self) -> tuple[str, ...]:
        return (HEADER,)

    def credential_query_params(self) -> tuple[str, ...]:
        return ()

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        token = self._token(request)
        if token is None:
            return None
        now = facts.time_ns / 1e9
        agent, claims = self._verify(token)
        self._check_claims(claims, now)
        jti, exp = str(claims["jti"]), float(claims["exp"])
        await self._first_use(f"assert:{agent.id}:{jti}", exp + self._leeway - now)
        return Principal(
            method=self.name,
            subject=agent.subject,
            subject_type=agent.type,
            issuer=agent.id,
            client_id=agent.id,
            roles=agent.roles,
            amr=AMR,
            claims=MappingProxyType({k: claims[k] for k in REGISTERED_CLAIMS if k in claims}),
            expires_at=exp,
            token_id=jti,
        )

    # ------------------------------------------------------------------ steps

    def _token(self, request: Inbound) -> str | None:
        values = request.headers.getall(HEADER, ())
        if not values:
            return None
        if len(values) > 1:
            raise invalid_request("agent assertion sent more than once")
        token = values[0].strip()
        if not token:
            raise invalid_request("empty agent assertion")
        return token

    def _verify(self, token: str) -> tuple[AgentRecord, dict[str, Any]]:
        try:
            # SECURITY: RFC 8725 via gateway.jose -- strict syntax, no none, no crit, no b64,
            # kid bounded; jku/x5u/x5c/jwk never read.
            jws = parse_compact(token, max_bytes=MAX_TOKEN_BYTES)
        except JOSEError as exc:
            raise _refused(exc, token) from None
        alg = jws.alg
        try:
            # SECURITY: RFC 8725 §2.1, §3.1 -- the exact allowlist, never none or HMAC (in
            # any casing: "hs256" is refused here even before the allowlist is consulted).
            if alg.upper().startswith("HS"):
                raise JOSEError("algorithm not allowed", "alg_refused")
            check_alg(alg, self._algorithms)
        except JOSEError:
            raise _alg_refused(alg) from None
        typ = jws.typ
        if typ is not None and typ.lower().removeprefix("application/") != "jwt":
            raise _bad("assertion has the wrong typ")  # SECURITY: RFC 8725 §3.11
        claims = _claims(jws.payload)
        iss = claims.get("iss")
        agent = self._agents.get(iss) if isinstance(iss, str) else None
        if agent is None:
            raise _bad("assertion issuer is not a registered agent")
        if claims.get("sub") != iss:
            raise _bad("assertion sub must equal iss")
        key = _select_key(agent, jws.kid, alg)
        try:
            # SECURITY: RFC 8725 §3.1 -- the key verifies only with the alg its JWK names.
            VerificationKey(key.kid, frozenset({key.alg}), key.key).verify(
                alg, jws.signing_input, jws.signature
            )
        except JOSEError:
            raise _bad("assertion signature invalid", detail=f"agent {agent.id!r}") from None
        return agent, claims

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        # SECURITY: RFC 8725 §3.9 / RFC 7523 §3 item 3 -- only assertions meant for us.
        if self._audience not in [a for a in audiences if isinstance(a, str)]:
            raise _bad("assertion audience mismatch")
        exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), claims.get("nbf")
        if exp is None or iat is None:
            raise _bad("assertion needs numeric exp and iat")
        if now >= exp + self._leeway:
            raise _bad("assertion expired")
        if iat > now + self._leeway:
            raise _bad("assertion issued in the future")
        if exp - iat > self._max_lifetime:
            raise _bad("assertion lifetime too long")
        if nbf is not None:
            nbf_value = _number(claims, "nbf")
            if nbf_value is None or now + self._leeway < nbf_value:
                raise _bad("assertion not yet valid")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise _bad("assertion needs a jti")

    async def _first_use(self, key: str, ttl_s: float) -> None:
        try:
            first = await self._replay.first_use(key, max(ttl_s, 1.0))
        except GatewayError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                f"replay store error: {type(exc).__name__}", reason="state_unavailable"
            ) from None
        if not first:
            # SECURITY: RFC 7523 §3 item 7 -- a jti is accepted once.
            raise _bad("assertion replayed")


def _select_key(agent: AgentRecord, kid: Any, alg: str) -> AgentKey:
    if kid is None and len(agent.keys) == 1:
        key = agent.keys[0]
    else:
        # SECURITY: kid is an opaque lookup key within this agent's own keys (RFC 8725 §2.9).
        found = [k for k in agent.keys if isinstance(kid, str) and k.kid == kid]
        if not found:
            raise _bad("assertion key not found")
        key = found[0]
    if key.alg != alg:
        # SECURITY: RFC 8725 §3.1 -- a key is used only for the algorithm its JWK names.
        raise _bad("assertion algorithm does not match the key")
    return key


def _bad(description: str, *, detail: str = "") -> Unauthorized:
    return invalid_token(description, detail=f"jwt_assertion: {detail or description}")


def _alg_refused(alg: str) -> Unauthorized:
    return _bad("assertion algorithm not allowed", detail=f"alg {alg[:16]!r}")


def _refused(exc: JOSEError, token: str) -> Unauthorized:
    """Map a refusal of :func:`gateway.jose.jws.parse_compact` to this method's answer."""
    description = _BY_CODE.get(exc.code) or _SYNTAX.get(str(exc))
    if description is not None:
        return _bad(description)
    # The rest concerns the header, which did decode: refused for its alg, or as JSON.
    try:
        header = strict_json_value(b64url_decode(token.split(".")[0]))
    except JOSEError:
        return _bad("assertion is not valid JSON")
    if not isinstance(header, dict):
        return _bad("assertion segment is not a JSON object")
    return _alg_refused(str(header.get("alg")))


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        value = strict_json_value(payload)
    except JOSEError:
        raise _bad("assertion is not valid JSON") from None
    if not isinstance(value, dict):
        raise _bad("assertion segment is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
