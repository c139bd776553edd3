"""gateway.authn.dpop: RFC 9449 §4.3/§7.1 proofs, §9 nonces, §11.1 replay; RFC 7638 vectors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.authn.dpop import DPoPVerifier, normalize_htu
from gateway.errors import Unauthorized
from gateway.jose.errors import JOSEError
from gateway.jose.jwk import jwk_thumbprint
from gateway.jose.jws import b64url_decode
from gateway.settings import DPoPSettings
from gateway.state.memory import MemoryReplayCache

from . import (
    HOST,
    NOW,
    Clock,
    ath,
    b64,
    dpop_proof,
    facts,
    keys,
    private_jwk,
    request,
    sign_raw,
    vector,
)

K = keys()
TOKEN = "eyJhbGciOiJFUzI1NiJ9.access-token.sig"
URI = f"https://{HOST}/flights/42"
JKT = jwk_thumbprint(K["client"].jwk(with_alg=False))


def verifier(clock: Clock | None = None, **settings: Any) -> DPoPVerifier:
    return DPoPVerifier(
        DPoPSettings(**settings), MemoryReplayCache(), clock=clock or Clock(), nonce_key=b"k" * 32
    )


async def check(
    v: DPoPVerifier,
    proofs: list[str],
    *,
    method: str = "GET",
    path: str = "/flights/42",
    host: str = HOST,
    scheme: str = "https",
    token: str = TOKEN,
    jkt: str = JKT,
) -> Any:
    req = request([("DPoP", p) for p in proofs], method=method, path=path, host=host)
    return await v.verify_request(req, facts(req, scheme=scheme), access_token=token, jkt=jkt)


async def refused(v: DPoPVerifier, proofs: list[str], **kw: Any) -> str:
    with pytest.raises(Unauthorized) as info:
        await check(v, proofs, **kw)
    header = info.value.headers["WWW-Authenticate"]
    assert header.startswith('DPoP realm="agentgate", error="invalid_dpop_proof"'), header
    assert header.endswith('algs="ES256 EdDSA"')
    return header.split('error_description="', 1)[1].split('"', 1)[0]


# --------------------------------------------------------------------------- vectors


def test_rfc7638_thumbprint_vector() -> None:
    v = vector("rfc7638_thumbprint.json")
    assert jwk_thumbprint(v["jwk"]) == v["thumbprint"]


def test_rfc9449_thumbprint_vector() -> None:
    v = vector("rfc9449_dpop.json")
    assert jwk_thumbprint(v["jwk"]) == v["jkt"]
    # Member order and extra members do not change a thumbprint (RFC 7638 §3.2, §3.3).
    shuffled = {"y": v["jwk"]["y"], "crv": "P-256", "kid": "x", "x": v["jwk"]["x"], "kty": "EC"}
    assert jwk_thumbprint(shuffled) == v["jkt"]


def test_thumbprint_of_okp_key() -> None:
    jwk = K["ed"].jwk()
    assert jwk_thumbprint(jwk) == jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]})


@pytest.mark.parametrize(
    "jwk", [{"kty": "oct", "k": "AA"}, {"kty": "EC", "crv": "P-256", "x": "a"}, {}],
    ids=["oct", "missing-y", "empty"],
)  # fmt: skip
def test_thumbprint_refuses_incomplete_keys(jwk: dict[str, Any]) -> None:
    with pytest.raises(JOSEError):
        jwk_thumbprint(jwk)


async def test_rfc9449_token_request_proof() -> None:
    v = vector("rfc9449_dpop.json")
    case = v["token_request_proof"]
    result = await verifier(Clock(case["iat"])).verify_proof(
        case["proof"], htm=case["htm"], htu=case["htu"]
    )
    assert result.jkt == v["jkt"]
    assert result.jti == case["payload"]["jti"]


async def test_rfc9449_resource_request_proof() -> None:
    v = vector("rfc9449_dpop.json")
    case = v["resource_request_proof"]
    assert ath(case["access_token"]) == case["ath"]
    dpop = verifier(Clock(case["iat"]))
    result = await check(
        dpop,
        [case["proof"]],
        host=case["host"],
        path=case["path"],
        token=case["access_token"],
        jkt=v["jkt"],
    )
    assert result.jkt == v["jkt"]
    # The same vector again is a replay.
    assert await refused(
        dpop, [case["proof"]], host=case["host"], path=case["path"],
        token=case["access_token"], jkt=v["jkt"],
    ) == "DPoP proof replayed"  # fmt: skip


@pytest.mark.parametrize(
    ("change", "description"),
    [
        pytest.param({"htm": "POST"}, "htm does not match the request method", id="htm"),
        pytest.param({"path": "/other"}, "htu does not match the request URI", id="htu-path"),
        pytest.param(
            {"host": "resource.example.com"}, "htu does not match the request URI", id="htu-host"
        ),
        pytest.param({"scheme": "http"}, "htu does not match the request URI", id="htu-scheme"),
        pytest.param({"token": "another-token"}, "ath does not match the access token", id="ath"),
        pytest.param({"jkt": JKT}, "proof key does not match the token binding", id="jkt"),
        pytest.param(
            {"clock": 1562262618 + 61}, "iat outside the acceptance window", id="iat-late"
        ),
        pytest.param(
            {"clock": 1562262618 - 61}, "iat outside the acceptance window", id="iat-early"
        ),
    ],
)
async def test_rfc9449_resource_proof_mismatches(change: dict[str, Any], description: str) -> None:
    v = vector("rfc9449_dpop.json")
    case = v["resource_request_proof"]
    args: dict[str, Any] = {
        "host": case["host"],
        "path": case["path"],
        "token": case["access_token"],
        "jkt": v["jkt"],
        "method": "GET",
        "scheme": "https",
    }
    clock = Clock(change.pop("clock", case["iat"]))
    if "htm" in change:
        args["method"] = change.pop("htm")
    args.update(change)
    assert await refused(verifier(clock), [case["proof"]], **args) == description


# --------------------------------------------------------------------------- own proofs


@pytest.mark.parametrize("key", ["client", "client_ed"])
async def test_valid_proof(key: str) -> None:
    jkt = jwk_thumbprint(K[key].jwk(with_alg=False))
    result = await check(verifier(), [dpop_proof(K[key], token=TOKEN)], jkt=jkt)
    assert result.jkt == jkt
    assert result.iat == NOW


@pytest.mark.parametrize(
    ("htu", "path", "host"),
    [
        pytest.param(
            f"https://{HOST}/flights/42?x=1#frag",
            "/flights/42",
            HOST,
            id="query-and-fragment-ignored",
        ),
        pytest.param(
            "HTTPS://GW.EXAMPLE.ORG/flights/42", "/flights/42", HOST, id="scheme-host-case"
        ),
        pytest.param(
            f"https://{HOST}:443/flights/42", "/flights/42", HOST, id="default-port-in-htu"
        ),
        pytest.param(
            f"https://{HOST}/flights/42", "/flights/42", f"{HOST}:443", id="default-port-in-host"
        ),
        pytest.param(f"https://{HOST}:8443/a", "/a", f"{HOST}:8443", id="explicit-port"),
        pytest.param(
            f"https://{HOST}/%66lights/%7e%34%32", "/flights/~42", HOST, id="unreserved-escapes"
        ),
        pytest.param(f"https://{HOST}/a/%c3%a9", "/a/%C3%A9", HOST, id="escape-case"),
        pytest.param(f"https://{HOST}/a/./b/../c", "/a/c", HOST, id="dot-segments"),
        pytest.param(f"https://{HOST}//a//b", "/a/b", HOST, id="merged-slashes"),
        pytest.param(f"https://{HOST}", "/", HOST, id="empty-path"),
        pytest.param("https://[::1]:8443/x", "/x", "[::1]:8443", id="ipv6"),
    ],
)
async def test_htu_normalisation_accepts(htu: str, path: str, host: str) -> None:
    assert await check(verifier(), [dpop_proof(htu=htu, token=TOKEN)], path=path, host=host)


@pytest.mark.parametrize(
    ("htu", "host"),
    [
        pytest.param(f"https://{HOST}:8443/flights/42", HOST, id="port-differs"),
        pytest.param(f"http://{HOST}/flights/42", HOST, id="scheme-differs"),
        pytest.param(f"https://{HOST}/Flights/42", HOST, id="path-case-kept"),
        pytest.param(f"https://{HOST}/flights/42/", HOST, id="trailing-slash"),
        pytest.param(f"https://{HOST}/flights%2F42", HOST, id="escaped-slash"),
        pytest.param(f"https://user@{HOST}/flights/42", HOST, id="userinfo"),
        pytest.param(f"ftp://{HOST}/flights/42", HOST, id="ftp"),
        pytest.param("/flights/42", HOST, id="relative"),
        pytest.param(f"https://{HOST}/flights/%zz", HOST, id="bad-escape"),
        pytest.param(f"https://{HOST}/flights/42 ", HOST, id="trailing-space"),
        pytest.param(f"https://{HOST}:99999/flights/42", HOST, id="port-out-of-range"),
    ],
)
async def test_htu_mismatch(htu: str, host: str) -> None:
    description = await refused(verifier(), [dpop_proof(htu=htu, token=TOKEN)], host=host)
    assert description in {
        "htu does not match the request URI",
        "malformed htu",
        "malformed percent-escape in htu",
    }


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("HTTPS://Example.COM:443/a/../b/%7E?q#f", "https://example.com/b/~"),
        ("http://example.com:80", "http://example.com/"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("https://[::1]/x", "https://[::1]/x"),
    ],
)
def test_normalize_htu(uri: str, expected: str) -> None:
    assert normalize_htu(uri) == expected


async def test_host_header_cannot_smuggle_a_path() -> None:
    # A proof for https://gw/flights/42 must not pass with Host "gw/flights" and path "/42".
    proof = dpop_proof(htu=f"https://{HOST}/flights/42", token=TOKEN)
    description = await refused(verifier(), [proof], host=f"{HOST}/flights", path="/42")
    assert description == "request host is not a valid authority"


@pytest.mark.parametrize(
    ("make", "description"),
    [
        pytest.param(
            lambda: dpop_proof(token=TOKEN, htm="get"),
            "htm does not match the request method",
            id="htm-lower-case",
        ),
        pytest.param(
            lambda: dpop_proof(token=None), "ath does not match the access token", id="ath-missing"
        ),
        pytest.param(
            lambda: dpop_proof(token="other"),
            "ath does not match the access token",
            id="ath-other-token",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, ath="é"),
            "ath does not match the access token",
            id="ath-non-ascii",
        ),
        pytest.param(
            lambda: dpop_proof(K["client2"], token=TOKEN),
            "proof key does not match the token binding",
            id="jkt-other-key",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, iat=NOW - 61),
            "iat outside the acceptance window",
            id="iat-too-old",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, iat=NOW + 61),
            "iat outside the acceptance window",
            id="iat-in-future",
        ),
        pytest.param(lambda: dpop_proof(token=TOKEN, iat=NOW + 59), None, id="iat-within-window"),
        pytest.param(lambda: dpop_proof(token=TOKEN, iat="now"), "malformed iat", id="iat-string"),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, drop=["iat"]), "malformed iat", id="iat-missing"
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, drop=["jti"]),
            "missing or malformed jti",
            id="jti-missing",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, jti="j" * 257),
            "missing or malformed jti",
            id="jti-too-long",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, drop=["htu"]), "missing htm or htu", id="htu-missing"
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, drop=["htm"]), "missing htm or htu", id="htm-missing"
        ),
        pytest.param(lambda: dpop_proof(token=TOKEN, typ="JWT"), "wrong token type", id="typ-jwt"),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, typ=None), "wrong token type", id="typ-missing"
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, typ="application/dpop+jwt"), None, id="typ-media-type"
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, jwk=private_jwk(K["client"])),
            "JWK contains private key material",
            id="private-jwk",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, jwk={"kty": "oct", "k": b64(b"s" * 32)}),
            "JWK contains private key material",
            id="symmetric-jwk",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, jwk=K["client_ed"].jwk(with_alg=False)),
            "alg does not fit the jwk",
            id="jwk-type-differs-from-alg",
        ),
        pytest.param(
            lambda: dpop_proof(token=TOKEN, jwk=K["client2"].jwk(with_alg=False)),
            "signature verification failed",
            id="jwk-of-another-key",
        ),
        pytest.param(
            lambda: dpop_proof(K["es384"], token=TOKEN),
            "algorithm not allowed",
            id="alg-not-allowed",
        ),
    ],
)
async def test_proof_checks(make: Any, description: str | None) -> None:
    if description is None:
        assert await check(verifier(), [make()])
    else:
        assert await refused(verifier(), [make()]) == description


def _raw_proof(header: dict[str, Any], payload: dict[str, Any] | None = None) -> str:
    body = payload or {"jti": "j1", "htm": "GET", "htu": URI, "iat": NOW}
    return sign_raw(json.dumps(header), json.dumps(body), K["client"])


@pytest.mark.parametrize(
    ("header", "description"),
    [
        pytest.param({"alg": "none", "typ": "dpop+jwt"}, "alg none refused", id="alg-none"),
        pytest.param({"alg": "HS256", "typ": "dpop+jwt"}, "algorithm not allowed", id="alg-hs256"),
        pytest.param(
            {"alg": "ES256", "typ": "dpop+jwt"}, "missing jwk header parameter", id="jwk-missing"
        ),
        pytest.param(
            {"alg": "ES256", "typ": "dpop+jwt", "jwk": "x"},
            "missing jwk header parameter",
            id="jwk-string",
        ),
        pytest.param(
            {"alg": "ES256", "typ": "dpop+jwt", "crit": ["x"]},
            "unsupported crit header parameter",
            id="crit",
        ),
    ],
)
async def test_proof_header_checks(header: dict[str, Any], description: str) -> None:
    assert await refused(verifier(), [_raw_proof(header)]) == description


async def test_zero_signature_proof() -> None:
    proof = dpop_proof(token=TOKEN)
    forged = proof.rsplit(".", 1)[0] + "." + b64(bytes(64))
    assert await refused(verifier(), [forged]) == "signature verification failed"


async def test_duplicate_claims_in_proof() -> None:
    header = {"alg": "ES256", "typ": "dpop+jwt", "jwk": K["client"].jwk(with_alg=False)}
    payload = json.dumps({"jti": "a", "htm": "POST", "htu": URI, "iat": NOW, "ath": "x"})
    payload = payload[:-1] + ', "htm": "GET"}'
    proof = sign_raw(json.dumps(header), payload, K["client"])
    assert await refused(verifier(), [proof]) == "duplicate JSON member name"


@pytest.mark.parametrize(
    ("proofs", "description"),
    [
        pytest.param([], "missing DPoP proof", id="missing"),
        pytest.param(["a.b.c", "d.e.f"], "more than one DPoP header", id="two-headers"),
        pytest.param(["abc"], "DPoP proof is not a compact JWS", id="not-a-jws"),
        pytest.param(["p" * 9000], "malformed DPoP proof", id="oversized"),
        pytest.param(["a.b.c, d.e.f"], "DPoP proof is not a compact JWS", id="comma-joined"),
    ],
)
async def test_dpop_header_shape(proofs: list[str], description: str) -> None:
    assert await refused(verifier(), proofs) == description


# --------------------------------------------------------------------------- replay


async def test_replay_refused() -> None:
    v = verifier()
    proof = dpop_proof(token=TOKEN)
    assert await check(v, [proof])
    assert await refused(v, [proof]) == "DPoP proof replayed"


async def test_concurrent_use_of_one_proof_exactly_one_wins() -> None:
    v = verifier()
    proof = dpop_proof(token=TOKEN)
    results = await asyncio.gather(*(check(v, [proof]) for _ in range(2)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, Unauthorized) for r in results) == 1


async def test_same_jti_from_two_keys_is_not_a_replay() -> None:
    v = verifier()
    assert await check(v, [dpop_proof(token=TOKEN, jti="same")])
    jkt2 = jwk_thumbprint(K["client2"].jwk(with_alg=False))
    assert await check(v, [dpop_proof(K["client2"], token=TOKEN, jti="same")], jkt=jkt2)


async def test_failed_proof_does_not_burn_its_jti() -> None:
    v = verifier()
    assert await refused(v, [dpop_proof(token=TOKEN, jti="j", htm="POST")])
    assert await check(v, [dpop_proof(token=TOKEN, jti="j")])


# --------------------------------------------------------------------------- nonces


async def nonce_challenge(v: DPoPVerifier, proof: str) -> tuple[str, str]:
    with pytest.raises(Unauthorized) as info:
        await check(v, [proof])
    headers = info.value.headers
    return headers["WWW-Authenticate"], headers["DPoP-Nonce"]


async def test_nonce_required_and_issued() -> None:
    clock = Clock()
    v = verifier(clock, require_nonce=True)
    challenge, nonce = await nonce_challenge(v, dpop_proof(token=TOKEN))
    assert challenge.startswith('DPoP realm="agentgate", error="use_dpop_nonce"')
    assert await check(v, [dpop_proof(token=TOKEN, nonce=nonce)])


@pytest.mark.parametrize(
    ("nonce", "advance"),
    [
        pytest.param(lambda v: "eyJ7S_zG.eyJH0-Z.HX4w-7v", 0, id="rfc9449-example-not-ours"),
        pytest.param(lambda v: b64(NOW.to_bytes(8, "big") + bytes(16)), 0, id="forged-mac"),
        pytest.param(lambda v: v.new_nonce(), 301, id="expired"),
        pytest.param(lambda v: 12345, 0, id="number"),
        pytest.param(lambda v: v.new_nonce()[:-2], 0, id="truncated"),
    ],
)
async def test_bad_nonce_gets_a_fresh_one(nonce: Any, advance: float) -> None:
    clock = Clock()
    v = verifier(clock, require_nonce=True)
    value = nonce(v)
    clock.advance(advance)
    _, fresh = await nonce_challenge(v, dpop_proof(token=TOKEN, nonce=value, iat=clock.t))
    assert fresh != value
    assert len(b64url_decode(fresh)) == 24


async def test_nonce_from_another_process_key_is_refused() -> None:
    other = DPoPVerifier(DPoPSettings(require_nonce=True), MemoryReplayCache(), clock=Clock())
    v = verifier(require_nonce=True)
    await nonce_challenge(v, dpop_proof(token=TOKEN, nonce=other.new_nonce()))


def test_challenge() -> None:
    assert verifier().challenge() == 'DPoP algs="ES256 EdDSA"'
