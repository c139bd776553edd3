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
ignored; at least one supported member is required), and the bytes are kept under
:data:`gateway.context.BUFFERED_BODY_KEY` for the forwarder.

Principal: the key record's ``subject``, ``roles``, ``type`` (default ``service``);
``client_id`` = ``keyid``; ``amr = ("swk",)`` -- RFC 8176 §2 proof-of-possession of a
software-secured key: the MAC proves possession of the shared key without sending it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from aiohttp import web

from gateway.authn.base import invalid_request, invalid_token
from gateway.authn.credfiles import HMACKeyRecord, load_hmac_keys
from gateway.context import BUFFERED_BODY_KEY, Principal, RequestFacts
from gateway.errors import GatewayError, PayloadTooLarge, ServiceUnavailable
from gateway.settings import HMACMethod
from gateway.state import ReplayCache

AMR = ("swk",)  # RFC 8176 §2
ALGORITHM = "hmac-sha256"  # RFC 9421 §3.3.3
DERIVED = frozenset(
    {"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query"}
)
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}  # RFC 9530 §5
_COMPONENT = re.compile(r"@?[a-z0-9!#$%&'*+.^_`|~-]+")
_READ_CHUNK = 64 * 1024
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_INTEGER = re.compile(r"-?[0-9]{1,15}")
_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_ESCAPE = re.compile(r"\\(.)")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_BOOLEAN = re.compile(r"\?[01]")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*")


# --------------------------------------------------------------------------- RFC 8941


class SFError(ValueError):
    """A structured field value that does not parse (RFC 8941 §4.2: fail the whole field)."""


class Token(str):
    """An sf-token, kept apart from an sf-string so it serialises back without quotes."""

    __slots__ = ()


BareItem = int | str | bytes | bool
Params = tuple[tuple[str, BareItem], ...]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Params = ()


