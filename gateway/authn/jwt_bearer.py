"""OAuth access tokens at the resource server: the ``bearer`` authentication method.

Standards: RFC 6750 §2-§3 and OAuth 2.1 §5.2 (presentation, errors), RFC 9068 §4 (JWT access
token validation), RFC 8725 (JWT BCP, via :mod:`gateway.jose`), RFC 7662 (opaque tokens,
via :mod:`gateway.authn.introspection`), RFC 9449 §7 (DPoP-bound tokens, via
:mod:`gateway.authn.dpop`), RFC 8705 §3 (certificate-bound tokens), RFC 8693 §4.1 (``act``).

Contract of :meth:`JWTBearerAuthenticator.authenticate` (the :class:`gateway.authn.base.Method`
protocol):

* ``None`` (not mine): no ``Authorization`` header, or a scheme other than ``Bearer`` /
  ``DPoP`` (``DPoP`` counts only while ``sender_constraint`` is not ``off``);
* a :class:`gateway.context.Principal` for a valid token whose sender constraint is proven;
* 400 ``invalid_request``: an ``access_token`` in the query string (OAuth 2.1 §5.2.1 removed
  it) or in a form body (RFC 6750 §2.2, not supported), two ``Authorization`` headers, or a
  credential that is not a ``b64token``;
* 401 ``invalid_token`` (challenge in the presented scheme) for anything wrong with the token;
  401 ``invalid_dpop_proof`` / ``use_dpop_nonce`` for the proof;
* 503 when the JWKS, the introspection endpoint or the replay store is unusable.

JWT validation, in order (RFC 9068 §4, RFC 8725 §3): size cap; strict compact-JWS parsing;
the *unverified* ``iss`` must equal one of this method's issuers exactly, which selects the
key set and rules; ``typ``; ``alg`` in that issuer's allowlist; key by ``kid`` from that
issuer's JWKS only (``jku``/``x5u``/``x5c``/``jwk`` are ignored); signature; only then the
claims: ``exp`` (required), ``nbf``, ``iat`` (required, not in the future) with the issuer's
leeway, ``aud`` names one of our audiences, and ``sub``, ``jti`` and ``client_id`` (or
``azp``) are required (RFC 9068 §2.2; SPECS.md §5.3). A token that is not JOSE at all is
introspected at each of this method's issuers that has ``introspection``, in order.

Sender constraints (never weakened by configuration):

* ``cnf.jkt`` -> ``Authorization: DPoP`` plus a valid proof; the same token with ``Bearer``
  is refused (RFC 9449 §7.2 downgrade). A DPoP-scheme token without ``cnf.jkt`` is refused.
* ``cnf.x5t#S256`` -> must equal the SHA-256 thumbprint of this connection's client
  certificate (constant-time); no client certificate -> refused.
* ``sender_constraint: required`` refuses tokens with neither; ``optional`` accepts plain
  bearer tokens; ``off`` stops accepting and advertising the DPoP scheme (``DPoP`` is then not
  mine) but still enforces every ``cnf`` binding -- so a DPoP-bound token is always refused.

Verified JWTs are cached by SHA-256 of the token until ``min(exp, now + 300 s)``; the
proof-of-possession checks run on every request regardless.

``introspect: always`` (on the method, else the issuer): a verified JWT is *also* introspected
at its issuer (RFC 7662), on every presentation, cached or not; an inactive answer is 401
(revocation that only the authorization server knows, e.g. a Keycloak logout). The
introspection client caches active answers for ``min(exp, max_cache_s)``.

``require_typ`` set on the method (``null`` included: no typ check beyond "not another JWT
kind") overrides the issuer's; left unset, each issuer's applies.

Diagnostics: a refusal's public ``error_description`` stays generic; the log line (the
error's ``detail``) says what was wanted and what came -- ``typ at+jwt wanted, got JWT``,
``aud wanted [...], got [...]``, ``expired 42 s ago`` -- naming the token only by a SHA-256
prefix. Values copied from the token are truncated and stripped of control characters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, Self
from urllib.parse import parse_qsl

from gateway.authn.base import REALM, authorization, challenge, invalid_request, invalid_token
from gateway.authn.dpop import DPoPVerifier
from gateway.authn.introspection import (
    InactiveToken,
    IntrospectionClient,
    IntrospectionUnavailable,
    check_audience,
)
from gateway.authn.jwks import DevKeys, JWKSClient
from gateway.authn.registry import BuildEnv, register
from gateway.context import (
    Actor,
    Inbound,
    Principal,
    RequestFacts,
    SenderConstraint,
    SubjectType,
)
from gateway.errors import ConfigError
from gateway.jose.errors import JOSEError
from gateway.jose.jws import (
    CompactJWS,
    HeaderCache,
    check_alg,
    normalize_typ,
    numeric_date,
    parse_compact,
)
from gateway.settings.authn import BearerMethod
from gateway.settings.issuers import Issuer
from gateway.state import ReplayCache

MAX_ACTOR_DEPTH = 10
MAX_CACHE_S = 300.0  # bounds how long a cached token outlives a key removed from the JWKS
MAX_FORM_BYTES = 64 * 1024  # form bodies up to this size are checked for access_token

# RFC 6750 §2.1 b64token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

# Registered claim names (RFC 7519, OIDC Core, RFC 8693, RFC 7643, RFC 9068 ...) that policy
# may see; every other registered name is dropped, unregistered (custom) claims are kept.
_KEPT_REGISTERED = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "client_id", "azp", "scope", "acr", "amr",
     "auth_time", "act", "may_act", "cnf", "groups", "roles", "entitlements"}
)  # fmt: skip
_DROPPED_REGISTERED = frozenset(
    {"nbf", "jti", "nonce", "at_hash", "c_hash", "s_hash", "sid", "sub_jwk", "events", "toe",
     "txn", "rph", "orig", "dest", "mky", "origid", "attest", "jcard", "updated_at", "name",
     "given_name", "family_name", "middle_name", "nickname", "preferred_username", "profile",
     "picture", "website", "email", "email_verified", "gender", "birthdate", "zoneinfo",
     "locale", "phone_number", "phone_number_verified", "address", "active", "token_type",
     "username", "vot", "vtm", "_claim_names", "_claim_sources"}
)  # fmt: skip
# Claims that only appear when a human authenticated (OIDC Core §2, §5.1).
_USER_CLAIMS = frozenset(
    {"auth_time", "acr", "amr", "email", "preferred_username", "name", "given_name",
     "family_name", "username"}
)  # fmt: skip
# Claims that name a user's login session (OIDC Core §2 sid; Keycloak's session_state).
_SESSION_CLAIMS = frozenset({"sid", "session_state", "auth_time"})


class Refusal(JOSEError):
    """A refused token, with a log-only ``diagnostic``: what was wanted and what came.

    ``str()`` stays the generic public text (RFC 6750 ``error_description``); the diagnostic
    goes to the error's ``detail`` (the log line), never to the client.
    """

    def __init__(self, public: str, diagnostic: str) -> None:
        super().__init__(public)
        self.diagnostic = diagnostic


def shown(value: Any, limit: int = 80) -> str:
    """A token-supplied value fit for a log line: JSON, printable ASCII, at most ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    # SECURITY: no CR/LF or escape sequences from an attacker's token reach the log.
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def token_ref(token: str) -> str:
    """How a log line names a token: a SHA-256 prefix, never the token (DESIGN.md §5)."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


class _Verified(NamedTuple):
    """A verified token: the principal plus the bindings to prove on every request."""

    principal: Principal
    jkt: str | None
    x5t: str | None
    until: float  # wall-clock end of cache validity


@register
class JWTBearerAuthenticator:
    """The ``bearer`` method: JWT access tokens (RFC 9068) and opaque tokens (RFC 7662)."""

    type_id: ClassVar[str] = "bearer"
    config_model: ClassVar[type[BearerMethod]] = BearerMethod
    primary_rank: ClassVar[int] = 2  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, name: str, cfg: BearerMethod, env: BuildEnv) -> Self:
        issuers = {iss.name: iss for iss in env.settings.issuers}
        chosen = [issuers[i] for i in cfg.issuers]
        return cls(
            name,
            cfg,
            chosen,
            env.replay,
            trust_domain=env.settings.server.trust_domain,
            dev_keys=env.dev_keys,
        )

    def __init__(
        self,
        name: str,
        cfg: BearerMethod,
        issuers: Sequence[Issuer],
        replay: ReplayCache,
        *,
        trust_domain: str,
        jwks_clients: Mapping[str, JWKSClient] | None = None,
        introspectors: Mapping[str, IntrospectionClient] | None = None,
        clock: Callable[[], float] = time.time,
        dev_keys: DevKeys | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.trust_domain = trust_domain
        self._clock = clock
        self._dev_keys = dev_keys  # a development issuer's key loader (the composition root's)
        self._issuers = _select_issuers(name, cfg, issuers)
        self._by_iss = {issuer.issuer: issuer for issuer in self._issuers}
        self._algs = frozenset(alg for issuer in self._issuers for alg in issuer.algorithms)
        self._typ = {issuer.name: self._expected_typ(issuer) for issuer in self._issuers}
        self._introspect_always = _introspected_always(name, cfg, self._issuers)
        self._owned: list[JWKSClient | IntrospectionClient] = []
        self._jwks = self._build_jwks(jwks_clients or {})
        self._introspectors = self._build_introspectors(introspectors or {})
        self._dpop = (
            DPoPVerifier(cfg.dpop, replay, clock=clock) if cfg.sender_constraint != "off" else None
        )
        self._schemes = {"bearer": "Bearer"} | ({"dpop": "DPoP"} if self._dpop else {})
        self._cache: dict[bytes, _Verified] = {}
        self._headers: HeaderCache = {}

    def _build_jwks(self, shared: Mapping[str, JWKSClient]) -> dict[str, JWKSClient]:
        clients: dict[str, JWKSClient] = {}
        for issuer in self._issuers:
            if issuer.jwks_uri is None and issuer.jwks_file is None and not issuer.dev_signing_key:
                continue
            client = shared.get(issuer.name)
            if client is None:
                client = JWKSClient(issuer, dev_keys=self._dev_keys)
                self._owned.append(client)
            clients[issuer.name] = client
        return clients

    def _build_introspectors(
        self, shared: Mapping[str, IntrospectionClient]
    ) -> list[IntrospectionClient]:
        clients: list[IntrospectionClient] = []
        for issuer in self._issuers:
            if issuer.introspection is None:
                continue
            client = shared.get(issuer.name)
            if client is None:
                client = IntrospectionClient(issuer, clock=self._clock)
                self._owned.append(client)
            clients.append(client)
        self._introspector_of = {client.issuer.name: client for client in clients}
        return clients

    # ------------------------------------------------------------------ Method protocol

    async def start(self) -> None:
        for client in self._owned:
            await client.start()

    async def close(self) -> None:
        for client in self._owned:
            await client.close()

    def jwks_clients(self) -> list[JWKSClient]:
        return list(self._jwks.values())

    def ready(self) -> bool:
        return all(client.ready() for client in self._jwks.values())

    @property
    def dpop(self) -> DPoPVerifier | None:
        return self._dpop

    @property
    def cached_tokens(self) -> int:
        """Entries in the verified-token cache (metrics, tests)."""
        return len(self._cache)

    @property
    def introspection_requests(self) -> int:
        """Calls made to the issuers' introspection endpoints (metrics, tests)."""
        return sum(client.requests for client in self._introspectors)

    def challenge(self) -> str:
        """``Bearer realm="agentgate"``, plus ``DPoP algs="..."`` while DPoP is accepted."""
        bearer = challenge("Bearer", realm=REALM)
        return f"{bearer}, {self._dpop.challenge()}" if self._dpop else bearer

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        _refuse_token_in_query(facts.raw_query)
        if request.body.exists:
            await _refuse_token_in_form(request)
        credentials = authorization(request)
        if credentials is None:
            return None
        presented = self._schemes.get(credentials[0])
        if presented is None:
            return None  # another scheme: not mine
        token = credentials[1]
        if not _B64TOKEN.fullmatch(token):
            raise invalid_request("malformed access token", scheme=presented)
        try:
            verified = await self._verified(token)
        except JOSEError as exc:
            raise self._refused(exc, token, presented) from None
        if verified.jkt is not None or verified.x5t is not None or presented == "DPoP":
            await self._prove(verified, presented, token, request, facts)
        return verified.principal

    async def verify_access_token(self, token: str) -> Principal:
        """Verify a token presented outside ``Authorization`` (the Token Service's
        ``subject_token``). Sender-constrained tokens are refused here: their proof of
        possession belongs to a request this method cannot see."""
        if not _B64TOKEN.fullmatch(token):
            raise invalid_token("malformed access token")
        try:
            verified = await self._verified(token)
        except JOSEError as exc:
            raise self._refused(exc, token, "Bearer") from None
        if verified.jkt is not None or verified.x5t is not None:
            raise invalid_token("sender-constrained token cannot be exchanged here")
        return verified.principal

    def _refused(self, exc: JOSEError, token: str, scheme: str) -> Exception:
        """401 ``invalid_token``: generic public text, the diagnostic in the log detail."""
        diagnostic = exc.diagnostic if isinstance(exc, Refusal) else str(exc)
        detail = f"authn.{self.name}: {diagnostic} (token {token_ref(token)})"
        return invalid_token(str(exc), scheme=scheme, detail=detail)

    # ------------------------------------------------------------------ verification

    async def _verified(self, token: str) -> _Verified:
        if len(token) > self.cfg.max_token_bytes:
            raise Refusal(
                "token too large", f"{len(token)} bytes, at most {self.cfg.max_token_bytes}"
            )
        cache_key = b""
        if self.cfg.verified_cache_entries:
            cache_key = hashlib.sha256(token.encode("ascii")).digest()
            entry = self._cache.get(cache_key)
            if entry is not None:
                if self._clock() < entry.until and self._keys_usable(entry):
                    await self._still_active(token, entry)
                    return entry
                del self._cache[cache_key]
        jws = _jws_or_none(token, self.cfg.max_token_bytes, self._headers)
        if jws is None:
            return await self._introspect(token)
        try:
            verified = await self._verify_jwt(jws)
        except Refusal:
            raise
        except JOSEError as exc:
            raise Refusal(str(exc), f"{exc} ({_jws_context(jws)})") from None
        await self._still_active(token, verified)
        self._remember(cache_key, verified)
        return verified

    async def _still_active(self, token: str, verified: _Verified) -> None:
        """``introspect: always``: the issuer must still call this verified JWT active."""
        issuer = self._by_iss.get(verified.principal.issuer or "")
        if issuer is None or issuer.name not in self._introspect_always:
            return
        client = self._introspector_of[issuer.name]
        try:
            await client.introspect(token)
        except InactiveToken:
            raise Refusal(
                "token is not active",
                f"issuer {issuer.name} introspection: active is not true (revoked or expired)",
            ) from None

    async def _verify_jwt(self, jws: CompactJWS) -> _Verified:
        # SECURITY: refuse algorithms no issuer of ours allows before reading the payload.
        _check_alg(jws.alg, self._algs)
        claims = jws.claims()  # untrusted until the signature is checked below
        iss = claims.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Refusal(
                "unknown token issuer",
                f"iss {shown(iss)} wanted one of {shown(sorted(self._by_iss))}",
            )
        self._check_typ(jws.typ, issuer)
        _check_alg(jws.alg, issuer.algorithms, issuer.name)
        jwks = self._jwks.get(issuer.name)
        if jwks is None:
            raise JOSEError("issuer does not sign access tokens")
        # SECURITY: RFC 8725 §3.10 -- keys come from the configured issuer's JWKS only.
        key = jwks.fresh_key(jws.kid, jws.alg) or await jwks.get_key(jws.kid, jws.alg)
        key.verify(jws.alg, jws.signing_input, jws.signature)
        now = self._clock()
        exp = check_jwt_claims(claims, issuer, now)
        return self._result(claims, issuer, until=min(exp, now + MAX_CACHE_S))

    def _keys_usable(self, entry: _Verified) -> bool:
        """A cached verification is only as good as the key set that made it: once the
        issuer's JWKS is stale beyond ``max_stale_s``, verify again (which fails closed)."""
        issuer = self._by_iss.get(entry.principal.issuer or "")
        client = self._jwks.get(issuer.name) if issuer is not None else None
        return client is None or client.ready()

    def _expected_typ(self, issuer: Issuer) -> str | None:
        """The normalised ``typ`` required of this issuer's tokens; None when relaxed.

        The method's ``require_typ`` wins when it was set (``null`` included); otherwise
        the issuer's applies.
        """
        if "require_typ" in self.cfg.model_fields_set:
            wanted = self.cfg.require_typ
        else:
            wanted = issuer.require_typ
        return normalize_typ(wanted) if wanted is not None else None

    def _check_typ(self, typ: str | None, issuer: Issuer) -> None:
        expected = self._typ[issuer.name]
        got = "none" if typ is None else shown(typ, 40)
        if expected is not None:
            if typ is None or normalize_typ(typ) != expected:
                raise Refusal("wrong token type", f"typ {expected} wanted, got {got}")
        elif typ is not None and normalize_typ(typ) not in ("jwt", "at+jwt"):
            # SECURITY: RFC 8725 §2.8 -- even relaxed, another JWT kind (dpop+jwt,
            # txntoken+jwt, ...) is never accepted as an access token.
            raise Refusal("wrong token type", f"typ JWT or at+jwt wanted, got {got}")

    async def _introspect(self, token: str) -> _Verified:
        unavailable: IntrospectionUnavailable | None = None
        for client in self._introspectors:
            try:
                claims = await client.introspect(token)
            except InactiveToken:
                continue
            except IntrospectionUnavailable as exc:
                unavailable = exc
                continue
            return self._result(claims, client.issuer, until=0.0)
        if unavailable is not None:
            raise unavailable  # SECURITY: could not decide -> 503, never accept
        if self._introspectors:
            names = shown([c.issuer.name for c in self._introspectors])
            raise Refusal("token is not active", f"opaque token inactive at issuers {names}")
        raise Refusal("malformed token", "not a JWS and no issuer introspects opaque tokens")

    def _result(self, claims: Mapping[str, Any], issuer: Issuer, *, until: float) -> _Verified:
        jkt, x5t = _bindings(claims)
        if self.cfg.sender_constraint == "required" and jkt is None and x5t is None:
            raise JOSEError("token is not sender-constrained")
        constraint: SenderConstraint = (
            "dpop" if jkt is not None else "mtls" if x5t is not None else "none"
        )
        principal = principal_from_claims(
            self.name,
            claims,
            issuer.issuer,
            self.trust_domain,
            sender_constraint=constraint,
            mapping=issuer.claims,
            service_account_prefix=issuer.service_account_prefix,
        )
        return _Verified(principal=principal, jkt=jkt, x5t=x5t, until=until)

    def _remember(self, key: bytes, verified: _Verified) -> None:
        limit = self.cfg.verified_cache_entries
        if limit == 0:
            return
        if len(self._cache) >= limit:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v.until > now}
            if len(self._cache) >= limit:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = verified

    async def _prove(
        self,
        verified: _Verified,
        presented: str,
        token: str,
        request: Inbound,
        facts: RequestFacts,
    ) -> None:
        """Proof of possession, on every request, cached token or not."""
        if verified.jkt is not None:
            if presented != "DPoP" or self._dpop is None:
                # SECURITY: RFC 9449 §7.2 -- a DPoP-bound token used as a bearer token.
                raise invalid_token("DPoP-bound token requires a DPoP proof", scheme=presented)
            await self._dpop.verify_request(request, facts, access_token=token, jkt=verified.jkt)
        elif presented == "DPoP":
            raise invalid_token("token is not DPoP-bound", scheme=presented)
        if verified.x5t is not None:
            peer = facts.peer
            # SECURITY: RFC 8705 §3 -- the certificate of *this* connection, compared in
            # constant time; bytes, because compare_digest refuses non-ASCII str.
            if peer is None or not hmac.compare_digest(
                peer.cert_x5t_s256.encode("ascii"), verified.x5t.encode("utf-8")
            ):
                raise invalid_token("certificate binding mismatch", scheme=presented)


