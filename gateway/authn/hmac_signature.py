"""``hmac``: RFC 9421 HTTP Message Signatures with ``hmac-sha256`` and pre-shared keys.

Contract:

* No ``Signature-Input`` header: ``None`` (not mine).
* 400 ``invalid_request`` when the fields are malformed: ``Signature-Input`` / ``Signature`` are
  RFC 8941 Dictionaries (§3.2; parsed strictly, duplicate keys refused); exactly one signature
  label, the same in both fields (RFC 9421 §4.1, §4.2); covered components are sf-strings
  (§2), lowercase, unique, never ``@signature-params``; ``created``/``expires`` are Integers,
  ``keyid``/``alg``/``nonce``/``tag`` Strings (§2.3).
* 401 ``invalid_token`` (``Bearer`` challenge) when it does not verify: unknown ``keyid``;
  ``alg`` present and not ``hmac-sha256`` (§3.3.3); a component of ``required_components``
  not covered (``created`` in that list means "the ``created`` parameter is present"); ``created``
  more than ``max_skew_s`` away from now; ``expires`` passed (no leeway: the signer chose it);
  a covered header field absent; an unsupported derived component or component parameter;
  a wrong MAC (compared with :func:`hmac.compare_digest`); a wrong ``Content-Digest``; or the
  same (keyid, signature) seen before within the replay window.
* 413 when ``content-digest`` is covered and the body exceeds ``max_body_bytes``; 503 when the
  replay store is unusable.

Signature base (RFC 9421 §2.5): one line ``"<component>": <value>`` per covered component, in
order, then ``"@signature-params": <inner list>`` re-serialised canonically (RFC 8941 §4.1.1.1)
from the parsed ``Signature-Input`` member. Values:

* header fields (§2.1): all field lines of that name, each trimmed, joined with ``", "``;
* ``@method`` (§2.2.1): the method as received; ``@scheme`` (§2.2.4): the listener's scheme;
* ``@target-uri`` (§2.2.2): ``{scheme}://{Host}{request-target}`` -- listener scheme, the
  ``Host`` header and the request target exactly as received (never ``X-Forwarded-*``);
* ``@authority`` (§2.2.3): ``Host`` lowercased, default port removed;
* ``@request-target`` (§2.2.5), ``@path`` (§2.2.6), ``@query`` (§2.2.7, ``?`` when empty):
  from the request target *as received*, before the gateway's path normalisation (DESIGN.md §6).
  The normalisation is a deterministic function of the signed path, so the path the upstream
  gets is still fixed by the signature.

``Content-Digest`` (RFC 9530 §2): when covered, the whole body is read (bounded by
``max_body_bytes``), every ``sha-256`` / ``sha-512`` member present must match (others are
ignored; at least one supported member is required); the body is read through the request's
bounded :class:`gateway.context.Body`, which keeps the bytes for the forwarder.

Principal: the key record's ``subject``, ``roles``, ``type`` (default ``service``);
``client_id`` = ``keyid``; ``amr = ("swk",)`` -- RFC 8176 §2 proof-of-possession of a
software-secured key: the MAC proves possession of the shared key without sending it.

The RFC work -- reading the fields, the signature base, the MAC, ``Content-Digest`` -- is
:mod:`gateway.httpsig`, the same code the outbound ``hmac_sign`` credential signs with. This
module holds the policy (keys, required components, clock skew, replay, the body bound) and
maps that package's errors where it calls it: ``MalformedSignature`` to 400 and
``InvalidSignature`` to 401, with the texts above.
"""

from __future__ import annotations

import hashlib
from types import MappingProxyType
from typing import ClassVar, Self

from gateway.authn.base import invalid_request, invalid_token
from gateway.authn.credfiles import HMACKeyRecord, load_hmac_keys
from gateway.authn.registry import BuildEnv, register
from gateway.context import Inbound, Principal, RequestFacts
from gateway.errors import (
    BadRequest,
    GatewayError,
    ServiceUnavailable,
    Unauthorized,
)
from gateway.httpsig import (
    ComponentUnavailable,
    InvalidSignature,
    MalformedSignature,
    Request,
    SignatureFields,
    digest,
    hmac_sha256,
    parse_signature_fields,
    signature_base,
)
from gateway.settings import HMACMethod
from gateway.state import ReplayCache

AMR = ("swk",)  # RFC 8176 §2
ALGORITHM = hmac_sha256.ALGORITHM  # RFC 9421 §3.3.3


def message(request: Inbound, facts: RequestFacts) -> Request:
    """The request as RFC 9421 covers it: listener scheme, ``Host`` and target as received."""
    return Request(
        method=request.method,
        scheme=facts.scheme,
        authority=facts.host,
        target=request.raw_path,
        fields=lambda name: request.headers.getall(name, ()),
    )


def parse_fields(request: Inbound) -> SignatureFields | None:
    """Both signature fields parsed, ``None`` without ``Signature-Input``; 400/401 if malformed."""
    inputs = request.headers.getall("Signature-Input", ())
    if not inputs:
        return None
    signatures = request.headers.getall("Signature", ())
    if not signatures:
        raise invalid_request("Signature-Input without Signature")
    try:
        return parse_signature_fields(inputs, signatures)
    except (MalformedSignature, InvalidSignature) as exc:
        raise _mapped(exc) from None


