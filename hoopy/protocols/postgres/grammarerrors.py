# ruff: noqa: E501  (the table below keeps one ereport a line, as it reads in the grammar)
"""What PostgreSQL's raw parser says about a statement it rejects, as the backend would
say it: the SQLSTATE, HINT and DETAIL its grammar attaches and libpg_query drops, and
how the backend's major version words or places what libpg_query's newer grammar reports.

Why: hoopy refuses a statement libpg_query cannot parse (never forwarded) and answers with
the parser's message and cursor (statementcheck.unparseable).  libpg_query returns only those
two, so the error lacked what `ereport` adds in the grammar, and it reads a newer
PostgreSQL's grammar (18) than some backends (15), whose wording and cursor differ.

Sources (tests/data/pg_grammar_ereports.json records every ereport; tests check each
entry below against it, and that every errhint/errdetail there is covered here):
- PostgreSQL 18.6's gram.y, scan.l, parser.c as libpg_query 18 compiles them (pglast
  8.8's sdist, src/postgres/src_backend_parser_*.c; gram.y/scan.l line numbers are the
  generated files' `#line` markers, i.e. libpg_query's copy of gram.y).  hoopy runs
  postgast's libpg_query (PostgreSQL 18.4's grammar): it rejects the same statements
  with the same messages and cursors (6,366 rejected statements of the regression suite
  and tests compared with pglast 8.8's 18.6).
- PostgreSQL 15.1's, the same way (pglast 5.10's sdist).  The 15 differences below were
  also checked against a PostgreSQL 15.20 server (tests/integration/test_pg_grammar_errors.py).
  15.20 differs from 15.1 where the 15 branch was fixed later: "invalid table name" /
  "invalid schema name" (15.1 appended "at or near"), and ALTER CONSTRAINT's NOT VALID
  error names "FOREIGN KEY" constraints (15.1: "ALTER CONSTRAINT statement").

Only a message matched exactly against a format below is changed; anything else stays
as libpg_query said it (SQLSTATE 42601, its cursor, no HINT).  Backend majors: 18 (its
own grammar) and 15 (read above) get their own shape; 16 and 17 (not read) get only what
15 and 18 both say identically (the same ereport in both grammars); others get nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hoopy.protocols.postgres import pgquery as _pg

PARSER_MAJOR = 18  # the grammar libpg_query reads: pgquery.POSTGRESQL_VERSION[0]; tests check it


@dataclass(frozen=True, slots=True)
class Shape:
    """A rejected statement's error as the server shapes it; `position`: 0-based
    character index of the cursor in the text (None: no cursor)."""

    message: str
    sqlstate: str = "42601"
    position: int | None = None
    hint: str | None = None
    detail: str | None = None


# How a backend of another major reshapes an error: (shape, text) -> shape, or None
# when the text is not a form whose answer on that backend is known (then the wording
# and cursor stay libpg_query's).
Change = Callable[[Shape, str], "Shape | None"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One ereport of the parser: its errmsg format (%s, %d as in C), SQLSTATE,
    errhint and errdetail, and where it is (file:line in PostgreSQL 18.6's source)."""

    fmt: str
    sqlstate: str
    hint: str | None = None
    detail: str | None = None
    where: str = ""
    in15: bool = True  # PostgreSQL 15 raises it with the same SQLSTATE/hint/detail
    pg15: Change | None = None  # how 15 says it differently (cursor, wording)
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = re.split(r"(%s|%d)", self.fmt)
        pattern = "".join(
            ".+" if p == "%s" else "-?[0-9]+" if p == "%d" else re.escape(p) for p in parts
        )
        object.__setattr__(self, "regex", re.compile(pattern + r"\Z", re.S))


# ---- changes for a PostgreSQL 15 backend --------------------------------------------


def _no_cursor(s: Shape, text: str) -> Shape | None:
    """15 raises it without a cursor (no parser_errposition, or a location of -1)."""
    return replace(s, position=None)


