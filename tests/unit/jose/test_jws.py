"""gateway.jose.jws: compact JWS against the RFC vectors, and the RFC 8725 attack table.

Vectors: RFC 7515 Appendix A.1 (HS256: the parsing plumbing, and a token every allowlist
refuses), A.3 (ES256 verify), RFC 7520 §4.4 (HS256), RFC 8037 Appendix A.4/A.5 (Ed25519 sign,
byte for byte, and verify). Then one table of tokens the layer must refuse, each with the
stable ``code`` callers map to their own answers, and a cross-check with PyJWT both ways.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.jose.errors import JOSEError
from gateway.jose.jwk import public_jwk, public_key_from_jwk
from gateway.jose.jws import (
    HeaderCache,
    PrivateKey,
    VerificationKey,
    b64url_decode,
    b64url_encode,
    check_alg,
    check_typ,
    encode_compact,
    parse_compact,
    sign,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
MAX = 8192

# RFC 7515 Appendix A.1-A.3: one payload, {"iss":"joe",\r\n "exp":1300819380,\r\n ...}.
RFC7515_PAYLOAD = (
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
)
RFC7515_CLAIMS = {"iss": "joe", "exp": 1300819380, "http://example.com/is_root": True}
RFC7515_A1 = (
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
    + RFC7515_PAYLOAD
    + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)
RFC7515_A1_KEY = (
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
)
RFC7515_A3 = (
    "eyJhbGciOiJFUzI1NiJ9."
    + RFC7515_PAYLOAD
    + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)
RFC7515_A3_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}
RFC7515_A3_D = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
# RFC 8037 Appendix A.1 (key pair), A.4 (signature), A.5 (verification).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_PAYLOAD = b"Example of Ed25519 signing"
RFC8037_A4 = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def vector(name: str) -> dict[str, Any]:
    return dict(json.loads((VECTORS / name).read_text(encoding="utf-8")))


def verify(
    token: str, key: VerificationKey, allowed: frozenset[str] | set[str], *, max_bytes: int = MAX
) -> dict[str, Any]:
    """What every verifier of the gateway does: parse, allowlist, the key's own check."""
    parsed = parse_compact(token, max_bytes=max_bytes)
    check_alg(parsed.alg, allowed)
    key.verify(parsed.alg, parsed.signing_input, parsed.signature)
    return parsed.claims()


def a3_key() -> VerificationKey:
    public, algs = public_key_from_jwk(RFC7515_A3_JWK)
    return VerificationKey(None, algs, public)


# --------------------------------------------------------------------------- RFC vectors


def test_rfc7515_a1_hs256_plumbing_and_refusal() -> None:
    parsed = parse_compact(RFC7515_A1, max_bytes=MAX)
    assert dict(parsed.header) == {"typ": "JWT", "alg": "HS256"}  # CRLF and spaces inside
    assert parsed.claims() == RFC7515_CLAIMS
    # The signing input and the signature are exactly the RFC's octets: the HMAC matches.
    mac = hmac.new(b64url_decode(RFC7515_A1_KEY), parsed.signing_input, hashlib.sha256)
    assert hmac.compare_digest(mac.digest(), parsed.signature)
    # SECURITY: yet no verifier of ours accepts it, even with HS256 on the allowlist.
    with pytest.raises(JOSEError) as info:
        check_alg(parsed.alg, {"HS256", "ES256"})
    assert info.value.code == "alg_refused"


def test_rfc7520_4_4_hs256_plumbing_and_refusal() -> None:
    v = vector("rfc7520_jws_hs256.json")
    parsed = parse_compact(v["jws"], max_bytes=MAX)
    assert dict(parsed.header) == v["protected_header"]
    assert parsed.payload.decode("utf-8") == v["payload"]
    mac = hmac.new(b64url_decode(v["key"]["k"]), parsed.signing_input, hashlib.sha256).digest()
    assert hmac.compare_digest(mac, parsed.signature)
    with pytest.raises(JOSEError):
        check_alg(parsed.alg, ["HS256"])
    with pytest.raises(JOSEError, match="private key material"):
        public_key_from_jwk(v["key"])  # an oct key never becomes a verification key


def test_rfc7515_a3_es256_verifies() -> None:
    assert verify(RFC7515_A3, a3_key(), {"ES256"}) == RFC7515_CLAIMS


