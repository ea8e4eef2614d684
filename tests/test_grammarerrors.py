# ruff: noqa: E501  (the shape cases read one case a line)
"""grammarerrors.py against the parser sources it was read from (the ereport record
tests/data/pg_grammar_ereports.json, made by tests/compat/grammar_extract.py), against
libpg_query itself, against the installed PostgreSQL 15 server binary, and the error reply's
bytes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from hoopy import pgcluster
from hoopy.protocols.postgres import grammarerrors as g
from hoopy.protocols.postgres import pgquery
from hoopy.protocols.postgres.answers import error_bytes
from hoopy.protocols.postgres.classify import SqlParseError
from hoopy.protocols.postgres.statementcheck import UNPARSEABLE_DETAIL, unparseable

DATA = json.loads((Path(__file__).parent / "data" / "pg_grammar_ereports.json").read_text())
PG18, PG15 = DATA["18.6"], DATA["15.1"]
SQLSTATE = {
    "ERRCODE_SYNTAX_ERROR": "42601",
    "ERRCODE_FEATURE_NOT_SUPPORTED": "0A000",
    "ERRCODE_INVALID_PARAMETER_VALUE": "22023",
    "ERRCODE_DUPLICATE_OBJECT": "42710",
    "ERRCODE_WINDOWING_ERROR": "42P20",
    "ERRCODE_RESERVED_NAME": "42939",
    "ERRCODE_INVALID_ESCAPE_SEQUENCE": "22025",
    "ERRCODE_NONSTANDARD_USE_OF_ESCAPE_CHARACTER": "22P06",
}
SCANNER_PASSTHROUGH = {"%s at end of input", '%s at or near "%s"'}
# Fixed on the 15 branch after 15.1 (checked on a 15.20 server, test_pg_grammar_errors)
LATER_IN_15 = {"invalid table name": "invalid table name at or near",
               "invalid schema name": "invalid schema name at or near"}  # fmt: skip
# Raised by 15 outside its parser (tablecmds.c; the binary test finds its wording)
ELSEWHERE_IN_15 = {'unrecognized partitioning strategy "%s"'}
# 15.1's hints for statements 18 accepts (forwarded: the server answers itself)
ONLY_15 = {"VALUES in FROM must have an alias", "subquery in FROM must have an alias"}


OSA = (
    "an ordered-set aggregate with a VARIADIC direct argument must have one VARIADIC "
    "aggregated argument of the same data type"
)


def _records(data: list[dict[str, object]], e: g.Entry) -> list[dict[str, object]]:
    file = e.where.split(":")[0]
    return [r for r in data if r["file"] == file and r["message"] == e.fmt]


def test_libpg_query_reads_the_grammar_the_table_was_made_for() -> None:
    assert pgquery.POSTGRESQL_VERSION[0] == g.PARSER_MAJOR == 18


@pytest.mark.parametrize("entry", g.ENTRIES, ids=lambda e: e.fmt[:40])
def test_every_entry_is_an_ereport_of_the_grammar(entry: g.Entry) -> None:
    """Message, SQLSTATE, hint, detail and the line reference are those of 18.6's
    source; an entry marked as PostgreSQL 15's is in 15.1's with the same fields."""
    found = _records(PG18, entry)
    assert found, f"not in 18.6's parser: {entry.fmt!r}"
    assert all(r["level"] == "ERROR" for r in found)
    assert {SQLSTATE[str(r["code"])] for r in found} == {entry.sqlstate}
    assert {(r["hint"], r["detail"]) for r in found} == {(entry.hint, entry.detail)}
    file, _, lines = entry.where.partition(":")
    if file != "parser.c":  # plain C: no gram.y/scan.l line
        assert sorted(str(r["line"]) for r in found) == sorted(lines.split(","))
    fmt15 = LATER_IN_15.get(entry.fmt, entry.fmt)
    in15 = [r for r in PG15 if r["file"] == file and r["message"] == fmt15]
    if entry.in15 and entry.fmt not in ELSEWHERE_IN_15:
        assert in15, f"not in 15.1's parser: {entry.fmt!r}"
        assert {SQLSTATE[str(r["code"])] for r in in15} == {entry.sqlstate}
        if entry.pg15 is None:  # else the change says what 15 has instead
            assert {(r["hint"], r["detail"]) for r in in15} == {(entry.hint, entry.detail)}
    elif entry.fmt not in ELSEWHERE_IN_15:
        assert not in15


def test_every_hint_and_detail_of_the_parser_is_covered() -> None:
    """No errhint/errdetail of an ERROR in either grammar is missing from the table
    (those of 15 only are for statements 18 accepts and forwards)."""
    covered = {(e.fmt, e.hint, e.detail) for e in g.ENTRIES}
    for r in PG18:
        if r["level"] == "ERROR" and r["message"] not in SCANNER_PASSTHROUGH:
            assert (r["message"], r["hint"], r["detail"]) in covered, r
    fmts = {e.fmt for e in g.ENTRIES} | set(LATER_IN_15.values()) | ONLY_15
    for r in PG15:
        if r["level"] == "ERROR" and (r["hint"] or r["detail"]):
            assert r["message"] in fmts, r


def test_no_message_is_claimed_by_two_entries_but_the_unicode_escape_pair() -> None:
    for e in g.ENTRIES:
        plain = e.fmt.replace("%s", "x").replace("%d", "7")
        claimed = [o.where for o in g.ENTRIES if o.regex.match(plain)]
        expected = 2 if e.fmt == "invalid Unicode escape" else 1
        assert len(claimed) == expected, (e.fmt, claimed)


def test_the_running_server_has_the_15_wording() -> None:
    """The PostgreSQL 15 the tests run (15.20 here, 15.1 read) carries every message,
    hint and detail the table gives a 15 backend, and not 18's own wordings."""
    binary = (pgcluster.find_bindir() / "postgres").read_bytes()
    assert b"PostgreSQL 15." in binary
    for e in g.ENTRIES:
        if not e.in15:
            continue
        for text in [*re.split("%s|%d", e.fmt), e.hint]:
            if text:
                assert text.encode() in binary, text
    assert g._UNICODE_DETAIL_15.encode() in binary
    assert b"%s constraints cannot be marked NOT VALID" in binary
    assert b"constraints cannot be altered to be NOT VALID" not in binary
    assert b"invalid table name at or near" not in binary  # 15.20's, as 18's


