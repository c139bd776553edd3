"""The ``txn_token`` authentication method: east-west calls carrying our own Txn-Token.

Contract (base.Method; txn-tokens-10 §12.2, SPECS.md §1.7, §2.2):

* *not mine* (``None``): the request has no ``Txn-Token`` header;
* 400 ``invalid_request``: the header is repeated or empty;
* 401 ``invalid_token``: the token is malformed (RFC 6750 §3.1) or fails verification:
  signature by ``kid`` against the gateway's own keys only, ``typ: txntoken+jwt``, ``aud``
  = trust domain, ``iss``, ``exp``/``iat`` with ``leeway_s``, the required claims
  (:mod:`gateway.sdk.txn` does the checks); 503 if the keys cannot be obtained; 403 for an
  actor chain deeper than 8;
* otherwise a :class:`gateway.context.Principal`: ``subject`` = ``sub``, ``subject_type``
  from ``tctx.subject_type``, ``scopes`` from ``scope``, ``actors`` from the ``act`` chain
  with the verified mTLS peer pushed on top (the agent now calling on the subject's
  behalf, SPECS.md §2.2 rule 2; not pushed when it already is the current actor or is the
  subject itself), ``claims`` = the verified claims (``txn``, ``tctx``, ``rctx``, ...),
  ``token_id`` = ``txn``, ``expires_at`` = ``exp``, and ``transaction`` = what the policy
  sees as ``input.txn`` (:func:`transaction_of`).

SECURITY: the pipeline strips client-sent ``Txn-Token`` headers before forwarding, but
authentication reads the request *as received*. A Txn-Token proves what a transaction is
allowed to do, never who is calling (§13.12): a route whose ``authn`` accepts
``txn_token`` is an internal route, must be reachable only by internal workloads, and
should require the caller's own identity too: ``authn: {all_of: [mtls, txn_token]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol, Self, cast

from gateway.authn.base import invalid_request, invalid_token
from gateway.authn.registry import BuildEnv, register
from gateway.context import Actor, Inbound, Principal, RequestFacts, SubjectType
from gateway.errors import ConfigError, Forbidden, ServiceUnavailable
from gateway.sdk.txn import TXN_TOKEN_HEADER, KeysUnavailable, TxnTokenError
from gateway.settings.authn import TxnTokenMethod

MAX_ACTORS: Final = 8  # SPECS.md §2.2 rule 3
_SUBJECT_TYPES: Final = frozenset({"user", "agent", "service", "device"})


class TokenVerifier(Protocol):
    """:class:`gateway.sdk.txn.TxnTokenVerifier` built on the gateway's own KeyRing."""

    async def verify(self, token: str, *, leeway_s: float | None = None) -> dict[str, Any]: ...


@register
class TxnTokenAuthenticator:
    type_id: ClassVar[str] = "txn_token"
    config_model: ClassVar[type[TxnTokenMethod]] = TxnTokenMethod
    primary_rank: ClassVar[int] = 0  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, name: str, cfg: TxnTokenMethod, env: BuildEnv) -> Self:
        if env.txn_verifier is None or env.settings.txn_tokens is None:
            raise ConfigError([(f"authn.{name}", "the txn_token method needs txn_tokens")])
        return cls(name, cfg, env.txn_verifier, header=env.settings.txn_tokens.header)

    def __init__(
        self,
        name: str,
        cfg: TxnTokenMethod,
        verifier: TokenVerifier,
        *,
        header: str = TXN_TOKEN_HEADER,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.header = header
        self._verifier = verifier

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def credential_headers(self) -> tuple[str, ...]:
        """Request headers carrying this method's credential (never forwarded as received)."""
        return (self.header,)

    def challenge(self) -> str | None:
        # A Txn-Token is not an HTTP authentication scheme; the Bearer challenge suffices.
        return None

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        values = request.headers.getall(self.header, ())
        if not values:
            return None
        if len(values) > 1:
            raise invalid_request("more than one Txn-Token header")
        token = values[0].strip()
        if not token:
            raise invalid_request("empty Txn-Token header")
        try:
            claims = await self._verifier.verify(token, leeway_s=self.cfg.leeway_s)
        except KeysUnavailable:
            raise ServiceUnavailable(
                "txn-token keys unavailable", reason="txn_keys_unavailable"
            ) from None
        except TxnTokenError as exc:
            raise invalid_token(
                "invalid transaction token", detail=f"txn_token: {exc.code}"
            ) from None
        return principal_from_claims(self.name, claims, facts)


def principal_from_claims(
    method: str, claims: dict[str, Any], facts: RequestFacts | None = None
) -> Principal:
    """The Principal for *verified* Txn-Token ``claims`` (see the module docstring)."""
    subject = claims["sub"]
    tctx = claims.get("tctx") or {}
    kind = tctx.get("subject_type")
    if kind not in _SUBJECT_TYPES:
        kind = "agent" if subject.startswith("spiffe://") else "user"
    token_actors = _actors(claims.get("act"))
    actors = list(token_actors)
    peer_id = facts.peer.spiffe_id if facts is not None and facts.peer is not None else None
    if peer_id and peer_id != subject and (not actors or actors[0].sub != peer_id):
        actors.insert(0, Actor(peer_id))
    if len(actors) > MAX_ACTORS:
        raise Forbidden("actor chain deeper than 8", reason="actor_chain_too_deep")
    return Principal(
        method=method,
        subject=subject,
        subject_type=cast(SubjectType, kind),
        issuer=claims.get("iss"),
        scopes=tuple(dict.fromkeys(str(claims.get("scope", "")).split())),
        actors=tuple(actors),
        claims=claims,
        expires_at=float(claims["exp"]),
        token_id=claims["txn"],
        transaction=transaction_of(claims, token_actors),
    )


def transaction_of(claims: Mapping[str, Any], actors: Sequence[Actor]) -> dict[str, Any]:
    """``input.txn`` for *verified* Txn-Token ``claims``: the transaction, not the token.

    ``{id, sub, scope: [..], iss, req_wl, actors: [{sub, iss?}], tctx, rctx}``: ``actors`` is
    the token's own ``act`` chain, current actor first (``input.actors`` additionally has the
    mTLS peer of this hop on top); ``iat``/``exp`` are left out on purpose, like ``jti`` in
    ``input.authn.results``: they describe one token, and would make every decision-cache
    key unique.
    """
    tctx, rctx = claims.get("tctx"), claims.get("rctx")
    return {
        "id": claims["txn"],
        "sub": claims["sub"],
        "scope": list(dict.fromkeys(str(claims.get("scope", "")).split())),
        "iss": claims.get("iss"),
        "req_wl": claims.get("req_wl"),
        "actors": [actor.as_input() for actor in actors],
        "tctx": dict(tctx) if isinstance(tctx, Mapping) else {},
        "rctx": dict(rctx) if isinstance(rctx, Mapping) else {},
    }


def _actors(act: Any) -> list[Actor]:
    out: list[Actor] = []
    while isinstance(act, dict):
        sub = act.get("sub")
        if not isinstance(sub, str):
            raise invalid_token("invalid transaction token", detail="txn_token: malformed act")
        iss = act.get("iss")
        out.append(Actor(sub, iss if isinstance(iss, str) else None))
        if len(out) > MAX_ACTORS:
            raise Forbidden("actor chain deeper than 8", reason="actor_chain_too_deep")
        act = act.get("act")
    return out
