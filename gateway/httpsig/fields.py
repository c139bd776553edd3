"""RFC 9421 §4: the ``Signature-Input`` and ``Signature`` fields, read strictly and written.

Reading (:func:`parse_signature_fields`), every refusal a :class:`MalformedSignature` unless
noted: both fields are RFC 8941 Dictionaries (§4.1, §4.2; duplicate keys refused); exactly one
signature label, the same in both; its ``Signature-Input`` member an Inner List and its
``Signature`` member a Byte Sequence; covered components sf-strings, lowercase (§2.1), unique
and never ``@signature-params`` (§2.3); a covered component with parameters (``;sf``, ``;key``,
``;req``...) is unsupported and raises :class:`InvalidSignature`; ``created``/``expires`` are
Integers and ``keyid``/``alg``/``nonce``/``tag`` Strings (§2.3); ``keyid`` is required (the
gateway's keys are looked up by it).

Fast path: a single field line each in the canonical form signers write (one label, quoted
components separated by one space, Integer and String parameters without escapes, no
whitespace) is matched by one regular expression instead of the general RFC 8941 parser. It
is a strict subset of the grammar and yields the same values; anything else (several lines,
escapes, Booleans, Tokens, odd spacing, a non-canonical Integer) takes the general parser.
Either way the same checks follow, and ``params_text`` is the canonical serialisation of the
inner list (the ``@signature-params`` value), which on the fast path is the text as received.

Writing (:func:`signature_params`, :func:`field_values`): the inner list for given components
and parameters, and the two field values under one label.

This module imports nothing of the gateway: the agent SDK uses it as well.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.httpsig.errors import InvalidSignature, MalformedSignature, SFError
from gateway.httpsig.sfv import (
    BareItem,
    InnerList,
    Item,
    Params,
    Token,
    parse_dictionary,
    serialize_dictionary,
    serialize_inner_list,
)

_COMPONENT = re.compile(r"@?[a-z0-9!#$%&'*+.^_`|~-]+")
_INT_PARAMS = frozenset({"created", "expires"})
_STR_PARAMS = frozenset({"keyid", "alg", "nonce", "tag"})

_KEY = r"[a-z*][a-z0-9_.*-]*"
_QUOTED_COMPONENT = r'"@?[a-z0-9!#$%&\'*+.^_`|~-]+"'
# Canonical Integers only (no leading zero, no "-0"), so the text is its own serialisation.
_FAST_PARAM_TEXT = rf';{_KEY}=(?:0|-?[1-9][0-9]{{0,14}}|"[\x20\x21\x23-\x5b\x5d-\x7e]*")'
_FAST_INPUT = re.compile(
    rf"({_KEY})=(\((?:{_QUOTED_COMPONENT}(?: {_QUOTED_COMPONENT})*)?\)(?:{_FAST_PARAM_TEXT})*)"
)
_FAST_PARAM = re.compile(
    rf';({_KEY})=(?:(0|-?[1-9][0-9]{{0,14}})|"([\x20\x21\x23-\x5b\x5d-\x7e]*)")'
)
_FAST_SIGNATURE = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]*={{0,2}}):")


@dataclass(frozen=True, slots=True)
class SignatureFields:
    """One signature, as read from the two fields."""

    label: str
    params_list: InnerList  # the Signature-Input member: the @signature-params value
    covered: tuple[str, ...]
    params: dict[str, BareItem]
    signature: bytes
    params_text: str  # the canonical serialisation of params_list


def parse_signature_fields(inputs: Sequence[str], signatures: Sequence[str]) -> SignatureFields:
    """Parse the field lines of ``Signature-Input`` and ``Signature`` (see the module text)."""
    if len(inputs) == 1 and len(signatures) == 1:
        fast = _parse_canonical(inputs[0], signatures[0])
        if fast is not None:
            return fast
    return _parse_general(inputs, signatures)


def _parse_general(inputs: Sequence[str], signatures: Sequence[str]) -> SignatureFields:
    """Any RFC 8941 form, through the general parser."""
    try:
        input_dict = parse_dictionary(", ".join(inputs))
        sig_dict = parse_dictionary(", ".join(signatures))
    except SFError as exc:
        raise MalformedSignature(f"malformed HTTP signature fields: {exc}") from None
    if len(input_dict) != 1 or len(sig_dict) != 1:
        raise MalformedSignature("exactly one HTTP message signature is accepted")
    ((label, params_list),) = input_dict.items()
    if label not in sig_dict:
        raise MalformedSignature("Signature and Signature-Input labels differ")
    sig_item = sig_dict[label]
    if not isinstance(params_list, InnerList):
        raise MalformedSignature("Signature-Input member is not an inner list")
    if not isinstance(sig_item, Item) or not isinstance(sig_item.value, bytes):
        raise MalformedSignature("Signature member is not a byte sequence")
    return SignatureFields(
        label,
        params_list,
        _covered(params_list),
        _params(params_list.params),
        sig_item.value,
        serialize_inner_list(params_list),
    )


def _parse_canonical(text: str, signature_text: str) -> SignatureFields | None:
    """The fast path (module text), or ``None`` to take the general parser."""
    matched = _FAST_INPUT.fullmatch(text)
    signed = _FAST_SIGNATURE.fullmatch(signature_text)
    if matched is None or signed is None or matched[1] != signed[1]:
        return None
    label, params_text = matched[1], matched[2]
    components, _, rest = params_text[1:].partition(")")
    # The pattern admits exactly _COMPONENT's names, quoted, one space apart.
    covered = tuple(components[1:-1].split('" "')) if components else ()
    if len(set(covered)) != len(covered) or "@signature-params" in covered:
        return None  # the general path refuses it with its message
    pairs: Params = tuple(
        (key, int(number) if number else string)
        for key, number, string in _FAST_PARAM.findall(rest)
    )
    if len({key for key, _ in pairs}) != len(pairs):
        return None  # a repeated parameter: the general parser refuses it
    try:
        signature = binascii.a2b_base64(signed[2], strict_mode=True)
    except binascii.Error:
        return None
    params_list = InnerList(tuple(map(Item, covered)), pairs)
    return SignatureFields(label, params_list, covered, _params(pairs), signature, params_text)


def _covered(params_list: InnerList) -> tuple[str, ...]:
    covered: list[str] = []
    for item in params_list.items:
        name = item.value
        if not isinstance(name, str) or isinstance(name, Token) or not _COMPONENT.fullmatch(name):
            raise MalformedSignature("covered components must be lowercase strings")
        if name in covered or name == "@signature-params":
            raise MalformedSignature("covered component repeated or reserved")
        if item.params:
            raise InvalidSignature("unsupported covered component parameter")
        covered.append(name)
    return tuple(covered)


def _params(pairs: Params) -> dict[str, BareItem]:
    params: dict[str, BareItem] = {}
    for key, value in pairs:
        # ``type(...) is`` on purpose: a bool is an int and a Token is a str in Python.
        if (key in _INT_PARAMS and type(value) is not int) or (
            key in _STR_PARAMS and type(value) is not str
        ):
            raise MalformedSignature(f"signature parameter {key} has the wrong type")
        params[key] = value
    if "keyid" not in params:
        raise MalformedSignature("signature parameter keyid is required")
    return params


def signature_params(components: Sequence[str], *, created: int, keyid: str, alg: str) -> InnerList:
    """The ``@signature-params`` inner list: ``("@method" ...);created=..;keyid="..";alg=".."``."""
    params: Params = (("created", created), ("keyid", keyid), ("alg", alg))
    return InnerList(tuple(Item(c) for c in components), params)


def field_values(label: str, params: InnerList, signature: bytes) -> tuple[str, str]:
    """The ``Signature-Input`` and ``Signature`` values for one signature under ``label``.

    Raises :class:`SFError` for a label that is not an RFC 8941 key or a parameter that cannot
    be serialised (a ``keyid`` that is not printable ASCII, say): nothing malformed is sent.
    """
    return (
        serialize_dictionary({label: params}),
        serialize_dictionary({label: Item(signature)}),
    )
