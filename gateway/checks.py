"""``check-config``: what ``run`` would refuse, found without binding a port.

The schema (:mod:`gateway.settings`) rejects malformed keys and values, and building a
:class:`gateway.app.Gateway` loads every credential, key and JWKS file. What neither does,
because it needs the files' contents judged, is here:

* :func:`static_problems` compiles the embedded engine's policies (``file:line: message``)
  and checks each configured certificate: parseable, inside its validity period, matching
  its private key; and an existing ``dev_signing_key``: a private key of an allowed
  algorithm, readable by its owner only.
* :func:`reachability` (``check-config --strict``) connects to what the gateway will call at
  run time: the OPA server, Redis, every ``jwks_uri``.

Both return ``(path.to.key, message)`` pairs, the shape of :class:`gateway.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.authz.pdp import PolicyLoadError
from gateway.settings.root import Settings

Problem = tuple[str, str]


def static_problems(settings: Settings, *, now: dt.datetime | None = None) -> list[Problem]:
    problems = _policy_problems(settings) + _jwks_file_problems(settings)
    problems += _dev_key_problems(settings)
    now = now or dt.datetime.now(dt.UTC)
    tls = settings.server.tls
    if tls is not None:
        problems += certificate_problems("server.tls", tls.cert, tls.key, now)
    for index, route in enumerate(settings.routes):
        up = route.upstream_tls
        if up is not None and up.cert is not None and up.key is not None:
            problems += certificate_problems(f"routes.{index}.upstream_tls", up.cert, up.key, now)
    return problems


def warnings(settings: Settings) -> list[Problem]:
    """Valid but probably not meant: a route that left ``segment`` unset (so it is in the
    segment ``default``) while the policy data's ``segments.flows`` lets no segment reach it:
    the shipped ``agentgate.segments`` policy then denies every call to it. And always: a
    development issuer (``dev_signing_key``), which must never reach production."""
    return dev_issuer_warnings(settings) + _segment_warnings(settings)


def dev_issuer_warnings(settings: Settings) -> list[Problem]:
    found = []
    for index, issuer in enumerate(settings.issuers):
        path = issuer.dev_signing_key
        if path is None:
            continue
        state = "" if path.exists() else " (will be created at the first start)"
        found.append(
            (
                f"issuers.{index}.dev_signing_key",
                f"issuer {issuer.name!r} is a development issuer: tokens signed with "
                f"{path}{state} are trusted (agentgate token mint-access); never in production",
            )
        )
    return found


def _segment_warnings(settings: Settings) -> list[Problem]:
    pdp = settings.pdp
    if pdp is None or pdp.engine != "embedded" or pdp.data is None:
        return []
    try:
        flows = json.loads(pdp.data.read_text("utf-8")).get("segments", {}).get("flows")
    except (OSError, ValueError, AttributeError):
        return []  # a broken data file is a problem reported elsewhere
    if not isinstance(flows, dict):
        return []
    reachable = {
        target for targets in flows.values() if isinstance(targets, list) for target in targets
    }
    found = []
    for index, route in enumerate(settings.routes):
        if "segment" not in route.model_fields_set and route.segment not in reachable:
            found.append(
                (
                    f"routes.{index}.segment",
                    f"not set, so {route.segment!r}, which no source segment in "
                    f"{pdp.data} (segments.flows) may reach: the shipped policy denies every "
                    "call to this route (segments:lateral_movement); set a segment",
                )
            )
    return found


def _policy_problems(settings: Settings) -> list[Problem]:
    pdp = settings.pdp
    if pdp is None or pdp.engine != "embedded" or pdp.policies is None:
        return []
    from gateway.authz.embedded import EmbeddedPDP  # loads regopy: only when it is used

    try:
        EmbeddedPDP(pdp.policies, pdp.data, pdp.decision).compile()
    except PolicyLoadError as exc:
        return [("pdp.policies", line) for line in exc.lines()]
    return []


def _jwks_file_problems(settings: Settings) -> list[Problem]:
    """What ``JWKSClient.start`` would refuse: an unreadable or malformed ``jwks_file``."""
    from gateway.jose.errors import JOSEError
    from gateway.jose.jwks import JWKSet
    from gateway.jose.jws import strict_json_object

    problems: list[Problem] = []
    for index, issuer in enumerate(settings.issuers):
        if issuer.jwks_file is None:
            continue
        try:
            document = strict_json_object(issuer.jwks_file.read_bytes())
            JWKSet(document, allowed_algs=issuer.algorithms)
        except (OSError, JOSEError) as exc:
            problems.append((f"issuers.{index}.jwks_file", f"{issuer.jwks_file}: {exc}"))
    return problems


def _dev_key_problems(settings: Settings) -> list[Problem]:
    """What ``JWKSClient.start`` would refuse in an existing ``dev_signing_key`` (a missing
    one is created at start, so it is no problem; nothing is created here)."""
    from gateway.devtools.devissuer import DevIssuerError, load_existing

    problems: list[Problem] = []
    for index, issuer in enumerate(settings.issuers):
        path = issuer.dev_signing_key
        if path is None or not path.exists():
            continue
        try:
            load_existing(path, issuer.algorithms)
        except DevIssuerError as exc:
            problems.append((f"issuers.{index}.dev_signing_key", str(exc)))
    return problems


def certificate_problems(
    key: str, cert_path: Path, key_path: Path, now: dt.datetime
) -> list[Problem]:
    """A certificate file that is unreadable, outside its validity period, or not its key's."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        return [(f"{key}.cert", f"{cert_path}: not a PEM certificate ({_short(exc)})")]
    problems: list[Problem] = []
    if now < certificate.not_valid_before_utc:
        when = certificate.not_valid_before_utc.isoformat()
        problems.append((f"{key}.cert", f"{cert_path}: not valid before {when}"))
    if now > certificate.not_valid_after_utc:
        when = certificate.not_valid_after_utc.isoformat()
        problems.append((f"{key}.cert", f"{cert_path}: expired on {when}"))
    try:
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        # SECURITY: the message names the file, never its contents.
        problems.append((f"{key}.key", f"{key_path}: not an unencrypted PEM private key"))
        return problems
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if private.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        problems.append((f"{key}.key", f"{key_path}: does not match the certificate {cert_path}"))
    return problems


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


