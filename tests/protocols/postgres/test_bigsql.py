"""Large SQL texts (issue 15 §2): the literal-free shape classification reads and caches
by, the worker that classifies long texts within limits, and the one list of kinds."""

from __future__ import annotations

import ast
import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.config import PostgresSettings
from hoopy.configpolicy import _statement_kind_problem
from hoopy.protocols.postgres import classeffects, classkinds, classstatements, classwalk, pgquery
from hoopy.protocols.postgres import classify as cl
from hoopy.protocols.postgres.classcache import Classifier
from hoopy.protocols.postgres.classworker import OffLoop, StatementTooLarge
from hoopy.protocols.postgres.sqltree import shape
from tests.protocols.postgres.test_classify import CORPUS, KINDS, OPAQUE


def fields(cmds: tuple[cl.Command, ...]) -> list[tuple[frozenset[str], ...]]:
    return [
        (c.kinds, c.tables_read, c.tables_written, c.functions, c.maybe_functions, c.opaque)
        for c in cmds
    ]


def full_tree_classification(sql: str) -> list[tuple[frozenset[str], ...]]:
    """What the classifier found before shapes: the walk over libpg_query's whole tree."""
    stmts = [s["stmt"] for s in json.loads(pgquery.parse_json(sql))["stmts"]]
    texts = cl._split(sql)
    return fields(
        tuple(cl._command(n, t, "db", None).command for n, t in zip(stmts, texts, strict=True))
    )


EXTRA = [
    "select * from t where a in (1, 2, 3) and b = any('{1,2}') limit 5 offset 2",
    "insert into t (a, b) values (1, 'x'), (2, 'y'), (now(), f(3))",
    "insert into t values (-1, -2.5, +3, 'a''b', E'\\\\x', $$q$$, B'1', X'f', null, true)",
    "select 1, 2, 'x' as y, z from t",
    "select (array[email, name])[1] from customers",
    "create aggregate a (sfunc = 'f1', stype = int)",
    "create aggregate a (sfunc = 'pg_read_file', stype = int)",
    "select pg_terminate_backend(1); select * from pg_stat_activity",
    "copy t from program 'x'",
    "select interval '1' day, date '2020-01-01', 1::int, '{}'::jsonb",
    'select "location", location, "A_Const" from "A_Const" where "{" = \'{"A_Const":{\'',
]


@pytest.mark.parametrize("sql", CORPUS + EXTRA)
def test_shape_classifies_as_the_whole_tree(sql: str) -> None:
    # every corpus statement parses (a ParseError here is a broken corpus entry)
    assert fields(cl.classify(sql, "db")) == full_tree_classification(sql)


def test_shape_keeps_what_classification_reads() -> None:
    """Function names given as strings are not literals to the classifier: kept."""
    a = shape("create aggregate a (sfunc = 'f1', stype = int)")
    b = shape("create aggregate a (sfunc = 'pg_read_file', stype = int)")
    assert a != b
    assert shape('select 1 from "A_Const"') != shape('select 1 from "B_Const"')


def test_shape_drops_literals_positions_and_layout() -> None:
    a = shape("SELECT * FROM t WHERE a = 1 AND b IN (1,2,3)")
    b = shape("select  *\nfrom t -- note\n where a = 'x' and b in (4, 5, 6, 7, 8)")
    assert a == b
    assert "A_Const" not in a and "location" not in a and "list_start" not in a


_TEMPLATES = [
    "select * from t where a = {} and b in ({}, {})",
    "insert into s.t (a, b) values ({}, {}), ({}, 1)",
    "update t set a = {} where b = {} returning f({})",
    "with d as (delete from t where a = {} returning *) select g({}) from d limit {}",
    "select {}, {}, {} from t",
    "select * from t order by {}, {} limit {}",
    "select coalesce({}, x) from t where y = any(array[{}, {}])",
    "explain (analyze) select * from t where a = {} and b = {} or c = {}",
    "copy (select {}, {}, {}) to stdout",
    "set search_path = {}; select {}, {}",
]
_LITERALS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8).map(
        lambda s: "'" + s.replace("'", "''") + "'"
    ),
    st.sampled_from(
        ["true", "null", "1.5e3", "-0.5", "B'101'", "X'ff'", "$1", "$2", "E'\\\\{'",
         "$$x$$", "'\"A_Const\":{'", "date '2020-01-01'", "'x'::regclass", "(1)", "x"]
    ),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(_TEMPLATES),
    st.lists(_LITERALS, min_size=3, max_size=3),
    st.lists(_LITERALS, min_size=3, max_size=3),
)
def test_one_shape_means_one_classification(template: str, a: list[str], b: list[str]) -> None:
    """The cache key is exact: two texts that share a shape classify alike (and a
    cached answer equals a fresh one)."""
    sa, sb = template.format(*a), template.format(*b)
    try:
        ka, kb = shape(sa), shape(sb)
    except pgquery.ParseError:
        return
    if ka == kb:
        assert full_tree_classification(sa) == full_tree_classification(sb)
    c = Classifier()
    c.classify(sa, "db")
    assert fields(c.classify(sb, "db")) == full_tree_classification(sb)


