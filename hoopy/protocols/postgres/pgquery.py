"""libpg_query (PostgreSQL's own parser) for hoopy: the one place SQL text is parsed,
normalized, scanned, split or re-printed.

Why this module: hoopy reads SQL through libpg_query as `postgast` (BSD-2-Clause) ships
it; pglast (GPL) is not an option for an Apache-2.0 project.  postgast's Python wrappers
decode protobuf and raise on byte offsets; hoopy wants what it always read: the JSON
parse tree (classify, sqltree), the normalized text (classcache's per-statement key on
the hot path), scanner tokens with character positions (grammarerrors, slack), and a
ParseError whose `args` are (message, 0-based character index or None).  So the C
functions are called directly through ctypes, prototypes declared once: the call and
its free, no protobuf (except `scan` and `pretty`, off the hot path).  ctypes still
costs more per call than pglast's Cython did: about 4k instructions (2 %) more per
pgbench -S transaction (bench/pgpath.py under callgrind).

libpg_query's C deparser is never called (see `pretty`): it crashes the process on
some valid statements.
"""

from __future__ import annotations

import ctypes
import json
import re
from ctypes import POINTER, Structure, c_char_p, c_int, c_size_t, c_void_p
from typing import Any, NamedTuple

import postgast.native

# postgast.pg_query_pb2 (generated protobuf classes) is reached through the package:
# its .pyi does not parse under mypy (pyproject.toml skips postgast).
_pb: Any = postgast.pg_query_pb2


class ParseError(Exception):
    """libpg_query refused the text: args are (message, position), position the 0-based
    character index of the error's cursor in the text, None when it has none or points
    past the end ("at end of input")."""

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def position(self) -> int | None:
        pos = self.args[1] if len(self.args) > 1 else None
        return pos if isinstance(pos, int) else None


class Token(NamedTuple):
    """A scanner token: `start`..`end` are 0-based character indexes, `end` inclusive."""

    start: int
    end: int
    name: str  # libpg_query's token name: IDENT, SCONST, ASCII_40 ("("), SQL_COMMENT, …
    kind: str  # its keyword kind: NO_KEYWORD, RESERVED_KEYWORD, …


class _Error(Structure):
    _fields_ = [
        ("message", c_char_p),
        ("funcname", c_char_p),
        ("filename", c_char_p),
        ("lineno", c_int),
        ("cursorpos", c_int),  # 1-based character position; 0: none
        ("context", c_char_p),
    ]


# `error` is read as an address (an int, or None): cheaper than a POINTER object on
# the hot path; _error() reads the struct behind it.
class _TextResult(Structure):  # PgQueryNormalizeResult
    _fields_ = [("text", c_char_p), ("error", c_void_p)]


class _ParseResult(Structure):
    _fields_ = [("text", c_char_p), ("stderr", c_char_p), ("error", c_void_p)]


class _Protobuf(Structure):
    _fields_ = [("len", c_size_t), ("data", c_void_p)]


class _ScanResult(Structure):
    _fields_ = [("pbuf", _Protobuf), ("stderr", c_char_p), ("error", c_void_p)]


class _SplitStmt(Structure):
    _fields_ = [("location", c_int), ("len", c_int)]


class _SplitResult(Structure):
    _fields_ = [
        ("stmts", POINTER(POINTER(_SplitStmt))),
        ("n", c_int),
        ("stderr", c_char_p),
        ("error", c_void_p),
    ]


# Our own handle on the library postgast loaded (same file, same process-wide copy):
# prototypes declared here do not depend on postgast's internal struct layouts.
_lib = ctypes.CDLL(postgast.native.lib._name)


def _fn(name: str, free: str, restype: type[Structure]) -> tuple[Any, Any]:
    f, f_free = getattr(_lib, name), getattr(_lib, free)
    f.argtypes, f.restype = [c_char_p], restype
    f_free.argtypes, f_free.restype = [restype], None
    return f, f_free


_pg_parse, _free_parse = _fn("pg_query_parse", "pg_query_free_parse_result", _ParseResult)
_pg_normalize, _free_normalize = _fn(
    "pg_query_normalize", "pg_query_free_normalize_result", _TextResult
)
_pg_scan, _free_scan = _fn("pg_query_scan", "pg_query_free_scan_result", _ScanResult)
_pg_split, _free_split = _fn(
    "pg_query_split_with_parser", "pg_query_free_split_result", _SplitResult
)
# normalize() runs once per statement on the hot path (classcache._dml_key): without
# argtypes ctypes passes the bytes as char* and the struct by value all the same, and
# skips a conversion per argument (about 2 % of that call's instructions).
_pg_normalize.argtypes = _free_normalize.argtypes = None


def _error(text: str, address: int) -> ParseError:
    err = _Error.from_address(address)
    message = err.message.decode("utf-8", "replace") if err.message else "unknown error"
    index = err.cursorpos - 1
    return ParseError(message, index if 0 <= index < len(text) else None)


def _c_string(sql: str) -> bytes:
    """`sql` as the C string libpg_query reads.  A NUL would end it there: the text after
    it would go unread (and unshown), so such a text is refused, as the server does."""
    nul = sql.find("\0")
    if nul >= 0:
        raise ParseError("statement contains a NUL character", nul)
    return sql.encode()