def _constraint_spec_no_cursor(s: Shape, text: str) -> Shape | None:
    """processCASbits (gram.y 18.6:19613-19687, 15.1:18493-18532) reports the location
    of a ConstraintAttributeSpec; 15's YYLLOC_DEFAULT (gram.y 15.1:73) gives a rule
    whose leftmost part is empty (as that one's is) location -1, hence no cursor; 18's
    (gram.y 18.6:72) takes the first part that has a location."""
    return replace(s, position=None)


_LOOK_BACK = 1000  # characters before the cursor a guard reads (names are short)
_LOOK_AHEAD = 1000  # and after it
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)'
_CAS15 = (
    r"(?:NOT\s+DEFERRABLE|DEFERRABLE|INITIALLY\s+(?:IMMEDIATE|DEFERRED)|NOT\s+VALID|NO\s+INHERIT)"
)
_ALTER_CONSTRAINT = re.compile(r"ALTER\s+CONSTRAINT\s+" + _IDENT + r"\s+\Z", re.I)
_CAS15_ONLY = re.compile(r"(?:" + _CAS15 + r"\s*)+(?=;|,|\Z)", re.I)


def _alter_constraint_not_valid(s: Shape, text: str) -> Shape | None:
    """18 (gram.y 2727) refuses NOT VALID in ALTER CONSTRAINT before processCASbits;
    15.20 lets processCASbits refuse it, naming FOREIGN KEY, without a cursor (see
    _constraint_spec_no_cursor).  Only when the attributes are all ones 15 knows (not
    18's [NOT] ENFORCED, on which 15 reports a syntax error instead)."""
    if s.position is None:
        return None
    before, after = text[max(0, s.position - _LOOK_BACK) : s.position], text[s.position :]
    if not _ALTER_CONSTRAINT.search(before) or not _CAS15_ONLY.match(after):
        return None
    return replace(
        s,
        message="FOREIGN KEY constraints cannot be marked NOT VALID",
        sqlstate="0A000",
        position=None,
    )


def _tokens(text: str, start: int) -> list[tuple[int, str, str]] | None:
    """(position, text, token name) of the tokens from `start` (where libpg_query's cursor
    is: a token's start) on, comments left out, read in at most _LOOK_AHEAD characters;
    None if that cannot be scanned (as when a string or comment runs past it)."""
    chunk = text[start : start + _LOOK_AHEAD]
    try:
        return [
            (start + t.start, chunk[t.start : t.end + 1], t.name)
            for t in _pg.scan(chunk)
            if t.name not in ("SQL_COMMENT", "C_COMMENT")
        ]
    except _pg.ParseError:
        return None


def _at(toks: list[tuple[int, str, str]], position: int) -> int | None:
    return next((i for i, t in enumerate(toks) if t[0] == position), None)


_SUBQUERY = ("SELECT", "VALUES", "WITH", "TABLE")


def _expr_start(toks: list[tuple[int, str, str]]) -> int | None:
    """Where exprLocation() puts an expression whose tokens start `toks`: its first
    token (the leftmost operand or a prefix operator); a parenthesized subquery at its
    parenthesis, a parenthesized expression inside it.  None for `((`: a subquery in
    double parentheses and a parenthesized one in an expression read alike."""
    if not toks:
        return None
    if toks[0][1] != "(":
        return toks[0][0]
    if len(toks) < 2 or toks[1][1] == "(":
        return None
    return toks[0][0] if toks[1][2] in _SUBQUERY else toks[1][0]


