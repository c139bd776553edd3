"""RFC 9421 §2: component values and the signature base, the same bytes for signer and verifier.

:class:`Request` is a request as the signature sees it -- method, scheme, the authority
(``Host``) and the request target exactly as sent or received, and its field lines -- with
no HTTP library behind it. :meth:`Request.component` derives one covered component:

* header fields (§2.1): every field line of that name, each trimmed of SP/HTAB, joined ``", "``;
* ``@method`` (§2.2.1) as given; ``@scheme`` (§2.2.4) lowercased;
* ``@target-uri`` (§2.2.2): ``{scheme}://{authority}{target}``;
* ``@authority`` (§2.2.3): lowercased, the scheme's default port removed;
* ``@request-target`` (§2.2.5), ``@path`` (§2.2.6, ``/`` when empty) and ``@query``
  (§2.2.7, ``?`` when absent or empty) from the target as given, never re-encoded.

Any other derived component (``@query-param``, ``@status``...) and an absent field raise
:class:`ComponentUnavailable` (§2.5: the signer or verifier must fail).

:func:`signature_base` (§2.5) is one ``"<name>": <value>`` line per covered component in order,
then ``"@signature-params": <inner list>`` serialised canonically (RFC 8941 §4.1.1.1). A base
that is not ASCII raises :class:`ComponentUnavailable`: it can be neither signed nor verified.

This module imports nothing of the gateway: the agent SDK uses it as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.httpsig.errors import ComponentUnavailable
from gateway.httpsig.sfv import InnerList, serialize_inner_list

DERIVED = frozenset(
    {"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query"}
)
_DEFAULT_PORTS = {"https": ":443", "http": ":80"}


def _no_fields(name: str) -> Sequence[str]:
    return ()


@dataclass(frozen=True, slots=True)
class Request:
    """A request as RFC 9421 covers it; ``fields(name)`` gives the field lines of one name."""

    method: str
    scheme: str
    authority: str  # the Host header (RFC 9110 §7.2) as sent or received
    target: str  # the request-target (origin-form) as sent or received
    fields: Callable[[str], Sequence[str]] = _no_fields

    def component(self, name: str) -> str:
        """The §2 value of one covered component; :class:`ComponentUnavailable` if none."""
        if name == "@method":
            return self.method
        if name == "@scheme":
            return self.scheme.lower()
        if name == "@target-uri":
            return f"{self.scheme.lower()}://{self.authority}{self.target}"
        if name == "@authority":
            return authority(self.authority, self.scheme)
        if name == "@request-target":
            return self.target
        path, qmark, query = self.target.partition("?")
        if name == "@path":
            return path or "/"
        if name == "@query":
            return "?" + query if qmark else "?"
        if name.startswith("@"):
            raise ComponentUnavailable(f"unsupported derived component {name[:32]!r}")
        values = self.fields(name)
        if not values:
            raise ComponentUnavailable(f"covered field {name[:64]!r} is absent")
        return ", ".join(v.strip(" \t") for v in values)


def authority(host: str, scheme: str) -> str:
    """§2.2.3: the authority lowercased, without the scheme's default port."""
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default and host.endswith(default):
        return host[: -len(default)]
    return host


def signature_base(
    params: InnerList, value_of: Callable[[str], str], serialized: str | None = None
) -> bytes:
    """§2.5: the signature base for ``params`` (the ``@signature-params`` inner list).

    ``value_of`` gives each covered component's value (usually :meth:`Request.component`)
    and raises :class:`ComponentUnavailable` for one it cannot produce. ``serialized`` is
    ``params`` already serialised (``SignatureFields.params_text``), to skip doing it again.
    """
    names = [str(item.value) for item in params.items]
    lines = [f'"{name}": {value_of(name)}' for name in names]
    if serialized is None:
        serialized = serialize_inner_list(params)
    lines.append(f'"@signature-params": {serialized}')
    text = "\n".join(lines)
    if not text.isascii():
        # SECURITY: RFC 9421 §2.5: a base that is not ASCII cannot be signed or verified.
        raise ComponentUnavailable("non-ASCII component value")
    return text.encode("ascii")
