"""Transaction Token verification for internal Python services (SPECS.md §1.7).

A service behind agentgate receives exactly one ``Txn-Token`` header per request
and must check it before trusting any claim in it. This module is that check,
usable on its own (it imports nothing of the gateway but the JOSE layer, :mod:`gateway.jose`,
so the kit and the gateway's ``txn_token`` method run the same parser and signature check)::

    verifier = TxnTokenVerifier("https://gateway.internal/.well-known/jwks.json",
                                audience="example.org", issuer="https://gateway.example.org")
    app = web.Application(middlewares=[txn_token_middleware(verifier, audience="example.org")])
    # in a handler: claims = request[TXN_TOKEN]; raw = request[TXN_TOKEN_RAW]

What :meth:`TxnTokenVerifier.verify` checks, in order (draft-ietf-oauth-transaction-tokens-10
§12.2, RFC 8725 §3):

1. compact JWS syntax (three base64url segments, nothing else), a bounded size;
2. the JOSE header: ``alg`` is ES256 or EdDSA (or its RFC 9864 name ``Ed25519``; never
   ``none``, never HMAC), ``typ`` is
   ``txntoken+jwt`` (explicit typing, RFC 8725 §3.11), ``kid`` names one of the issuer's
   published keys, the key's own ``alg`` equals the header's, no ``crit``;
3. the signature, with that key only (``jku``/``x5u``/``jwk`` are never followed);
4. the claims: ``aud`` equals the trust domain, ``iss`` equals the issuer, ``exp`` not
   passed and ``iat``/``nbf`` not in the future (each with ``leeway_s``), a lifetime of at
   most 300 s, and ``txn``/``sub``/``scope``/``req_wl`` present as strings.

JSON with duplicate member names or non-finite numbers is refused (RFC 8725 §2.6).
``verify`` raises :class:`TxnTokenError` (``code`` says why) and never returns a falsy
"invalid"; :class:`KeysUnavailable` (a subclass) means the keys could not be obtained,
which a caller should answer with 503, not 401.

Keys come from one of: a JWKS URL (fetched by :class:`gateway.jose.jwks.JWKSCache`, the
gateway's own fetcher, with a bounded timeout and size, never following a redirect, cached
per ``Cache-Control: max-age``; an unknown ``kid`` triggers at most one refetch per
``min_refresh_s``; concurrent refreshes share one fetch; stale keys are
served for up to ``max_stale_s`` while the endpoint is down), a JWKS document (a mapping), or
a local key source such as :class:`gateway.tokens.keys.KeyRing` (anything with
``verification_keys()``), read on every call so a reload takes effect at once.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.jose import jws
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import check_signing_use
from gateway.jose.jwk import public_key_from_jwk as _jwk_public_key
from gateway.jose.jwks import JWKSCache, JWKSUnavailable
from gateway.jose.jws import b64url_encode as b64url_encode  # re-exported: public API

log = logging.getLogger("agentgate.txn")

TXN_TOKEN_TYP: Final = "txntoken+jwt"  # noqa: S105
TXN_TOKEN_HEADER: Final = "Txn-Token"  # noqa: S105
MAX_LIFETIME_S: Final = 300  # PROJECT hard maximum (SPECS.md §1.6)
MAX_TOKEN_CHARS: Final = 8192

Alg: TypeAlias = Literal["ES256", "EdDSA"]
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

# The verified claims and the raw token, for handlers behind txn_token_middleware.
TXN_TOKEN: Final = web.RequestKey("txn_token", dict[str, Any])
TXN_TOKEN_RAW: Final = web.RequestKey("txn_token_raw", str)

# Three non-empty base64url segments: the Txn-Token's own syntax rule, checked first so that
# a token without a signature (alg none) is "malformed", before any header is decoded.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_RESERVED_TYP = (TXN_TOKEN_TYP, "application/" + TXN_TOKEN_TYP)
# RFC 8725 §3.1: the algorithms a Txn-Token may use (RFC 9864's "Ed25519" names EdDSA over
# Ed25519); an HMAC or "none" can never be on this list (gateway.jose.jws.check_alg).
_ALGS: Final = frozenset({"ES256", "EdDSA", "Ed25519"})
_ALIASES: Mapping[str, frozenset[str]] = {
    "ES256": frozenset({"ES256"}),
    "EdDSA": frozenset({"EdDSA", "Ed25519"}),
}
# Checked protected headers by their encoded form (one issuer, one header): gateway.jose.jws.
_HEADERS: jws.HeaderCache = {}
# gateway.jose error codes -> this kit's stable TxnTokenError codes.
_CODES: Mapping[str, str] = {
    "alg_refused": "unsupported_alg",
    "bad_kid": "unknown_kid",
    "wrong_typ": "wrong_typ",
    "bad_signature": "bad_signature",
}


class TxnTokenError(Exception):
    """The token is not an acceptable Txn-Token. ``code`` is a stable reason; the
    message is safe to log (it never contains the token or a claim value)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownKeyID(TxnTokenError):
    def __init__(self) -> None:
        super().__init__("unknown_kid", "token signed with an unknown key")


