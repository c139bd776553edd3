"""The one way the gateway builds an outbound HTTP client session.

Every client of a dependency (the OPA PDP, JWKS fetchers, RFC 7662 introspection, OAuth token
endpoints for client credentials and RFC 8693 token exchange) and the upstream forwarder get
their ``aiohttp.ClientSession`` from :func:`client_session`. The session it returns:

- **never follows a redirect.** Each call site passes ``allow_redirects=False`` and treats a
  3xx as the dependency's failure (503) or, for the upstream, as the answer to relay. As a
  second line, a ``TraceConfig`` refuses any redirect a future call site would let aiohttp
  follow (its default is to follow, for POST too, re-sending the body on 307/308): it raises
  :class:`RedirectRefused`, an ``aiohttp.ClientError``, after the 3xx is read and *before* a
  connection to the new location is opened, so the call site's existing ``ClientError``
  mapping fails closed. A PDP, key server or authorization server never chooses where the
  gateway sends policy input, client secrets or tokens: that is configuration.
- **ignores the process environment** (``trust_env=False``): no ``HTTP(S)_PROXY`` routing of
  policy input or secrets through a proxy the operator did not configure, no ``~/.netrc``
  credentials added to requests.
- **keeps no cookies** (``DummyCookieJar``): a dependency cannot plant state that would ride
  along on later requests made for other callers.

The JWKS fetcher :mod:`gateway.jose.jwks`, when no session is handed to it (the verification kit
:mod:`gateway.sdk.txn` in an internal service), builds its own the same way by hand: the JOSE
layer imports nothing else of the gateway.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp


class RedirectRefused(aiohttp.ClientError):
    """A dependency answered a redirect and a call site let aiohttp follow it."""

    def __init__(self, status: int) -> None:
        super().__init__(f"redirect refused (HTTP {status})")
        self.status = status


async def _refuse_redirect(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    # SECURITY: fires before aiohttp opens a connection to the Location (issue 12).
    params.response.close()
    raise RedirectRefused(params.response.status)


def _no_redirects() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_request_redirect.append(_refuse_redirect)
    return config


def client_session(**options: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` with the guarantees of the module docstring.

    ``options`` are passed to ``ClientSession`` (``connector``, ``timeout``,
    ``auto_decompress``, ``skip_auto_headers``...); ``trust_env``, ``cookie_jar`` and
    ``trace_configs`` are fixed here and may not be given.
    """
    fixed = {"trust_env", "cookie_jar", "trace_configs"} & options.keys()
    if fixed:
        raise TypeError(f"client_session() fixes {sorted(fixed)}; do not pass them")
    return aiohttp.ClientSession(
        trust_env=False,  # SECURITY: no proxy or netrc from the environment
        cookie_jar=aiohttp.DummyCookieJar(),  # SECURITY: no state planted by a dependency
        trace_configs=[_no_redirects()],  # SECURITY: a forgotten allow_redirects fails closed
        **options,
    )