# --------------------------------------------------------------------------- helpers


def _select_issuers(name: str, cfg: BearerMethod, issuers: Sequence[Issuer]) -> list[Issuer]:
    by_name = {issuer.name: issuer for issuer in issuers}
    problems = [
        (f"authn.{name}.issuers", f"issuer {n!r} is not defined")
        for n in cfg.issuers
        if n not in by_name
    ]
    selected = [by_name[n] for n in cfg.issuers if n in by_name]
    if len({issuer.issuer for issuer in selected}) != len(selected):
        problems.append((f"authn.{name}.issuers", "two issuers share one 'issuer' value"))
    if problems:
        raise ConfigError(problems)
    return selected


def _introspected_always(name: str, cfg: BearerMethod, issuers: Sequence[Issuer]) -> frozenset[str]:
    """Names of the issuers whose verified JWTs are also introspected (``introspect``)."""
    always = [i for i in issuers if (cfg.introspect or i.introspect) == "always"]
    lacking = [i.name for i in always if i.introspection is None]
    if lacking:
        # SECURITY: never silently skip a check the operator asked for.
        raise ConfigError(
            [(f"authn.{name}.introspect", f"issuer {n!r} has no introspection") for n in lacking]
        )
    return frozenset(i.name for i in always)


def _check_alg(alg: str, allowed: Collection[str], issuer: str | None = None) -> None:
    try:
        check_alg(alg, allowed)
    except JOSEError as exc:
        whose = f" of issuer {issuer}" if issuer else ""
        raise Refusal(
            str(exc), f"alg {shown(alg, 20)} not allowed, wanted one of {sorted(allowed)}{whose}"
        ) from None


