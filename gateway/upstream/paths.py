r"""Request path normalisation: one rule, applied once, seen by router, PDP and upstream alike.

Contract: :func:`normalize_path` takes the raw path of an origin-form request-target (RFC 9112
§3.2.1; the caller has already split off ``?query``) and returns the canonical path, or raises
:class:`gateway.errors.InvalidPath` (400, ``invalid_path``). The returned string is byte-for-byte
what route matching, the policy input and the upstream request line all use (DESIGN.md §6), so no
component downstream of the gateway can be shown a different path than the one that was
authorised. It is pure and runs on every request; a path that is already canonical (the common
case) is recognised by a single regular expression and returned as is.

Rules, in order (README-ready; "400" is ``InvalidPath``):

| input | result | reference |
|---|---|---|
| not starting with `/` (`*`, `http://x/a`, empty) | 400 | RFC 9112 §3.2.1 |
| over `MAX_PATH_BYTES` (8192), before or after | 400 | bounded work |
| control char, space, DEL or non-ASCII, raw | 400 | RFC 3986 §2 |
| raw `\` | 400 | IIS, Windows: `\` = `/` |
| `;` raw or as `%3B` | 400 | Tomcat `/a/..;/b` |
| raw `?` or `#` | 400 | RFC 9112 §3.2.1 |
| raw `"` `<` `>` `` ` `` `{` `}` `\|` `^` `[` `]` | `%XX` (uppercase) | RFC 3986 §3.3 |
| bad escape (`%zz`, `%4`, `%`) | 400 | RFC 3986 §2.1 |
| `%2F`, `%5C`, `%00`, `%01`-`%1F`, `%7F` | 400 | see below |
| `%41` `%7e` `%2e` `%2D` `%5F` (unreserved) | `A` `~` `.` `-` `_` | RFC 3986 §6.2.2.2 |
| other escapes: `%3a`, `%c3%a9`, `%25` | `%3A`, `%C3%A9`, `%25` | RFC 3986 §6.2.2.1 |
| `//a//b` | `/a/b` | merge slashes |
| `/a/./b`, `/a/../../etc/passwd`, `/%2e%2e/x` | `/a/b`, `/etc/passwd`, `/x` | RFC 3986 §5.2.4 |
| `/a/b/..`, `/a/.` | `/a/` | RFC 3986 §5.2.4 |
| `/A/B` | `/A/B` (case kept) | RFC 3986 §6.2.2.1 |

Why the choices beyond RFC 3986:

- Path parameters (``;``) are refused rather than stripped: Tomcat and Spring drop ``;...``
  from each segment, so ``/public/..;/admin`` reaches ``/admin`` behind a proxy that saw
  ``/public/..;/admin``. Nothing in the agent APIs we front needs them.
- Raw non-ASCII is refused rather than percent-encoded: a client must send UTF-8
  percent-encoded (RFC 3986 §2.5), and refusing avoids guessing the encoding of raw bytes.
- Escaped ``/`` ``\`` ``;`` and controls are refused: an upstream that decodes them would route
  on a different path than the one authorised, or log or echo a line break.
- Characters RFC 3986 forbids but browsers send raw (``{`` ``|`` ...) are encoded, so each path
  has exactly one spelling.
- ``..`` never rises above ``/``, dot segments are resolved *after* unreserved escapes are
  decoded, and repeated slashes are merged, as most servers do before routing.

Upstreams must decode the path at most once: ``%25`` is passed through unchanged, so an
upstream that decodes twice would see ``%2e`` where we saw ``%252e``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from gateway.errors import InvalidPath

MAX_PATH_BYTES = 8192

# A path already in canonical form: segments of allowed raw characters that never start with
# '.', so none can be a dot segment; no '%', no empty segment except a final one.
_CANONICAL = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)*/?")

# SECURITY: raw characters refused outright (rules 3-6). Anything above 0x7e is non-ASCII.
_REJECT_RAW = re.compile(r"[^\x21-\x7e]|[\\;?#]")

# Raw characters that RFC 3986 forbids in a path but clients do send: one canonical spelling.
_NEEDS_ENCODING = re.compile(r'["<>`{}|^\[\]]')
_ENCODE_RAW = str.maketrans({c: f"%{ord(c):02X}" for c in '"<>`{}|^[]'})

_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# SECURITY: escaped bytes an upstream would turn into a separator, a terminator or a control
# character once decoded: '/', '\', ';', NUL and the other C0 controls, DEL (rule 9).
_REJECT_ESCAPED = frozenset([*range(0x20), 0x7F, 0x2F, 0x5C, 0x3B])


def normalize_path(raw: str) -> str:
    """Return the canonical form of ``raw`` or raise :class:`InvalidPath` (see module table)."""
    # SECURITY: only origin-form targets; '*' and absolute-form never reach routing.
    if not raw.startswith("/"):
        raise InvalidPath("request-target path does not start with '/'")
    if len(raw) > MAX_PATH_BYTES:
        raise InvalidPath(f"path longer than {MAX_PATH_BYTES} bytes")
    if _CANONICAL.fullmatch(raw):
        return raw
    bad = _REJECT_RAW.search(raw)
    if bad is not None:
        # SECURITY: detail is for the audit log only; repr() keeps control characters inert.
        raise InvalidPath(f"forbidden raw character {bad.group()!r} in path")
    path = raw.translate(_ENCODE_RAW) if _NEEDS_ENCODING.search(raw) else raw
    if "%" in path:
        path = _normalize_escapes(path)
    path = _remove_dot_segments(path)
    if len(path) > MAX_PATH_BYTES:
        raise InvalidPath(f"normalised path longer than {MAX_PATH_BYTES} bytes")
    return path


def _normalize_escapes(path: str) -> str:
    """Decode escaped unreserved characters, uppercase the rest, refuse bad ones (RFC 3986 §2)."""
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        pair = part[:2]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise InvalidPath("malformed percent-escape in path")
        value = int(pair, 16)
        if value in _REJECT_ESCAPED:
            raise InvalidPath(f"forbidden escaped byte %{value:02X} in path")
        char = chr(value)
        out.append(char if char in _UNRESERVED else f"%{pair.upper()}")
        out.append(part[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """Merge slashes and resolve '.' and '..' (RFC 3986 §5.2.4), never rising above '/'."""
    segments = path.split("/")[1:]  # path starts with '/', so element 0 is always ''
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    # A final '', '.' or '..' segment denotes a directory: the output keeps its trailing '/'.
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


def drop_query_params(raw_query: str, names: frozenset[str]) -> str:
    """``raw_query`` without the parameters named in ``names``; the rest kept byte for byte.

    Used to remove credentials sent in the query (an API key parameter) so that neither
    the policy input nor the upstream ever sees them.
    """
    if not names or not raw_query:
        return raw_query
    kept = [
        pair for pair in raw_query.split("&") if unquote_plus(pair.partition("=")[0]) not in names
    ]
    return "&".join(kept)