_DML = [
    "select a, {} from t where b = {} and c in ({}, 1)",
    "select * from t join u on t.a = u.b where u.c = {} order by {} limit {}",
    "insert into t (a, b, c) values ({}, {}, {}) returning a",
    "update t set a = {}, b = f({}) where c = {}",
    "delete from t where a = {} or b = {} or c = {}",
    "select {} from t where x = any(array[{}, {}])",
    "select g(a => {}, b => {}) from t limit {}",
    "merge into t using u on t.a = u.a when matched and u.b = {} then update set c = {} "
    "when not matched then insert values ({})",
]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(_DML),
    st.lists(_LITERALS, min_size=3, max_size=3),
    st.lists(_LITERALS, min_size=3, max_size=3),
)
def test_the_normalize_key_of_plain_dml_is_exact(template: str, a: list[str], b: list[str]) -> None:
    """One normalize() text (the fast key of plain DML) means one classification."""
    sa, sb = template.format(*a), template.format(*b)
    try:
        na, nb = pgquery.normalize(sa), pgquery.normalize(sb)
        fa, fb = full_tree_classification(sa), full_tree_classification(sb)
    except pgquery.ParseError:
        return
    if na == nb:
        assert fa == fb
    c = Classifier()
    c.classify(sa, "db")
    assert fields(c.classify(sb, "db")) == fb


def test_the_normalize_key_is_only_for_plain_dml() -> None:
    c = Classifier()
    c.classify("select * from t where a = 1", "db")
    c.classify("do $$ begin perform 1; end $$", "db")
    c.classify("select 1; select 2", "db")
    assert [k[0] for k in c._dml] == ["select * from t where a = $1"]


def big_insert(rows: int) -> str:
    values = ",".join(
        f"({i}, 'name {i}', {i}.5, {'true' if i % 2 else 'null'})" for i in range(rows)
    )
    return "insert into t (a, b, c, d) values " + values


def test_shape_of_long_texts_is_small() -> None:
    """The tree json.loads builds does not grow with the rows of a VALUES or an IN list."""
    insert = big_insert(20_000)
    in_list = "select * from t where a in (" + ",".join(map(str, range(100_000))) + ")"
    ones = "select " + ",".join(["1"] * 100_000)
    for sql in (insert, in_list, ones):
        assert len(sql) > 150_000
        assert len(shape(sql)) < 1000, sql[:40]
    assert fields(cl.classify(insert, "db"))[0][0] == {"insert"}


def test_fingerprint_is_literal_free_and_exact() -> None:
    (a,) = cl.classify("select * from t where a = 1", "db")
    (b,) = cl.classify("select * from t where a = 'x'", "db")
    (c,) = cl.classify("create aggregate a (sfunc = 'f1', stype = int)", "db")
    (d,) = cl.classify("create aggregate a (sfunc = 'pg_read_file', stype = int)", "db")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint.startswith("select * from t where a = $1\n-- classified ")
    assert c.fingerprint != d.fingerprint  # they call different functions
    long = big_insert(2000)
    assert len(long) > cl.FINGERPRINT_CHARS
    assert cl.classify(long, "db")[0].fingerprint == ""  # keyed by the exact text


# ------------------------------------------------------------------ the worker


def run_offloop(settings: PostgresSettings, *texts: str) -> list[object]:
    async def go() -> list[object]:
        off = OffLoop(Classifier(), settings)
        out: list[object] = []
        try:
            for sql in texts:
                try:
                    out.append(await off.classify(sql, "db", {}))
                except (StatementTooLarge, cl.SqlParseError) as e:
                    out.append(e)
        finally:
            off.close()
        out.append(off.offloaded)
        return out

    return asyncio.run(go())