def _jws_context(jws: CompactJWS) -> str:
    """The unverified header facts of a refused token, for the log line."""
    try:
        iss = jws.claims().get("iss")
    except JOSEError:
        iss = None
    return f"iss {shown(iss)}, alg {shown(jws.alg, 20)}, kid {shown(jws.kid, 40)}"


def _refuse_token_in_query(raw_query: str) -> None:
    if raw_query and "access_token" in {k for k, _ in parse_qsl(raw_query, True)}:
        # SECURITY: OAuth 2.1 §5.2.1 removed URI-query tokens (they leak into logs).
        raise invalid_request("access token in the URI query is not accepted")


async def _refuse_token_in_form(request: Inbound) -> None:
    """RFC 6750 §2.2 form-body tokens are not supported: refuse them loudly (400).

    Only ``application/x-www-form-urlencoded`` bodies with a ``Content-Length`` of at most
    ``MAX_FORM_BYTES`` are read (and kept for the forwarder); larger or chunked forms are not
    inspected -- a token there is never *used*, only not reported.
    """
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("application/x-www-form-urlencoded"):
        return
    body = request.body.buffered
    if body is None:
        length = request.body.declared_length
        if length is None or length > MAX_FORM_BYTES:
            return
        body = await request.body.read()
    if "access_token" in {k for k, _ in parse_qsl(body.decode("latin-1"), True)}:
        raise invalid_request("access token in the request body is not accepted")


