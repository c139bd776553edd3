"""rego-cpp error dumps -> ``file:line: message`` (gateway.authz.rego_errors)."""

from __future__ import annotations

import pytest
import regopy

from gateway.authz.rego_errors import RegoProblem, locate, parse

# The text regopy raised for an unclosed rule body (captured from regopy 1.x).
DUMP = (
    "(rego-errorseq\n  (error 16:agentgate/x.rego|20|1\n    (errormsg 16:this is unclosed)\n"
    "    (errorast |20|1))\n  (error 16:agentgate/x.rego|0|7\n"
    "    (errormsg 16:this is unclosed)\n    (errorast |0|7)))\n"
)
SOURCE = "package x\n\nallow if {\n"


def test_parse_reads_length_prefixed_fields() -> None:
    assert parse(DUMP) == [
        ("agentgate/x.rego", 20, "this is unclosed"),
        ("agentgate/x.rego", 0, "this is unclosed"),
    ]


def test_locate_maps_offsets_to_lines_earliest_first() -> None:
    assert locate(DUMP, {"agentgate/x.rego": SOURCE}) == [
        RegoProblem("agentgate/x.rego", 1, "this is unclosed"),
        RegoProblem("agentgate/x.rego", 3, "this is unclosed"),
    ]


def test_offsets_count_bytes_not_characters() -> None:
    source = "# é\npackage x\n"  # é is two bytes: offset 14 is on line 2
    dump = "(error 3:a.r|14|1 (errormsg 3:bad))"
    assert locate(dump, {"a.r": source}) == [RegoProblem("a.r", 2, "bad")]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "unknown error"), ("something else\nmore", "something else")],
    ids=["empty", "not-a-dump"],
)
def test_text_that_is_not_a_dump_is_one_problem_without_location(text: str, message: str) -> None:
    assert locate(text, {}) == [RegoProblem(None, None, message)]


def test_a_real_regopy_error_is_located() -> None:
    source = "package x\n\nallow if {\n\tinput.a\n"
    builder = regopy.Interpreter()
    builder.log_level = regopy.LogLevel.NONE
    with pytest.raises(regopy.RegoError) as info:
        builder.add_module("x.rego", source)
    problems = locate(str(info.value), {"x.rego": source})
    assert {p.module for p in problems} == {"x.rego"}
    assert all(p.line is not None and 1 <= p.line <= 5 for p in problems)
    assert all(p.message for p in problems)
