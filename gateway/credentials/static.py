"""Static backend credentials: API key, HTTP Basic (RFC 7617), static bearer (RFC 6750).

The secret is read through :class:`gateway.settings.Secret` on every use, so a
``file:`` secret rotated on disk is picked up without a restart; an unreadable
one raises 503 (``SecretUnavailable``) and the request is not forwarded.
"""

from __future__ import annotations

import base64
from urllib.parse import quote, unquote_plus

from yarl import URL

from gateway.credentials import ConvertContext, Outbound
from gateway.settings import APIKeyCredential, BasicCredential, BearerStaticCredential


class _NoLifecycle:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class APIKeyConverter(_NoLifecycle):
    def __init__(self, name: str, cfg: APIKeyCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        value = self._cfg.secret.reveal_str()
        if self._cfg.header is not None:
            out.headers[self._cfg.header] = value
        else:
            param = self._cfg.query_param
            assert param is not None
            # Only our parameter changes: every other pair keeps its bytes (the PDP saw
            # them), and any client-sent copy of ours, however encoded, is dropped.
            kept = [
                pair
                for pair in out.url.raw_query_string.split("&")
                if pair and unquote_plus(pair.partition("=")[0]) != param
            ]
            kept.append(f"{quote(param, safe='')}={quote(value, safe='')}")
            out.url = URL(f"{out.url.with_query(None)}?{'&'.join(kept)}", encoded=True)
            out.scrub_query = frozenset({param})


class BasicConverter(_NoLifecycle):
    def __init__(self, name: str, cfg: BasicCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        raw = self._cfg.username.encode() + b":" + self._cfg.password.reveal()
        out.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")


class BearerStaticConverter(_NoLifecycle):
    def __init__(self, name: str, cfg: BearerStaticCredential) -> None:
        self.name = name
        self._cfg = cfg

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        out.headers["Authorization"] = "Bearer " + self._cfg.token.reveal_str()


class NoConverter(_NoLifecycle):
    """``type: none``: the backend is public; nothing is added."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        return None


class TxnTokenConverter(_NoLifecycle):
    """``type: txn_token``: the Txn-Token minted for this transaction (DESIGN.md §8)."""

    def __init__(self, name: str, header: str) -> None:
        self.name = name
        self._header = header

    async def apply(self, out: Outbound, ctx: ConvertContext) -> None:
        if ctx.txn_token is None:
            from gateway.errors import ServiceUnavailable

            # SECURITY: a route promised a Txn-Token; never forward without one.
            raise ServiceUnavailable("no Txn-Token was minted", reason="txn_token_missing")
        out.headers[self._header] = ctx.txn_token
