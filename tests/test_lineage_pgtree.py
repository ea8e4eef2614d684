"""lineage / sinks / textsettings over libpg_query's protobuf tree (postgast): the places
where that tree says "nothing" differently from a Python AST — "" for an unset name, []
for an unset list, enums shifted by an UNDEFINED = 0, a NIL left out of a list, a zero
Integer left empty — and trees deeper than protobuf's default decoding limit."""

from __future__ import annotations

import sys
from dataclasses import replace

import postgast
import postgast.native
import pytest

from hoopy.policy import Command
from hoopy.protocols.postgres import lineage as lin
from hoopy.protocols.postgres import lineagechecks as checks
from hoopy.protocols.postgres import sinks, textsettings
from hoopy.protocols.postgres.lineage import output_lineage
from hoopy.protocols.postgres.lineagechecks import required_names, untraceable
from hoopy.protocols.postgres.pipeline import prepared_name
from tests.test_lineage_forms import CAT

C = "public.customers"
ORD = "public.orders"


def col(*names: str, table: str = C) -> frozenset[tuple[str, str]]:
    return frozenset((table, n) for n in names)


def lineage(sql: str) -> list[lin.ColumnLineage] | None:
    return output_lineage(sql, CAT)


class Recording:
    """CAT, recording the names it is asked about."""

    def __init__(self) -> None:
        self.asked: list[lin.QualName] = []

    def relation(self, name: lin.QualName) -> lin.Relation | None:
        self.asked.append(name)
        return CAT.relation(name)

    def function_is_builtin(self, name: lin.QualName) -> bool:
        self.asked.append(name)
        return CAT.function_is_builtin(name)

    def type_is_builtin(self, name: lin.QualName) -> bool:
        self.asked.append(name)
        return CAT.type_is_builtin(name)

    def operator_is_builtin(self, name: lin.QualName) -> bool:
        self.asked.append(name)
        return CAT.operator_is_builtin(name)


# ---- unset names: "" in the tree, None to the catalog --------------------------------


def test_an_unqualified_name_reaches_the_catalog_as_none_not_empty() -> None:
    cat = Recording()
    assert output_lineage("SELECT email FROM customers", cat) == [col("email")]
    assert (None, "customers") in cat.asked and ("", "customers") not in cat.asked
    assert output_lineage("SELECT upper(email)::text FROM customers", cat) == [col("email")]
    assert (None, "upper") in cat.asked and (None, "text") in cat.asked
    assert not [n for n in cat.asked if n[0] == ""]


def test_required_names_of_unqualified_and_qualified_relations() -> None:
    rels, funcs = required_names("SELECT upper(c.email) FROM customers c, public.orders")
    assert rels == {(None, "customers"), ("public", "orders")}
    assert funcs == {(None, "upper")}
    # a CTE's name is not a relation; a schema-qualified one of the same name is
    rels, _ = required_names(
        "WITH customers AS (SELECT 1) SELECT * FROM customers, public.customers"
    )
    assert rels == {("public", "customers")}


def test_unaliased_tables_and_star() -> None:
    assert lineage("SELECT * FROM customers") == [col(c) for c in ("id", "name", "email", "ssn")]
    assert lineage("SELECT customers.* FROM customers") == lineage("SELECT * FROM customers")
    assert lineage("SELECT customers.email FROM customers, orders") == [col("email")]
    assert lineage("SELECT * FROM nosuch") is None  # shape unknown
    assert lineage("SELECT x.* FROM nosuch x") is None
    assert lineage("SELECT email FROM nosuch") == [None]  # unknown relation: unknown column
    # an unaliased join exposes its sides' names; an aliased one hides them
    assert lineage("SELECT c.email FROM (customers c JOIN orders o ON true)") == [col("email")]
    assert lineage("SELECT j.email FROM (customers c JOIN orders o ON true) AS j") == [col("email")]
    assert lineage("SELECT c.email FROM (customers c JOIN orders o ON true) AS j") == [None]


def test_a_subquery_without_alias() -> None:
    assert lineage("SELECT * FROM (SELECT email FROM customers)") == [col("email")]
    assert lineage("SELECT email FROM (SELECT email FROM customers)") == [col("email")]


# ---- constants: NULL, zero, strings --------------------------------------------------


