"""gateway.tokens.keys: PEM key ring, RFC 7638 kids, JWKS endpoint, rotation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.jose.jwk import jwk_thumbprint
from gateway.sdk.txn import parse_jwks
from gateway.tokens.keys import (
    JWKS_PATH,
    KeyRing,
    KeyRingError,
    SigningKey,
    load_private_key,
    make_jwks_handler,
    private_key_pem,
    write_private_key,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"

# --------------------------------------------------------------------------- kid = RFC 7638


def test_kid_is_the_thumbprint_of_the_published_jwk(es_key: tuple[Path, SigningKey]) -> None:
    _, key = es_key
    jwk = key.public_jwk
    assert key.kid == jwk_thumbprint({k: jwk[k] for k in ("crv", "kty", "x", "y")})
    assert load_private_key(es_key[0]).kid == key.kid  # stable across loads


# --------------------------------------------------------------------------- loading


def test_ring_publishes_every_key_and_signs_with_the_first(
    es_key: tuple[Path, SigningKey], ed_key: tuple[Path, SigningKey]
) -> None:
    ring = KeyRing([ed_key[0], es_key[0]])
    assert ring.active.kid == ed_key[1].kid
    assert ring.active.alg == "EdDSA"
    jwks = ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [ed_key[1].kid, es_key[1].kid]
    for jwk in jwks["keys"]:
        assert jwk["use"] == "sig"
        assert jwk["alg"] in ("ES256", "EdDSA")
        assert "d" not in jwk  # SECURITY: never publish private material
    assert {jwks["keys"][0]["kty"], jwks["keys"][1]["kty"]} == {"OKP", "EC"}
    assert set(parse_jwks(jwks)) == {ed_key[1].kid, es_key[1].kid}
    assert set(ring.verification_keys()) == {ed_key[1].kid, es_key[1].kid}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_ring_refuses_unusable_files(tmp_path: Path, es_key: tuple[Path, SigningKey]) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    cases = {
        "missing": tmp_path / "nope.pem",
        "garbage": _write(tmp_path / "garbage.pem", b"-----BEGIN PRIVATE KEY-----\nxx\n"),
        "rsa": _write(tmp_path / "rsa.pem", private_key_pem(rsa_key)),  # type: ignore[arg-type]
        "p384": _write(tmp_path / "p384.pem", private_key_pem(p384)),
        "public-only": _write(
            tmp_path / "pub.pem",
            es_key[1]
            .private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
    }
    for label, path in cases.items():
        with pytest.raises(KeyRingError):
            KeyRing([path])
        assert label  # every case raised


def test_ring_refuses_duplicates_empty_and_wrong_algorithm(
    tmp_path: Path, es_key: tuple[Path, SigningKey]
) -> None:
    copy = tmp_path / "copy.pem"
    copy.write_bytes(es_key[0].read_bytes())
    with pytest.raises(KeyRingError, match="twice"):
        KeyRing([es_key[0], copy])
    with pytest.raises(KeyRingError):
        KeyRing([])
    with pytest.raises(KeyRingError, match="EdDSA"):
        KeyRing([es_key[0]], algorithm="EdDSA")


def test_error_text_never_echoes_file_content(tmp_path: Path) -> None:
    secret = b"-----BEGIN PRIVATE KEY-----\nSUPERSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    path = _write(tmp_path / "bad.pem", secret)
    with pytest.raises(KeyRingError) as info:
        KeyRing([path])
    assert "SUPERSECRET" not in str(info.value)


def test_signing_key_repr_hides_key_material(es_key: tuple[Path, SigningKey]) -> None:
    text = repr(es_key[1])
    assert "kid=" in text
    assert "private" not in text.lower()


# --------------------------------------------------------------------------- generate


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_write_private_key_is_pkcs8_mode_0600(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "k.pem"
    key = write_private_key(path, alg)  # type: ignore[arg-type]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert load_private_key(path).kid == key.kid
    assert key.alg == alg
    with pytest.raises(FileExistsError):
        write_private_key(path, alg)
    replaced = write_private_key(path, alg, overwrite=True)
    assert replaced.kid != key.kid
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]  # no temp file left behind


# --------------------------------------------------------------------------- rotation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_reload_rotates_and_keeps_old_keys_published(tmp_path: Path) -> None:
    # The operator's layout: txn_tokens.keys: [active.pem, previous.pem].
    active, previous = tmp_path / "active.pem", tmp_path / "previous.pem"
    k1 = write_private_key(active, "ES256")
    k0 = write_private_key(previous, "ES256")
    ring = KeyRing([active, previous])
    assert ring.active.kid == k1.kid
    # Rotate: the active key moves to previous.pem, a new key becomes active.
    previous.write_bytes(active.read_bytes())
    k2 = write_private_key(active, "ES256", overwrite=True)
    assert ring.reload() is True
    assert ring.active.kid == k2.kid
    assert set(ring.verification_keys()) == {k2.kid, k1.kid}
    assert k0.kid not in ring.verification_keys()
    assert ring.version == 1
    assert ring.reload() is False  # nothing changed since


def test_maybe_reload_checks_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    first = write_private_key(path, "ES256")
    clock = Clock()
    ring = KeyRing([path], clock=clock)
    assert ring.maybe_reload() is False  # first check: unchanged
    second = write_private_key(path, "ES256", overwrite=True)
    _touch_later(path)
    clock.now += 0.5
    assert ring.maybe_reload() is False  # inside the 1 s window: not even a stat
    assert ring.active.kid == first.kid
    clock.now += 0.6
    assert ring.maybe_reload() is True
    assert ring.active.kid == second.kid


def test_maybe_reload_keeps_old_keys_when_a_file_is_half_written(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    good = write_private_key(path, "ES256")
    clock = Clock()
    ring = KeyRing([path], clock=clock)
    path.write_bytes(path.read_bytes()[:40])  # a writer caught mid-way
    _touch_later(path)
    clock.now += 2
    assert ring.maybe_reload() is False  # never raises
    assert ring.active.kid == good.kid
    with pytest.raises(KeyRingError):
        ring.reload()  # the explicit reload (SIGHUP) reports the problem
    assert ring.active.kid == good.kid
    fixed = write_private_key(path, "ES256", overwrite=True)
    _touch_later(path)
    clock.now += 2
    assert ring.maybe_reload() is True
    assert ring.active.kid == fixed.kid


# --------------------------------------------------------------------------- JWKS endpoint


async def _client(ring: KeyRing, max_age: int = 300) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    app.router.add_route("*", JWKS_PATH, make_jwks_handler(ring, max_age_s=max_age))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_jwks_endpoint_caching_headers_and_etag(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, "ES256")
    ring = KeyRing([path])
    client = await _client(ring, max_age=120)
    try:
        resp = await client.get(JWKS_PATH)
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=120"
        assert resp.content_type == "application/jwk-set+json"
        etag = resp.headers["ETag"]
        assert etag.startswith('"')
        assert etag.endswith('"')
        assert await resp.json(content_type=None) == json.loads(ring.jwks_body)
        again = await client.get(JWKS_PATH, headers={"If-None-Match": etag})
        assert again.status == 304
        assert again.headers["ETag"] == etag
        assert (await client.post(JWKS_PATH)).status == 405
        # After rotation the ETag changes and the old one no longer matches.
        write_private_key(path, "ES256", overwrite=True)
        ring.reload()
        fresh = await client.get(JWKS_PATH, headers={"If-None-Match": etag})
        assert fresh.status == 200
        assert fresh.headers["ETag"] != etag
    finally:
        await client.close()
