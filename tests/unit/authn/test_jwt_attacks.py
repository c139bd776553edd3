"""Attack suite: every RFC 8725 §2 threat class of SPECS.md §9.1 against the bearer method.

Each case is a token an attacker can actually produce. All of them must be refused with
401 ``invalid_token`` (or 400 for the transport attacks); none may reach a key the attacker
controls, and no attacker URL may ever be connected to.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.authn.jwt_bearer import JWTBearerAuthenticator
from gateway.errors import BadRequest, Unauthorized
from gateway.jose.jws import b64url_decode
from gateway.settings import BearerMethod
from gateway.state.memory import MemoryReplayCache

from . import (
    AUD,
    NOW,
    Clock,
    CountingServer,
    b64,
    claims,
    dpop_proof,
    facts,
    hs256,
    keys,
    make_issuer,
    mint,
    request,
    sign_raw,
    vector,
    write_jwks,
)

K = keys()
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture
async def attacker() -> AsyncIterator[CountingServer]:
    """The attacker's key server: serves the attacker's JWKS and certificate to anyone."""

    def handler(req: web.Request) -> web.Response:
        return web.json_response({"keys": [K["attacker"].jwk()]})

    server = await CountingServer(handler).start()
    yield server
    await server.close()


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[JWTBearerAuthenticator]:
    issuer = make_issuer(
        jwks_file=str(write_jwks(tmp_path / "jwks.json", K["es"], K["rs"])),
        algorithms=["ES256", "ES384", "RS256"],
    )
    authenticator = JWTBearerAuthenticator(
        "bearer",
        BearerMethod(issuers=("corp",), max_token_bytes=65536),
        [issuer],
        MemoryReplayCache(),
        trust_domain="example.org",
        clock=Clock(),
    )
    await authenticator.start()
    yield authenticator
    await authenticator.close()


async def refused(auth: JWTBearerAuthenticator, token: str) -> str:
    """Present ``token``; it must be refused with 401 invalid_token. Returns the description."""
    req = request({"Authorization": f"Bearer {token}"})
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(req, facts(req))
    header = info.value.headers["WWW-Authenticate"]
    assert header.startswith('Bearer realm="agentgate", error="invalid_token"'), header
    assert token not in header
    return header.split('error_description="', 1)[1].rstrip('"')


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


def attacker_cert_der() -> bytes:
    key = K["attacker"].private
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.org")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


# --------------------------------------------------------------------------- §2.1 alg none


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize(
    "signature", [pytest.param("", id="empty-sig"), pytest.param(b64(b"x" * 64), id="junk-sig")]
)
async def test_alg_none_in_every_casing(
    auth: JWTBearerAuthenticator, alg: str, signature: str
) -> None:
    token = unsigned({"alg": alg, "typ": "at+jwt", "kid": "es-1"}, claims(), signature)
    assert await refused(auth, token) == "alg none refused"


# --------------------------------------------------------------------------- §2.1 key confusion


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(lambda: K["es"].public_pem(), id="es256-public-pem"),
        pytest.param(lambda: K["rs"].public_pem(), id="rs256-public-pem"),
        pytest.param(lambda: json.dumps(K["es"].jwk()).encode(), id="es256-jwk-json"),
        pytest.param(lambda: json.dumps(K["rs"].jwk()).encode(), id="rs256-jwk-json"),
        pytest.param(lambda: b64url_decode(K["rs"].jwk()["n"]), id="rsa-modulus-bytes"),
    ],
)
@pytest.mark.parametrize("kid", ["es-1", "rs-1"])
async def test_hs256_signed_with_public_key(
    auth: JWTBearerAuthenticator, secret: Any, kid: str
) -> None:
    token = hs256({"alg": "HS256", "typ": "at+jwt", "kid": kid}, claims(), secret())
    assert await refused(auth, token) == "algorithm not allowed"


# ---------------------------------------------------------------------- §2.9/§3.10 keys in headers


@pytest.mark.parametrize(
    "kid",
    [
        pytest.param(None, id="no-kid"),
        pytest.param("es-1", id="issuer-kid"),
        pytest.param("att-1", id="attacker-kid"),
    ],
)
async def test_embedded_jwk_is_ignored(auth: JWTBearerAuthenticator, kid: str | None) -> None:
    token = mint(key=K["attacker"], kid=kid, headers={"jwk": K["attacker"].jwk()})
    assert await refused(auth, token) in {
        "unknown signing key",
        "signature verification failed",
    }


@pytest.mark.parametrize("param", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["att-1", "es-1"])
async def test_remote_key_urls_are_never_fetched(
    auth: JWTBearerAuthenticator, attacker: CountingServer, param: str, kid: str
) -> None:
    token = mint(key=K["attacker"], kid=kid, headers={param: attacker.url("/jwks")})
    assert await refused(auth, token) in {"unknown signing key", "signature verification failed"}
    assert attacker.connections == 0
    assert attacker.requests == []


async def test_jku_ignored_even_when_issuer_refetches(
    tmp_path: Path, attacker: CountingServer
) -> None:
    """An unknown kid makes us refetch the *configured* JWKS -- never the token's jku."""
    hits: list[str] = []

    def legit(req: web.Request) -> web.Response:
        hits.append(req.path)
        return web.json_response({"keys": [K["es"].jwk()]})

    idp = await CountingServer(legit).start()
    issuer = make_issuer(jwks_uri=idp.url("/jwks"), jwks_cache={"min_refresh_s": 0})
    auth = JWTBearerAuthenticator(
        "bearer", BearerMethod(issuers=("corp",)), [issuer], MemoryReplayCache(),
        trust_domain="example.org", clock=Clock(),
    )  # fmt: skip
    await auth.start()
    try:
        token = mint(key=K["attacker"], kid="att-1", headers={"jku": attacker.url("/jwks")})
        assert await refused(auth, token) == "unknown signing key"
        assert hits == ["/jwks", "/jwks"]  # start + one refetch for the unknown kid
        assert attacker.connections == 0
    finally:
        await auth.close()
        await idp.close()