def _parser_error(sql: str) -> tuple[str, int | None]:
    with pytest.raises(pgquery.ParseError) as e:
        pgquery.parse_json(sql)
    return e.value.message, e.value.position


@pytest.mark.parametrize(
    ("sql", "major", "expected"),
    [
        ("DROP OPERATOR === (int4)", 15, g.Shape("missing argument", "42601", 23, "Use NONE to denote the missing argument of a unary operator.")),
        ("DROP OPERATOR === (int4)", 17, g.Shape("missing argument", "42601", 23, "Use NONE to denote the missing argument of a unary operator.")),
        ("DROP OPERATOR === (int4)", 19, g.Shape("missing argument", "42601", 23)),  # not read
        ("DROP OPERATOR === (int4)", None, g.Shape("missing argument", "42601", 23)),
        ("ALTER TABLE t ALTER CONSTRAINT c NOT VALID", 18, g.Shape("constraints cannot be altered to be NOT VALID", "0A000", 33)),
        ("ALTER TABLE t ALTER CONSTRAINT c NOT VALID", 15, g.Shape("FOREIGN KEY constraints cannot be marked NOT VALID", "0A000", None)),
        ("ALTER TABLE t ALTER CONSTRAINT \"c;x\" NO INHERIT NOT VALID;", 15, g.Shape("FOREIGN KEY constraints cannot be marked NOT VALID", "0A000", None)),
        # 15 stops at ENFORCED (a syntax error 18 has no word for): left as libpg_query's
        ("ALTER TABLE t ALTER CONSTRAINT c NOT ENFORCED NOT VALID", 15, g.Shape("constraints cannot be altered to be NOT VALID", "42601", 33)),
        ("ALTER TABLE t ALTER CONSTRAINT c NOT VALID", 16, g.Shape("constraints cannot be altered to be NOT VALID", "42601", 33)),
        # 15 refuses at the first command's end, before it reads the second
        ("ALTER TABLE t ALTER CONSTRAINT c NOT VALID, ALTER CONSTRAINT d NOT ENFORCED", 15, g.Shape("FOREIGN KEY constraints cannot be marked NOT VALID", "0A000", None)),
        # not the plain form the guard knows (a comment): left as libpg_query's
        ("ALTER TABLE t ALTER CONSTRAINT c NOT VALID /* x */", 15, g.Shape("constraints cannot be altered to be NOT VALID", "42601", 33)),
        ("SELECT 1; ALTER TABLE t ALTER CONSTRAINT c NOT VALID", 15, g.Shape("FOREIGN KEY constraints cannot be marked NOT VALID", "0A000", None)),
        ("CREATE TABLE t (a int) PARTITION BY MAGIC (a)", 15, g.Shape('unrecognized partitioning strategy "magic"', "22023", None)),
        ("CREATE TABLE t (a int) PARTITION BY MAGIC (a)", 18, g.Shape('unrecognized partitioning strategy "magic"', "22023", 36)),
        ("(SELECT 1 LIMIT 1) LIMIT  x", 15, g.Shape("multiple LIMIT clauses not allowed", "42601", 26)),
        ("(SELECT 'éé' LIMIT 1) LIMIT  2", 15, g.Shape("multiple LIMIT clauses not allowed", "42601", 29)),  # characters, not bytes
        ("(SELECT 1 LIMIT 1) LIMIT ((2))", 15, g.Shape("multiple LIMIT clauses not allowed", "42601", 19)),  # not matched: libpg_query's
        ("(SELECT 1 LIMIT 1) fetch first row only", 15, g.Shape("multiple LIMIT clauses not allowed", "42601", None)),
        ('CREATE AGGREGATE a (VARIADIC "any" ORDER BY VARIADIC int) (sfunc = f, stype = i)', 15, g.Shape(OSA, "0A000", 53)),
        # a named argument (15 points at its type, after the name): libpg_query's cursor, 15's SQLSTATE
        ('CREATE AGGREGATE a (VARIADIC "any" ORDER BY x int) (sfunc = f, stype = i)', 15, g.Shape(OSA, "0A000", 44)),
        ("ALTER TYPE s.t DROP VALUE 'x'", 15, g.Shape('syntax error at or near "VALUE"', "42601", 20)),
        ("ALTER TYPE t drop value 'x'", 15, g.Shape('syntax error at or near "value"', "42601", 18)),
        ("ALTER TYPE t DROP VALUE 'x'", 18, g.Shape("dropping an enum value is not implemented", "0A000", 13)),
        ("SELECT E'\\u12'", 15, g.Shape("invalid Unicode escape", "22025", 9, "Unicode escapes must be \\uXXXX or \\UXXXXXXXX.")),
        ("SELECT U&'\\12'", 15, g.Shape("invalid Unicode escape", "42601", 10, "Unicode escapes must be \\XXXX or \\+XXXXXX.")),
        ("SELECT U&'\\u12'", 15, g.Shape("invalid Unicode escape", "42601", 10, "Unicode escapes must be \\XXXX or \\+XXXXXX.")),
        ("SELECT 1 FROM", 15, g.Shape("syntax error at end of input", "42601", None)),
        ("SELECT 'missing argument' FROM FROM", 15, g.Shape('syntax error at or near "FROM"', "42601", 31)),
    ],
)  # fmt: skip
def test_shape(sql: str, major: int | None, expected: g.Shape) -> None:
    message, position = _parser_error(sql)
    assert g.shape(message, position, sql, major) == expected