async def reachability(settings: Settings, *, timeout_s: float = 3.0) -> list[Problem]:
    """Connect to the OPA server, Redis and every ``jwks_uri``; one problem per failure."""
    checks: list[tuple[str, asyncio.Task[None]]] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        if settings.pdp is not None and settings.pdp.engine == "opa":
            url = settings.pdp.url.rstrip("/") + "/health"
            checks.append(("pdp.url", asyncio.create_task(_http_ok(session, url))))
        for index, issuer in enumerate(settings.issuers):
            if issuer.jwks_uri is not None:
                task = asyncio.create_task(_http_ok(session, issuer.jwks_uri))
                checks.append((f"issuers.{index}.jwks_uri", task))
        if settings.state.backend == "redis" and settings.state.redis_url is not None:
            task = asyncio.create_task(_redis_ok(settings, timeout_s))
            checks.append(("state.redis_url", task))
        problems: list[Problem] = []
        for key, task in checks:
            try:
                await task
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                problems.append((key, f"unreachable: {_short(exc) or type(exc).__name__}"))
    return problems


async def _http_ok(session: aiohttp.ClientSession, url: str) -> None:
    # SECURITY: no redirects, as at run time; a 3xx is a failure.
    async with session.get(url, allow_redirects=False) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")


async def _redis_ok(settings: Settings, timeout_s: float) -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    url = settings.state.redis_url
    if url is None:
        raise ValueError("no redis_url")
    client = aioredis.Redis.from_url(
        url.reveal_str(),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    try:
        await client.ping()
    except RedisError as exc:
        # SECURITY: redis-py's messages can carry the URL (and its password): type only.
        raise ValueError(type(exc).__name__) from None
    finally:
        await client.aclose()
