"""Transaction Token verification for internal Python services (SPECS.md §1.7).

A service behind agentgate receives exactly one ``Txn-Token`` header per request
and must check it before trusting any claim in it. This module is that check,
usable on its own (it imports nothing else from the gateway)::

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

Keys come from one of: a JWKS URL (fetched with a bounded timeout and size, never
following a redirect, cached per ``Cache-Control: max-age``; an unknown ``kid`` triggers at
most one refetch per ``min_refresh_s``; concurrent refreshes share one fetch; stale keys are
served for up to ``max_stale_s`` while the endpoint is down), a JWKS document (a mapping), or
a local key source such as :class:`gateway.tokens.keys.KeyRing` (anything with
``verification_keys()``), read on every call so a reload takes effect at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeAlias

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

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

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_RESERVED_TYP = (TXN_TOKEN_TYP, "application/" + TXN_TOKEN_TYP)


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


class KeySource(Protocol):
    """Local verification keys that may change (e.g. a reloaded key ring)."""

    def verification_keys(self) -> Mapping[str, VerificationKey]: ...


# --------------------------------------------------------------------------- encoding


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; raises ValueError."""
    if "=" in text:
        raise ValueError("padded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64url") from exc
    if b64url_encode(raw) != text:
        # SECURITY: non-zero unused bits in the last character ('AB' decodes like 'AA') would
        # give one signed token several spellings (RFC 4648 §3.5: canonical encoding only).
        raise ValueError("non-canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def strict_json_loads(data: bytes | str) -> Any:
    """``json.loads`` that refuses duplicate member names and NaN/Infinity (RFC 8725 §2.6)."""
    return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    try:
        value = strict_json_loads(b64url_decode(segment))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TxnTokenError("malformed", f"{what} is not valid base64url JSON") from None
    if not isinstance(value, dict):
        raise TxnTokenError("malformed", f"{what} is not a JSON object")
    return value


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims WITHOUT any verification (inspection and tooling only)."""
    if len(token) > MAX_TOKEN_CHARS * 4 or not _COMPACT.fullmatch(token):
        raise TxnTokenError("malformed", "not a compact JWS")
    head, body, _ = token.split(".")
    return _segment_json(head, "header"), _segment_json(body, "payload")


# --------------------------------------------------------------------------- JWK / JWKS


def public_key_from_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """One public signing JWK -> :class:`VerificationKey`; raises ValueError if unusable."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK without kid")
    if "d" in jwk:
        raise ValueError("JWK holds private key material")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("JWK is not a signing key")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("JWK key_ops does not allow verify")
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "EC" and crv == "P-256" and alg in (None, "ES256"):
        x, y = _coord(jwk, "x", 32), _coord(jwk, "y", 32)
        # from_encoded_point checks that the point is on the curve (RFC 8725 §3.4).
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        return VerificationKey(kid, "ES256", point)
    if kty == "OKP" and crv == "Ed25519" and alg in (None, "EdDSA", "Ed25519"):
        return VerificationKey(
            kid, "EdDSA", ed25519.Ed25519PublicKey.from_public_bytes(_coord(jwk, "x", 32))
        )
    raise ValueError(f"unsupported JWK (kty={kty!r}, crv={crv!r}, alg={alg!r})")


def _coord(jwk: Mapping[str, Any], name: str, size: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK member {name} missing")
    raw = b64url_decode(value)
    if len(raw) != size:
        raise ValueError(f"JWK member {name} has the wrong length")
    return raw


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


def _check_signature(key: VerificationKey, signing_input: bytes, signature: bytes) -> None:
    try:
        if key.alg == "ES256" and isinstance(key.key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                raise InvalidSignature
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
        elif key.alg == "EdDSA" and isinstance(key.key, ed25519.Ed25519PublicKey):
            key.key.verify(signature, signing_input)
        else:
            raise TxnTokenError("unsupported_alg", "key type does not match its algorithm")
    except InvalidSignature:
        raise TxnTokenError("bad_signature", "signature does not verify") from None


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
    """Verify ``token`` against ``keys`` at time ``now``; return its claims (pure)."""
    if len(token) > MAX_TOKEN_CHARS or not _COMPACT.fullmatch(token):
        raise TxnTokenError("malformed", "not a compact JWS")
    head_b64, body_b64, sig_b64 = token.split(".")
    header = _segment_json(head_b64, "header")
    alg = header.get("alg")
    if alg == "Ed25519":
        alg = "EdDSA"  # RFC 9864's fully-specified name for EdDSA over Ed25519
    if alg not in ("ES256", "EdDSA"):
        # SECURITY: RFC 8725 §2.1 — 'none' and HMAC are never accepted.
        raise TxnTokenError("unsupported_alg", "algorithm not allowed")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _RESERVED_TYP:
        raise TxnTokenError("wrong_typ", "typ is not txntoken+jwt")
    if "crit" in header:
        raise TxnTokenError("malformed", "critical header parameters are not supported")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise UnknownKeyID()
    if key.alg != alg:
        # SECURITY: a key is used only for the algorithm its JWK names (DESIGN.md §5).
        raise TxnTokenError("unsupported_alg", "algorithm does not match the key")
    try:
        signature = b64url_decode(sig_b64)
    except ValueError:
        raise TxnTokenError("malformed", "signature is not base64url") from None
    _check_signature(key, f"{head_b64}.{body_b64}".encode("ascii"), signature)
    claims = _segment_json(body_b64, "payload")
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


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for d in directives:
        name, _, value = d.partition("=")
        if name.strip() == "max-age" and value.strip().isdigit():
            return float(value.strip())
    return None


class RemoteJWKS:
    """A JWKS fetched over HTTP(S) and cached; see the module docstring for the rules."""

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
        self._min_refresh_s = min_refresh_s
        self._default_max_age_s = default_max_age_s
        self._max_age_cap_s = max_age_cap_s
        self._max_stale_s = max_stale_s
        self._retry_s = retry_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self.keys: Mapping[str, VerificationKey] = {}
        self._fetched_at: float | None = None  # last success
        self._fresh_until = 0.0
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task[bool] | None = None
        self.fetches = 0  # successful and failed attempts, for tests and metrics

    async def close(self) -> None:
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def current(self) -> Mapping[str, VerificationKey]:
        """Keys to verify with now: refreshed first when the cache has expired.

        After a failed fetch the next attempt waits ``retry_s``, so an unreachable
        endpoint costs one timeout per interval, not one per request; meanwhile the
        last good keys are served for up to ``max_stale_s`` past their freshness.
        """
        now = self._clock()
        if now >= self._fresh_until and now - self._last_attempt >= self._retry_s:
            await self.refresh()
            now = self._clock()
        if self._fetched_at is None:
            raise KeysUnavailable("verification keys could not be fetched")
        if now >= self._fresh_until + self._max_stale_s:
            raise KeysUnavailable("verification keys are stale")
        return self.keys

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch because a token named an unknown kid, at most once per min_refresh_s."""
        if self._clock() - self._last_attempt < self._min_refresh_s:
            return False
        return await self.refresh()

    async def refresh(self) -> bool:
        """Fetch now, sharing one fetch among concurrent callers; True on success."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._clear)
        # shield: a cancelled verifier must not cancel the fetch the others wait for.
        return await asyncio.shield(self._inflight)

    def _clear(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            document, max_age = await self._get()
            keys = parse_jwks(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as exc:
            log.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
            return False
        now = self._clock()
        self.keys = keys
        self._fetched_at = now
        if max_age is None:
            max_age = self._default_max_age_s
        self._fresh_until = now + min(max(max_age, self._min_refresh_s), self._max_age_cap_s)
        return True

    async def _get(self) -> tuple[Any, float | None]:
        if self._session is None:
            # As gateway.net.outbound builds them (not imported: this kit stands alone): no
            # proxy or netrc from the environment, no cookies.
            self._session = aiohttp.ClientSession(
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        async with self._session.get(
            self.url,
            timeout=self._timeout,
            # SECURITY: a redirect is a failed fetch (503 in the middleware); the key
            # location is the service's configuration, never the server's choice.
            allow_redirects=False,
            headers={"Accept": "application/jwk-set+json, application/json"},
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"JWKS endpoint answered {resp.status}")
            body = await resp.content.read(self._max_bytes + 1)
            if len(body) > self._max_bytes:
                raise ValueError("JWKS document too large")
            return strict_json_loads(body), _max_age(resp.headers.get("Cache-Control"))


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