def test_null_and_zero_constants() -> None:
    empty = frozenset[tuple[str, str]]()
    assert lineage("SELECT NULL, 0, 0.0, '', false, B'0'") == [empty] * 6
    # NULL and a string are untyped: their cast to a user type runs no user function
    assert not untraceable("SELECT NULL::mood, ''::mood, $1::mood", CAT)
    assert untraceable("SELECT 0::mood", CAT)  # an integer's cast may (CREATE CAST)
    assert untraceable("SELECT false::mood", CAT)
    assert lineage("SELECT NULL::mood") == [empty]
    assert lineage("SELECT 0::mood") == [None]


def test_a_zero_setting_value_is_read_as_zero() -> None:
    # protobuf leaves a zero Integer empty: `= 0` must still read as 0 (off)
    def refusal(sql: str) -> str:
        return textsettings.refusal(Command("postgres", "db", sql, kinds=frozenset({"set"})))

    assert "'0'" in refusal("SET standard_conforming_strings = 0")
    assert refusal("SET standard_conforming_strings = 1") == ""
    # `= false` is the string 'false' (the grammar's opt_boolean_or_string)
    assert "'false'" in refusal("SET standard_conforming_strings = false")
    assert refusal("SET standard_conforming_strings = true") == ""
    assert "'0.0'" in refusal("SET standard_conforming_strings = 0.0")
    # set_config's boolean arguments are Boolean constants: false is left empty too
    cmd = Command("postgres", "db", "SELECT set_config('standard_conforming_strings', 0, false)")
    assert "'0'" in textsettings.refusal(replace(cmd, functions=frozenset({"set_config"})))


# ---- SET kinds (VariableSetKind, shifted by protobuf's UNDEFINED) ---------------------


@pytest.mark.parametrize(
    ("sql", "schemas"),
    [
        ("SET search_path TO a, b", ("a", "b")),
        ('SET search_path = "$user", public', ("$user", "public")),
        ("SET search_path TO DEFAULT", ("public",)),
        ("SET search_path = DEFAULT", ("public",)),
        ("RESET search_path", ("public",)),
        ("SET search_path FROM CURRENT", None),
        ("SET search_path TO 1", None),
        ("SET SCHEMA 'x'", ("x",)),
        ("SET ROLE bob", None),
        ("SELECT set_config('search_path', 'a, \"B\"', false)", ("a", "B")),
        ("SELECT set_config('search_path', NULL, false)", None),
        ("SELECT set_config(NULL, 'a', false)", None),
        ("SELECT set_config('work_mem', '1MB', false)", ()),
        ("SELECT 1", ()),
    ],
)
def test_search_path_schemas_by_set_kind(sql: str, schemas: tuple[str, ...] | None) -> None:
    assert checks.search_path_schemas(sql) == schemas


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SET standard_conforming_strings TO DEFAULT", ""),
        ("RESET standard_conforming_strings", ""),
        ("SET client_encoding TO DEFAULT", ""),
        ("SET NAMES DEFAULT", ""),
        ("ALTER SYSTEM RESET client_encoding", ""),
        ("SET client_encoding = 'UTF8'", ""),
        ("SET client_encoding = 'SJIS'", "'SJIS'"),
        ("SET NAMES 'sjis'", "'sjis'"),
        ("SET standard_conforming_strings FROM CURRENT", "computed value"),
        ("SET client_encoding = 'sjis', 'x'", "computed value"),
        ("ALTER SYSTEM SET standard_conforming_strings = off", "ALTER SYSTEM SET"),
        ("SELECT set_config('client_encoding', 'big5', false)", "set_config"),
        ("UPDATE pg_settings SET setting = 'x' WHERE name = 'client_encoding'", "pg_settings"),
    ],
)
def test_text_settings_by_set_kind(sql: str, reason: str) -> None:
    cmd = Command(
        "postgres", "db", sql, kinds=frozenset({"set"}), functions=frozenset({"set_config"})
    )
    got = textsettings.refusal(cmd)
    assert (got == "") if reason == "" else (reason in got)


# ---- set operations, sublinks, operator kinds (enums) --------------------------------


def test_set_operations_of_every_kind() -> None:
    for op in ("UNION", "UNION ALL", "INTERSECT", "EXCEPT ALL"):
        sql = f"SELECT email, id FROM customers {op} SELECT note, id FROM orders"
        assert lineage(sql) == [
            col("email") | col("note", table=ORD),
            col("id") | col("id", table=ORD),
        ]
    assert lineage("SELECT email FROM customers UNION SELECT name, id FROM customers") is None
    # nested: (a UNION b) EXCEPT c
    sql = "(SELECT email FROM customers UNION SELECT name FROM customers) "
    sql += "EXCEPT SELECT note FROM orders"
    assert lineage(sql) == [col("email", "name") | col("note", table=ORD)]


