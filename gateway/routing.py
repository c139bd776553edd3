"""Route matching (DESIGN.md §4).

Routes are tried in configuration order; the first whose ``match`` fits the
request wins. A match is a plain string prefix of the *normalised* path (see
:mod:`gateway.upstream.paths`), an optional method list and an optional host
list (exact names, or ``*.example.org`` for any name below that domain).
Hosts compare case-insensitively with any ``:port`` removed.

``RouteTable.match`` raises :class:`gateway.errors.NotFound` when nothing fits, or
:class:`gateway.errors.MethodNotAllowed` (405, with ``Allow``) when routes fit the host and
path but not the method; no other stage runs for such a request.

Routing sits beside :mod:`gateway.context` rather than in a stage package: it runs before
every stage, and every stage reads the :class:`CompiledRoute` it produced, while stages never
import each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from yarl import URL

from gateway.errors import MethodNotAllowed, NotFound
from gateway.settings.routes import Route


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[: host.find("]") + 1]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _host_matches(patterns: Sequence[str], host: str) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    settings: Route
    upstream: URL
    origin: str

    @classmethod
    def of(cls, route: Route) -> CompiledRoute:
        if not route.upstream:  # a route the gateway serves itself (kind != proxy)
            return cls(route, URL(), "")
        url = URL(route.upstream)
        return cls(route, url, str(url.origin()))

    @property
    def name(self) -> str:
        return self.settings.name

    def upstream_url(self, path: str, raw_query: str) -> URL:
        """The URL the upstream receives: its base path + our normalised path."""
        if self.settings.strip_prefix:
            prefix = self.settings.match.path_prefix.rstrip("/")
            path = path[len(prefix) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
        target = self.origin + self.upstream.raw_path.rstrip("/") + path
        if raw_query:
            target += "?" + raw_query
        # encoded=True: the path is already normalised and percent-encoded; yarl must
        # send it byte for byte (the PDP saw exactly these bytes).
        return URL(target, encoded=True)


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(CompiledRoute.of(r) for r in routes)

    def __iter__(self) -> Iterator[CompiledRoute]:
        return iter(self._routes)

    def match(self, method: str, host: str, path: str) -> CompiledRoute:
        """The first route that fits; :class:`NotFound`, or :class:`MethodNotAllowed` with
        ``Allow`` when routes fit the host and path but only for other methods."""
        bare_host = _host_only(host)
        allowed: set[str] = set()
        for route in self._routes:
            m = route.settings.match
            if not path.startswith(m.path_prefix):
                continue
            if m.hosts and not _host_matches(m.hosts, bare_host):
                continue
            if m.methods and method not in m.methods:
                allowed.update(m.methods)
                continue
            return route
        if allowed:
            # RFC 9110 §15.5.6: a 405 must list the methods the target supports.
            raise MethodNotAllowed(
                f"{method} on {path}", headers={"Allow": ", ".join(sorted(allowed))}
            )
        raise NotFound()