# base64url of a first byte '{' starts with 'e' followed by one of these (the low two bits
# of 0x7B and the next byte's top four): every JOSE header encodes to such a prefix.
_JOSE_SECOND_CHAR = frozenset("wxyz0123456789-_")


def _jws_or_none(token: str, max_bytes: int, headers: HeaderCache) -> CompactJWS | None:
    """A compact JWS if the token starts like a JSON-object header, else None (opaque).

    A header with leading whitespace before ``{`` is treated as opaque: it is then only ever
    accepted if an introspection endpoint vouches for it.
    """
    if len(token) < 2 or token[0] != "e" or token[1] not in _JOSE_SECOND_CHAR:
        return None
    # SECURITY: once it looks like JOSE it must pass every JOSE check; no opaque fallback.
    return parse_compact(token, max_bytes=max_bytes, header_cache=headers)


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise JOSEError(f"missing {name}")
        return None
    return numeric_date(value, name)


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise JOSEError(f"missing or malformed {name}")
    return value


def check_jwt_claims(claims: Mapping[str, Any], issuer: Issuer, now: float) -> float:
    """RFC 9068 §4 steps 3-6 and §2.2 required claims, after the signature was verified.

    Returns ``exp``.
    """
    leeway = issuer.leeway_s
    exp = _number(claims, "exp", required=True)
    if exp is None or now >= exp + leeway:
        late = now - (exp or 0)
        raise Refusal("token expired", f"expired by {late:.0f} s (leeway {leeway:g} s)")
    nbf = _number(claims, "nbf", required=False)
    if nbf is not None and nbf > now + leeway:
        early = nbf - now
        raise Refusal("token not yet valid", f"nbf {early:.0f} s ahead (leeway {leeway:g} s)")
    iat = _number(claims, "iat", required=True)
    if iat is not None and iat > now + leeway:
        ahead = iat - now
        raise Refusal(
            "token issued in the future", f"iat {ahead:.0f} s ahead (leeway {leeway:g} s)"
        )
    if "aud" not in claims:
        raise JOSEError("missing aud")
    try:
        check_audience(claims["aud"], issuer.audience)
    except JOSEError as exc:
        wanted = [issuer.audience] if isinstance(issuer.audience, str) else list(issuer.audience)
        detail = f"aud wanted one of {shown(wanted)}, got {shown(claims['aud'])}"
        raise Refusal(str(exc), detail) from None
    _string(claims, "sub")
    _string(claims, "jti")
    if not isinstance(claims.get("client_id", claims.get("azp")), str):
        raise JOSEError("missing client_id")
    return exp