def _limit_value_cursor(s: Shape, text: str) -> Shape | None:
    """A second LIMIT/OFFSET: 18 (gram.y 19199/19208) points at the LIMIT, OFFSET or
    FETCH keyword, 15 (15.1:18085/18094) at exprLocation() of the value (a sign
    included).  FETCH FIRST ROW ONLY has an implicit 1 at location -1: no cursor."""
    toks = _tokens(text, s.position) if s.position is not None else None
    i = _at(toks, s.position) if toks and s.position is not None else None
    if toks is None or i is None:
        return None
    word, rest = toks[i][1].upper(), toks[i + 1 :]
    if word == "FETCH":
        if len(rest) < 2 or rest[0][1].upper() not in ("FIRST", "NEXT"):
            return None
        rest = rest[1:]
        if rest[0][1].upper() in ("ROW", "ROWS"):
            return replace(s, position=None)
    elif word not in ("LIMIT", "OFFSET"):
        return None
    start = _expr_start(rest)
    return None if start is None else replace(s, position=start)


def _ordered_set_variadic_cursor(s: Shape, text: str) -> Shape | None:
    """18 (gram.y 19151) points at the first aggregated argument, 15 (15.1:18037) at
    exprLocation() of it, which is its type's: matched when the argument is one type
    name, with or without a mode keyword (`VARIADIC int`); a name would come between."""
    toks = _tokens(text, s.position) if s.position is not None else None
    i = _at(toks, s.position) if toks and s.position is not None else None
    if toks is None or i is None:
        return None
    j = i + 1 if toks[i][2] in ("IN_P", "VARIADIC") else i
    k = j + 1  # past a type name, dotted or not
    while k + 1 < len(toks) and toks[k][1] == "." and toks[k + 1][2] in ("IDENT", "INT_P"):
        k += 2
    if k >= len(toks) or toks[k][1] not in (",", ")") or toks[j][2] == "ASCII_40":
        return None
    return replace(s, position=toks[j][0])


_ALTER_TYPE = re.compile(r"ALTER\s+TYPE\s+" + _IDENT + r"(?:\s*\.\s*" + _IDENT + r")*\s+\Z", re.I)


def _drop_enum_value_15(s: Shape, text: str) -> Shape | None:
    """`ALTER TYPE t DROP VALUE`: 18 has a rule for it (gram.y 6709), 15's grammar
    expects ATTRIBUTE after DROP and reports a syntax error at the next word."""
    toks = _tokens(text, s.position) if s.position is not None else None
    i = _at(toks, s.position) if toks and s.position is not None else None
    if toks is None or i is None or s.position is None:
        return None
    before = text[max(0, s.position - _LOOK_BACK) : s.position]
    if not _ALTER_TYPE.search(before) or len(toks) < i + 2:
        return None
    if toks[i][2] != "DROP" or toks[i + 1][2] != "VALUE_P":
        return None
    start, word, _ = toks[i + 1]
    return Shape(f'syntax error at or near "{word}"', "42601", start)


_UNICODE_DETAIL_15 = (
    "String constants with Unicode escapes cannot be used when standard_conforming_strings is off."
)


def _unicode_detail_15(s: Shape, text: str) -> Shape | None:
    """15's scan.l (15.1:553) names the setting without quotes."""
    return replace(s, detail=_UNICODE_DETAIL_15)