def test_sublink_kinds() -> None:
    email = col("email")
    # EXPR and ARRAY: the subquery's output only
    assert lineage("SELECT (SELECT email FROM customers LIMIT 1) FROM orders") == [email]
    assert lineage("SELECT ARRAY(SELECT email FROM customers) FROM orders") == [email]
    # ANY / ALL / EXISTS / row comparison: the test expression too
    note = col("note", table=ORD)
    for expr in (
        "note = ANY (SELECT email FROM customers)",
        "note IN (SELECT email FROM customers)",
    ):
        assert lineage(f"SELECT {expr} FROM orders") == [email | note]
    assert lineage("SELECT note = ALL (SELECT email FROM customers) FROM orders") == [email | note]
    assert lineage("SELECT EXISTS (SELECT email FROM customers) FROM orders") == [email]


@pytest.mark.parametrize(
    ("sql", "untraced"),
    [
        ("SELECT id BETWEEN 1 AND 2 FROM customers", False),  # BETWEEN: no operator named
        ("SELECT id NOT BETWEEN SYMMETRIC 1 AND 2 FROM customers", False),
        ("SELECT email LIKE 'x' FROM customers", False),  # ~~
        ("SELECT email ILIKE 'x' FROM customers", True),  # ~~* is not in CAT's builtins
        ("SELECT id IN (1, 2) FROM customers", False),  # =
        ("SELECT email IS DISTINCT FROM name FROM customers", False),  # =
        ("SELECT NULLIF(email, name) FROM customers", False),  # =
        ("SELECT email = ANY (ARRAY['a']) FROM customers", False),
        ("SELECT email ### 'x' FROM customers", True),
        ("SELECT email OPERATOR(pg_catalog.||) 'x' FROM customers", False),
        ("SELECT email OPERATOR(evil.||) 'x' FROM customers", True),
    ],
)
def test_operator_kinds(sql: str, untraced: bool) -> None:
    assert untraceable(sql, CAT) is untraced


def test_a_user_operator_hides_the_lineage() -> None:
    assert lineage("SELECT email ### 'x' FROM customers") == [None]
    assert lineage("SELECT email || 'x' FROM customers") == [col("email")]
    assert lineage("SELECT email LIKE 'x' FROM customers") == [col("email")]  # not AEXPR_OP


# ---- FROM functions: (call, column definitions) with the NIL left out -----------------


def test_from_functions_and_their_columns() -> None:
    assert lineage("SELECT * FROM unnest(ARRAY['a'], ARRAY['b'])") == [frozenset()] * 2
    got = lineage("SELECT * FROM unnest(ARRAY[(SELECT email FROM customers)]) WITH ORDINALITY")
    assert got == [col("email")] * 2
    assert (
        lineage("SELECT * FROM ROWS FROM (generate_series(1, 2), unnest(ARRAY['a']))")
        == [frozenset()] * 2
    )
    # a column definition list gives an unknown function its shape, never its lineage
    assert lineage("SELECT * FROM f(1) AS t(a int, b text)") == [None, None]
    assert lineage("SELECT * FROM ROWS FROM (f(1) AS (a int, b text))") == [None, None]
    assert lineage("SELECT * FROM f(1)") is None


# ---- COPY: STDIN is an unset filename ------------------------------------------------


def test_copy_from_stdin_file_and_program() -> None:
    assert not untraceable("COPY customers FROM STDIN", CAT)
    assert untraceable("COPY customers FROM '/etc/passwd'", CAT)
    assert untraceable("COPY customers FROM PROGRAM 'cat /etc/passwd'", CAT)
    assert not untraceable("COPY customers TO STDOUT", CAT)
    assert lineage("COPY customers (email) TO STDOUT") == [col("email")]
    assert lineage("COPY customers FROM STDIN") == []


# ---- names hidden in constants -------------------------------------------------------


def test_a_string_constant_is_not_a_name() -> None:
    change = checks.name_resolution_change
    assert change("SELECT 'pg_temp.x'::regclass") == ""
    assert change("SELECT 'pg_temp' AS temp") == ""
    assert change("SELECT 1::pg_temp.mytype") == checks.RELATIONS
    assert change("SELECT * FROM pg_temp.t") == checks.RELATIONS
    assert change("SELECT set_config('search_path', 'x', false)") == checks.ALL_NAMES
    assert change("SELECT set_config('search_path'::text, 'x', false)") == checks.ALL_NAMES
    assert change("SELECT set_config('temp_buffers', 'x', false)") == ""