def _bindings(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    cnf = claims.get("cnf")
    if cnf is None:
        if claims.get("token_type") == "DPoP":
            raise JOSEError("DPoP token without cnf.jkt")  # RFC 9449 §6.2
        return None, None
    if not isinstance(cnf, dict):
        raise JOSEError("malformed cnf")
    jkt, x5t = cnf.get("jkt"), cnf.get("x5t#S256")
    if (jkt is not None and not isinstance(jkt, str)) or (
        x5t is not None and not isinstance(x5t, str)
    ):
        raise JOSEError("malformed cnf")
    return jkt, x5t


def _strings(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str) and name in ("scope", "scp"):
        return tuple(dict.fromkeys(value.split()))
    if name == "scope":
        raise JOSEError("malformed scope")  # RFC 8693 §4.2: a space-delimited string
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JOSEError(f"malformed {name}")
    return tuple(dict.fromkeys(value))


def _actors(act: Any) -> tuple[Actor, ...]:
    """RFC 8693 §4.1: the outermost ``act`` is the current actor; outermost first."""
    actors: list[Actor] = []
    while act is not None:
        if len(actors) >= MAX_ACTOR_DEPTH:
            raise JOSEError("actor chain too deep")
        sub, iss = (act.get("sub"), act.get("iss")) if isinstance(act, dict) else (None, None)
        if not isinstance(sub, str) or not sub or not isinstance(iss, str | None):
            raise JOSEError("malformed act")
        actors.append(Actor(sub=sub, iss=iss))
        act = act.get("act")
    return tuple(actors)


def _subject_type(
    sub: str,
    client_id: str | None,
    claims: Mapping[str, Any],
    trust_domain: str,
    service_account_prefix: str | None = None,
) -> SubjectType:
    """``agent`` for a client acting for itself, ``user`` otherwise (README "Bearer tokens").

    In order: a service account -- no user session (none of ``sid``, ``session_state``,
    ``auth_time``) and ``preferred_username`` starting with ``service_account_prefix``
    (Keycloak's client-credentials tokens carry ``acr`` and
    ``preferred_username: service-account-<client>``) -- is an ``agent``; any other token with
    a claim only human logins carry is a ``user``; a subject equal to the client
    (``client_id``/``azp``) or a SPIFFE ID of our trust domain is an ``agent``; the rest are
    ``user``.
    """
    username = claims.get("preferred_username")
    if (
        service_account_prefix
        and isinstance(username, str)
        and username.startswith(service_account_prefix)
        and client_id is not None
        and not _SESSION_CLAIMS.intersection(claims)
    ):
        return "agent"
    if _USER_CLAIMS.intersection(claims):
        return "user"
    if sub == client_id or sub.startswith(f"spiffe://{trust_domain}/"):
        return "agent"
    return "user"


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``), or None when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _attribute(value: Any) -> Any:
    """A mapped claim as policy sees it: scalars and lists of scalars; anything else None."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list) and all(isinstance(v, str | bool | int | float) for v in value):
        return list(value)
    return None


def mapped_attributes(
    claims: Mapping[str, Any], mapping: Mapping[str, str]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(``input.subject`` attributes, extra roles) for an issuer's ``claims`` mapping.

    Every mapped name is present (None when the token lacks the claim), so a policy never
    guesses between absent and empty. ``roles`` is not an attribute: its strings join the
    subject's roles.
    """
    attributes: dict[str, Any] = {}
    roles: tuple[str, ...] = ()
    for name, path in mapping.items():
        value = _attribute(claim_at(claims, path))
        if name == "roles":
            items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            roles = tuple(v for v in items if isinstance(v, str))
        else:
            attributes[name] = value
    return attributes, roles