async def test_x5c_chain_is_ignored(auth: JWTBearerAuthenticator) -> None:
    x5c = [b64(attacker_cert_der())]
    for kid in (None, "es-1"):
        token = mint(key=K["attacker"], kid=kid, headers={"x5c": x5c})
        assert await refused(auth, token) in {
            "unknown signing key",
            "signature verification failed",
        }


# --------------------------------------------------------------------------- §2.9 kid injection


@pytest.mark.parametrize(
    ("kid", "description"),
    [
        pytest.param("../../etc/passwd", "unknown signing key", id="path-traversal"),
        pytest.param("/dev/zero", "unknown signing key", id="absolute-path"),
        pytest.param("' OR '1'='1", "unknown signing key", id="sql-injection"),
        pytest.param("es-1' --", "unknown signing key", id="sql-comment"),
        pytest.param("es-1\x00", "malformed kid", id="nul-byte"),
        pytest.param("es-1\r\nX-Injected: 1", "malformed kid", id="crlf"),
        pytest.param("k" * 10240, "malformed kid", id="10KB-kid"),
        pytest.param("k" * 257, "malformed kid", id="257-char-kid"),
        pytest.param("", "malformed kid", id="empty-kid"),
        pytest.param("ключ", "malformed kid", id="non-ascii-kid"),
        pytest.param(123, "malformed kid", id="number-kid"),
        pytest.param(["es-1"], "malformed kid", id="array-kid"),
        pytest.param({"$ne": None}, "malformed kid", id="object-kid"),
    ],
)
async def test_kid_injection(auth: JWTBearerAuthenticator, kid: Any, description: str) -> None:
    header = json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": kid})
    token = sign_raw(header, json.dumps(claims()))
    assert await refused(auth, token) == description


# --------------------------------------------------------------------------- ECDSA signatures


def _with_signature(token: str, signature: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + b64(signature)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda sig: bytes(64), id="r=s=0"),
        pytest.param(lambda sig: bytes(32) + sig[32:], id="r=0"),
        pytest.param(lambda sig: sig[:32] + bytes(32), id="s=0"),
        pytest.param(lambda sig: P256_ORDER.to_bytes(32, "big") * 2, id="r=s=n"),
        pytest.param(lambda sig: b"\x30\x44" + sig, id="der-framed"),
        pytest.param(lambda sig: sig[:-1], id="truncated"),
        pytest.param(lambda sig: sig + b"\x00", id="extended"),
        pytest.param(lambda sig: sig[:10] + bytes([sig[10] ^ 1]) + sig[11:], id="bit-flip"),
        pytest.param(lambda sig: sig[32:] + sig[:32], id="r-s-swapped"),
    ],
)
async def test_ecdsa_signature_tampering(auth: JWTBearerAuthenticator, signature: Any) -> None:
    good = mint()
    sig = b64url_decode(good.rsplit(".", 1)[1])
    assert await refused(auth, _with_signature(good, signature(sig))) == (
        "signature verification failed"
    )


