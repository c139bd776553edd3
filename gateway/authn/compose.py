"""Composition of authentication methods by AND/OR trees (DESIGN.md §4).

A route's ``authn`` is a method name or a tree of ``{any_of: [...]}`` /
``{all_of: [...]}``. :class:`AuthnService.authenticate` evaluates it:

* every method named anywhere in the tree runs exactly once per request (in
  tree order), so the policy sees *all* results, not only the winner;
* a method that finds its credential invalid rejects the request even when
  another branch would succeed: a request that carries a forged or expired
  credential is refused outright (fail closed);
* ``any_of`` holds when one child holds; ``all_of`` when every child does;
* if the tree does not hold and nothing was invalid, the answer is 401 with
  the challenges of the methods in the tree (``Bearer realm="agentgate"``
  always, DPoP/Basic when those methods are in play).

The result is an :class:`gateway.context.Identity`: the primary principal (the
most specific success: a token's subject beats the certificate that carried
it), every successful result by method name, the caller type and the mode.

**Identity binding** (README "Binding identities"), checked here, before the PDP. A binding
belongs to an ``all_of`` node (``{all_of: [...], bind: {...}}``) or to the whole route
(``routes[].bind``) and applies when that node holds. Each key names a credential whose
*claimed workload* must be the *peer*: the SPIFFE ID of the connection's verified client
certificate (the identity the ``mtls`` method authenticates):

* ``actor: peer`` -- every successful ``bearer`` method in the subtree: its claimed workload
  is the current actor ``act.sub`` (RFC 8693 §4.1) when the token has an ``act`` chain;
  without one, its ``sub`` when that is a SPIFFE ID (an agent's own token). A user's token
  without ``act``, or a client whose ``sub`` is an IdP-internal id, claims no workload and is
  not compared (``cnf.x5t#S256`` binds such tokens cryptographically).
* ``assertion: peer`` -- every successful ``jwt_assertion`` method in the subtree: its
  claimed workload is the agent (the assertion's ``iss`` = ``sub``) or that agent's registered
  ``subject``; either must equal the peer.

Strings are compared exactly (SPIFFE IDs are canonical, :mod:`gateway.net.spiffe`). A mismatch,
or a claimed workload with no peer to compare it with, is 401 ``invalid_token``
(reason ``authn_binding_mismatch``) with a precise public description; the log line names
both identities. Defaults: with no ``routes[].bind``, every ``all_of`` node whose subtree
combines an ``mtls`` method with a ``bearer`` (``actor``) or ``jwt_assertion``
(``assertion``) method binds them; ``bind: off`` (or ``{}``) on a node or the route turns
that off (the route's also turns off the defaults inside its tree).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.authn.base import REALM, Method, challenge, invalid_token
from gateway.authn.jwks import DevKeys
from gateway.authn.jwt_bearer import JWTBearerAuthenticator, shown
from gateway.authn.registry import BuildEnv, MethodType, build, method_types
from gateway.context import (
    CallerType,
    Identity,
    Inbound,
    Mode,
    Principal,
    RequestFacts,
    VerifiedToken,
)
from gateway.errors import GatewayError, Unauthorized
from gateway.routing import CompiledRoute
from gateway.sdk.txn import TxnTokenVerifier
from gateway.settings.authn import Bind, CallerRules, tree_node
from gateway.settings.root import Settings
from gateway.state import ReplayCache

_Outcome = Principal | GatewayError | None

# The method type whose credential each binding kind constrains.
_BOUND_TYPE = {"actor": "bearer", "assertion": "jwt_assertion"}


@dataclass(frozen=True, slots=True)
class Binding:
    """One ``bind`` of a tree node: ``kinds`` of the methods in ``names`` must match the peer."""

    node: Any  # the tree node whose holding activates the check
    names: tuple[str, ...]  # methods in that node's subtree
    kinds: tuple[str, ...]  # "actor", "assertion"


def compile_bindings(
    tree: Any, route_bind: Bind | None, types: Mapping[str, str]
) -> tuple[Binding, ...]:
    """Every binding of a route's tree (see the module docstring for the defaults)."""
    out: list[Binding] = []

    def kinds_of(bind: Bind) -> tuple[str, ...]:
        return tuple(kind for kind in _BOUND_TYPE if getattr(bind, kind) == "peer")

    def visit(node: Any) -> None:
        if isinstance(node, str):
            return
        op, children, bind = tree_node(node)
        names = tuple(_names_in_order(node))
        if bind is not None:
            kinds = kinds_of(bind)
        elif op == "all_of" and route_bind is None:
            present = {types[n] for n in names}
            kinds = tuple(k for k, t in _BOUND_TYPE.items() if "mtls" in present and t in present)
        else:
            kinds = ()
        if kinds:
            out.append(Binding(node, names, kinds))
        for child in children:
            visit(child)

    if route_bind is not None and kinds_of(route_bind):
        out.append(Binding(tree, tuple(_names_in_order(tree)), kinds_of(route_bind)))
    visit(tree)
    return tuple(out)