def _mapped(exc: MalformedSignature | InvalidSignature) -> BadRequest | Unauthorized:
    if isinstance(exc, MalformedSignature):
        return invalid_request(str(exc))
    return invalid_token(str(exc))


# --------------------------------------------------------------------------- the method


@register
class HMACSignatureAuthenticator:
    type_id: ClassVar[str] = "hmac"
    config_model: ClassVar[type[HMACMethod]] = HMACMethod
    primary_rank: ClassVar[int] = 4  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, name: str, cfg: HMACMethod, env: BuildEnv) -> Self:
        max_body = env.settings.server.limits.max_body_bytes
        return cls(name, cfg, env.replay, max_body_bytes=max_body)

    def __init__(
        self, name: str, cfg: HMACMethod, replay: ReplayCache, *, max_body_bytes: int
    ) -> None:
        self.name = name
        self._replay = replay
        self._max_body = max_body_bytes
        self._skew = cfg.max_skew_s
        self._window = cfg.replay_window_s
        self._require_created = "created" in cfg.required_components
        self._required = tuple(c for c in cfg.required_components if c != "created")
        self._keys: dict[str, tuple[HMACKeyRecord, bytes]] = {
            record.id: (record, record.key()) for record in load_hmac_keys(cfg.keys_file)
        }

    def __repr__(self) -> str:
        return f"HMACSignatureAuthenticator({self.name!r}, keys={len(self._keys)})"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def challenge(self) -> str | None:
        return None

    def credential_headers(self) -> tuple[str, ...]:
        return ("Signature", "Signature-Input")

    def credential_query_params(self) -> tuple[str, ...]:
        return ()

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        parsed = parse_fields(request)
        if parsed is None:
            return None
        keyid = str(parsed.params["keyid"])
        entry = self._keys.get(keyid)
        if entry is None:
            raise invalid_token(
                "unknown signature key", detail=f"hmac: unknown keyid {keyid[:64]!r}"
            )
        record, key = entry
        now = facts.time_ns / 1e9
        self._check_params(parsed, now)
        try:
            base = signature_base(
                parsed.params_list, message(request, facts).component, parsed.params_text
            )
        except ComponentUnavailable:
            raise invalid_token("covered component missing or unsupported") from None
        try:
            hmac_sha256.verify(key, base, parsed.signature)
        except InvalidSignature:
            raise invalid_token(
                "signature mismatch", detail=f"hmac: bad signature for {keyid!r}"
            ) from None
        if "content-digest" in parsed.covered:
            await self._check_content_digest(request)
        await self._first_use(keyid, parsed, now)
        expires = parsed.params.get("expires")
        return Principal(
            method=self.name,
            subject=record.subject,
            subject_type=record.type,
            client_id=record.id,
            roles=record.roles,
            amr=AMR,
            claims=MappingProxyType(
                {
                    "keyid": keyid,
                    "label": parsed.label,
                    "covered": list(parsed.covered),
                    "created": parsed.params.get("created"),
                }
            ),
            expires_at=float(expires) if isinstance(expires, int) else None,
        )

    def _check_params(self, parsed: SignatureFields, now: float) -> None:
        alg = parsed.params.get("alg")
        if alg is not None and alg != ALGORITHM:
            raise invalid_token("unsupported signature algorithm")
        missing = [c for c in self._required if c not in parsed.covered]
        if missing or (self._require_created and "created" not in parsed.params):
            raise invalid_token(
                "signature does not cover the required components",
                detail=f"hmac: missing {missing or ['created']}",
            )
        created = parsed.params.get("created")
        # SECURITY: a bounded freshness window keeps the replay cache finite (RFC 9421 §7.2.2).
        if isinstance(created, int) and abs(now - created) > self._skew:
            raise invalid_token("signature created outside the allowed clock skew")
        expires = parsed.params.get("expires")
        if isinstance(expires, int) and now > expires:
            raise invalid_token("signature expired")

    async def _check_content_digest(self, request: Inbound) -> None:
        try:
            wanted = digest.wanted_digests(request.headers.getall("Content-Digest", ()))
        except (MalformedSignature, InvalidSignature) as exc:
            raise _mapped(exc) from None
        # The bounded body-read step (gateway.protocols.body): read once, then forwarded as is.
        body = await request.body.read()
        try:
            digest.check_digests(body, wanted)
        except InvalidSignature as exc:
            raise invalid_token(str(exc)) from None

    async def _first_use(self, keyid: str, parsed: SignatureFields, now: float) -> None:
        created = parsed.params.get("created")
        ttl = self._window
        if isinstance(created, int):
            # SECURITY: remember the signature for at least as long as it stays acceptable.
            ttl = max(ttl, created + self._skew - now + 1.0)
        key = f"hmac:{keyid}:{hashlib.sha256(parsed.signature).hexdigest()}"
        try:
            first = await self._replay.first_use(key, ttl)
        except GatewayError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                f"replay store error: {type(exc).__name__}", reason="state_unavailable"
            ) from None
        if not first:
            raise invalid_token("signature replayed", detail=f"hmac: replay for {keyid!r}")