def test_names_among_many_constants_are_still_names() -> None:
    # constants are told from names by where they sit (under an A_Const), not by object
    # identity: wrappers are built anew on each access and their ids get reused
    literals = ", ".join(f"'s{i}'" for i in range(200))
    change = checks.name_resolution_change
    assert change(f"SELECT {literals}, 1::pg_temp.ty") == checks.RELATIONS
    assert change(f"SELECT {literals} FROM t WHERE x = 1::pg_temp.ty") == checks.RELATIONS
    assert change(f"SELECT {literals}, 'pg_temp.ty'") == ""


def test_prepared_names() -> None:
    assert prepared_name("PREPARE p AS SELECT 1") == "p"
    assert prepared_name('PREPARE "Quoted P" (int) AS SELECT $1') == "Quoted P"
    assert prepared_name("DEALLOCATE p") == "p"
    assert prepared_name("DEALLOCATE ALL") == ""
    assert prepared_name("SELECT (") == ""


# ---- sinks: the SELECTs built as trees ----------------------------------------------


def stores(sql: str) -> list[tuple[str, tuple[str, ...] | None, list[lin.ColumnLineage] | None]]:
    found = sinks.stored_queries(sql)
    assert found is not None
    return [(s.table, s.columns, lineage(s.query)) for s in found]


def test_stored_queries_trace_what_each_write_stores() -> None:
    email, name = col("email"), col("name")
    assert stores("INSERT INTO orders (note) SELECT email FROM customers") == [
        ("orders", ("note",), [email])
    ]
    assert stores("INSERT INTO s.notes SELECT email FROM customers") == [("s.notes", None, [email])]
    assert stores("INSERT INTO orders DEFAULT VALUES") == []
    assert stores("UPDATE orders SET note = c.email FROM customers c WHERE c.id = orders.id") == [
        ("orders", ("note",), [email])
    ]
    # SET … = DEFAULT stores no value of the statement
    assert stores("UPDATE orders SET note = DEFAULT, id = 1") == [
        ("orders", ("note", "id"), [frozenset(), frozenset()])
    ]
    assert stores("CREATE TABLE x (a, b) AS SELECT email, name FROM customers") == [
        ("x", ("a", "b"), [email, name])
    ]
    assert stores("SELECT email INTO TEMP y FROM customers") == [("y", None, [email])]
    assert stores(
        "WITH s AS (SELECT email FROM customers) INSERT INTO orders (note) SELECT email FROM s"
    ) == [("orders", ("note",), [email])]


def test_a_multiple_assignment_stores_its_whole_source_into_each_column() -> None:
    both = col("email", "id")
    sql = "UPDATE orders SET (note, customer_id) = (SELECT email, id FROM customers LIMIT 1)"
    assert stores(sql) == [("orders", ("note", "customer_id"), [both, both])]
    sql = "UPDATE orders o SET (note, id) = (c.email, 1) FROM customers c"
    assert stores(sql) == [("orders", ("note", "id"), [col("email"), col("email")])]
    sql = "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET (note, id) = ('a', 2)"
    assert stores(sql)[1] == ("orders", ("note", "id"), [frozenset(), frozenset()])


def test_update_where_current_of_traces_what_it_stores() -> None:
    sql = "UPDATE customers SET name = email WHERE CURRENT OF cur"
    assert stores(sql) == [("customers", ("name",), [col("email")])]


def test_sinks_never_run_the_c_deparser(monkeypatch: pytest.MonkeyPatch) -> None:
    # libpg_query's deparser can crash the process on a tree it does not expect (COPY …
    # (DELIMITER 0)): the traced SELECTs stay trees, lineage reads them as they are
    def boom(tree: object) -> str:
        raise AssertionError("deparse called")

    monkeypatch.setattr(postgast, "deparse", boom)
    monkeypatch.setattr(sys.modules["postgast.deparse"], "deparse", boom)
    monkeypatch.setattr(postgast.native.lib, "pg_query_deparse_protobuf", boom)
    for sql in (
        "INSERT INTO orders (note) SELECT email FROM customers",
        "UPDATE orders SET (note, id) = (SELECT email, id FROM customers) WHERE CURRENT OF c",
        "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET note = DEFAULT",
        "CREATE TABLE x AS SELECT email FROM customers",
        "SELECT email INTO y FROM customers",
    ):
        found = sinks.stored_queries(sql)
        assert found and all(isinstance(s.query, postgast.AstNode) for s in found)
        assert all(lineage(s.query) is not None for s in found)