def build_methods(
    settings: Settings,
    replay: ReplayCache,
    txn_verifier: TxnTokenVerifier | None = None,
    dev_keys: DevKeys | None = None,
) -> dict[str, Method]:
    """One handler per ``authn`` entry, from the registry (:mod:`gateway.authn.registry`)."""
    return build(BuildEnv(settings, replay, txn_verifier, dev_keys))


class AuthnService:
    def __init__(
        self,
        settings: Settings,
        replay: ReplayCache,
        txn_verifier: TxnTokenVerifier | None = None,
        dev_keys: DevKeys | None = None,
    ) -> None:
        self._types = {name: cfg.type for name, cfg in settings.authn.items()}
        self.methods = build_methods(settings, replay, txn_verifier, dev_keys)
        handlers = method_types()
        self._handlers: dict[str, type[MethodType]] = {
            name: handlers[kind] for name, kind in self._types.items()
        }
        self._rules = settings.callers
        self._challenges: dict[int, str] = {}
        self._bindings = {
            r.name: compile_bindings(r.authn, r.bind, self._types)
            for r in settings.routes
            if r.authn is not None
        }

    async def start(self) -> None:
        for method in self.methods.values():
            await method.start()

    def ready(self) -> bool:
        """False while a method cannot verify (e.g. a JWKS never fetched)."""
        return all(getattr(m, "ready", lambda: True)() for m in self.methods.values())

    async def validate_access_token(self, token: str) -> Identity:
        """An inbound access token presented to the Token Service as ``subject_token``."""
        for name, kind in self._types.items():
            method = self.methods[name]
            if kind == "bearer" and isinstance(method, JWTBearerAuthenticator):
                principal = await method.verify_access_token(token)
                caller: CallerType = "agent" if principal.actors else "human_api"
                if principal.subject_type in ("agent", "service", "device"):
                    caller = "device" if principal.subject_type == "device" else "agent"
                return Identity(principal, {name: principal}, caller, mode_of(principal))
        raise invalid_token("no bearer method configured")

    def credential_headers(self) -> frozenset[str]:
        """Request headers that carry a credential of a configured method (never forwarded)."""
        names: set[str] = set()
        for method in self.methods.values():
            names.update(h.lower() for h in getattr(method, "credential_headers", tuple)())
        return frozenset(names)

    def credential_query_params(self) -> frozenset[str]:
        """Query parameters that carry a credential (removed before forwarding)."""
        names: set[str] = set()
        for method in self.methods.values():
            names.update(getattr(method, "credential_query_params", tuple)())
        return frozenset(names)

    async def close(self) -> None:
        for method in self.methods.values():
            await method.close()

    async def authenticate(
        self, route: CompiledRoute, request: Inbound, facts: RequestFacts
    ) -> Identity:
        tree = route.settings.authn
        if tree is None:  # the pipeline only calls us for routes with authn
            raise Unauthorized("route has no authn tree", reason="authn_missing")
        outcomes: dict[str, _Outcome] = {}
        for name in _names_in_order(tree):
            try:
                outcomes[name] = await self.methods[name].authenticate(request, facts)
            except GatewayError as exc:
                outcomes[name] = exc
        for outcome in outcomes.values():
            if isinstance(outcome, GatewayError):
                # SECURITY: one bad credential spoils the request, whatever else succeeded.
                raise outcome
        if not _holds(tree, outcomes):
            raise Unauthorized(
                "no acceptable credential",
                reason="authn_missing",
                public="authentication required",
                headers={"WWW-Authenticate": self._challenge(tree)},
            )
        bindings = self._bindings.get(route.name)
        if bindings is None:  # a route this service was not built with (tests, tools)
            bindings = compile_bindings(tree, route.settings.bind, self._types)
        for binding in bindings:
            # SECURITY: before the PDP, identities proven by different methods must agree.
            self._check_binding(binding, outcomes, facts)
        results = {n: o for n, o in outcomes.items() if isinstance(o, Principal)}
        return self._identity(results, request, facts)

    def _check_binding(
        self, binding: Binding, outcomes: Mapping[str, _Outcome], facts: RequestFacts
    ) -> None:
        if not _holds(binding.node, outcomes):
            return
        successes = [(n, o) for n in binding.names if isinstance(o := outcomes.get(n), Principal)]
        peer = facts.peer.spiffe_id if facts.peer is not None else None
        for kind in binding.kinds:
            for name, principal in successes:
                if self._types[name] != _BOUND_TYPE[kind]:
                    continue
                claimed = claimed_workload(kind, principal)
                if not claimed:
                    continue
                if not isinstance(peer, str) or peer not in claimed:
                    raise binding_mismatch(kind, name, claimed, peer)

    def _challenge(self, tree: Any) -> str:
        key = id(tree)
        cached = self._challenges.get(key)
        if cached is None:
            bearer = challenge("Bearer", realm=REALM)
            offered = [bearer]
            for name in _names_in_order(tree):
                extra = self.methods[name].challenge()
                # The bearer method's own challenge starts with the same Bearer challenge
                # (then DPoP): offer each challenge once (RFC 9110 §11.6.1).
                if extra and (extra == bearer or extra.startswith(bearer + ", ")):
                    extra = extra[len(bearer) + 2 :]
                if extra and extra not in offered:
                    offered.append(extra)
            cached = self._challenges[key] = ", ".join(offered)
        return cached

    def _identity(
        self, results: Mapping[str, Principal], request: Inbound, facts: RequestFacts
    ) -> Identity:
        # Which success becomes the subject when several methods succeed: the most specific
        # statement about *who* is asking comes first; the transport identity comes last.
        primary = min(results.values(), key=lambda p: self._handlers[p.method].primary_rank)
        return Identity(
            principal=primary,
            results=dict(results),
            caller=classify_caller(primary, facts, request, self._rules),
            mode=mode_of(primary),
            scoped=self._handlers[primary.method].scoped,
            exchange_token=exchange_token(request, results.values()),
        )