def test_rfc7515_a3_key_signs_what_it_verifies() -> None:
    # ECDSA is randomised: the RFC's private scalar signs anew, and the RFC's public key verifies.
    d = int.from_bytes(b64url_decode(RFC7515_A3_D), "big")
    private = ec.derive_private_key(d, ec.SECP256R1())
    assert public_jwk(private.public_key()) == {**RFC7515_A3_JWK}
    token = encode_compact({"alg": "ES256"}, json.dumps(RFC7515_CLAIMS).encode(), private)
    assert verify(token, a3_key(), {"ES256"}) == RFC7515_CLAIMS


def test_rfc8037_a4_ed25519_signature_is_byte_exact() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))
    assert public_jwk(private.public_key()) == {k: RFC8037_JWK[k] for k in ("crv", "kty", "x")}
    assert encode_compact({"alg": "EdDSA"}, RFC8037_PAYLOAD, private) == RFC8037_A4


def test_rfc8037_a5_ed25519_verifies() -> None:
    public, algs = public_key_from_jwk(RFC8037_JWK)
    parsed = parse_compact(RFC8037_A4, max_bytes=MAX)
    VerificationKey(None, algs, public).verify(parsed.alg, parsed.signing_input, parsed.signature)
    assert parsed.payload == RFC8037_PAYLOAD
    tampered = RFC8037_A4[:-2] + ("AA" if not RFC8037_A4.endswith("AA") else "Ag")
    bad = parse_compact(tampered, max_bytes=MAX)
    with pytest.raises(JOSEError) as info:
        VerificationKey(None, algs, public).verify(bad.alg, bad.signing_input, bad.signature)
    assert info.value.code == "bad_signature"


# --------------------------------------------------------------------------- the attack table

TRUSTED = ec.generate_private_key(ec.SECP256R1())
ATTACKER = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(65537, 2048)
TRUSTED_KEY = VerificationKey("k1", frozenset({"ES256"}), TRUSTED.public_key())
CLAIMS = {"sub": "alice", "exp": 2_000_000_000}