@dataclass(frozen=True, slots=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = ()


class _Parser:
    """RFC 8941 §4.2 parsing for Dictionaries; decimals (unused by RFC 9421) are refused."""

    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise SFError("non-ASCII structured field")
        self.s = text.lstrip(" ")
        self.i = 0

    def dictionary(self) -> dict[str, Item | InnerList]:
        out: dict[str, Item | InnerList] = {}
        while self.i < len(self.s):
            key = self._key()
            member: Item | InnerList
            if self._peek() == "=":
                self.i += 1
                member = self._inner_list() if self._peek() == "(" else self._item()
            else:
                member = Item(True, self._params())
            if key in out:
                # SECURITY: RFC 8941 lets the last one win; two members with one name are
                # ambiguous between parsers, so refuse them.
                raise SFError("duplicate dictionary key")
            out[key] = member
            self._ows()
            if self.i == len(self.s):
                return out
            self._expect(",")
            self._ows()
            if self.i == len(self.s):
                raise SFError("trailing comma")
        return out

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _expect(self, ch: str) -> None:
        if self._peek() != ch:
            raise SFError(f"expected {ch!r}")
        self.i += 1

    def _ows(self) -> None:
        while self._peek() in (" ", "\t"):
            self.i += 1

    def _sp(self) -> None:
        while self._peek() == " ":
            self.i += 1

    def _key(self) -> str:
        m = _KEY.match(self.s, self.i)
        if m is None:
            raise SFError("bad key")
        self.i = m.end()
        return m.group()

    def _inner_list(self) -> InnerList:
        self._expect("(")
        items: list[Item] = []
        while True:
            self._sp()
            if self._peek() == ")":
                self.i += 1
                return InnerList(tuple(items), self._params())
            items.append(self._item())
            if self._peek() not in (" ", ")"):
                raise SFError("bad inner list")

    def _item(self) -> Item:
        value = self._bare()
        return Item(value, self._params())

    def _params(self) -> Params:
        out: list[tuple[str, BareItem]] = []
        while self._peek() == ";":
            self.i += 1
            self._sp()
            key = self._key()
            value: BareItem = True
            if self._peek() == "=":
                self.i += 1
                value = self._bare()
            if any(k == key for k, _ in out):
                raise SFError("duplicate parameter")
            out.append((key, value))
        return tuple(out)

    def _bare(self) -> BareItem:
        ch = self._peek()
        if ch == "-" or ch.isdigit():
            m = _INTEGER.match(self.s, self.i)
            if m is None or self.s[m.end() : m.end() + 1] == ".":
                raise SFError("bad integer (decimals are not supported)")
            self.i = m.end()
            return int(m.group())
        if ch == '"':
            m = _STRING.match(self.s, self.i)
            if m is None:
                raise SFError("bad string")
            self.i = m.end()
            text = m.group(1)
            return _ESCAPE.sub(r"\1", text) if "\\" in text else text
        if ch == ":":
            m = _BYTES.match(self.s, self.i)
            if m is None:
                raise SFError("bad byte sequence")
            self.i = m.end()
            try:
                return base64.b64decode(m.group(1), validate=True)
            except binascii.Error:
                raise SFError("bad byte sequence") from None
        if ch == "?":
            m = _BOOLEAN.match(self.s, self.i)
            if m is None:
                raise SFError("bad boolean")
            self.i = m.end()
            return m.group() == "?1"
        m = _TOKEN.match(self.s, self.i)
        if m is None:
            raise SFError("bad item")
        self.i = m.end()
        return Token(m.group())


def parse_dictionary(text: str) -> dict[str, Item | InnerList]:
    parser = _Parser(text.rstrip(" "))
    return parser.dictionary()


def serialize_bare(value: BareItem) -> str:
    """RFC 8941 §4.1.3 (Integer, String, Token, Byte Sequence, Boolean)."""
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    if isinstance(value, Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_params(params: Params) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_bare(v)}" for k, v in params)


def serialize_inner_list(value: InnerList) -> str:
    """RFC 8941 §4.1.1.1: the ``@signature-params`` value of RFC 9421 §2.3."""
    items = " ".join(serialize_bare(i.value) + serialize_params(i.params) for i in value.items)
    return f"({items}){serialize_params(value.params)}"


# --------------------------------------------------------------------------- RFC 9421


def _default_port_stripped(host: str, scheme: str) -> str:
    host = host.lower()
    default = {"https": ":443", "http": ":80"}.get(scheme.lower())
    if default and host.endswith(default):
        return host[: -len(default)]
    return host


def component_value(name: str, request: web.BaseRequest, facts: RequestFacts) -> str:
    """The RFC 9421 §2 value of one covered component; KeyError if it cannot be produced."""
    raw_target = request.raw_path
    raw_path, qmark, raw_query = raw_target.partition("?")
    if name == "@method":
        return request.method
    if name == "@scheme":
        return facts.scheme.lower()
    if name == "@target-uri":
        return f"{facts.scheme.lower()}://{facts.host}{raw_target}"
    if name == "@authority":
        return _default_port_stripped(facts.host, facts.scheme)
    if name == "@request-target":
        return raw_target
    if name == "@path":
        return raw_path or "/"
    if name == "@query":
        return "?" + raw_query if qmark else "?"
    if name.startswith("@"):
        raise KeyError(name)
    values = request.headers.getall(name, ())
    if not values:
        raise KeyError(name)
    return ", ".join(v.strip(" \t") for v in values)


def signature_base(
    request: web.BaseRequest, facts: RequestFacts, signature_params: InnerList
) -> bytes:
    """RFC 9421 §2.5 signature base for ``signature_params`` (the parsed inner list)."""
    lines = []
    for item in signature_params.items:
        name = str(item.value)
        lines.append(f'"{name}": {component_value(name, request, facts)}')
    lines.append(f'"@signature-params": {serialize_inner_list(signature_params)}')
    text = "\n".join(lines)
    if not text.isascii():
        # RFC 9421 §2.5: a base that is not ASCII cannot be signed or verified.
        raise KeyError("non-ASCII component value")
    return text.encode("ascii")


@dataclass(frozen=True, slots=True)
class _Parsed:
    label: str
    params_list: InnerList
    covered: tuple[str, ...]
    params: dict[str, BareItem]
    signature: bytes


_INT_PARAMS = frozenset({"created", "expires"})
_STR_PARAMS = frozenset({"keyid", "alg", "nonce", "tag"})


def parse_signature_fields(inputs: Sequence[str], signatures: Sequence[str]) -> _Parsed:
    """Parse ``Signature-Input`` and ``Signature``; raise BadRequest on anything malformed."""
    try:
        input_dict = parse_dictionary(", ".join(inputs))
        sig_dict = parse_dictionary(", ".join(signatures))
    except SFError as exc:
        raise invalid_request(f"malformed HTTP signature fields: {exc}") from None
    if len(input_dict) != 1 or len(sig_dict) != 1:
        raise invalid_request("exactly one HTTP message signature is accepted")
    ((label, params_list),) = input_dict.items()
    if label not in sig_dict:
        raise invalid_request("Signature and Signature-Input labels differ")
    sig_item = sig_dict[label]
    if not isinstance(params_list, InnerList):
        raise invalid_request("Signature-Input member is not an inner list")
    if not isinstance(sig_item, Item) or not isinstance(sig_item.value, bytes):
        raise invalid_request("Signature member is not a byte sequence")
    covered: list[str] = []
    for item in params_list.items:
        name = item.value
        if not isinstance(name, str) or isinstance(name, Token) or not _COMPONENT.fullmatch(name):
            raise invalid_request("covered components must be lowercase strings")
        if name in covered or name == "@signature-params":
            raise invalid_request("covered component repeated or reserved")
        if item.params:
            raise invalid_token("unsupported covered component parameter")
        covered.append(name)
    params: dict[str, BareItem] = {}
    for key, value in params_list.params:
        # ``type(...) is`` on purpose: a bool is an int and a Token is a str in Python.
        if (key in _INT_PARAMS and type(value) is not int) or (
            key in _STR_PARAMS and type(value) is not str
        ):
            raise invalid_request(f"signature parameter {key} has the wrong type")
        params[key] = value
    if "keyid" not in params:
        raise invalid_request("signature parameter keyid is required")
    return _Parsed(label, params_list, tuple(covered), params, sig_item.value)


# --------------------------------------------------------------------------- the method


class HMACSignatureAuthenticator:
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

    async def authenticate(self, request: web.BaseRequest, facts: RequestFacts) -> Principal | None:
        inputs = request.headers.getall("Signature-Input", ())
        if not inputs:
            return None
        signatures = request.headers.getall("Signature", ())
        if not signatures:
            raise invalid_request("Signature-Input without Signature")
        parsed = parse_signature_fields(inputs, signatures)
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
            base = signature_base(request, facts, parsed.params_list)
        except KeyError:
            raise invalid_token("covered component missing or unsupported") from None
        expected = hmac.new(key, base, hashlib.sha256).digest()
        # SECURITY: constant-time MAC comparison (RFC 9421 §3.3.3, CONVENTIONS.md).
        if not hmac.compare_digest(expected, parsed.signature):
            raise invalid_token("signature mismatch", detail=f"hmac: bad signature for {keyid!r}")
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

    def _check_params(self, parsed: _Parsed, now: float) -> None:
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

    async def _check_content_digest(self, request: web.BaseRequest) -> None:
        try:
            members = parse_dictionary(", ".join(request.headers.getall("Content-Digest", ())))
        except SFError:
            raise invalid_request("malformed Content-Digest") from None
        wanted: list[tuple[str, bytes]] = []
        for alg, member in members.items():
            if alg in _DIGESTS:
                if not isinstance(member, Item) or not isinstance(member.value, bytes):
                    raise invalid_request("malformed Content-Digest")
                wanted.append((alg, member.value))
        if not wanted:
            raise invalid_token("Content-Digest has no sha-256 or sha-512 member")
        body = await self._read_body(request)
        for alg, digest in wanted:
            # SECURITY: constant-time comparison of the body digest (RFC 9530 §2).
            if not hmac.compare_digest(_DIGESTS[alg](body).digest(), digest):
                raise invalid_token("Content-Digest does not match the body")
        if request.body_exists:
            request[BUFFERED_BODY_KEY] = body

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        buffered = request.get(BUFFERED_BODY_KEY)
        if isinstance(buffered, bytes):
            return buffered
        length = request.content_length
        if length is not None and length > self._max_body:
            raise PayloadTooLarge()
        chunks: list[bytes] = []
        total = 0
        while chunk := await request.content.read(_READ_CHUNK):
            total += len(chunk)
            # SECURITY: bounded whether or not Content-Length was sent (chunked bodies).
            if total > self._max_body:
                raise PayloadTooLarge()
            chunks.append(chunk)
        return b"".join(chunks)

    async def _first_use(self, keyid: str, parsed: _Parsed, now: float) -> None:
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