def claimed_workload(kind: str, principal: Principal) -> tuple[str, ...]:
    """The identities a credential claims for the calling workload (empty: none to bind).

    ``actor``: the current actor ``act.sub``; without ``act``, the subject when it is a
    SPIFFE ID. ``assertion``: the agent id (``iss`` = ``sub``) and its registered subject.
    """
    if kind == "actor":
        if principal.actors:
            return (principal.actors[0].sub,)
        return (principal.subject,) if principal.subject.startswith("spiffe://") else ()
    iss = principal.claims.get("iss")
    return tuple(dict.fromkeys(x for x in (iss, principal.subject) if isinstance(x, str) and x))


def binding_mismatch(kind: str, method: str, claimed: Sequence[str], peer: object) -> Unauthorized:
    """401 ``invalid_token`` for a failed binding: precise in public, identities in the log."""
    what = "token's current actor" if kind == "actor" else "agent assertion's agent"
    if not isinstance(peer, str):
        public = f"the {what} needs a client certificate (SPIFFE ID) to bind to"
    else:
        public = f"the {what} is not the client certificate's SPIFFE ID"
    detail = (
        f"bind {kind}: {method} claims {shown(list(claimed))}, "
        f"peer is {shown(peer) if isinstance(peer, str) else 'absent'}"
    )
    return invalid_token(public, detail=detail, reason="authn_binding_mismatch")


def _names_in_order(tree: Any) -> list[str]:
    if isinstance(tree, str):
        return [tree]
    names: list[str] = []
    for child in tree_node(tree)[1]:
        for name in _names_in_order(child):
            if name not in names:
                names.append(name)
    return names


def _holds(tree: Any, outcomes: Mapping[str, _Outcome]) -> bool:
    if isinstance(tree, str):
        return isinstance(outcomes.get(tree), Principal)
    op, children, _ = tree_node(tree)
    checks = (_holds(child, outcomes) for child in children)
    return any(checks) if op == "any_of" else all(checks)


def mode_of(principal: Principal) -> Mode:
    """``self`` without delegation; otherwise on behalf of the (user or agent) subject."""
    if not principal.actors:
        return "self"
    return "obo_user" if principal.subject_type == "user" else "obo_agent"


def _spiffe_path(facts: RequestFacts) -> str:
    peer = facts.peer
    if peer is None or peer.spiffe_id is None:
        return ""
    return "/" + peer.spiffe_id.split("/", 3)[-1]


def _starts(path: str, prefixes: Sequence[str]) -> bool:
    return any(path.startswith(p) for p in prefixes)


def exchange_token(request: Inbound, results: Iterable[Principal]) -> VerifiedToken | None:
    """The verified access token (``Bearer``/``DPoP``), for an RFC 8693 exchange converter.

    Only when a token from an issuer was verified; never a key, a password or a signature.
    """
    if not any(p.claims.get("iss") for p in results):
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return VerifiedToken(token) if token and scheme.lower() in ("bearer", "dpop") else None


def classify_caller(
    principal: Principal, facts: RequestFacts, request: Inbound, rules: CallerRules
) -> CallerType:
    """The caller type, from verified facts first and browser hints last.

    Order: a device certificate or device subject -> ``device``; an agent subject,
    a registered agent client, a delegation chain (an agent is the one calling), or
    an agent SPIFFE certificate -> ``agent``; a user with browser fetch metadata ->
    ``human_browser``; any other user -> ``human_api``; services count as agents.
    """
    path = _spiffe_path(facts)
    if principal.subject_type == "device" or (path and _starts(path, rules.device_spiffe_paths)):
        return "device"
    if (
        principal.subject_type in ("agent", "service")
        or (principal.client_id is not None and principal.client_id in rules.agent_client_ids)
        or principal.actors
        or (path and _starts(path, rules.agent_spiffe_paths))
    ):
        return "agent"
    if rules.browser_hints and "Sec-Fetch-Mode" in request.headers:
        return "human_browser"
    return "human_api"
