"""gateway.httpsig.fields: RFC 9421 §4 ``Signature-Input`` / ``Signature``, read and written."""

from __future__ import annotations

import pytest

from gateway.httpsig import InvalidSignature, MalformedSignature, fields, parse_signature_fields
from gateway.httpsig.errors import SFError
from gateway.httpsig.fields import field_values, signature_params
from gateway.httpsig.sfv import InnerList, Item, serialize_inner_list
from tests.unit.httpsig import vectors as v

SIG = "sig1=:AAAA:"


def test_reads_the_rfc_b25_fields() -> None:
    parsed = parse_signature_fields([v.B25_INPUT], [v.B25_SIGNATURE])
    assert parsed.label == "sig-b25"
    assert parsed.covered == ("date", "@authority", "content-type")
    assert parsed.params == {"created": v.CREATED, "keyid": "test-shared-secret"}
    assert len(parsed.signature) == 32


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        pytest.param(
            ['sig1=("@method");keyid="k"', 'sig1=("@path");keyid="k"'],
            "duplicate dictionary key",
            id="one-label-on-two-lines-is-a-duplicate-not-last-wins",
        ),
        pytest.param(
            ['sig1=("@method");keyid="k"', 'sig2=("@path");keyid="k"'],
            "exactly one",
            id="two-labels-on-two-lines",
        ),
    ],
)
def test_field_lines_are_one_value(inputs: list[str], message: str) -> None:
    # RFC 9110 §5.3: several field lines are one comma-separated value.
    with pytest.raises(MalformedSignature, match=message):
        parse_signature_fields(inputs, [SIG])


MALFORMED = [
    (['sig1=("@method");keyid="k"'], ["sig1=:AA=:"], "malformed HTTP signature fields"),
    (['sig1=("@method");keyid="k", sig2=("@path");keyid="k"'], [SIG], "exactly one"),
    (['sig1=("@method");keyid="k"'], ["sig1=:AAAA:, sig2=:AAAA:"], "exactly one"),
    (["sig1=()"], ["other=:AAAA:"], "labels differ"),
    (['sig1="@method"'], [SIG], "not an inner list"),
    (['sig1=("@method");keyid="k"'], ['sig1="AAAA"'], "not a byte sequence"),
    (['sig1=(@method);keyid="k"'], [SIG], "malformed HTTP signature fields"),
    (['sig1=("Content-Type");keyid="k"'], [SIG], "lowercase strings"),
    (['sig1=("");keyid="k"'], [SIG], "lowercase strings"),
    (['sig1=(1);keyid="k"'], [SIG], "lowercase strings"),
    (['sig1=("@method" "@method");keyid="k"'], [SIG], "repeated or reserved"),
    (['sig1=("@signature-params");keyid="k"'], [SIG], "repeated or reserved"),
    (['sig1=();keyid="k";created="1"'], [SIG], "created has the wrong type"),
    (["sig1=();keyid=k"], [SIG], "keyid has the wrong type"),
    (['sig1=();keyid="k";expires=?1'], [SIG], "expires has the wrong type"),
    (['sig1=();keyid="k";alg=hmac-sha256'], [SIG], "alg has the wrong type"),
    (['sig1=();keyid="k";nonce=1'], [SIG], "nonce has the wrong type"),
    (["sig1=();keyid=:AA==:"], [SIG], "keyid has the wrong type"),
    (["sig1=();created=1"], [SIG], "keyid is required"),
]


@pytest.mark.parametrize(
    ("inputs", "signatures", "message"),
    [pytest.param(*case, id=f"{case[2]}-{i}") for i, case in enumerate(MALFORMED)],
)
def test_malformed(inputs: list[str], signatures: list[str], message: str) -> None:
    with pytest.raises(MalformedSignature, match=message):
        parse_signature_fields(inputs, signatures)


@pytest.mark.parametrize("param", [";sf", ';key="a"', ";req", ";bs", ";tr"])
def test_component_parameters_are_unsupported(param: str) -> None:
    with pytest.raises(InvalidSignature, match="unsupported covered component parameter"):
        parse_signature_fields([f'sig1=("x-h"{param});keyid="k"'], [SIG])


def test_unknown_signature_parameters_are_kept() -> None:
    parsed = parse_signature_fields(['sig1=();keyid="k";custom=?1'], [SIG])
    assert parsed.params["custom"] is True


def test_writes_canonical_fields() -> None:
    params = signature_params(("@method", "@path"), created=7, keyid='a"b', alg="hmac-sha256")
    assert params == InnerList(
        (Item("@method"), Item("@path")), (("created", 7), ("keyid", 'a"b'), ("alg", "hmac-sha256"))
    )
    assert field_values("sig1", params, b"\x00\xff") == (
        'sig1=("@method" "@path");created=7;keyid="a\\"b";alg="hmac-sha256"',
        "sig1=:AP8=:",
    )
    # What is written reads back to the same signature.
    parsed = parse_signature_fields(*([f] for f in field_values("sig1", params, b"\x00\xff")))
    assert (parsed.params_list, parsed.signature) == (params, b"\x00\xff")


@pytest.mark.parametrize(
    ("label", "keyid"),
    [
        pytest.param("Sig1", "k", id="uppercase-label"),
        pytest.param("sig 1", "k", id="label-with-space"),
        pytest.param("sig1", "é", id="non-ascii-keyid"),
        pytest.param("sig1", "a\nb", id="newline-in-keyid"),
    ],
)
def test_never_writes_an_unparseable_field(label: str, keyid: str) -> None:
    params = signature_params(("@method",), created=1, keyid=keyid, alg="hmac-sha256")
    with pytest.raises(SFError):
        field_values(label, params, b"mac")


_CANONICAL = (
    'sig=("@method" "@target-uri" "content-digest");created=1618884473;keyid="k1";alg="x"',
    'sig=();created=0;keyid="k"',
    'sig=("@method");created=-5;nonce="a b!";keyid="k"',
)
_GENERAL_ONLY = (  # valid RFC 8941 that the fast pattern leaves to the general parser
    'sig=("@method");created=007;keyid="k"',  # a non-canonical Integer
    'sig=("@method");keyid="k\\"q"',  # an escape
    'sig=("@method");keyid="k";flag',  # a Boolean parameter
    'sig=("@method");keyid="k";alg=tok',  # a Token
    'sig=( "@method" );keyid="k"',  # spaces inside the list
    'sig=("@method");created=1;created=2;keyid="k"',  # a repeated parameter (refused)
    'sig=("@method" "@method");keyid="k"',  # a repeated component (refused)
)


@pytest.mark.parametrize("text", _CANONICAL + _GENERAL_ONLY)
def test_the_fast_path_reads_what_the_general_parser_reads(text: str) -> None:
    signature = "sig=:AAEC:"
    fast = fields._parse_canonical(text, signature)
    if text in _GENERAL_ONLY:
        assert fast is None
    try:
        general = fields._parse_general([text], [signature])
    except (MalformedSignature, InvalidSignature):
        assert fast is None
        return
    if fast is not None:
        assert fast == general
        assert fast.params_text == serialize_inner_list(fast.params_list)
    assert general.params_text == serialize_inner_list(general.params_list)
