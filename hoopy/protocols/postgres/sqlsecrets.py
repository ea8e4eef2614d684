"""Passwords an agent writes into SQL, hidden from what hoopy keeps and shows.

`ALTER ROLE app PASSWORD 'x'` (psql's `\\password` sends one), `CREATE USER MAPPING …
OPTIONS (password 'x')`, `CREATE SUBSCRIPTION … CONNECTION '… password=x'` and
`dblink_connect('… password=x')` carry a database credential in the statement's own text.
The server needs it; recordings, approval requests (Slack, the state store) and
fingerprints do not, and whoever reads those must not learn it (pgaudit hides these
statements for the same reason).  `redact()` replaces such a literal's content by
`****` and leaves everything else as written, so an approver still reads what runs.

Found by the scanner's tokens (not a text search), so quoting, dollar quotes and
comments read as PostgreSQL reads them:
- a string constant after an option or keyword named like a password (PASSWORD,
  `password`, `"sslpassword"`, `secret` …), optionally after `=` or TO;
- inside any string constant, a conninfo `password=…` value and a URI's `user:pass@`.
A text the scanner refuses (an unterminated quote) gets the same rules as regular
expressions over the raw text: a statement hoopy cannot read hides its secret too.
"""

from __future__ import annotations

import re

from hoopy.protocols.postgres import pgquery
from hoopy.shellsecrets import again

MASK = "****"

# Option and keyword names whose string value is a secret (lower case, quotes removed).
_SECRET_NAMES = frozenset(
    {"password", "passwd", "pwd", "sslpassword", "secret", "secret_key", "api_key", "apikey"}
)
# Cheap first look: a text without any of these has nothing to hide.
_HINTS = ("pass", "pwd", "secret", "api_key", "apikey", "://")
_STRING_TOKENS = frozenset({"SCONST", "USCONST", "XCONST", "BCONST"})
_SKIPPABLE = frozenset({"ASCII_61", "TO"})  # `name = 'v'`, `SET name TO 'v'`
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})

# conninfo `password=value`: the value runs to the next `keyword=` or the literal's end
# (over-hiding a value with ` x=` inside rather than showing part of a quoted one)
_CONNINFO = re.compile(r"(?is)\b(password|sslpassword)(\s*=\s*)(.*?)(?=\s+\w+\s*=|$)")
# URI userinfo `scheme://user:password@`
_URI = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/@:'\"]*:)([^\s/@'\"]+)(@)")
# Over a raw text the scanner refused: a secret name, then a quoted or bare value.
_RAW = re.compile(
    r"""(?ix) \b(password|passwd|pwd|sslpassword|secret)\b(\s*(?:=|\bto\b)?\s*)
        ('(?:[^']|'')*'?|\$(\w*)\$.*?(?:\$\4\$|$)|[^\s'";,)]+)""",
    re.DOTALL,
)


def might_hold_secret(sql: str) -> bool:
    # spelled out rather than any() over _HINTS: this runs for every statement, and a
    # generator costs more than the tests
    low = sql.lower()
    return (
        "pass" in low
        or "pwd" in low
        or "secret" in low
        or "api_key" in low
        or "apikey" in low
        or "://" in low
    )


def redact(sql: str) -> str:
    """`sql` with every secret literal's content replaced by `****` (see the module)."""
    return hidden(sql)[0]


def hidden(sql: str) -> tuple[str, tuple[str, ...]]:
    """(`redact(sql)`, the secret values it hid): another field that quotes the text
    (a parser error near a literal) is scrubbed of those values."""
    if not might_hold_secret(sql):
        return sql, ()
    try:
        tokens = pgquery.scan(sql)
    except (pgquery.ParseError, ValueError, UnicodeError):
        return _redact_raw(sql)
    spans: list[tuple[int, int, str]] = []  # (start, end exclusive, replacement)
    secrets: list[str] = []
    for i, tok in enumerate(tokens):
        if tok.name not in _STRING_TOKENS:
            continue
        start, end = tok.start, tok.end + 1
        literal = sql[start:end]
        prefix, inner, suffix = _parts(literal)
        if _after_secret_name(sql, tokens, i):
            spans.append((start, end, prefix + MASK + suffix))
            secrets.append(inner)
            continue
        shown = _CONNINFO.sub(lambda m: _hide(m, 3, secrets), inner)
        shown = _URI.sub(lambda m: _hide(m, 2, secrets), shown)
        if shown != inner:
            spans.append((start, end, prefix + shown + suffix))
    if not spans:
        return sql, ()
    out = []
    pos = 0
    for start, end, text in spans:
        out.append(sql[pos:start])
        out.append(text)
        pos = end
    out.append(sql[pos:])
    found = [x for x in secrets if x]
    return again("".join(out), found), tuple(found)


def _hide(m: re.Match[str], group: int, secrets: list[str]) -> str:
    """The match with its `group` replaced by MASK, the hidden value kept in `secrets`."""
    secrets.append(m.group(group))
    return m.string[m.start() : m.start(group)] + MASK + m.string[m.end(group) : m.end()]


def _after_secret_name(sql: str, tokens: list[pgquery.Token], i: int) -> bool:
    j = _before(tokens, i)
    if j >= 0 and tokens[j].name in _SKIPPABLE:
        j = _before(tokens, j)
    if j < 0:
        return False
    word = sql[tokens[j].start : tokens[j].end + 1]
    if word.startswith('"') and word.endswith('"') and len(word) >= 2:
        word = word[1:-1]
    return word.lower() in _SECRET_NAMES


def _before(tokens: list[pgquery.Token], i: int) -> int:
    """The index of the token before `i`, comments skipped (-1: none)."""
    j = i - 1
    while j >= 0 and tokens[j].name in _COMMENTS:
        j -= 1
    return j


def _parts(literal: str) -> tuple[str, str, str]:
    """(opening quote with its prefix, content, closing quote): 'x', E'x', $tag$x$tag$."""
    if literal.startswith("$"):
        tag = literal[: literal.index("$", 1) + 1]
        return tag, literal[len(tag) : len(literal) - len(tag)], tag
    quote = literal.find("'")
    if quote < 0 or not literal.endswith("'") or len(literal) < quote + 2:
        return "", literal, ""
    return literal[: quote + 1], literal[quote + 1 : -1], "'"


def _redact_raw(sql: str) -> tuple[str, tuple[str, ...]]:
    secrets: list[str] = []

    def sub(m: re.Match[str]) -> str:
        value = m.group(3)
        if value.startswith("'"):
            secrets.append(value[1:-1] if value.endswith("'") and len(value) > 1 else value[1:])
            return m.group(1) + m.group(2) + "'" + MASK + "'"
        if value.startswith("$"):
            tag = "$" + (m.group(4) or "") + "$"
            secrets.append(value[len(tag) :].removesuffix(tag))
            return m.group(1) + m.group(2) + tag + MASK + tag
        secrets.append(value)
        return m.group(1) + m.group(2) + MASK

    out = _RAW.sub(sub, sql)
    out = _URI.sub(lambda m: _hide(m, 2, secrets), out)
    found = [x for x in secrets if x]
    return again(out, found), tuple(found)