# ---- the parser's ereports ----------------------------------------------------------
E = Entry
# Every ERROR-level ereport of PostgreSQL 18.6's gram.y (and scan.l, parser.c) but the
# scanner's "... at or near"/"at end of input" ones (42601, no hint: already right).
# Notices and warnings (RECHECK, GLOBAL, escape warnings) come only with statements that
# parse: the server sends those itself.  15.1's "VALUES/subquery in FROM must have an
# alias" (with hints, gram.y 15.1:13298-13330) is absent: 18 accepts such statements,
# so they are forwarded and 15 answers itself.
# fmt: off
ENTRIES: tuple[Entry, ...] = (
    E("UNENCRYPTED PASSWORD is no longer supported", "0A000", "Remove UNENCRYPTED to store the password in encrypted form instead.", None, "gram.y:1240"),
    E('unrecognized role option "%s"', "42601", None, None, "gram.y:1304"),
    E("CREATE SCHEMA IF NOT EXISTS cannot include schema elements", "0A000", None, None, "gram.y:1569,1585"),
    E("current database cannot be changed", "0A000", None, None, "gram.y:1746"),
    E("time zone interval must be HOUR or HOUR TO MINUTE", "42601", None, None, "gram.y:1920"),
    E("column number must be in range from 1 to %d", "22023", None, None, "gram.y:2552"),
    E("constraints cannot be altered to be NOT VALID", "0A000", None, None, "gram.y:2727", in15=False, pg15=_alter_constraint_not_valid),
    E('sequence option "%s" not supported here', "42601", None, None, "gram.y:3177"),
    E("modulus for hash partition provided more than once", "42710", None, None, "gram.y:3216"),
    E("remainder for hash partition provided more than once", "42710", None, None, "gram.y:3225"),
    E('unrecognized hash partition bound specification "%s"', "42601", None, None, "gram.y:3232"),
    E("modulus for hash partition must be specified", "42601", None, None, "gram.y:3240", pg15=_no_cursor),  # 15.1:3098
    E("remainder for hash partition must be specified", "42601", None, None, "gram.y:3245", pg15=_no_cursor),  # 15.1:3102
    E("STDIN/STDOUT not allowed with PROGRAM", "42601", None, None, "gram.y:3454,3488"),
    E("WHERE clause not allowed with COPY TO", "42601", None, None, "gram.y:3460"),
    E("for a generated column, GENERATED ALWAYS must be specified", "42601", None, None, "gram.y:4097"),
    E("MATCH PARTIAL not yet implemented", "0A000", None, None, "gram.y:4506"),
    E("a column list with %s is only supported for ON DELETE actions", "0A000", None, None, "gram.y:4598"),
    E("CREATE EXTENSION ... FROM is no longer supported", "0A000", None, None, "gram.y:5317"),
    E('unrecognized row security option "%s"', "42601", "Only PERMISSIVE or RESTRICTIVE policies are supported currently.", None, "gram.y:6016"),
    E("CREATE OR REPLACE CONSTRAINT TRIGGER is not supported", "0A000", None, None, "gram.y:6102", pg15=_no_cursor),  # 15.1:5804
    E("constraint declared INITIALLY DEFERRED must be DEFERRABLE", "42601", None, None, "gram.y:6282"),
    E("conflicting constraint properties", "42601", None, None, "gram.y:6290"),
    E("CREATE ASSERTION is not yet implemented", "0A000", None, None, "gram.y:6391", pg15=_no_cursor),  # 15.1:6089
    E("dropping an enum value is not implemented", "0A000", None, None, "gram.y:6709", in15=False, pg15=_drop_enum_value_15),
    E("aggregates cannot have output arguments", "0A000", None, None, "gram.y:8685"),
    E("missing argument", "42601", "Use NONE to denote the missing argument of a unary operator.", None, "gram.y:9155"),
    E("WITH CHECK OPTION not supported on recursive views", "0A000", None, None, "gram.y:11396,11415"),
    E("LIMIT #,# syntax is not supported", "42601", "Use separate LIMIT and OFFSET clauses.", None, "gram.y:13382"),
    E("only one DEFAULT value is allowed", "42601", None, None, "gram.y:14270"),
    E("only one PATH value per column is allowed", "42601", None, None, "gram.y:14279"),
    E('conflicting or redundant NULL / NOT NULL declarations for column "%s"', "42601", None, None, "gram.y:14288"),
    E('unrecognized column option "%s"', "42601", None, None, "gram.y:14297"),
    E('option name "%s" cannot be used in XMLTABLE', "42601", None, None, "gram.y:14330", in15=False),
    E("only string constants are supported in JSON_TABLE path specification", "0A000", None, None, "gram.y:14386", in15=False),
    E("precision for type float must be at least 1 bit", "22023", None, None, "gram.y:14708"),
    E("precision for type float must be less than 54 bits", "22023", None, None, "gram.y:14717"),
    E("wrong number of parameters on left side of OVERLAPS expression", "42601", None, None, "gram.y:15234"),
    E("wrong number of parameters on right side of OVERLAPS expression", "42601", None, None, "gram.y:15239"),
    E("UNIQUE predicate is not yet implemented", "0A000", None, None, "gram.y:15417"),
    E("cannot use multiple ORDER BY clauses with WITHIN GROUP", "42601", None, None, "gram.y:15831"),
    E("cannot use DISTINCT with WITHIN GROUP", "42601", None, None, "gram.y:15836"),
    E("cannot use VARIADIC with WITHIN GROUP", "42601", None, None, "gram.y:15841"),
    E("frame start cannot be UNBOUNDED FOLLOWING", "42P20", None, None, "gram.y:16568,16592"),
    E("frame starting from following row cannot end with current row", "42P20", None, None, "gram.y:16573"),
    E("frame end cannot be UNBOUNDED PRECEDING", "42P20", None, None, "gram.y:16597"),
    E("frame starting from current row cannot have preceding rows", "42P20", None, None, "gram.y:16603"),
    E("frame starting from following row cannot have preceding rows", "42P20", None, None, "gram.y:16610"),
    E("unrecognized JSON encoding: %s", "22023", None, None, "gram.y:17152", in15=False),
    E("type modifier cannot have parameter name", "42601", None, None, "gram.y:17477,17516"),
    E("type modifier cannot have ORDER BY", "42601", None, None, "gram.y:17483,17522"),
    E('role name "%s" is reserved', "42939", None, None, "gram.y:17600,17646"),
    E("%s cannot be used as a role name here", "42939", None, None, "gram.y:17607,17614,17621"),
    E("WITH TIES cannot be specified without ORDER BY clause", "42601", None, None, "gram.y:17711,19219", pg15=_no_cursor),  # 15.1:16654,18107
    E("an ordered-set aggregate with a VARIADIC direct argument must have one VARIADIC aggregated argument of the same data type", "0A000", None, None, "gram.y:19151", pg15=_ordered_set_variadic_cursor),
    E("multiple ORDER BY clauses not allowed", "42601", None, None, "gram.y:19188"),
    E("multiple OFFSET clauses not allowed", "42601", None, None, "gram.y:19199", pg15=_limit_value_cursor),
    E("multiple LIMIT clauses not allowed", "42601", None, None, "gram.y:19208", pg15=_limit_value_cursor),
    E("%s and %s options cannot be used together", "42601", None, None, "gram.y:19232", pg15=_no_cursor),  # 15.1:18119
    E("multiple WITH clauses not allowed", "42601", None, None, "gram.y:19244"),
    E("OUT and INOUT arguments aren't allowed in TABLE functions", "42601", None, None, "gram.y:19440", pg15=_no_cursor),  # 15.1:18323
    E("improper qualified name (too many dotted names): %s", "42601", None, None, "gram.y:19500,19540"),
    E("multiple COLLATE clauses not allowed", "42601", None, None, "gram.y:19574"),
    E("%s constraints cannot be marked DEFERRABLE", "0A000", None, None, "gram.y:19613,19626", pg15=_constraint_spec_no_cursor),
    E("%s constraints cannot be marked NOT VALID", "0A000", None, None, "gram.y:19639", pg15=_constraint_spec_no_cursor),
    E("%s constraints cannot be marked NO INHERIT", "0A000", None, None, "gram.y:19652", pg15=_constraint_spec_no_cursor),
    E("%s constraints cannot be marked NOT ENFORCED", "0A000", None, None, "gram.y:19665", in15=False),
    E("%s constraints cannot be marked ENFORCED", "0A000", None, None, "gram.y:19687", in15=False),
    # 15 raises it in tablecmds.c (transformPartitionSpec), same SQLSTATE, no cursor,
    # once the statement runs: after catalog checks hoopy cannot run (an existing
    # table would be reported instead).
    E('unrecognized partitioning strategy "%s"', "22023", None, None, "gram.y:19710", pg15=_no_cursor),
    E("invalid publication object list", "42601", None, "One of TABLE or TABLES IN SCHEMA must be specified before a standalone table or schema name.", "gram.y:19734"),
    E("invalid table name", "42601", None, None, "gram.y:19751"),  # 15.20 (15.1: "... at or near")
    E("WHERE clause not allowed for schema", "42601", None, None, "gram.y:19772"),
    E("column specification not allowed for schema", "42601", None, None, "gram.y:19779"),
    E("invalid schema name", "42601", None, None, "gram.y:19793"),  # 15.20 (15.1: "... at or near")
    E("unsafe use of string constant with Unicode escapes", "0A000", None, 'String constants with Unicode escapes cannot be used when "standard_conforming_strings" is off.', "scan.l:581", pg15=_unicode_detail_15),
    E("invalid Unicode escape", "22025", "Unicode escapes must be \\uXXXX or \\UXXXXXXXX.", None, "scan.l:720"),
    E("unsafe use of \\' in a string literal", "22P06", "Use '' to write quotes in strings. \\' is insecure in client-only encodings.", None, "scan.l:732"),
    E("invalid Unicode escape value", "42601", None, None, "parser.c:check_unicode_value"),
    E("invalid Unicode escape", "42601", "Unicode escapes must be \\XXXX or \\+XXXXXX.", None, "parser.c:str_udeescape"),
    E("invalid Unicode surrogate pair", "42601", None, None, "parser.c:str_udeescape"),
)
# fmt: on