def test_untraceable_writes_stay_unknown() -> None:
    assert (
        sinks.stored_queries(
            "MERGE INTO orders o USING customers c ON true WHEN MATCHED THEN DELETE"
        )
        is None
    )
    assert (
        sinks.stored_queries(
            "WITH w AS (INSERT INTO orders SELECT * FROM customers RETURNING 1) SELECT 1"
        )
        is None
    )
    assert sinks.stored_queries("SELECT (") is None


# ---- deep trees ---------------------------------------------------------------------


def test_statements_deeper_than_protobufs_default_limit_are_traced() -> None:
    # upb refuses messages nested past 100 by default: each of these would not decode
    n = 300
    chain = "SELECT " + " || ".join(["email"] + [f"'x{i}'" for i in range(n)]) + " FROM customers"
    assert lineage(chain) == [col("email")]
    union = " UNION ALL ".join(["SELECT email FROM customers"] + ["SELECT note FROM orders"] * n)
    assert lineage(union) == [col("email") | col("note", table=ORD)]
    assert not untraceable(union, CAT)
    assert required_names(union)[0] == {(None, "customers"), (None, "orders")}
    ins = "INSERT INTO orders (note) " + union
    assert stores(ins) == [("orders", ("note",), [col("email") | col("note", table=ORD)])]
    sets = "SELECT set_config('standard_conforming_strings', 'off', false) " + " || 'x'" * n
    cmd = Command("postgres", "db", sets, functions=frozenset({"set_config"}))
    assert "'off'" in textsettings.refusal(cmd)


def test_a_tree_that_cannot_be_decoded_is_refused_by_textsettings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.protobuf.message import DecodeError

    def undecodable(sql: str) -> list[postgast.AstNode]:
        raise DecodeError("too deep")

    monkeypatch.setattr(textsettings, "parse_statements", undecodable)
    cmd = Command("postgres", "db", "SET client_encoding = 'UTF8'", kinds=frozenset({"set"}))
    assert "could not be read" in textsettings.refusal(cmd)
    assert lin.output_lineage("SELECT 1", CAT) == [frozenset()]  # lineage has its own parse


def test_text_after_a_nul_is_never_left_unseen() -> None:
    # libpg_query stops at a NUL: the statement after it would not be analysed
    sql = "SELECT name FROM customers\0 UNION SELECT ssn FROM customers"
    assert lineage(sql) is None
    assert untraceable(sql, CAT)
    assert (
        sinks.stored_queries("INSERT INTO orders (note) SELECT 'x'\0, ssn FROM customers") is None
    )
    assert checks.name_resolution_change("SELECT 1\0; SET search_path = evil") == checks.ALL_NAMES
    cmd = Command(
        "postgres", "db", "SET client_encoding = 'UTF8'\0, 'SJIS'", kinds=frozenset({"set"})
    )
    assert textsettings.refusal(cmd) != ""


def test_a_text_nesting_deeper_than_the_c_stack_fails_closed_without_a_crash() -> None:
    # 25000 left-deep `+` overflow an 8 MiB stack in libpg_query's protobuf writer (the
    # process died): a long text is parsed on a thread with a deep stack instead
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        from hoopy.protocols.postgres import lineage as lin, lineagechecks as checks
        sql = "SELECT " + "+".join(["1"] * 25000)
        print(lin.output_lineage(sql, None), checks.search_path_schemas(sql))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-500:]
    # parsed and walked (no search_path set), too deep for the analyser: unknown lineage
    assert done.stdout.split() == ["None", "()"]


def test_walk_yields_every_node_but_what_a_constant_holds() -> None:
    from hoopy.protocols.postgres.pgtree import parse_statements, walk

    stmt = parse_statements("SELECT 'pg_temp', 0, x FROM s.t AS a")[0]
    found = [(type(n).__name__, getattr(n, "sval", None)) for n in walk(stmt)]
    assert found[0] == ("SelectStmt", None)  # the root itself first
    assert ("String", "x") in found  # a name
    assert ("String", "pg_temp") not in found  # a constant's value
    assert [k for k, _ in found].count("A_Const") == 2
    assert "Integer" not in [k for k, _ in found]
    assert {"RangeVar", "Alias", "ColumnRef", "ResTarget"} <= {k for k, _ in found}