def parse_json(sql: str) -> str:
    """libpg_query's JSON parse tree of `sql` (pglast's parse_sql_json).  Raises
    ParseError, or UnicodeError for text that cannot be UTF-8 (lone surrogates)."""
    result = _pg_parse(_c_string(sql))
    try:
        if result.error:
            raise _error(sql, result.error)
        return result.text.decode("utf-8")
    finally:
        _free_parse(result)


def normalize(sql: str) -> str:
    """`sql` with its constants replaced by $n parameters (hot: classcache's key)."""
    if "\0" in sql:  # _c_string, inline: a function call costs as much as this check
        raise ParseError("statement contains a NUL character", sql.index("\0"))
    result = _pg_normalize(sql.encode())
    text, error = result.text, result.error
    if error:
        try:
            raise _error(sql, error)
        finally:
            _free_normalize(result)
    _free_normalize(result)
    return text.decode()


def split(sql: str) -> tuple[str, ...]:
    """The statements of `sql` (by the parser), each stripped of surrounding whitespace."""
    utf8 = _c_string(sql)
    result = _pg_split(utf8)
    try:
        if result.error:
            raise _error(sql, result.error)
        out = []
        for i in range(result.n):
            s = result.stmts[i].contents
            out.append(utf8[s.location : s.location + s.len].decode("utf-8").strip())
        return tuple(out)
    finally:
        _free_split(result)


def _char_index(sql: str, utf8: bytes) -> list[int] | None:
    """Byte offset -> character index (None when the text is ASCII: the same)."""
    if len(utf8) == len(sql):
        return None
    index: list[int] = []
    for i, ch in enumerate(sql):
        index.extend([i] * len(ch.encode("utf-8")))
    index.append(len(sql))
    return index


def scan(sql: str) -> list[Token]:
    """The scanner's tokens of `sql`, comments included (as pglast.parser.scan)."""
    utf8 = _c_string(sql)
    result = _pg_scan(utf8)
    try:
        if result.error:
            raise _error(sql, result.error)
        data = ctypes.string_at(result.pbuf.data, result.pbuf.len)
    finally:
        _free_scan(result)
    at = _char_index(sql, utf8)
    out = []
    for t in _pb.ScanResult.FromString(data).tokens:
        start, end = (t.start, t.end - 1) if at is None else (at[t.start], at[t.end - 1])
        try:
            name = _pb.Token.Name(t.token)
        except ValueError:
            name = "UNKNOWN"
        out.append(Token(start, end, name, _pb.KeywordKind.Name(t.keyword_kind)))
    return out


# Positions in the JSON tree (see sqltree.py): what a reprint may change.
_POSITIONS = re.compile(r',"(?:\w*location|stmt_len|(?:rexpr_)?list_(?:start|end))":-?\d+')


def _tree(sql: str) -> str:
    return _POSITIONS.sub("", parse_json(sql)).replace("{,", "{")


class _Unprintable(BaseException):
    """Raised past the formatter's own `except Exception` fallbacks (see _Formatter)."""


def _formatter() -> Any:
    from postgast.format.formatter import _SqlFormatter

    class _Formatter(_SqlFormatter):
        def _deparse_node(self, node: Any) -> str:
            # postgast's formatter hands nodes it has no printer for to libpg_query's C
            # deparser, which crashes the process on some valid statements (a COPY option
            # with a number: `DELIMITER 0`): never on an agent's text in the gateway.
            raise _Unprintable

    return _Formatter()


def pretty(sql: str) -> str:
    """`sql` re-printed from its parse tree by postgast's formatter (pure Python),
    indented, without comments, statements joined by ";\n\n".  The reprint is checked
    to parse to the very tree `sql` does (positions aside), so a formatter bug can never
    show an approver a statement other than the one that runs.  Raises ParseError if
    `sql` does not parse, ValueError if it cannot be printed faithfully."""
    tree = _tree(sql)
    formatter = _formatter()
    out = []
    try:
        for raw in postgast.parse(sql).stmts:
            formatter.reset()
            formatter.visit(postgast.unwrap_node(raw.stmt))
            out.append(formatter.get_output())
        text = ";\n\n".join(out)
        same = _tree(text) == tree
    except _Unprintable:
        raise ValueError("postgast has no printer for this statement") from None
    except Exception as e:  # a formatter bug, or a reprint that does not parse
        raise ValueError(f"postgast cannot print this statement ({type(e).__name__})") from None
    if not same:
        raise ValueError("the reprint would not be the statement that runs")
    return text


# Every ObjectType name (OBJECT_TABLE, …): protobuf's enum, less its UNDEFINED = 0 (so
# its numbers are C's plus one; hoopy reads names only).
OBJECT_TYPES = tuple(name for name, number in _pb.ObjectType.items() if number)


def _version() -> tuple[int, int]:
    major, minor = divmod(int(json.loads(parse_json(""))["version"]), 10_000)
    return major, minor


# The PostgreSQL release whose grammar libpg_query compiles: (major, minor).
POSTGRESQL_VERSION = _version()