def _candidates(message: str) -> list[Entry]:
    return [e for e in ENTRIES if e.regex.match(message)]


def _which(entries: list[Entry], message: str, position: int | None, text: str) -> Entry | None:
    """The one entry that raised `message`.  "invalid Unicode escape" is raised by
    scan.l (E'...' strings) and by parser.c (U&'...' strings): the core scanner alone
    fails on the former, and reads the latter as a USCONST/UIDENT token."""
    if len(entries) <= 1:
        return entries[0] if entries else None
    if message == "invalid Unicode escape" and position is not None:
        try:
            tokens = _pg.scan(text)
        except _pg.ParseError as e:
            if e.message == message and e.position == position:
                return next(e for e in entries if e.where.startswith("scan.l"))
            return None
        for t in tokens:
            if t.start <= position <= t.end and t.name in ("USCONST", "UIDENT"):
                return next(e for e in entries if e.where.startswith("parser.c"))
    return None


def server_version_major(version: str | None) -> int | None:
    """15 from "15.20 (Debian 15.20-0+deb12u1)", 9 from "9.6.24"; None if unreadable."""
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


def shape(message: str, position: int | None, text: str, backend_major: int | None) -> Shape:
    """libpg_query's error (`position` 0-based, or None) as a backend of that major version
    reports it (see the module docstring for which majors are known)."""
    base = Shape(message, "42601", position)
    entry = _which(_candidates(message), message, position, text)
    if entry is None or backend_major is None:
        return base
    found = Shape(message, entry.sqlstate, position, entry.hint, entry.detail)
    if backend_major == PARSER_MAJOR:
        return found
    if backend_major == 15:
        changed = entry.pg15(found, text) if entry.pg15 is not None else None
        if changed is not None:
            return changed
        # Not a form the change knows: the grammar's fields if 15 has the same, with
        # libpg_query's wording and cursor.
        return found if entry.in15 else base
    if 15 < backend_major < PARSER_MAJOR and entry.in15 and entry.pg15 is None:
        return found  # the same in the grammars on either side
    return base