def seg(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return b64url_encode(raw)


def es256(header: dict[str, Any], claims: Any = CLAIMS, key: PrivateKey = TRUSTED) -> str:
    head, body = seg(header), seg(claims)
    signature = sign(key, "ES256", f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url_encode(signature)}"


def raw(head: str, body: str, signature: bytes | str = b"\x01" * 64) -> str:
    sig = signature if isinstance(signature, str) else b64url_encode(signature)
    return f"{head}.{body}.{sig}"


def hs256_with(public_pem: bytes) -> str:
    """RFC 8725 §2.1 key confusion: the verifier's public key used as an HMAC secret."""
    head, body = seg({"alg": "HS256", "kid": "k1"}), seg(CLAIMS)
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return raw(head, body, mac)


def _pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _psychic() -> str:
    """CVE-2022-21449: r = s = 0 must never verify."""
    head, body = seg({"alg": "ES256"}), seg(CLAIMS)
    return raw(head, body, bytes(64))


def _der_signature() -> str:
    head, body = seg({"alg": "ES256"}), seg(CLAIMS)
    der = TRUSTED.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    return raw(head, body, der)


def _high_s() -> str:
    """r, s must lie in [1, n-1] (RFC 7518 §3.4 fixed size): s = n is refused."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    head, body = seg({"alg": "ES256"}), seg(CLAIMS)
    return raw(head, body, (1).to_bytes(32, "big") + n.to_bytes(32, "big"))


def _noncanonical(token: str, part: int) -> str:
    """The same bytes, spelled with non-zero unused bits in the last character."""
    parts = token.split(".")
    segment = parts[part]
    assert len(segment) % 4 in (2, 3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    parts[part] = segment[:-1] + alphabet[alphabet.index(segment[-1]) + 1]
    return ".".join(parts)


GOOD = es256({"alg": "ES256", "kid": "k1"})

REFUSED: list[Any] = [
    # RFC 8725 §2.1: unsecured JWS, in every casing, with or without a signature.
    *(
        pytest.param(raw(seg({"alg": alg}), seg(CLAIMS)), "alg_refused", id=f"alg-{alg}")
        for alg in ("none", "None", "NONE", "nOnE")
    ),
    pytest.param(raw(seg({"alg": "none"}), seg(CLAIMS), ""), "alg_refused", id="alg-none-no-sig"),
    # RFC 8725 §2.1: HS256 "signed" with the verifier's own public key as the secret.
    pytest.param(hs256_with(_pem(TRUSTED)), "alg_refused", id="hs256-with-ec-public-key"),
    pytest.param(hs256_with(_pem(RSA_KEY)), "alg_refused", id="hs256-with-rsa-public-key"),
    # RFC 8725 §3.1: the caller's allowlist, exact case; then the key's own algorithm.
    pytest.param(es256({"alg": "ES384"}), "alg_refused", id="alg-not-in-allowlist"),
    pytest.param(es256({"alg": "es256"}), "alg_refused", id="alg-wrong-case"),
    pytest.param(es256({"alg": "EdDSA"}), "alg_refused", id="kty-alg-mismatch-eddsa-on-ec"),
    pytest.param(es256({"alg": "RS256"}), "alg_refused", id="kty-alg-mismatch-rs256-on-ec"),
    pytest.param(es256({"alg": 256}), "malformed", id="alg-not-a-string"),
    pytest.param(es256({"kid": "k1"}), "malformed", id="alg-missing"),
    # RFC 7515 §4.1.11 / RFC 7797: extensions we do not implement.
    pytest.param(es256({"alg": "ES256", "crit": ["exp"], "exp": 1}), "crit", id="crit"),
    pytest.param(es256({"alg": "ES256", "crit": []}), "crit", id="crit-empty"),
    pytest.param(es256({"alg": "ES256", "b64": False, "crit": ["b64"]}), "crit", id="b64-crit"),
    pytest.param(es256({"alg": "ES256", "b64": False}), "crit", id="b64-false"),
    # RFC 8725 §2.9/§3.10: keys named in the header never become trust anchors.
    pytest.param(
        es256({"alg": "ES256", "jwk": public_jwk(ATTACKER.public_key())}, key=ATTACKER),
        "bad_signature",
        id="embedded-jwk-ignored",
    ),
    pytest.param(
        es256({"alg": "ES256", "jku": "http://127.0.0.1:9/jwks"}, key=ATTACKER),
        "bad_signature",
        id="jku-ignored",
    ),
    pytest.param(
        es256({"alg": "ES256", "x5u": "http://127.0.0.1:9/cert.pem"}, key=ATTACKER),
        "bad_signature",
        id="x5u-ignored",
    ),
    pytest.param(
        es256({"alg": "ES256", "x5c": ["MIIB"]}, key=ATTACKER), "bad_signature", id="x5c-ignored"
    ),
    # RFC 8725 §2.9: kid is a short printable string, only ever a dict key.
    pytest.param(es256({"alg": "ES256", "kid": "../../etc/passwd\x00"}), "bad_kid", id="kid-nul"),
    pytest.param(es256({"alg": "ES256", "kid": "k" * 257}), "bad_kid", id="kid-too-long"),
    pytest.param(es256({"alg": "ES256", "kid": 1}), "bad_kid", id="kid-number"),
    pytest.param(es256({"alg": "ES256", "kid": ""}), "bad_kid", id="kid-empty"),
    pytest.param(es256({"alg": "ES256", "typ": ["JWT"]}), "wrong_typ", id="typ-not-a-string"),
    # Signatures: another key, tampering, RFC 7518 §3.4 form and range.
    pytest.param(es256({"alg": "ES256"}, key=ATTACKER), "bad_signature", id="other-key"),
    pytest.param(GOOD[:-4] + "AAAA", "bad_signature", id="tampered-signature"),
    pytest.param(
        ".".join([GOOD.split(".")[0], seg({**CLAIMS, "sub": "mallory"}), GOOD.split(".")[2]]),
        "bad_signature",
        id="tampered-payload",
    ),
    pytest.param(_psychic(), "bad_signature", id="psychic-signature-r0-s0"),
    pytest.param(_high_s(), "bad_signature", id="s-equals-curve-order"),
    pytest.param(_der_signature(), "bad_signature", id="der-signature"),
    pytest.param(
        raw(seg({"alg": "ES256"}), seg(CLAIMS), b"\x01" * 63), "bad_signature", id="sig-63"
    ),
    # Size and shape (RFC 7515 §7.1).
    pytest.param(GOOD + "A" * (MAX - len(GOOD) + 1), "malformed", id="oversized"),
    pytest.param("a.b", "malformed", id="two-segments"),
    pytest.param(GOOD + ".x", "malformed", id="four-segments"),
    pytest.param(GOOD.rsplit(".", 1)[0] + ".", "malformed", id="empty-signature"),
    pytest.param(GOOD.replace(".", ".\u00e9", 1), "malformed", id="non-ascii"),
    # base64url: strict alphabet, no padding, canonical (RFC 7515 §2, RFC 4648 §3.5).
    pytest.param(GOOD + "=", "malformed", id="padding"),
    pytest.param(raw(seg({"alg": "ES256"}) + "+", seg(CLAIMS)), "malformed", id="plus-in-header"),
    pytest.param(raw(seg({"alg": "ES256"}), seg(CLAIMS) + "/"), "malformed", id="slash-in-body"),
    pytest.param(raw("eyJhbGciOiJFUzI1NiJ9A", seg(CLAIMS)), "malformed", id="length-1-mod-4"),
    pytest.param(_noncanonical(GOOD, 2), "malformed", id="non-canonical-signature"),
    # RFC 8725 §2.6: one JSON object, one meaning.
    pytest.param(raw(seg(b"not json"), seg(CLAIMS)), "malformed", id="header-not-json"),
    pytest.param(raw(seg(["ES256"]), seg(CLAIMS)), "malformed", id="header-array"),
    pytest.param(
        raw(seg(b'{"alg":"none","alg":"ES256"}'), seg(CLAIMS)), "malformed", id="duplicate-alg"
    ),
    pytest.param(
        es256({"alg": "ES256"}, b'{"sub":"alice","sub":"mallory"}'),
        "malformed",
        id="duplicate-claim",
    ),
    pytest.param(es256({"alg": "ES256"}, b'{"exp":NaN}'), "malformed", id="nan-claim"),
    pytest.param(es256({"alg": "ES256"}, b'{"exp":1e400}'), "malformed", id="infinite-claim"),
    pytest.param(es256({"alg": "ES256"}, b'{"sub":"\xff"}'), "malformed", id="non-utf8-payload"),
    pytest.param(es256({"alg": "ES256"}, b"[1,2]"), "malformed", id="payload-array"),
    pytest.param(es256({"alg": "ES256"}, b'{"a":1} x'), "malformed", id="trailing-garbage"),
]


@pytest.mark.parametrize(("token", "code"), REFUSED)
def test_refused(token: str, code: str) -> None:
    with pytest.raises(JOSEError) as info:
        verify(token, TRUSTED_KEY, {"ES256", "EdDSA", "RS256"})
    assert info.value.code == code
    # SECURITY: the message is safe to show: it never quotes the token.
    longest = max(token.split("."), key=len)
    assert len(longest) < 8 or longest not in str(info.value)


def test_the_good_token_passes_and_header_key_urls_are_only_data() -> None:
    assert verify(GOOD, TRUSTED_KEY, {"ES256"}) == CLAIMS
    # A jku/x5u/jwk next to a valid signature by the configured key is ignored, not used.
    token = es256({"alg": "ES256", "jku": "http://127.0.0.1:9/", "jwk": {"kty": "EC"}})
    assert verify(token, TRUSTED_KEY, {"ES256"}) == CLAIMS


def test_hmac_never_usable_with_asymmetric_key() -> None:
    with pytest.raises(JOSEError, match="algorithm does not match the key"):
        TRUSTED_KEY.verify("HS256", b"a.b", b"sig")
    # Even a (mis)configured allowlist naming HS256 does not let it through.
    with pytest.raises(JOSEError):
        check_alg("HS256", ["HS256", "ES256"])


def test_header_cache_keeps_only_checked_headers() -> None:
    cache: HeaderCache = {}
    bad = es256({"alg": "ES256", "crit": ["x"]})
    with pytest.raises(JOSEError):
        parse_compact(bad, max_bytes=MAX, header_cache=cache)
    assert cache == {}
    parse_compact(GOOD, max_bytes=MAX, header_cache=cache)
    assert list(cache) == [GOOD.split(".")[0]]
    # A cached header does not spare a token its signature check.
    forged = es256({"alg": "ES256", "kid": "k1"}, key=ATTACKER)
    parsed = parse_compact(forged, max_bytes=MAX, header_cache=cache)
    with pytest.raises(JOSEError):
        TRUSTED_KEY.verify(parsed.alg, parsed.signing_input, parsed.signature)


@pytest.mark.parametrize(
    ("typ", "expected", "ok"),
    [
        pytest.param("at+jwt", "at+jwt", True, id="exact"),
        pytest.param("AT+JWT", "at+jwt", True, id="case-insensitive"),
        pytest.param("application/at+jwt", "at+jwt", True, id="media-type-prefix"),
        pytest.param("JWT", "at+jwt", False, id="plain-jwt"),
        pytest.param("dpop+jwt", "at+jwt", False, id="another-kind"),
        pytest.param(None, "at+jwt", False, id="missing"),
        pytest.param("application/x/at+jwt", "at+jwt", False, id="nested-slash"),
    ],
)
def test_check_typ(typ: str | None, expected: str, ok: bool) -> None:
    # RFC 8725 §3.11: explicit typing, RFC 7515 §4.1.9 comparison rules.
    if ok:
        check_typ(typ, expected)
    else:
        with pytest.raises(JOSEError) as info:
            check_typ(typ, expected)
        assert info.value.code == "wrong_typ"


# --------------------------------------------------------------------------- signing


def _signers() -> list[Any]:
    rsa_key = RSA_KEY
    return [
        pytest.param(TRUSTED, "ES256", id="es256"),
        pytest.param(ec.generate_private_key(ec.SECP384R1()), "ES384", id="es384"),
        pytest.param(ec.generate_private_key(ec.SECP521R1()), "ES512", id="es512"),
        pytest.param(ed25519.Ed25519PrivateKey.generate(), "EdDSA", id="ed25519"),
        pytest.param(ed448.Ed448PrivateKey.generate(), "EdDSA", id="ed448"),
        *(pytest.param(rsa_key, alg, id=alg.lower()) for alg in ("RS256", "PS256", "PS512")),
    ]


@pytest.mark.parametrize(("private", "alg"), _signers())
def test_sign_then_verify_and_pyjwt_agrees(private: Any, alg: str) -> None:
    public, algs = public_key_from_jwk(public_jwk(private.public_key()))
    key = VerificationKey("k", algs, public)
    token = encode_compact({"alg": alg, "typ": "JWT"}, json.dumps(CLAIMS).encode(), private)
    assert verify(token, key, {alg}) == CLAIMS
    # Cross-check with an independent implementation, both ways.
    assert jwt.decode(token, private.public_key(), algorithms=[alg]) == CLAIMS
    theirs = jwt.encode(CLAIMS, private, algorithm=alg)
    assert verify(theirs, key, {alg}) == CLAIMS


@pytest.mark.parametrize(
    ("private", "alg"),
    [
        pytest.param(TRUSTED, "ES384", id="es384-with-p256"),
        pytest.param(TRUSTED, "EdDSA", id="eddsa-with-ec"),
        pytest.param(TRUSTED, "HS256", id="hs256-with-ec"),
        pytest.param(RSA_KEY, "HS256", id="hs256-with-rsa"),
        pytest.param(RSA_KEY, "ES256", id="es256-with-rsa"),
        pytest.param(ed25519.Ed25519PrivateKey.generate(), "ES256", id="es256-with-ed25519"),
    ],
)
def test_sign_refuses_an_algorithm_the_key_is_not_for(private: Any, alg: str) -> None:
    with pytest.raises(JOSEError) as info:
        sign(private, alg, b"a.b")
    assert info.value.code == "alg_refused"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"alg": "none"}, id="none"),
        pytest.param({"alg": "ES256", "crit": ["b64"]}, id="crit"),
        pytest.param({"typ": "JWT"}, id="no-alg"),
    ],
)
def test_encode_refuses_headers_we_would_refuse(header: dict[str, Any]) -> None:
    with pytest.raises(JOSEError):
        encode_compact(header, b"{}", TRUSTED)


def test_ecdsa_signature_is_fixed_size_r_s() -> None:
    for curve, size in ((ec.SECP256R1(), 32), (ec.SECP384R1(), 48), (ec.SECP521R1(), 66)):
        private = ec.generate_private_key(curve)
        alg = {32: "ES256", 48: "ES384", 66: "ES512"}[size]
        signature = sign(private, alg, b"input")
        assert len(signature) == 2 * size  # RFC 7518 §3.4, never DER
        r, s = (int.from_bytes(signature[i : i + size], "big") for i in (0, size))
        private.public_key().verify(encode_dss_signature(r, s), b"input", ec.ECDSA(_hash(size)))


def _hash(size: int) -> Any:
    return {32: hashes.SHA256(), 48: hashes.SHA384(), 66: hashes.SHA512()}[size]
