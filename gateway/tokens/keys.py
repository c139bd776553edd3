"""Txn-Token signing keys: a key ring read from PEM files, its JWKS, and rotation.

Contract:

* :class:`KeyRing` loads PKCS#8 (or traditional) PEM private keys: EC P-256 keys sign
  ES256, Ed25519 keys sign EdDSA. The first file holds the **active** signing key; every
  key is **published** in the JWKS, so tokens signed by a key that is being retired keep
  verifying until the operator removes its file (keep it for at least ``ttl_s``).
* ``kid`` is the RFC 7638 JWK thumbprint (SHA-256, base64url): stable across restarts and
  hosts, and derived from the public key alone.
* :meth:`KeyRing.reload` re-reads every file and swaps in a new immutable snapshot, or
  raises :class:`KeyRingError` and keeps the old one (a half-written file never takes
  effect). :meth:`KeyRing.maybe_reload` does the same only when some file's
  (mtime, size, inode) changed, checks at most once per second, and never raises: call it
  from a periodic task or per request. The owner calls ``reload()`` on SIGHUP.
* :func:`make_jwks_handler` serves ``GET /.well-known/jwks.json`` with
  ``Cache-Control: public, max-age=N`` and a strong ETag (``If-None-Match`` -> 304).
* :func:`write_private_key` writes a fresh PKCS#8 PEM with mode 0600
  (``agentgate keys generate``).

Reading a few small PEM files on the event loop takes well under a millisecond; that is
done only at start, on SIGHUP and after a file actually changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.jose.errors import JOSEError
from gateway.jose.jwk import jwk_thumbprint, public_jwk
from gateway.jose.jws import b64url_encode
from gateway.private_files import write_atomic
from gateway.sdk.txn import Alg, VerificationKey

log = logging.getLogger("agentgate.tokens.keys")

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
JWKS_PATH = "/.well-known/jwks.json"


class KeyRingError(ValueError):
    """A key file is missing, unreadable, of an unsupported type, or duplicated."""


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    kid: str
    alg: Alg
    private_key: PrivateKey = field(compare=False)
    public_jwk: Mapping[str, str]
    path: Path | None

    def __repr__(self) -> str:
        # SECURITY: never render key material.
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, path={self.path!r})"

    def verification_key(self) -> VerificationKey:
        return VerificationKey(self.kid, self.alg, self.private_key.public_key())


def _public_members(key: PrivateKey) -> tuple[Alg, dict[str, str]]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyRingError(f"EC key on {key.curve.name}: only P-256 (ES256) is supported")
        return "ES256", _jwk(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA", _jwk(key)
    raise KeyRingError(f"unsupported key type {type(key).__name__}: use EC P-256 or Ed25519")


def _jwk(key: PrivateKey) -> dict[str, str]:
    """The RFC 7638 required members of the public half (gateway.jose.jwk does the JWK)."""
    try:
        return public_jwk(key.public_key())
    except JOSEError as exc:
        raise KeyRingError(str(exc)) from None


def signing_key(private_key: PrivateKey, path: Path | None = None) -> SigningKey:
    alg, members = _public_members(private_key)
    kid = jwk_thumbprint(members)
    jwk = {**members, "kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(kid, alg, private_key, MappingProxyType(jwk), path)


def load_private_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnicodeError):
        # The library's message could echo file content; keep ours terse.
        raise KeyRingError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyRingError(f"{path}: unsupported key type: use EC P-256 or Ed25519")
    try:
        return signing_key(key, path)
    except KeyRingError as exc:
        raise KeyRingError(f"{path}: {exc}") from None


def generate_private_key(alg: Alg) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(path: Path, alg: Alg, *, overwrite: bool = False) -> SigningKey:
    """Generate a key and write it as PKCS#8 PEM, mode 0600, atomically."""
    key = generate_private_key(alg)
    data = private_key_pem(key)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --force to replace it)")
    # SECURITY: created 0600 from the start whatever the umask (no window where the key is
    # readable by others); a new parent folder is 0700.
    write_atomic(path, data)
    return signing_key(key, path)


_Signature: TypeAlias = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    keys: tuple[SigningKey, ...]
    by_kid: Mapping[str, VerificationKey]
    jwks_body: bytes
    etag: str
    signature: _Signature


