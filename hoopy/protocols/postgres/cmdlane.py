"""The agent → backend lane of a statement hoopy has classified before: its compiled steps.

A Query (or Parse) whose text the classifier's cache already answers for — the same
text, or the same sqlkey key with other literals — needs no parse, no classification and
no decision of its own: the cached commands, the statement's own text (for the
recording) and the session's cached decision say everything.  `StatementCheck._seen`
(statementcheck.py) takes that lane; this module holds the steps of it that are byte
and string work, written in Cython's pure-Python mode (see compiled.py): framing a lone
Query straight from the codec's buffer, cutting a statement's text out of a message as
classcache's `_retext` does, and telling whether a cached command is one the lane may
take at all (`plain`).

Everything the lane does not cover returns None / False here, and the caller goes the
full path (codec events, classify(), _check_now): a first sight, several statements, a
text with a ';' inside, a statement whose meaning depends on its literals beyond its
key (set_config: textsettings.py and searchpath.py read its text).  Both builds must
behave alike (tests/protocols/postgres/test_cmdlane.py).
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

from hoopy.policy import Command

_QUERY = cython.declare(cython.int, 0x51)  # 'Q'
# The kinds of a plain DML statement (classcache keeps only these by key).
PLAIN_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})


@cython.locals(
    buf=bytearray, pos=cython.Py_ssize_t, cap=cython.Py_ssize_t, end=cython.Py_ssize_t,
    length=cython.Py_ssize_t, raw=bytes,
)  # fmt: skip
def lone_query(buf: bytearray, pos: int, cap: int) -> tuple[bytes, str] | None:
    """`(raw, sql)` when the buffer from `pos` holds one whole Query message and nothing
    after it (what a simple-protocol client sends per statement); None for anything
    else, a malformed or non-UTF-8 Query included: the codec's own parse (bodies.py)
    then frames it and raises what it must."""
    end = len(buf)
    if end - pos < 6 or buf[pos] != _QUERY:
        return None
    length = (
        (cython.cast(cython.Py_ssize_t, buf[pos + 1]) << 24)
        | (buf[pos + 2] << 16)
        | (buf[pos + 3] << 8)
        | buf[pos + 4]
    )
    if length < 5 or length > cap or pos + 1 + length != end or buf[end - 1] != 0:
        return None
    raw = bytes(buf[pos:end])
    if raw.find(b"\0", 5) != length:  # the one NUL ends the text
        return None
    try:
        return raw, raw[5:length].decode()
    except UnicodeDecodeError:
        return None


@cython.locals(sql=str, text=str, semi=cython.Py_ssize_t)
def one_text(sql: str) -> str | None:
    """The text of the one statement `sql` holds, as classcache's `_retext` cuts it (blanks
    around it and final semicolons dropped); None when a ';' stands inside it (a
    literal's, or a second statement's: `_retext` splits those with the parser)."""
    text = sql.strip()
    semi = text.find(";")
    if semi < 0:
        return text
    if semi == len(text) - 1:
        return text.rstrip(";").rstrip()
    return None


@cython.locals(f=str)
def plain(cmd: Command) -> bool:
    """May the lane take a statement classified as `cmd`: one plain DML statement (no
    opaque part), calling no set_config (whose arguments, literals the key does not
    keep, decide what it changes: textsettings.py, searchpath.py)?  What else the full
    path does for other statements (COPY, PREPARE and other session state, EXECUTE's
    names, text settings) does nothing for these."""
    if cmd.opaque or not cmd.kinds <= PLAIN_KINDS:
        return False
    for f in cmd.functions:
        if f.endswith("set_config"):
            return False
    for f in cmd.maybe_functions:  # noqa: SIM110 (a loop compiles to C, a generator not)
        if f.endswith("set_config"):
            return False
    return True