def test_worker_classifies_long_texts_as_inline() -> None:
    insert = big_insert(3000)
    bad = insert + " selec"
    s = PostgresSettings(classify_inline_size=1000)
    got, error, offloaded = run_offloop(s, insert, bad)
    assert got == cl.classify(insert, "db")
    assert isinstance(error, cl.SqlParseError) and error.message.startswith("syntax error")
    assert offloaded == 2


def test_worker_memory_limit_refuses_with_54000() -> None:
    ones = "select " + ",".join(["1"] * 1_000_000)  # ~150 MB of JSON tree
    s = PostgresSettings(classify_inline_size=1000, classify_memory=120 * 1024 * 1024)
    error, after, _ = run_offloop(s, ones, big_insert(3000))
    assert isinstance(error, StatementTooLarge) and error.sqlstate == "54000"
    assert "postgres.classify_memory" in error.message
    assert after == cl.classify(big_insert(3000), "db")  # a fresh worker took over


def test_ceiling_refuses_with_54000_before_any_work() -> None:
    s = PostgresSettings(max_statement_size=10_000)
    (error, offloaded) = run_offloop(s, big_insert(1000))
    assert isinstance(error, StatementTooLarge) and error.sqlstate == "54000"
    assert "postgres.max_statement_size (10,000)" in error.message
    assert offloaded == 0


# ------------------------------------------------------------------ one list of kinds

_KIND_FACTORIES = {"_opaque", "_labelled", "_relations", "_runs_query", "_create_trigger"}


def _strings(node: ast.expr) -> set[str]:
    """The string values an argument can take: constants, tuples, conditionals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set().union(*(_strings(e) for e in node.elts))
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _literal_kinds() -> set[str]:
    """Every string the classifier's source adds to kinds or opaque, or names a kind by."""
    modules = (cl, classstatements, classwalk, classkinds, classeffects)
    trees = [ast.parse(Path(m.__file__ or "").read_text()) for m in modules]
    found: set[str] = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        adds = (
            isinstance(f, ast.Attribute)
            and f.attr in ("add", "update")
            and isinstance(f.value, ast.Attribute)
            and f.value.attr in ("kinds", "opaque")
        )
        if adds or (isinstance(f, ast.Name) and f.id in _KIND_FACTORIES):
            for arg in node.args:
                found |= _strings(arg)
    found |= set(classeffects._OTHER_SESSIONS_FUNCTIONS.values())
    return found


def test_every_literal_kind_is_in_the_one_list() -> None:
    literal = _literal_kinds() - {"create_"}  # f"create_…" prefixes, checked below
    assert literal - classkinds.STATEMENT_KINDS == set()
    assert {"read_activity", "signal_backend", "set_search_path"} <= classkinds.STATEMENT_KINDS


def test_hoopy_check_accepts_every_kind_the_classifier_emits() -> None:
    emitted: set[str] = set(classkinds.STATEMENT_KINDS)
    for sql in [s for s, _ in [*KINDS, *OPAQUE]] + CORPUS + EXTRA:
        try:
            cmds = cl.classify(sql, "db")
        except cl.SqlParseError:
            continue
        for cmd in cmds:
            emitted |= cmd.kinds | cmd.opaque
    problems = {k: _statement_kind_problem(k) for k in sorted(emitted)}
    assert {k: p for k, p in problems.items() if p} == {}


def test_commands_survive_the_worker_round_trip() -> None:
    from hoopy.protocols.postgres.classworker import _from_json, _to_json

    for sql in CORPUS[:50]:
        for cmd in cl.classify(sql, "db"):
            assert _from_json(json.loads(json.dumps(_to_json(cmd))), "db") == replace(cmd)


# ------------------------------------------------------------------ settings


def test_postgres_settings_for_large_texts(tmp_path: Path) -> None:
    from hoopy.config import load_config
    from tests.test_config import minimal, problems_of

    cfg = minimal(
        tmp_path,
        "postgres:\n  max_statement_size: 8MiB\n  classify_inline_size: 16KiB\n"
        "  classify_workers: 2\n  classify_timeout: 30s\n  classify_memory: 1GiB\n",
    )
    s = load_config(cfg).postgres
    assert (s.max_statement_size, s.classify_inline_size) == (8 << 20, 16 << 10)
    assert (s.classify_workers, s.classify_timeout, s.classify_memory) == (2, 30.0, 1 << 30)
    (tmp_path / "bad").mkdir()
    bad = minimal(tmp_path / "bad", "postgres:\n  classify_workers: 0\n  max_statement_size: x\n")
    problems = problems_of(bad)
    assert len(problems) == 2 and any("classify_workers" in p for p in problems)