async def test_signature_stripped(auth: JWTBearerAuthenticator) -> None:
    assert await refused(auth, mint().rsplit(".", 1)[0] + ".") == "missing signature"


async def test_signature_from_another_token(auth: JWTBearerAuthenticator) -> None:
    other = mint(claims(sub="bob"))
    forged = mint(claims(sub="admin")).rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]
    assert await refused(auth, forged) == "signature verification failed"


async def test_algorithm_substitution_on_same_curve_key(auth: JWTBearerAuthenticator) -> None:
    # ES384 is allowed for the issuer, but the P-256 key es-1 is bound to ES256.
    token = sign_raw(
        json.dumps({"alg": "ES384", "typ": "at+jwt", "kid": "es-1"}), json.dumps(claims())
    )
    assert await refused(auth, token) == "no key for this algorithm"


# --------------------------------------------------------------------------- time, audience, issuer


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        pytest.param({"exp": NOW - 3600}, "token expired", id="expired"),
        pytest.param({"nbf": NOW + 3600}, "token not yet valid", id="nbf-in-future"),
        pytest.param({"iat": NOW + 3600}, "token issued in the future", id="iat-in-future"),
        pytest.param({"exp": 1e400}, "number out of range", id="exp-infinite"),
        pytest.param(
            {"aud": "https://other-rs.example.org"}, "token audience mismatch", id="wrong-aud"
        ),
        pytest.param({"iss": "https://evil.example.org"}, "unknown token issuer", id="wrong-iss"),
    ],
)
async def test_claims_attacks(
    auth: JWTBearerAuthenticator, overrides: dict[str, Any], description: str
) -> None:
    if overrides.get("exp") == 1e400:
        payload = json.dumps(claims(exp=0)).replace('"exp": 0', '"exp": 1e400')
        token = sign_raw(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "es-1"}), payload)
    else:
        token = mint(claims(**overrides))
    assert await refused(auth, token) == description


async def test_nan_claim(auth: JWTBearerAuthenticator) -> None:
    payload = json.dumps(claims(exp=0)).replace('"exp": 0', '"exp": NaN')
    token = sign_raw(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "es-1"}), payload)
    assert await refused(auth, token) == "non-JSON constant NaN"


# ------------------------------------------------------------------------ §2.8 cross-JWT confusion


@pytest.mark.parametrize("typ", ["JWT", "dpop+jwt", "txntoken+jwt", "wit+jwt", None])
async def test_wrong_typ(auth: JWTBearerAuthenticator, typ: str | None) -> None:
    assert await refused(auth, mint(typ=typ)) == "wrong token type"


async def test_dpop_proof_presented_as_access_token(auth: JWTBearerAuthenticator) -> None:
    assert await refused(auth, dpop_proof()) == "unknown token issuer"


async def test_id_token_shaped_token(auth: JWTBearerAuthenticator) -> None:
    # An OIDC ID Token for our client: typ JWT, aud = client id, nonce.
    id_token = mint(claims(aud="travel-agent", nonce="n-0S6"), typ="JWT")
    assert await refused(auth, id_token) == "wrong token type"


# --------------------------------------------------------------------------- crit


@pytest.mark.parametrize(
    "crit",
    [["exp"], ["b64"], ["http://example.com/ext"], [], "exp"],
    ids=["exp", "b64", "uri", "empty-list", "string"],
)
async def test_crit_refused(auth: JWTBearerAuthenticator, crit: Any) -> None:
    extra = {"crit": crit, "exp": NOW + 10, "b64": True, "http://example.com/ext": 1}
    header = json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "es-1", **extra})
    assert await refused(auth, sign_raw(header, json.dumps(claims()))) == (
        "unsupported crit header parameter"
    )


# --------------------------------------------------------------------------- size and shape