class KeysUnavailable(TxnTokenError):
    """No verification keys could be obtained (JWKS unreachable, never fetched)."""

    def __init__(self, message: str = "verification keys unavailable") -> None:
        super().__init__("keys_unavailable", message)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key bound to exactly one algorithm (RFC 8725 §3.1)."""

    kid: str
    alg: Alg
    key: PublicKey
    # The same key in the JOSE layer's form, built once: every signature check goes through
    # gateway.jose.jws.VerificationKey.verify (one code path for the kit and the gateway).
    jose: jws.VerificationKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "jose", jws.VerificationKey(self.kid, _ALIASES[self.alg], self.key)
        )


class KeySource(Protocol):
    """Local verification keys that may change (e.g. a reloaded key ring)."""

    def verification_keys(self) -> Mapping[str, VerificationKey]: ...


# --------------------------------------------------------------------------- encoding


def b64url_decode(text: str) -> bytes:
    """Strict, canonical base64url without padding; raises ValueError (RFC 7515 §2)."""
    return jws.b64url_decode(text)


def strict_json_loads(data: bytes | str) -> Any:
    """``json.loads`` that refuses duplicate member names and NaN/Infinity (RFC 8725 §2.6)."""
    return jws.strict_json_value(data)


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    try:
        return jws.strict_json_object(jws.b64url_decode(segment))
    except JOSEError:
        raise TxnTokenError("malformed", f"{what} is not valid base64url JSON") from None


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims WITHOUT any verification (inspection and tooling only)."""
    if len(token) > MAX_TOKEN_CHARS * 4 or not _COMPACT.fullmatch(token):
        raise TxnTokenError("malformed", "not a compact JWS")
    head, body, _ = token.split(".")
    return _segment_json(head, "header"), _segment_json(body, "payload")


# --------------------------------------------------------------------------- JWK / JWKS


def public_key_from_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """One public signing JWK -> :class:`VerificationKey`; raises ValueError if unusable.

    The JWK rules are :mod:`gateway.jose.jwk`'s (no private members, points on the curve,
    full-length coordinates, ``use``/``key_ops``); on top, a Txn-Token key has a ``kid`` and
    is EC P-256 (ES256) or Ed25519 (EdDSA), with a JWK ``alg``, if any, naming that.
    """
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK without kid")
    check_signing_use(jwk)
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "EC" and crv == "P-256" and alg in (None, "ES256"):
        key, _ = _jwk_public_key(jwk)
        if isinstance(key, ec.EllipticCurvePublicKey):
            return VerificationKey(kid, "ES256", key)
    if kty == "OKP" and crv == "Ed25519" and alg in (None, "EdDSA", "Ed25519"):
        key, _ = _jwk_public_key(jwk)
        if isinstance(key, ed25519.Ed25519PublicKey):
            return VerificationKey(kid, "EdDSA", key)
    raise ValueError(f"unsupported JWK (kty={kty!r}, crv={crv!r}, alg={alg!r})")


def parse_jwks(document: Any) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS; keys we cannot use are skipped, and a ``kid``
    that appears twice is dropped altogether (ambiguous)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, VerificationKey] = {}
    duplicated: set[str] = set()
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        try:
            key = public_key_from_jwk(jwk)
        except ValueError as exc:
            log.debug("JWKS key skipped: %s", exc)
            continue
        if key.kid in keys:
            duplicated.add(key.kid)
        keys[key.kid] = key
    for kid in duplicated:
        log.warning("JWKS kid %r appears more than once; ignoring it", kid)
        del keys[kid]
    return keys


# --------------------------------------------------------------------------- the check


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TxnTokenError("missing_claim", f"claim {name} missing or not a number")
    try:
        number = float(value)  # OverflowError for an integer like 10**400
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise TxnTokenError("bad_claim", f"claim {name} out of range")
    return number


def _string(claims: Mapping[str, Any], name: str, *, empty: bool = False) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or (not value and not empty):
        raise TxnTokenError("missing_claim", f"claim {name} missing or not a string")
    return value


def _txn_error(exc: JOSEError) -> TxnTokenError:
    return TxnTokenError(_CODES.get(exc.code, "malformed"), str(exc))


def verify_compact(
    token: str,
    keys: Mapping[str, VerificationKey],
    *,
    audience: str,
    issuer: str | None,
    leeway_s: float,
    now: float,
    max_lifetime_s: float = MAX_LIFETIME_S,
) -> dict[str, Any]:
    """Verify ``token`` against ``keys`` at time ``now``; return its claims (pure).

    The JWS is parsed and its signature checked by :mod:`gateway.jose.jws` (RFC 8725 rules);
    this function adds what is particular to a Txn-Token: the algorithm list, ``typ``, the
    key selected by ``kid`` among the trust domain's keys, and the claims (§12.2).
    """
    if len(token) > MAX_TOKEN_CHARS or not _COMPACT.fullmatch(token):
        raise TxnTokenError("malformed", "not a compact JWS")
    try:
        parsed = jws.parse_compact(token, max_bytes=MAX_TOKEN_CHARS, header_cache=_HEADERS)
        # SECURITY: RFC 8725 §2.1 -- 'none' and HMAC are never accepted.
        jws.check_alg(parsed.alg, _ALGS)
    except JOSEError as exc:
        raise _txn_error(exc) from None
    typ = parsed.typ
    if typ is None or typ.lower() not in _RESERVED_TYP:
        raise TxnTokenError("wrong_typ", "typ is not txntoken+jwt")
    key = keys.get(parsed.kid) if parsed.kid is not None else None
    if key is None:
        raise UnknownKeyID()
    try:
        # SECURITY: a key is used only for the algorithm its JWK names (DESIGN.md §5).
        key.jose.verify(parsed.alg, parsed.signing_input, parsed.signature)
        claims = parsed.claims()
    except JOSEError as exc:
        raise _txn_error(exc) from None
    _check_claims(
        claims,
        audience=audience,
        issuer=issuer,
        leeway_s=leeway_s,
        now=now,
        max_lifetime_s=max_lifetime_s,
    )
    return claims


def _check_claims(
    claims: Mapping[str, Any],
    *,
    audience: str,
    issuer: str | None,
    leeway_s: float,
    now: float,
    max_lifetime_s: float,
) -> None:
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    if now >= exp + leeway_s:
        raise TxnTokenError("expired", "token expired")
    if iat > now + leeway_s:
        raise TxnTokenError("not_yet_valid", "token issued in the future")
    nbf = claims.get("nbf")
    if nbf is not None and (_number(claims, "nbf") > now + leeway_s):
        raise TxnTokenError("not_yet_valid", "token not yet valid")
    if exp - iat > max_lifetime_s:
        raise TxnTokenError("lifetime_too_long", "token lifetime exceeds the maximum")
    if claims.get("aud") != audience:
        # SECURITY: a Txn-Token is never accepted outside its trust domain (§9.2).
        raise TxnTokenError("wrong_audience", "token is for another trust domain")
    if issuer is not None and claims.get("iss") != issuer:
        raise TxnTokenError("wrong_issuer", "token from another issuer")
    for name in ("txn", "sub", "req_wl"):
        _string(claims, name)
    _string(claims, "scope", empty=True)
    for name in ("tctx", "rctx", "act"):
        if name in claims and not isinstance(claims[name], dict):
            raise TxnTokenError("bad_claim", f"claim {name} is not an object")


# --------------------------------------------------------------------------- remote JWKS