class KeyRing:
    """Signing keys from PEM files; the first is active, all are published."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        algorithm: Alg | None = None,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not paths:
            raise KeyRingError("at least one signing key file is required")
        self.paths = tuple(Path(p) for p in paths)
        self._algorithm = algorithm
        self._interval = check_interval_s
        self._clock = clock
        self._next_check = 0.0
        self._failed_signature: _Signature | None = None
        self.version = 0
        self._snap = self._load()

    # ------------------------------------------------------------------ reading

    @property
    def active(self) -> SigningKey:
        return self._snap.keys[0]

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._snap.keys

    def verification_keys(self) -> Mapping[str, VerificationKey]:
        """kid -> public key, for :class:`gateway.sdk.txn.TxnTokenVerifier` (a KeySource)."""
        return self._snap.by_kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(k.public_jwk) for k in self._snap.keys]}

    @property
    def jwks_body(self) -> bytes:
        return self._snap.jwks_body

    @property
    def etag(self) -> str:
        return self._snap.etag

    # ------------------------------------------------------------------ rotation

    def reload(self) -> bool:
        """Re-read every file; True if the key set changed. Raises KeyRingError (the old
        keys stay in force)."""
        if not self.paths:
            return False
        snap = self._load()
        self._failed_signature = None
        if [k.kid for k in snap.keys] == [k.kid for k in self._snap.keys]:
            self._snap = snap  # same keys; remember the new file signature
            return False
        old = self.active.kid
        self._snap = snap
        self.version += 1
        log.info(
            "txn-token keys reloaded: active kid %s (was %s), %d published",
            snap.keys[0].kid,
            old,
            len(snap.keys),
        )
        return True

    def maybe_reload(self) -> bool:
        """Reload if a key file changed (checked at most once per interval); never raises."""
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval
        try:
            current = _file_signature(self.paths)
        except OSError:
            current = None
        if current == self._snap.signature or (
            current is not None and current == self._failed_signature
        ):
            return False
        try:
            return self.reload()
        except KeyRingError as exc:
            # A file may be half-written; keep signing with the old keys and log once
            # per distinct on-disk state.
            self._failed_signature = current
            log.warning("txn-token key reload failed, keeping the current keys: %s", exc)
            return False

    def _load(self) -> _Snapshot:
        try:
            signature = _file_signature(self.paths)
        except OSError as exc:
            raise KeyRingError(f"cannot stat key file: {exc.strerror}") from None
        keys = tuple(load_private_key(p) for p in self.paths)
        for path in self.paths:
            _warn_if_readable(path)
        if self._algorithm is not None and keys[0].alg != self._algorithm:
            raise KeyRingError(
                f"{self.paths[0]}: the active key is {keys[0].alg}, "
                f"but txn_tokens.algorithm is {self._algorithm}"
            )
        return _snapshot(keys, signature)


def _snapshot(keys: tuple[SigningKey, ...], signature: _Signature) -> _Snapshot:
    if not keys:
        raise KeyRingError("at least one signing key is required")
    seen: set[str] = set()
    for key in keys:
        if key.kid in seen:
            raise KeyRingError(f"the same key appears twice (kid {key.kid})")
        seen.add(key.kid)
    jwks = {"keys": [dict(k.public_jwk) for k in keys]}
    body = json.dumps(jwks, separators=(",", ":"), sort_keys=True).encode("utf-8")
    etag = '"' + b64url_encode(hashlib.sha256(body).digest()[:18]) + '"'
    by_kid = MappingProxyType({k.kid: k.verification_key() for k in keys})
    return _Snapshot(keys, by_kid, body, etag, signature)


def _file_signature(paths: Sequence[Path]) -> _Signature:
    out = []
    for path in paths:
        st = path.stat()
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("txn-token key %s is readable by group/others; chmod 600 it", path)


# --------------------------------------------------------------------------- JWKS endpoint


def make_jwks_handler(
    keys: KeyRing, *, max_age_s: int
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The ``GET``/``HEAD /.well-known/jwks.json`` handler (DESIGN.md §5)."""
    cache_control = f"public, max-age={int(max_age_s)}"

    async def jwks_handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        etag = keys.etag
        headers = {"Cache-Control": cache_control, "ETag": etag}
        if _etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=keys.jwks_body, content_type="application/jwk-set+json", headers=headers
        )

    return jwks_handler


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates
