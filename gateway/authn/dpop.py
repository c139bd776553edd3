"""RFC 9449 DPoP proofs, checked by the gateway acting as resource server (SPECS.md §8).

Contract: :meth:`DPoPVerifier.verify_request` checks the ``DPoP`` header of a request that
presented ``Authorization: DPoP <access token>`` and returns the verified :class:`DPoPProof`,
or raises :class:`gateway.errors.Unauthorized` (401) with
``WWW-Authenticate: DPoP error="invalid_dpop_proof"`` -- or ``error="use_dpop_nonce"`` plus a
``DPoP-Nonce`` header when a server nonce is required and missing, stale or forged (§9) --
or :class:`gateway.errors.ServiceUnavailable` when the replay store is unusable.

The checks of RFC 9449 §4.3 and §7.1, in order:

1. exactly one ``DPoP`` header field (two -> 401 ``invalid_dpop_proof``: §4.3 check 1 is a
   proof check, so it is reported with the proof error, not as a 400);
2. a compact JWS (size cap, strict JSON, no duplicate members, no ``crit``: :mod:`.jose`);
3. ``typ`` is ``dpop+jwt``; ``alg`` is in ``DPoPSettings.algorithms`` (asymmetric only);
4. ``jwk`` is a public key (private members refused) whose type fits ``alg``, and the
   signature verifies with it;
5. ``jti``, ``htm``, ``htu``, ``iat`` present; ``htm`` equals the request method;
6. ``htu`` equals ``{listener scheme}://{Host header}{path}`` -- both sides normalised per
   RFC 3986 §6.2.2-6.2.3 (scheme and host lower-cased, default port dropped, unreserved
   escapes decoded, other escapes upper-cased, dot segments removed, repeated slashes merged),
   query and fragment ignored. The request side uses the gateway's *normalised* path
   (``RequestFacts.path``), i.e. the path the upstream receives; a client may sign the path it
   sent or its canonical form. ``X-Forwarded-*`` is never consulted;
7. ``iat`` within ``±iat_window_s`` of our clock;
8. with an access token: ``ath`` equals base64url(SHA-256(token)) and the RFC 7638 thumbprint
   of ``jwk`` equals the token's ``cnf.jkt`` (constant-time comparisons);
9. with ``require_nonce``: ``nonce`` is one we issued within ``nonce_ttl_s``. Nonces are
   stateless: base64url(8-byte time || HMAC-SHA-256(process key, time)[:16]); the key is per
   process, so a nonce from another replica is answered with a fresh one;
10. ``jti`` is used for the first time: key ``dpop:<jkt>:<jti>`` in the shared
    :class:`gateway.state.ReplayCache` for ``2 x iat_window_s`` (§11.1).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.authn.base import REALM, challenge
from gateway.context import Inbound, RequestFacts
from gateway.errors import Unauthorized
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import jwk_thumbprint, public_key_from_jwk
from gateway.jose.jws import (
    VerificationKey,
    b64url_decode,
    b64url_encode,
    check_alg,
    check_header,
    check_typ,
    numeric_date,
    strict_json_object,
)
from gateway.settings.authn import DPoPSettings
from gateway.state import ReplayCache

__all__ = ["DPoPProof", "DPoPVerifier", "jwk_thumbprint", "normalize_htu"]

MAX_PROOF_BYTES = 8192
MAX_JTI_CHARS = 256
_HEADER_CACHE_ENTRIES = 1024
_NONCE_FUTURE_SKEW_S = 5.0

_DEFAULT_PORTS: Mapping[str, int] = {"http": 80, "https": 443}
_URI_CHARS = re.compile(r"[\x21-\x7e]+")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_ENCODE_RAW = str.maketrans({c: f"%{ord(c):02X}" for c in '"<>`{}|^[]'})


@dataclass(frozen=True, slots=True)
class DPoPProof:
    jkt: str  # RFC 7638 thumbprint of the proof key
    jti: str
    iat: float


@dataclass(frozen=True, slots=True)
class _Header:
    key: VerificationKey
    jkt: str


class DPoPVerifier:
    """Verifies DPoP proofs; one per bearer method, built once."""

    def __init__(
        self,
        settings: DPoPSettings,
        replay: ReplayCache,
        *,
        clock: Callable[[], float] = time.time,
        nonce_key: bytes | None = None,
    ) -> None:
        self.settings = settings
        self._replay = replay
        self._clock = clock
        self._nonce_key = nonce_key if nonce_key is not None else os.urandom(32)
        self._algs = frozenset(settings.algorithms)
        self._headers: dict[str, _Header] = {}

    def challenge(self) -> str:
        """``DPoP algs="ES256 EdDSA"`` (RFC 9449 §7.1)."""
        return challenge("DPoP", algs=" ".join(self.settings.algorithms))

    # ------------------------------------------------------------------ entry points

    async def verify_request(
        self, request: Inbound, facts: RequestFacts, *, access_token: str, jkt: str
    ) -> DPoPProof:
        """Check the request's single DPoP proof against ``access_token`` bound to ``jkt``."""
        proofs = request.headers.getall("DPoP", ())
        if not proofs:
            raise self._invalid("missing DPoP proof")
        if len(proofs) > 1:
            raise self._invalid("more than one DPoP header")
        host = facts.host
        if not _URI_CHARS.fullmatch(host) or any(c in host for c in "/?#@\\"):
            # SECURITY: a Host that smuggles a path would shift the htu/path boundary.
            raise self._invalid("request host is not a valid authority")
        uri = f"{facts.scheme}://{host}{facts.path}"
        return await self.verify_proof(
            proofs[0].strip(), htm=facts.method, htu=uri, access_token=access_token, jkt=jkt
        )

    async def verify_proof(
        self,
        proof: str,
        *,
        htm: str,
        htu: str,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> DPoPProof:
        """Verify ``proof`` for a request ``htm htu``; see the module docstring for the checks."""
        try:
            header, claims = self._verified(proof)
            result = self._check_claims(claims, header, htm=htm, htu=htu)
            self._check_binding(claims, header, access_token=access_token, jkt=jkt)
        except JOSEError as exc:
            raise self._invalid(str(exc)) from None
        if self.settings.require_nonce:
            self._check_nonce(claims.get("nonce"))
        # SECURITY: RFC 9449 §11.1 -- the replay check runs last, once the proof is known good,
        # and is atomic: of two concurrent uses of one proof exactly one passes.
        if not await self._replay.first_use(
            f"dpop:{result.jkt}:{result.jti}", 2 * self.settings.iat_window_s
        ):
            raise self._invalid("DPoP proof replayed")
        return result

    # ------------------------------------------------------------------ checks

    def _verified(self, proof: str) -> tuple[_Header, dict[str, Any]]:
        if len(proof) > MAX_PROOF_BYTES or not proof.isascii():
            raise JOSEError("malformed DPoP proof")
        parts = proof.split(".")
        if len(parts) != 3:
            raise JOSEError("DPoP proof is not a compact JWS")
        header = self._header(parts[0])
        signing_input = proof[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
        header.key.verify(next(iter(header.key.algs)), signing_input, b64url_decode(parts[2]))
        return header, strict_json_object(b64url_decode(parts[1]))

    def _header(self, segment: str) -> _Header:
        """Parse and check the protected header; cached, as one client repeats it verbatim."""
        cached = self._headers.get(segment)
        if cached is not None:
            return cached
        header = strict_json_object(b64url_decode(segment))
        alg, _, typ = check_header(header)
        check_typ(typ, "dpop+jwt")
        check_alg(alg, self._algs)
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise JOSEError("missing jwk header parameter")
        # SECURITY: RFC 9449 §4.3 check 7 -- a proof key with private members is refused.
        key, possible = public_key_from_jwk(jwk)
        if alg not in possible:
            raise JOSEError("alg does not fit the jwk")
        parsed = _Header(VerificationKey(None, frozenset({alg}), key), jwk_thumbprint(jwk))
        if len(self._headers) >= _HEADER_CACHE_ENTRIES:
            self._headers.clear()
        self._headers[segment] = parsed
        return parsed

    def _check_claims(
        self, claims: Mapping[str, Any], header: _Header, *, htm: str, htu: str
    ) -> DPoPProof:
        jti, method, uri, iat = (claims.get(n) for n in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise JOSEError("missing or malformed jti")
        if not isinstance(method, str) or not isinstance(uri, str):
            raise JOSEError("missing htm or htu")
        issued = numeric_date(iat, "iat")
        if method != htm:
            raise JOSEError("htm does not match the request method")
        if normalize_htu(uri) != normalize_htu(htu):
            raise JOSEError("htu does not match the request URI")
        if abs(self._clock() - issued) > self.settings.iat_window_s:
            raise JOSEError("iat outside the acceptance window")
        return DPoPProof(jkt=header.jkt, jti=jti, iat=issued)

    def _check_binding(
        self,
        claims: Mapping[str, Any],
        header: _Header,
        *,
        access_token: str | None,
        jkt: str | None,
    ) -> None:
        # Both values are base64url (ASCII); anything else -- a lone surrogate such as
        # "\ud800" from the JSON, which has no UTF-8 encoding -- simply does not match.
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not ath.isascii() or not access_token.isascii():
                raise JOSEError("ath does not match the access token")
            expected = b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())
            if not hmac.compare_digest(ath.encode("ascii"), expected.encode("ascii")):
                raise JOSEError("ath does not match the access token")
        # SECURITY: RFC 9449 §7.1 -- the proof key must be the key the token is bound to.
        if jkt is not None and (
            not jkt.isascii()
            or not hmac.compare_digest(header.jkt.encode("ascii"), jkt.encode("ascii"))
        ):
            raise JOSEError("proof key does not match the token binding")

    # ------------------------------------------------------------------ nonces (§9)

    def new_nonce(self) -> str:
        stamp = int(self._clock()).to_bytes(8, "big")
        return b64url_encode(stamp + self._mac(stamp))

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._nonce_key, b"dpop-nonce:" + stamp, hashlib.sha256).digest()[:16]

    def _check_nonce(self, nonce: Any) -> None:
        try:
            raw = b64url_decode(nonce) if isinstance(nonce, str) else b""
        except JOSEError:
            raw = b""
        if len(raw) == 24 and hmac.compare_digest(raw[8:], self._mac(raw[:8])):
            age = self._clock() - int.from_bytes(raw[:8], "big")
            if -_NONCE_FUTURE_SKEW_S <= age <= self.settings.nonce_ttl_s:
                return
        raise Unauthorized(
            "DPoP nonce missing, forged or expired",
            reason="authn_invalid",
            headers={
                "WWW-Authenticate": challenge(
                    "DPoP",
                    realm=REALM,
                    error="use_dpop_nonce",
                    error_description="Resource server requires nonce in DPoP proof",
                ),
                "DPoP-Nonce": self.new_nonce(),
            },
        )

    def _invalid(self, description: str) -> Unauthorized:
        header = challenge(
            "DPoP",
            realm=REALM,
            error="invalid_dpop_proof",
            error_description=description,
            algs=" ".join(self.settings.algorithms),
        )
        return Unauthorized(
            description, reason="authn_invalid", headers={"WWW-Authenticate": header}
        )


# --------------------------------------------------------------------------- htu


def normalize_htu(uri: str) -> str:
    """``scheme://host[:port]/path`` normalised per RFC 3986 §6.2.2-6.2.3; query dropped."""
    if not _URI_CHARS.fullmatch(uri):
        raise JOSEError("malformed htu")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise JOSEError("malformed htu") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        raise JOSEError("malformed htu")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{canonical_path(parts.path or '/')}"


def canonical_path(path: str) -> str:
    """Encode what ``normalize_path`` encodes, decode unreserved escapes, upper-case the
    others, resolve dot segments, merge slashes."""
    # The characters gateway.upstream.paths percent-encodes (RFC 3986 §3.3 forbids them raw):
    # a client that signs the raw path must get the htu of the path the gateway forwards.
    path = path.translate(_ENCODE_RAW)
    if "%" in path:
        pieces = path.split("%")
        out = [pieces[0]]
        for piece in pieces[1:]:
            if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
                raise JOSEError("malformed percent-escape in htu")
            char = chr(int(piece[:2], 16))
            out.append(char if char in _UNRESERVED else f"%{piece[:2].upper()}")
            out.append(piece[2:])
        path = "".join(out)
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing
