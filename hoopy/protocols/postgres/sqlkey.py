"""A statement's literal-free key, read in one pass: what keys the classifier's cache
for plain DML seen before with other constants (classcache.py), compiled when built.

Theory of operation
-------------------
`statement_key(sql)` is the text with every literal constant replaced by a marker
naming its lexical class (`\\x01s` a quoted string, `\\x01i` an integer that fits in
32 bits, `\\x01n` any other number, …) and everything else kept verbatim: keywords,
identifiers (quoted or not), operators, `$n` parameters, whitespace and comments.  Two
texts with one key are then the same token stream but for the values of literals of
the same class, which is all PostgreSQL's grammar sees of them, and classification
never reads a constant's value (it walks sqltree.shape(), which drops A_Const nodes).
So the key partitions texts at least as finely as classification does.

It lexes as PostgreSQL does (scan.l), and where PostgreSQL's lexers or settings could
read a text two ways, or the grammar looks at a constant's value, it returns None (not
keyed: the classifier's other paths run) rather than guess:

* only texts starting (after comments and `(`) with SELECT, INSERT, UPDATE, DELETE,
  MERGE, WITH, VALUES or TABLE, at most one statement (a final `;` only);
* a plain '' string with a backslash (its end would depend on
  standard_conforming_strings), an E'' escape that can produce a byte or a code point
  (`\\0-7`, `\\x`, `\\u`, `\\U`) or is not ASCII, a U&'' string with a backslash, UESCAPE
  anywhere, a literal followed by another quote (PostgreSQL joins `'a'` newline `'b'`);
* numbers PostgreSQL 16+ reads otherwise than 15 (0x1F, 0o17, 0b101, 1_000) or rejects
  (trailing junk: 1e, 12abc, $1abc, 1..2; $2147483648), float(p) (its value picks the
  type or fails);
* unterminated strings, identifiers, comments or dollar quotes, a lone `$`, NUL or
  \\x01 (the marker's character) anywhere, a character UTF-8 cannot encode.

The loop is written in Cython's pure-Python mode (see compiled.py): C characters and
indices when compiled.  Interpreted, a character loop costs more than libpg_query's
normalize(), so the classifier uses the key only when this module runs compiled
(`COMPILED`); both builds produce the same keys (tests/protocols/postgres/test_sqlkey.py).
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

COMPILED: bool = bool(cython.compiled)
MAX_CHARS = 8192  # longer texts are not keyed (the fingerprint stops at 16384)

# The marker of each lexical class (the character \x01 is refused in texts).
PLAIN = "\x01s"  # '...'
ESCAPED = "\x01e"  # E'...'
DOLLAR = "\x01d"  # $tag$...$tag$
UNICODE = "\x01u"  # U&'...'
BITS = "\x01b"  # B'...'
HEX = "\x01x"  # X'...'
INTEGER = "\x01i"  # ICONST: digits whose value fits in a signed 32-bit integer
NUMERIC = "\x01n"  # FCONST: any other number
_DML_WORDS = frozenset({"select", "insert", "update", "delete", "merge", "with", "values", "table"})
_INT_MAX = 2147483647


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.inline
@cython.locals(c=cython.Py_UCS4)
@cython.returns(cython.bint)
def _ident_start(c: str) -> bool:
    # PostgreSQL reads bytes: every byte of a non-ASCII UTF-8 character is >= 0x80
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or c == "_" or ord(c) >= 128


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.inline
@cython.locals(c=cython.Py_UCS4)
@cython.returns(cython.bint)
def _ident_cont(c: str) -> bool:
    return _ident_start(c) or ("0" <= c <= "9") or c == "$"


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.inline
@cython.locals(c=cython.Py_UCS4)
@cython.returns(cython.bint)
def _digit(c: str) -> bool:
    return "0" <= c <= "9"


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.inline
@cython.locals(c=cython.Py_UCS4)
@cython.returns(cython.bint)
def _space(c: str) -> bool:
    # scan.l's space (15: [ \t\n\r\f], 16+: also \v): the wider set refuses more
    return c == " " or c == "\t" or c == "\n" or c == "\r" or c == "\f" or c == "\v"


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.locals(sql=str, i=cython.Py_ssize_t, n=cython.Py_ssize_t, depth=cython.Py_ssize_t)
@cython.returns(cython.Py_ssize_t)
@cython.exceptval(check=False)
def _comment_end(sql: str, i: int, n: int) -> int:
    """`i` at a `--` or `/*`: the index after the comment (-1: unterminated)."""
    if sql[i] == "-":
        while i < n and sql[i] != "\n" and sql[i] != "\r":
            i += 1
        return i
    depth = 1  # block comments nest
    i += 2
    while i < n - 1:
        if sql[i] == "*" and sql[i + 1] == "/":
            depth -= 1
            i += 2
            if depth == 0:
                return i
        elif sql[i] == "/" and sql[i + 1] == "*":
            depth += 1
            i += 2
        else:
            i += 1
    return -1


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.locals(sql=str, i=cython.Py_ssize_t, n=cython.Py_ssize_t)
@cython.returns(cython.Py_ssize_t)
@cython.exceptval(check=False)
def _skip_blank(sql: str, i: int, n: int) -> int:
    """The index of the next character that is not whitespace nor in a comment
    (n at the end; -1: an unterminated comment)."""
    while i < n:
        if _space(sql[i]):
            i += 1
        elif i + 1 < n and (
            (sql[i] == "-" and sql[i + 1] == "-") or (sql[i] == "/" and sql[i + 1] == "*")
        ):
            i = _comment_end(sql, i, n)
            if i < 0:
                return -1
        else:
            return i
    return n


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.locals(sql=str, i=cython.Py_ssize_t, n=cython.Py_ssize_t, kind=cython.Py_UCS4)
@cython.locals(c=cython.Py_UCS4, e=cython.Py_UCS4)
@cython.returns(cython.Py_ssize_t)
@cython.exceptval(check=False)
def _quoted_end(sql: str, i: int, n: int, kind: str) -> int:
    """`i` just after the opening quote of a string of `kind` ('s' plain, 'e' E'',
    'u' U&'', 'b' B'' / X''): the index after its closing quote; -1 where the text
    could be read two ways, or is not a string PostgreSQL reads cleanly."""
    while i < n:
        c = sql[i]
        if c == "'":
            if kind != "b" and i + 1 < n and sql[i + 1] == "'":
                i += 2  # '' is a quote, in all but bit and hex strings
                continue
            return i + 1
        if c == "\\":
            if kind != "e":
                if kind == "b":
                    i += 1  # no escapes in bit and hex strings
                    continue
                return -1  # plain: standard_conforming_strings decides; U&: an escape
            if i + 1 >= n:
                return -1
            e = sql[i + 1]
            if ord(e) >= 128 or ("0" <= e <= "7") or e == "x" or e == "u" or e == "U":
                return -1  # a byte or code point escape: its value may not be valid
            i += 2
            continue
        i += 1
    return -1


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.locals(
    sql=str, i=cython.Py_ssize_t, n=cython.Py_ssize_t, j=cython.Py_ssize_t, k=cython.Py_ssize_t
)
@cython.returns(cython.Py_ssize_t)
@cython.exceptval(check=False)
def _dollar_end(sql: str, i: int, n: int) -> int:
    """`i` at a `$` that is no parameter: the index after the dollar-quoted string it
    opens (-1: none, or unterminated).  scan.l's dolqdelim: $ [tag] $, the tag an
    identifier without `$`; the string ends at the first same delimiter."""
    j = i + 1
    if j < n and _ident_start(sql[j]):
        j += 1
        while j < n and (_ident_start(sql[j]) or _digit(sql[j])):
            j += 1
    if j >= n or sql[j] != "$":
        return -1
    k = sql.find(sql[i : j + 1], j + 1)
    return -1 if k < 0 else k + (j + 1 - i)


@cython.cfunc
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.locals(sql=str, i=cython.Py_ssize_t, j=cython.Py_ssize_t, value=cython.longlong)
@cython.returns(cython.bint)
def _fits_int32(sql: str, i: int, j: int) -> bool:
    """Digits sql[i:j] are an ICONST (scan.l: an int32 value), not an FCONST."""
    value = 0
    while i < j:
        value = value * 10 + (ord(sql[i]) - 48)
        if value > _INT_MAX:
            return False
        i += 1
    return True


@cython.ccall
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.locals(
    sql=str, n=cython.Py_ssize_t, i=cython.Py_ssize_t, j=cython.Py_ssize_t,
    k=cython.Py_ssize_t, start=cython.Py_ssize_t, c=cython.Py_UCS4, first=cython.bint,
    ended=cython.bint, integer=cython.bint, parts=list, marker=str,
)  # fmt: skip
def statement_key(sql: str) -> str | None:
    """The literal-free key of one plain DML statement (None: not keyed, see above)."""
    n = len(sql)
    if n > MAX_CHARS or "\x01" in sql or "\x00" in sql:
        return None
    if not sql.isascii():
        try:
            sql.encode()
        except UnicodeEncodeError:
            return None  # a lone surrogate: no UTF-8 text, libpg_query would refuse it
    parts = []
    start = 0  # the verbatim text since the last literal
    i = 0
    first = True  # the first word is still to come
    ended = False  # after the final ;
    while i < n:
        c = sql[i]
        if _space(c):
            i += 1
            continue
        if i + 1 < n and ((c == "-" and sql[i + 1] == "-") or (c == "/" and sql[i + 1] == "*")):
            i = _comment_end(sql, i, n)
            if i < 0:
                return None
            continue
        if ended:
            return None  # a second statement
        if first:
            if c == "(":
                i += 1
                continue
            j = i
            while j < n and _ident_cont(sql[j]):
                j += 1
            if not _ident_start(c) or sql[i:j].lower() not in _DML_WORDS:
                return None
            first = False
            i = j
            continue
        marker = ""
        j = -1
        if c == "'":
            j = _quoted_end(sql, i + 1, n, "s")
            marker = PLAIN
        elif c == '"':  # a quoted identifier: kept
            j = sql.find('"', i + 1)
            while j >= 0 and j + 1 < n and sql[j + 1] == '"':
                j = sql.find('"', j + 2)
            if j < 0 or j == i + 1:
                return None  # unterminated, or "" (an error)
            i = j + 1
            continue
        elif _ident_start(c):
            j = i + 1
            while j < n and _ident_cont(sql[j]):
                j += 1
            if j < n and sql[j] == "'" and j == i + 1 and c in "eEbBxX":
                if c == "e" or c == "E":
                    j, marker = _quoted_end(sql, i + 2, n, "e"), ESCAPED
                else:
                    j = _quoted_end(sql, i + 2, n, "b")
                    marker = BITS if c == "b" or c == "B" else HEX
            elif j == i + 1 and (c == "u" or c == "U") and j + 1 < n and sql[j] == "&":
                if sql[j + 1] == "'":
                    j, marker = _quoted_end(sql, i + 3, n, "u"), UNICODE
                else:
                    i = j  # U&"…": an identifier, kept
                    continue
            else:
                if j - i == 7 and sql[i:j].lower() == "uescape":
                    return None
                if j - i == 5 and sql[i:j].lower() == "float":
                    k = _skip_blank(sql, j, n)
                    if k < 0 or (k < n and sql[k] == "("):
                        return None
                i = j
                continue
        elif _digit(c) or (c == "." and i + 1 < n and _digit(sql[i + 1])):
            integer = c != "."
            j = i + 1
            while j < n and _digit(sql[j]):
                j += 1
            if integer and j < n and sql[j] == ".":
                if j + 1 < n and sql[j + 1] == ".":
                    return None  # 1..2
                integer = False
                j += 1
                while j < n and _digit(sql[j]):
                    j += 1
            if j < n and (sql[j] == "e" or sql[j] == "E"):
                k = j + 1
                if k < n and (sql[k] == "+" or sql[k] == "-"):
                    k += 1
                if k >= n or not _digit(sql[k]):
                    return None  # 1e, 1e+: trailing junk
                while k < n and _digit(sql[k]):
                    k += 1
                integer = False
                j = k
            if j < n and (_ident_cont(sql[j]) or sql[j] == "."):
                return None  # 0x1F, 1_000, 12abc, 1.2.3: lexers disagree or reject
            integer = integer and _fits_int32(sql, i, j)
            marker = INTEGER if integer else NUMERIC
            parts.append(sql[start:i])
            parts.append(marker)
            start = i = j
            continue
        elif c == "$":
            if i + 1 < n and _digit(sql[i + 1]):  # a parameter: kept
                j = i + 1
                while j < n and _digit(sql[j]):
                    j += 1
                if j < n and _ident_cont(sql[j]):
                    return None  # $1abc, $1_000
                if not _fits_int32(sql, i + 1, j):
                    return None  # 16+: "parameter number too large"; 15 reads it
                i = j
                continue
            j = _dollar_end(sql, i, n)
            marker = DOLLAR
        elif c == ";":
            ended = True
            i += 1
            continue
        elif c == "." and i + 1 < n and sql[i + 1] == ".":
            i += 2  # scan.l's dot_dot, one token: `..2` is `..` then 2, never `.` then .2
            continue
        else:
            i += 1  # operators and punctuation: kept
            continue
        # a quoted literal from i to j
        if j < 0:
            return None
        k = _skip_blank(sql, j, n)
        if k < 0 or (k < n and sql[k] == "'"):
            return None  # a continuation ('a' newline 'b' is one string) or worse
        parts.append(sql[start:i])
        parts.append(marker)
        start = i = j
    if first:
        return None
    if start == 0:
        return sql
    parts.append(sql[start:])
    return "".join(parts)