class RemoteJWKS:
    """A JWKS fetched over HTTP(S) and cached by :class:`gateway.jose.jwks.JWKSCache`
    (the gateway's own fetcher); see the module docstring for the rules."""

    def __init__(
        self,
        url: str,
        *,
        min_refresh_s: float = 30.0,
        default_max_age_s: float = 300.0,
        max_age_cap_s: float = 86400.0,
        max_stale_s: float = 3600.0,
        retry_s: float = 5.0,
        timeout_s: float = 2.0,
        max_bytes: int = 64 * 1024,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        # A kit waits for the refresh when the keys expire (it has no metrics to watch a
        # background refresh with); the gateway's issuers refresh in the background.
        self._cache: JWKSCache[dict[str, VerificationKey]] = JWKSCache(
            url,
            parse_jwks,
            timeout_s=timeout_s,
            min_refresh_s=min_refresh_s,
            default_ttl_s=default_max_age_s,
            max_ttl_s=max_age_cap_s,
            max_stale_s=max_stale_s,
            retry_s=retry_s,
            max_bytes=max_bytes,
            background_refresh=False,
            session=session,
            clock=clock,
            logger=log,
        )

    @property
    def keys(self) -> Mapping[str, VerificationKey]:
        return self._cache.keys or {}

    @property
    def fetches(self) -> int:
        """Successful and failed attempts, for tests and metrics."""
        return self._cache.fetches

    async def close(self) -> None:
        await self._cache.close()

    async def current(self) -> Mapping[str, VerificationKey]:
        """Keys to verify with now: refreshed first when the cache has expired.

        After a failed fetch the next attempt waits ``retry_s``, so an unreachable
        endpoint costs one timeout per interval, not one per request; meanwhile the
        last good keys are served for up to ``max_stale_s`` past their freshness.
        """
        try:
            return await self._cache.usable()
        except JWKSUnavailable as exc:
            if exc.never_fetched:
                raise KeysUnavailable("verification keys could not be fetched") from None
            raise KeysUnavailable("verification keys are stale") from None

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch because a token named an unknown kid, at most once per min_refresh_s."""
        try:
            return await self._cache.refetch() is not None
        except JWKSUnavailable:
            return False

    async def refresh(self) -> bool:
        """Fetch now, sharing one fetch among concurrent callers; True on success."""
        return await self._cache.refresh()


# --------------------------------------------------------------------------- verifier


class TxnTokenVerifier:
    """Verify Txn-Tokens of one trust domain; see the module docstring."""

    def __init__(
        self,
        source: str | RemoteJWKS | KeySource | Mapping[str, Any],
        *,
        audience: str,
        issuer: str | None,
        leeway_s: float = 5.0,
        max_lifetime_s: float = MAX_LIFETIME_S,
        min_refresh_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not audience:
            raise ValueError("audience (the trust domain) is required")
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self._clock = clock
        self._remote: RemoteJWKS | None = None
        self._local: KeySource | None = None
        self._static: Mapping[str, VerificationKey] = {}
        if isinstance(source, str):
            if not source.startswith(("https://", "http://")):
                raise ValueError("a JWKS URL must be http:// or https://")
            self._remote = RemoteJWKS(source, min_refresh_s=min_refresh_s, session=session)
        elif isinstance(source, RemoteJWKS):
            self._remote = source
        elif isinstance(source, Mapping):
            self._static = parse_jwks(source)
        else:
            self._local = source

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.close()

    async def __aenter__(self) -> TxnTokenVerifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def verify(self, token: str, *, leeway_s: float | None = None) -> dict[str, Any]:
        """The verified claims of ``token``; raises :class:`TxnTokenError`."""
        leeway = self.leeway_s if leeway_s is None else leeway_s
        keys = await self._keys()
        try:
            return self._check(token, keys, leeway)
        except UnknownKeyID:
            if self._remote is None or not await self._remote.refresh_for_unknown_kid():
                raise
        return self._check(token, self._remote.keys, leeway)

    def verify_local(self, token: str, *, leeway_s: float | None = None) -> dict[str, Any]:
        """Synchronous verify for local or static keys (no I/O can be needed)."""
        if self._remote is not None:
            raise TypeError("verify_local needs local keys; use await verify()")
        keys = self._local.verification_keys() if self._local is not None else self._static
        return self._check(token, keys, self.leeway_s if leeway_s is None else leeway_s)

    async def _keys(self) -> Mapping[str, VerificationKey]:
        if self._local is not None:
            return self._local.verification_keys()
        if self._remote is not None:
            return await self._remote.current()
        return self._static

    def _check(
        self, token: str, keys: Mapping[str, VerificationKey], leeway: float
    ) -> dict[str, Any]:
        return verify_compact(
            token,
            keys,
            audience=self.audience,
            issuer=self.issuer,
            leeway_s=leeway,
            now=self._clock(),
            max_lifetime_s=self.max_lifetime_s,
        )


# --------------------------------------------------------------------------- middleware


def _refusal(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = (
            f'Txn-Token error="{error}", error_description="{description}"'
        )
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )


def txn_token_middleware(
    verifier: TxnTokenVerifier,
    *,
    audience: str,
    header: str = TXN_TOKEN_HEADER,
    exempt_paths: Collection[str] = (),
) -> Middleware:
    """An aiohttp middleware: verified claims in ``request[TXN_TOKEN]``, else 401.

    Exactly one ``header`` is required (two: 400 ``invalid_request``); keys that cannot
    be fetched give 503. ``exempt_paths`` (exact paths, e.g. ``/healthz``) skip the check.
    """
    if verifier.audience != audience:
        raise ValueError("the verifier was built for another audience")
    exempt = frozenset(exempt_paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exempt:
            return await handler(request)
        values = request.headers.getall(header, [])
        if not values:
            return _refusal(401, "invalid_token", "transaction token required")
        if len(values) > 1:
            return _refusal(400, "invalid_request", "more than one transaction token")
        token = values[0].strip()
        try:
            claims = await verifier.verify(token)
        except KeysUnavailable:
            return _refusal(503, "temporarily_unavailable", "verification keys unavailable")
        except TxnTokenError as exc:
            log.info("txn-token refused: %s", exc.code)
            return _refusal(401, "invalid_token", "invalid transaction token")
        request[TXN_TOKEN] = claims
        request[TXN_TOKEN_RAW] = token
        return await handler(request)

    return middleware