def safe_claims(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    kept = {
        k: v for k, v in claims.items() if k in _KEPT_REGISTERED or k not in _DROPPED_REGISTERED
    }
    return MappingProxyType(kept)


def principal_from_claims(
    method: str,
    claims: Mapping[str, Any],
    issuer: str,
    trust_domain: str,
    *,
    sender_constraint: SenderConstraint,
    mapping: Mapping[str, str] | None = None,
    service_account_prefix: str | None = None,
) -> Principal:
    """Map verified claims (JWT or introspection response) to a :class:`Principal`.

    ``mapping`` is the issuer's ``claims`` (see :func:`mapped_attributes`).
    """
    sub = claims.get("sub", claims.get("client_id"))
    if not isinstance(sub, str) or not sub:
        raise JOSEError("missing sub")
    client_id = claims.get("client_id", claims.get("azp"))
    if client_id is not None and not isinstance(client_id, str):
        raise JOSEError("malformed client_id")
    scopes = _strings(claims, "scope") if "scope" in claims else _strings(claims, "scp")
    jti, exp = claims.get("jti"), _number(claims, "exp", required=False)
    attributes, mapped_roles = mapped_attributes(claims, mapping or {})
    roles = tuple(dict.fromkeys(_strings(claims, "roles") + mapped_roles))
    kind = _subject_type(sub, client_id, claims, trust_domain, service_account_prefix)
    return Principal(
        method=method,
        subject=sub,
        subject_type=kind,
        issuer=issuer,
        scopes=scopes,
        client_id=client_id,
        roles=roles,
        actors=_actors(claims.get("act")),
        amr=_strings(claims, "amr"),
        sender_constraint=sender_constraint,
        claims=safe_claims(claims),
        expires_at=exp,
        token_id=jti if isinstance(jti, str) else None,
        attributes=MappingProxyType(attributes),
    )