async def test_oversized_token(tmp_path: Path) -> None:
    issuer = make_issuer(jwks_file=str(write_jwks(tmp_path / "j.json", K["es"])))
    auth = JWTBearerAuthenticator(
        "bearer", BearerMethod(issuers=("corp",), max_token_bytes=4096), [issuer],
        MemoryReplayCache(), trust_domain="example.org", clock=Clock(),
    )  # fmt: skip
    await auth.start()
    token = mint(claims(padding="p" * 4096))
    assert len(token) > 4096
    assert await refused(auth, token) == "token too large"
    await auth.close()


@pytest.mark.parametrize(
    ("shape", "description"),
    [
        pytest.param(lambda t: t.rsplit(".", 1)[0], "not a compact JWS", id="two-segments"),
        pytest.param(lambda t: t + ".x.y", "not a compact JWS", id="five-segments-jwe-like"),
        pytest.param(lambda t: t + ".", "not a compact JWS", id="four-segments"),
        pytest.param(lambda t: t.replace(".", "..", 1), "not a compact JWS", id="empty-segment"),
        pytest.param(
            lambda t: b64(b'{"alg":"ES256"') + t[t.index(".") :],
            "malformed JSON",
            id="truncated-header",
        ),
        pytest.param(
            lambda t: b64(b'["ES256"]') + t[t.index(".") :],
            "malformed token",  # not JOSE, so opaque; no introspection configured
            id="header-array",
        ),
    ],
)
async def test_malformed_structure(
    auth: JWTBearerAuthenticator, shape: Any, description: str
) -> None:
    assert await refused(auth, shape(mint())) == description


async def test_non_b64token_characters(auth: JWTBearerAuthenticator) -> None:
    token = mint()
    parts = token.split(".")
    req = request({"Authorization": f"Bearer {parts[0]}.%%%.{parts[2]}"})
    with pytest.raises(BadRequest):
        await auth.authenticate(req, facts(req))


async def test_non_utf8_payload(auth: JWTBearerAuthenticator) -> None:
    header = json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "es-1"})
    payload = json.dumps(claims(sub="x")).encode().replace(b'"x"', b'"\xff"')
    assert await refused(auth, sign_raw(header, payload)) == "malformed JSON"


# --------------------------------------------------------------------------- §2.6 duplicates


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda c: c[:-1] + ', "sub": "admin"}', id="sub-twice"),
        pytest.param(lambda c: c[:-1] + f', "exp": {NOW + 10**6}}}', id="exp-twice"),
        pytest.param(lambda c: c[:-1] + f', "aud": "{AUD}"}}', id="aud-twice-same-value"),
        pytest.param(lambda c: c[:-1] + ', "\\u0073ub": "admin"}', id="sub-twice-escaped"),
        pytest.param(lambda c: c[:-1] + ', "act": {"sub": "a", "sub": "b"}}', id="inside-act"),
    ],
)
async def test_duplicate_claims(auth: JWTBearerAuthenticator, payload: Any) -> None:
    header = json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "es-1"})
    token = sign_raw(header, payload(json.dumps(claims())))
    assert await refused(auth, token) == "duplicate JSON member name"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param('{"alg":"ES256","typ":"at+jwt","kid":"es-1","alg":"none"}', id="alg-twice"),
        pytest.param('{"alg":"ES256","typ":"at+jwt","kid":"es-1","kid":"rs-1"}', id="kid-twice"),
        pytest.param('{"alg":"ES256","typ":"JWT","kid":"es-1","typ":"at+jwt"}', id="typ-twice"),
    ],
)
async def test_duplicate_header_params(auth: JWTBearerAuthenticator, header: str) -> None:
    token = sign_raw(header, json.dumps(claims()))
    assert await refused(auth, token) == "duplicate JSON member name"


# --------------------------------------------------------------------------- transport


@pytest.mark.parametrize("query", ["access_token=x", "a=1&access_token=x&b=2"])
async def test_token_in_query_string(auth: JWTBearerAuthenticator, query: str) -> None:
    token = mint()
    req = request({"Authorization": f"Bearer {token}"}, query=query.replace("x", token))
    with pytest.raises(BadRequest) as info:
        await auth.authenticate(req, facts(req))
    assert info.value.status == 400
    assert info.value.reason == "invalid_request"


# --------------------------------------------------------------------------- RFC 7520 §4.4 vector


async def test_rfc7520_hs256_vector_is_refused(auth: JWTBearerAuthenticator) -> None:
    assert await refused(auth, vector("rfc7520_jws_hs256.json")["jws"]) == "algorithm not allowed"