def test_only_exact_messages_are_matched() -> None:
    """A message that merely contains or extends a known one is left alone."""
    for message in ["missing argument!", "a missing argument", "missing argument\nx", ""]:
        assert g.shape(message, 3, "x", 15) == g.Shape(message, "42601", 3)


def test_server_version_major() -> None:
    assert g.server_version_major("15.20 (Debian 15.20-0+deb12u1)") == 15
    assert g.server_version_major("18beta1") == 18
    assert g.server_version_major("9.6.24") == 9
    assert g.server_version_major(None) is None
    assert g.server_version_major("devel") is None


def _fields(frame: bytes) -> list[bytes]:
    assert frame[:1] == b"E"
    assert struct.unpack("!I", frame[1:5])[0] == len(frame) - 1
    assert frame.endswith(b"\0\0")
    return frame[5:-2].split(b"\0")


def _reply(sql: str, version: str | None) -> list[bytes]:
    message, position = _parser_error(sql)
    return _fields(error_bytes(unparseable(sql, SqlParseError(message, position), version)))


def test_error_reply_bytes_hint() -> None:
    assert _reply("DROP OPERATOR === (int4)", "15.20 (Debian 15.20-0+deb12u1)") == [
        b"SERROR",
        b"VERROR",
        b"C42601",
        b"Mmissing argument",
        b"D" + UNPARSEABLE_DETAIL.encode(),
        b"HUse NONE to denote the missing argument of a unary operator.",
        b"P24",
    ]


def test_error_reply_bytes_grammar_detail_then_hoopys() -> None:
    assert _reply("CREATE PUBLICATION p FOR CURRENT_SCHEMA", "15.20") == [
        b"SERROR",
        b"VERROR",
        b"C42601",
        b"Minvalid publication object list",
        b"DOne of TABLE or TABLES IN SCHEMA must be specified before a standalone table or "
        b"schema name.\n" + UNPARSEABLE_DETAIL.encode(),
        b"P26",
    ]


def test_error_reply_bytes_15_wording_without_cursor() -> None:
    assert _reply("ALTER TABLE t ALTER CONSTRAINT c NOT VALID", "15.20") == [
        b"SERROR",
        b"VERROR",
        b"C0A000",
        b"MFOREIGN KEY constraints cannot be marked NOT VALID",
        b"D" + UNPARSEABLE_DETAIL.encode(),
    ]
    assert _reply("ALTER TABLE t ALTER CONSTRAINT c NOT VALID", "18.1") == [
        b"SERROR",
        b"VERROR",
        b"C0A000",
        b"Mconstraints cannot be altered to be NOT VALID",
        b"D" + UNPARSEABLE_DETAIL.encode(),
        b"P34",
    ]


def test_error_reply_bytes_unknown_message_stays_as_the_parser_said() -> None:
    assert _reply("SELECT 'é', 123abc", "15.20") == [
        b"SERROR",
        b"VERROR",
        b"C42601",
        b'Mtrailing junk after numeric literal at or near "123abc"',
        b"D" + UNPARSEABLE_DETAIL.encode(),
        b"P13",
    ]
