"""sqlkey.py, the literal-free key of plain DML that keys the classifier's cache.

The safety property: two texts with one key classify to the same Command (kinds,
tables, functions, opaque, fingerprint: everything but the text), so a decision cached
for one is right for the other.  Checked on generated texts (hostile literals, random
token soups) and on every statement of the corpora (the classifier's tests and
PostgreSQL's regression suite), each also with all its literals changed; the key's
literals are checked against libpg_query's own scanner; and the compiled module and
its .py must give the same key for every text (this file also runs under HOOPY_PURE=1).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import postgast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy import compiled
from hoopy.protocols.postgres import classify as cl
from hoopy.protocols.postgres import pgquery, sqlkey
from hoopy.protocols.postgres.classcache import Classifier, fully_normalized
from hoopy.protocols.postgres.searchpath import SearchPath
from hoopy.protocols.postgres.textsettings import refusal as text_setting_refusal
from tests.compat.pgregress import find_suite
from tests.protocols.postgres.test_bigsql import _DML, EXTRA
from tests.protocols.postgres.test_classify import CORPUS, KINDS, OPAQUE


def _load_source() -> Any:
    """sqlkey.py interpreted, whatever this process imported (the extension, if built)."""
    name = "hoopy.protocols.postgres._sqlkey_source"
    spec = importlib.util.spec_from_file_location(name, compiled.source(sqlkey.__name__))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = _load_source()


def key(sql: str) -> str | None:
    """The key, the same from both builds."""
    k = sqlkey.statement_key(sql)
    assert SOURCE.statement_key(sql) == k, sql
    return k


# libpg_query's scanner: the token names of literals → the key's marker
_SCANNED = {"ICONST": sqlkey.INTEGER, "FCONST": sqlkey.NUMERIC, "BCONST": sqlkey.BITS}
_SCANNED |= {"XCONST": sqlkey.HEX, "USCONST": sqlkey.UNICODE}


def scanned_key(sql: str) -> str:
    """What the key must be, from PostgreSQL's own lexer (libpg_query's scan)."""
    out, pos = [], 0
    for t in pgquery.scan(sql):
        if t.name == "SCONST":
            first = sql[t.start]
            marker = {"'": sqlkey.PLAIN, "$": sqlkey.DOLLAR}.get(first, sqlkey.ESCAPED)
        elif t.name in _SCANNED:
            marker = _SCANNED[t.name]
        else:
            continue
        out += [sql[pos : t.start], marker]
        pos = t.end + 1
    return "".join(out) + sql[pos:]


def classification(sql: str) -> object:
    """Every field of every Command but its text, and its fingerprint where the
    classifier would key it (fully_normalized: see classcache.py); or the failure."""
    try:
        cmds = cl.classify(sql, "db")
    except Exception as e:  # any failure must be shared too
        return ("refused", type(e).__name__)
    out = [{k: v for k, v in c.__dict__.items() if k not in ("text", "fingerprint")} for c in cmds]
    if len(cmds) == 1 and fully_normalized(cmds[0]):
        out[0]["fingerprint"] = cmds[0].fingerprint
    return out


def check_pair(a: str, b: str) -> None:
    """The safety property for two texts, and that the cached answer is the fresh one."""
    ka, kb = key(a), key(b)
    if ka is not None:
        assert ka == scanned_key(a), a
    if ka is None or ka != kb:
        return
    assert classification(a) == classification(b), (a, b)
    c = Classifier()
    c.use_key = True
    try:
        c.classify(a, "db")
        got = c.classify(b, "db")
    except Exception:
        return  # a refused text is cached nowhere
    assert got == cl.classify(b, "db"), (a, b)


# ---------------------------------------------------------------- what it keys


def test_literals_become_their_class() -> None:
    sql = (
        "select 'a''b', E'x\\ny', $$q$$, $t$ a $ b $t$, B'101', X'ff', U&'abc', N'x', "
        '1.5, .5, 1e-3, 1., 007, 2147483647, 2147483648, $1, "q""i", a$b$ from t;'
    )
    assert key(sql) == (
        "select \x01s, \x01e, \x01d, \x01d, \x01b, \x01x, \x01u, N\x01s, "
        '\x01n, \x01n, \x01n, \x01n, \x01i, \x01i, \x01n, $1, "q""i", a$b$ from t;'
    )
    assert key(sql) == scanned_key(sql)


def test_layout_comments_and_names_stay() -> None:
    """Everything but literals is kept: a finer key, never a coarser one."""
    a = key("select a from t where b = 1")
    assert a == "select a from t where b = \x01i"
    assert key("SELECT a from t where b = 2") != a  # case of keywords
    assert key("select a  from t where b = 2") != a  # layout
    assert key("select a from t where b = 2 -- 'x'") == a + " -- 'x'"
    assert key('select a from "t" where b = 2') != a
    assert key("select /* /* nested */ 'x' */ 1") == "select /* /* nested */ 'x' */ \x01i"
    assert key("(select 1)") == "(select \x01i)"
    assert key("with x as (select 1) select * from x") == "with x as (select \x01i) select * from x"
    # literals that look like SQL are literals
    assert key("select 'from secret; drop table t; --' from t") == "select \x01s from t"
    assert key("select $x$ ' \" -- /* $y$ $x$ from t") == "select \x01d from t"
    assert key("select E'\\' from secret --' from t") == "select \x01e from t"
    assert key("select a..2 from t") == "select a..\x01i from t"  # `..` is one token
    assert key("select a...2 from t") == "select a..\x01n from t"  # .. then .2
    # a name that looks like a prefix is a name
    assert key("select xe'1' from t") == "select xe\x01s from t"
    assert key("select N 'x'") == "select N \x01s"


@pytest.mark.parametrize(
    "sql",
    [
        "drop table t",
        "set search_path = 'x'",
        "do $$ begin end $$",
        "explain select 1",
        "copy t from stdin",
        "execute p(1)",
        "select 1; select 2",
        "select 1; drop table t",
        "select 1 /* unterminated",
        "select 'unterminated",
        'select "unterminated',
        'select "" from t',
        "select $q$ unterminated $Q$",
        "select $ from t",
        "select $1abc",
        "select $1_000",
        "select $2147483648",
        "select 0x1F",
        "select 0o17",
        "select 0b101",
        "select 1_000",
        "select 1e",
        "select 1e+",
        "select 12abc",
        "select 1..2",
        "select 1.2.3",
        "select 'a\\' from t",  # standard_conforming_strings decides where it ends
        "select E'\\x41'",
        "select E'\\101'",
        "select E'\\u0041'",
        "select E'\\U00000041'",
        "select E'\\é'",
        "select U&'\\0041'",
        "select U&'x' UESCAPE '!'",
        "select U&\"d!0061t\" uescape '!' from t",
        "select 'a'\n'b'",
        "select 'a' 'b'",
        "select 'a' -- c\n'b'",
        "select B'1''0'",
        "select 1::float(10)",
        "select 1::FLOAT /* p */ (99)",
        "select 1 /*",
        "select '\x01s'",
        "select 1\x00",
        "select '\ud800' from t",
        "",
        "  -- only a comment",
        "select 1 from t where a = '" + "x" * sqlkey.MAX_CHARS + "'",
    ],
)
def test_not_keyed(sql: str) -> None:
    """Whatever lexers or settings could read two ways, or the grammar reads the value
    of: not keyed (the classifier's other paths run)."""
    assert key(sql) is None


# ---------------------------------------------------------------- the safety property

_SLOT_FORMS = ["'{}'", "E'{}'", "$${}$$", "$q${}$q$", "U&'{}'", "B'{}'", "X'{}'", "N'{}'"]
_HOSTILE = st.lists(
    st.sampled_from([*"ab'\"$-/*;\\\n ()eEuU&01.x_q:é\t", "$$", "--", "/*", "*/", "''"]),
    max_size=10,
).map("".join)


def _fill(form: str, text: str) -> str:
    if form.startswith(("'", "E'", "U&'", "N'")):
        return form.format(text.replace("'", "''"))
    if form.startswith(("B'", "X'")):
        return form.format(text.replace("'", ""))
    return form.format(text.replace("$", ""))


_NUMBERS = st.one_of(
    st.integers(0, 10**12).map(str),
    st.sampled_from(["1.5", ".5", "1.", "1e-3", "1E+10", "007", "2147483647", "2147483648"]),
    st.sampled_from(["0x1F", "0o17", "0b101", "1_000", "1e", "12abc", "1..2", "-5", "- 5"]),
)
_LITERAL = st.one_of(
    _NUMBERS,
    st.builds(_fill, st.sampled_from(_SLOT_FORMS), _HOSTILE),
    st.sampled_from(["null", "true", "$1", "$2", "x", "select", "'a'\n'b'", "'a\\'"]),
    st.sampled_from(["'x'::regclass", "date '2020-01-01'", "interval '1' day", "1::float(7)"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_DML),
    st.lists(_LITERAL, min_size=3, max_size=3),
    st.lists(_LITERAL, min_size=3, max_size=3),
)
def test_one_key_means_one_classification(template: str, a: list[str], b: list[str]) -> None:
    check_pair(template.format(*a), template.format(*b))


_SEARCH_PATH = [
    "select set_config('search_path', {}, false) from t where a = {} or b = {}",
    "select set_config({}, {}, {})",
    "select pg_catalog.set_config('standard_conforming_strings', {}, {}) where {}",
    "select query_to_xml({}, true, false, {}) from t where c = {}",
    "select nextval({}), currval({}), {}::regclass",
    "select * from dblink({}, {}) as t(a int) where {}",
    "update pg_settings set setting = {} where name = {} and {}",
]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(_SEARCH_PATH),
    st.lists(_LITERAL, min_size=3, max_size=3),
    st.lists(_LITERAL, min_size=3, max_size=3),
)
def test_functions_given_literals_classify_alike(template: str, a: list[str], b: list[str]) -> None:
    """set_config, dynamic SQL, sequences named by a value: classification never reads
    the value (what reads it, the search path and text settings, reads the text)."""
    check_pair(template.format(*a), template.format(*b))


_PIECES = st.sampled_from(
    [
        *("select ", "from t", " where ", "a", "=", " and ", "(", ")", ", ", "::int", "::text"),
        *(" ", "\n", "-- c\n", "/* c /* n */ */", "$1", '"q""id"', "E", "N", "U&", "||", "-"),
        *("float", "(", ";", "uescape", ".", "$", "b$", "_", "'", "\\", "1", "x", "&"),
        *("..", "e", "0", "+", "*", "/", "é", "$$", "$a$", "''", '"', "B", "X", "u", "\t"),
        *("\r", "\v", "\f", ":", "=>", "<>", "[", "]", "%", "^", "@", "#", "~", "!", "?"),
        *("|", "`", "{", "}", "2147483648", "0x", "o", "_1", "$2147483648"),
    ]
)
_SOUP = st.lists(st.one_of(_PIECES, st.just(None)), min_size=1, max_size=14)


@settings(max_examples=400, deadline=None)
@given(_SOUP, st.lists(_LITERAL, min_size=14, max_size=14), st.data())
def test_token_soups(pieces: list[str | None], a: list[str], data: st.DataObject) -> None:
    """Random adjacency of names, operators, comments and literals (mostly not SQL):
    both builds agree, a keyed text's literals are the scanner's, and the property."""
    b = data.draw(st.lists(_LITERAL, min_size=14, max_size=14))
    ta = "select " + "".join(p if p is not None else a[i] for i, p in enumerate(pieces))
    tb = "select " + "".join(p if p is not None else b[i] for i, p in enumerate(pieces))
    check_pair(ta, tb)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_any_text(sql: str) -> None:
    """Any text at all: no crash, both builds alike, a key only where the scanner agrees."""
    k = key("select " + sql)
    if k is not None:
        assert k == scanned_key("select " + sql)


# ---------------------------------------------------------------- the corpora

# Another value of the same literal form, for each form the scanner reports
_OTHER = {
    "ICONST": ["7", "2147483647"],
    "FCONST": ["2147483648", "1.5e3"],
    "BCONST": ["B'0'"],
    "XCONST": ["X'0f'"],
    "USCONST": ["U&'uu'"],
}


def _other_value(sql: str, t: Any, i: int) -> str:
    if t.name != "SCONST":
        choices = _OTHER[t.name]
        return choices[i % len(choices)]
    first = sql[t.start]
    if first == "'":
        return ["'zq'", "'o''k -- /*'"][i % 2]
    if first == "$":
        return "$w$ ' -- $w$"
    return "E'\\t''x'"


def mutated(sql: str) -> str | None:
    """`sql` with every literal changed, its form kept (None: none to change)."""
    try:
        tokens = [t for t in pgquery.scan(sql) if t.name == "SCONST" or t.name in _OTHER]
    except pgquery.ParseError:
        return None
    if not tokens:
        return None
    out, pos = [], 0
    for i, t in enumerate(tokens):
        out += [sql[pos : t.start], _other_value(sql, t, i)]
        pos = t.end + 1
    return "".join(out) + sql[pos:]


def _regression_statements() -> list[str]:
    suite = find_suite()  # the compatibility runner's: CI has the suite, so never skip
    out: list[str] = []
    for f in sorted((suite / "sql").glob("*.sql")):
        lines = f.read_text(errors="replace").splitlines()
        text = "\n".join(x for x in lines if not x.lstrip().startswith("\\"))
        try:
            out += postgast.split(text, method="scanner")
        except postgast.PgQueryError:
            continue
    return out


OURS = CORPUS + [s for s, _ in OPAQUE] + [s for s, _ in KINDS] + EXTRA


def _corpus_check(statements: list[str]) -> int:
    keyed = 0
    for sql in statements:
        k = key(sql)
        if k is None:
            continue
        keyed += 1
        assert k == scanned_key(sql), sql
        other = mutated(sql)
        if other is None:
            continue
        assert key(other) == k, (sql, other)
        assert classification(other) == classification(sql), (sql, other)
    return keyed


def test_our_corpus() -> None:
    assert _corpus_check(OURS) > 50


def test_regression_suite_corpus() -> None:
    """PostgreSQL 15's regression suite, every statement (tens of thousands)."""
    statements = _regression_statements()
    assert _corpus_check(statements) > 5000


# ---------------------------------------------------------------- through the classifier


def keyed_classifier() -> Classifier:
    c = Classifier()
    c.use_key = True  # the interpreted build too (in service only compiled uses it)
    return c


def test_the_classifier_keys_plain_dml_only() -> None:
    c = keyed_classifier()
    c.classify("select * from t where a = 1", "db")
    c.classify("select * from t where a = 'x'", "db")
    c.classify("select pg_terminate_backend(1)", "db")  # opaque: not by this key
    c.classify("select 1; select 2", "db")
    c.classify("copy t from stdin", "db")
    assert sorted(k[0] for k in c._keyed) == [
        "select * from t where a = \x01i",
        "select * from t where a = \x01s",
    ]
    hits = c.hits
    (cmd,) = c.classify("select * from t where a = 2", "db")
    assert c.hits == hits + 1 and cmd.text == "select * from t where a = 2"
    assert cmd == cl.classify("select * from t where a = 2", "db")[0]
    c.classify("select * from t where a = 2", "other")  # keyed per connector
    assert ("select * from t where a = \x01i", "other") in c._keyed


def test_what_reads_the_value_reads_each_text() -> None:
    """A key shared by set_config('search_path', 'a') and ('b'): the search path and
    the text settings read each statement's own text, never the cached one's."""
    c = keyed_classifier()
    (a,) = c.classify("select set_config('search_path', 'a', false)", "db")
    (b,) = c.classify("select set_config('search_path', 'evil', false)", "db")
    assert c._keyed and b.text == "select set_config('search_path', 'evil', false)"
    path = SearchPath("agent")
    assert path.observe(a) and path.observe(b)
    assert path.schemas is not None and "evil" in path.schemas
    on = c.classify("select set_config('standard_conforming_strings', 'on', false)", "db")
    off = c.classify("select set_config('standard_conforming_strings', 'off', false)", "db")
    assert text_setting_refusal(on[0]) == ""
    assert text_setting_refusal(off[0])


def test_the_builds() -> None:
    """The module in use is compiled wherever it is built (and not asked otherwise)."""
    ext = compiled.extension(sqlkey.__name__)
    pure = compiled.pure_requested()
    assert compiled.is_compiled(sys.modules[sqlkey.__name__]) is sqlkey.COMPILED
    if ext is not None and not pure and not compiled.stale(sqlkey.__name__):
        assert sqlkey.COMPILED and Classifier().use_key
    if pure:
        assert not sqlkey.COMPILED and not Classifier().use_key
    assert not SOURCE.COMPILED
