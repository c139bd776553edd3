"""``mtls``: the verified TLS client certificate as the principal (SPECS.md §11, RFC 8705 §2).

Input: ``facts.peer``, which the listener fills only after the TLS handshake has verified the
client certificate chain against ``server.tls.client_ca`` and after the X.509-SVID leaf rules
of SPIFFE X509-SVID §5.2 held (:mod:`gateway.net.spiffe`). This method does no cryptography: it
decides whether that already-verified identity is acceptable here.

Outcomes:

* ``None`` (not mine): the connection carried no client certificate.
* :class:`~gateway.context.Principal`: subject = the SPIFFE ID; ``subject_type`` from the
  longest ``subject_types`` path prefix that matches (default ``service``); ``issuer`` =
  ``spiffe://<trust-domain>`` (the trust domain's bundle is what vouched for the ID);
  ``amr = ("swk",)`` -- RFC 8176 §2 "proof-of-possession of a software-secured key": the
  handshake proved possession of the certificate's private key, and the gateway cannot tell
  whether that key is hardware-backed (``hwk``), so it claims the weaker value. RFC 8176 has no
  ``mtls`` value, and ``amr`` must hold registered values only. ``sender_constraint`` stays
  ``"none"``: authenticating the connection is not binding a token to it (RFC 8705 §3 binding is
  the bearer method's business). ``claims`` = ``spiffe_id``, ``trust_domain``, ``cert_sha256``.
* 401: a peer without a SPIFFE ID while ``require_spiffe_id`` (the default), or a SPIFFE ID from
  a trust domain that is neither ``server.trust_domain`` nor listed in ``trust_domains``.
  Without ``require_spiffe_id`` a non-SPIFFE peer authenticates as its RFC 4514 subject DN.

:meth:`MTLSAuthenticator.challenge` is None: nothing in ``WWW-Authenticate`` can ask for a
certificate; the TLS layer does that during the handshake.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar, Self

from gateway.authn.base import REALM, challenge
from gateway.authn.registry import BuildEnv, register
from gateway.context import Inbound, Peer, Principal, RequestFacts, SubjectType
from gateway.errors import Unauthorized
from gateway.settings.authn import MTLSMethod

AMR = ("swk",)  # RFC 8176 §2


@register
class MTLSAuthenticator:
    type_id: ClassVar[str] = "mtls"
    config_model: ClassVar[type[MTLSMethod]] = MTLSMethod
    primary_rank: ClassVar[int] = 7  # lower wins the subject (gateway.authn.compose)
    scoped: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, name: str, cfg: MTLSMethod, env: BuildEnv) -> Self:
        return cls(name, cfg, trust_domain=env.settings.server.trust_domain)

    def __init__(self, name: str, cfg: MTLSMethod, *, trust_domain: str) -> None:
        self.name = name
        self._require_spiffe_id = cfg.require_spiffe_id
        self._trust_domains = frozenset((trust_domain, *cfg.trust_domains))
        # Longest prefix first, so "/agent/device/" beats "/agent/" whatever the YAML order.
        self._subject_types: tuple[tuple[str, SubjectType], ...] = tuple(
            sorted(cfg.subject_types.items(), key=lambda kv: len(kv[0]), reverse=True)
        )

    def __repr__(self) -> str:
        return f"MTLSAuthenticator({self.name!r})"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def challenge(self) -> str | None:
        return None

    def credential_headers(self) -> tuple[str, ...]:
        return ()

    def credential_query_params(self) -> tuple[str, ...]:
        return ()

    async def authenticate(self, request: Inbound, facts: RequestFacts) -> Principal | None:
        peer = facts.peer
        if peer is None:
            return None  # no client certificate on this connection
        if peer.spiffe_id is None or peer.trust_domain is None:
            if self._require_spiffe_id:
                raise _refused("client certificate has no SPIFFE ID")
            return self._principal(peer, peer.subject, "service", issuer=peer.issuer)
        # SECURITY: the CA bundle may vouch for several trust domains; accept only ours
        # (SPIFFE-ID §2.1: the trust domain is the root of authority for the ID).
        if peer.trust_domain not in self._trust_domains:
            raise _refused("SPIFFE trust domain not accepted")
        path = peer.spiffe_id[len(f"spiffe://{peer.trust_domain}") :]
        return self._principal(
            peer,
            peer.spiffe_id,
            self._subject_type(path),
            issuer=f"spiffe://{peer.trust_domain}",
        )

    def _subject_type(self, path: str) -> SubjectType:
        for prefix, kind in self._subject_types:
            if path.startswith(prefix):
                return kind
        return "service"

    def _principal(self, peer: Peer, subject: str, kind: SubjectType, *, issuer: str) -> Principal:
        return Principal(
            method=self.name,
            subject=subject,
            subject_type=kind,
            issuer=issuer,
            amr=AMR,
            sender_constraint="none",
            claims=MappingProxyType(
                {
                    "spiffe_id": peer.spiffe_id,
                    "trust_domain": peer.trust_domain,
                    "cert_sha256": peer.cert_sha256,
                }
            ),
            expires_at=peer.not_after,
        )


def _refused(detail: str) -> Unauthorized:
    # No HTTP challenge can ask for a different certificate: offer the plain Bearer
    # challenge (RFC 9110 §11.6.1 wants one on every 401) without an ``error`` that would
    # wrongly blame an access token.
    return Unauthorized(
        detail,
        reason="authn_invalid",
        public="client certificate not accepted",
        headers={"WWW-Authenticate": challenge("Bearer", realm=REALM)},
    )
