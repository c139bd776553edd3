"""``api_key``: a static key in a header (default ``X-API-Key``) or in one query parameter.

The secret is read through :class:`gateway.settings.Secret` on every use, so a ``file:``
secret rotated on disk is picked up without a restart; an unreadable one raises 503
(``SecretUnavailable``) and the request is not forwarded. In the query, only our parameter
changes: every other pair keeps its bytes (the PDP saw them), any client-sent copy of ours,
however encoded, is dropped, and the parameter is scrubbed from ``Location`` /
``Content-Location`` of the answer (:attr:`Outbound.scrub_query`).
"""

from __future__ import annotations

from urllib.parse import quote, unquote_plus

from yarl import URL

from gateway.credentials import BuildContext, ConvertContext, NoLifecycle, Outbound, Registration
from gateway.settings.credentials import APIKeyCredential


class APIKeyConverter(NoLifecycle):
    def __init__(self, name: str, cfg: APIKeyCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        value = self._cfg.secret.reveal_str()
        if self._cfg.header is not None:
            out.headers[self._cfg.header] = value
            return
        param = self._cfg.query_param
        if param is None:  # settings require one of the two
            raise ValueError("api_key credential has neither header nor query_param")
        kept = [
            pair
            for pair in out.url.raw_query_string.split("&")
            if pair and unquote_plus(pair.partition("=")[0]) != param
        ]
        kept.append(f"{quote(param, safe='')}={quote(value, safe='')}")
        out.url = URL(f"{out.url.with_query(None)}?{'&'.join(kept)}", encoded=True)
        out.scrub_query = frozenset({param})


def _build(name: str, cfg: APIKeyCredential, ctx: BuildContext) -> APIKeyConverter:
    return APIKeyConverter(name, cfg)


REGISTRATION = Registration("api_key", APIKeyCredential, _build)
