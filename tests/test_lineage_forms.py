"""Column lineage (hoopy.protocols.postgres.lineage) over an in-memory catalog."""

from __future__ import annotations

import pytest

from hoopy.protocols.postgres.lineage import output_lineage
from hoopy.protocols.postgres.lineagechecks import required_names
from hoopy.protocols.postgres.lineagescope import ColumnLineage, QualName, Relation

C = "public.customers"
ORD = "public.orders"
EMAIL = frozenset({(C, "email")})
ALL_C = frozenset({(C, c) for c in ("id", "name", "email", "ssn")})

BUILTINS = {
    "upper", "lower", "substr", "encode", "convert_to", "md5", "string_agg", "array_agg",
    "json_agg", "jsonb_agg", "row_to_json", "to_json", "to_jsonb", "reverse", "concat",
    "format", "count", "max", "min", "unnest", "jsonb_each_text", "generate_series", "now",
    "query_to_xml", "table_to_xml", "left", "jsonb_build_object", "coalesce", "set_config",
}  # fmt: skip


class Catalog:
    rels = {
        "customers": Relation("public", "customers", "r", ("id", "name", "email", "ssn")),
        "orders": Relation("public", "orders", "r", ("id", "customer_id", "note")),
        "contacts": Relation(
            "public",
            "contacts",
            "v",
            ("id", "contact", "who"),
            "SELECT id, email AS contact, upper(name) AS who FROM customers",
        ),
        "contacts2": Relation(
            "public", "contacts2", "v", ("c2", "who"), "SELECT contact AS c2, who FROM contacts"
        ),
        "mv": Relation("public", "mv", "m", ("e",), "SELECT lower(email) AS e FROM customers"),
    }

    def relation(self, name: QualName) -> Relation | None:
        schema, rel = name
        if schema not in (None, "public"):
            return None
        return self.rels.get(rel)

    def function_is_builtin(self, name: QualName) -> bool:
        return name[0] in (None, "pg_catalog") and name[1] in BUILTINS

    def type_is_builtin(self, name: QualName) -> bool:
        return name[0] == "pg_catalog" or (name[0] is None and name[1] in {"text", "int4"})

    def operator_is_builtin(self, name: QualName) -> bool:
        return name[0] in (None, "pg_catalog") and name[1] in {"||", "=", ">", "<", "+", "~~"}


CAT = Catalog()


def lineage(sql: str) -> list[ColumnLineage] | None:
    return output_lineage(sql, CAT)


@pytest.mark.parametrize(
    "expr",
    [
        "email",
        "c.email",
        "email::varchar(10)",
        "CAST(email AS text)",
        "upper(email)",
        "substr(email, 1, 3)",
        "encode(convert_to(email, 'UTF8'), 'base64')",
        "email || ''",
        "reverse(lower(email))",
        "CASE WHEN id > 1 THEN email ELSE 'x' END",
        "coalesce(email, name) ",
        "email = 'x'",
        "array[email]",
        "(SELECT e.email FROM customers e LIMIT 1)",
        "jsonb_build_object('k', email)",
    ],
)
def test_expressions_carry_their_inputs(expr: str) -> None:
    out = lineage(f"SELECT {expr} AS x FROM customers c")
    assert out is not None and len(out) == 1
    assert out[0] is not None and (C, "email") in out[0]


def test_plain_columns_and_constants() -> None:
    assert lineage("SELECT id, email, 1, 'x' FROM customers") == [
        frozenset({(C, "id")}),
        EMAIL,
        frozenset(),
        frozenset(),
    ]


def test_filtering_does_not_leak_into_lineage() -> None:
    sql = "SELECT id FROM customers WHERE email LIKE 'a%' GROUP BY id HAVING max(ssn) > '' "
    assert lineage(sql + "ORDER BY email") == [frozenset({(C, "id")})]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c FROM customers c",
        "SELECT customers FROM customers",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT to_jsonb(c) FROM customers c",
        "SELECT json_agg(c) FROM customers c",
        "SELECT (c).email FROM customers c",
        "SELECT c::text FROM customers c",
    ],
)
def test_whole_row_references_carry_every_column(sql: str) -> None:
    assert lineage(sql) == [ALL_C]


def test_aggregates_and_count_star() -> None:
    assert lineage("SELECT string_agg(email, ','), count(*), count(id) FROM customers") == [
        EMAIL,
        frozenset(),
        frozenset({(C, "id")}),
    ]


def test_subqueries_ctes_and_recursive_ctes() -> None:
    assert lineage("SELECT e FROM (SELECT email AS e FROM customers) s") == [EMAIL]
    assert lineage("WITH x AS (SELECT email e FROM customers) SELECT upper(e) FROM x") == [EMAIL]
    rec = (
        "WITH RECURSIVE r(e, n) AS (SELECT name, 1 FROM customers UNION ALL "
        "SELECT e || c.email, n + 1 FROM r, customers c WHERE n < 3) SELECT e, n FROM r"
    )
    out = lineage(rec)
    assert out is not None and (C, "email") in out[0]  # type: ignore[operator]
    assert out[1] == frozenset()


def test_set_operations_union_per_position() -> None:
    assert lineage("SELECT name, id FROM customers UNION SELECT email, 1 FROM customers") == [
        frozenset({(C, "name"), (C, "email")}),
        frozenset({(C, "id")}),
    ]


def test_star_expansion_with_using_and_natural_joins() -> None:
    out = lineage("SELECT * FROM customers JOIN orders USING (id)")
    assert out is not None and len(out) == 6  # id merged first, then the rest
    assert out[0] == frozenset({(C, "id"), (ORD, "id")})
    assert out[2] == EMAIL
    nat = lineage("SELECT * FROM customers NATURAL JOIN orders")
    assert nat is not None and len(nat) == 6
    assert lineage("SELECT o.*, c.email FROM orders o, customers c") == [
        frozenset({(ORD, "id")}),
        frozenset({(ORD, "customer_id")}),
        frozenset({(ORD, "note")}),
        EMAIL,
    ]


def test_lateral_and_correlated_subqueries() -> None:
    sql = (
        "SELECT x.e FROM orders o, LATERAL (SELECT email AS e FROM customers "
        "WHERE id = o.customer_id) x"
    )
    assert lineage(sql) == [EMAIL]
    assert lineage("SELECT (SELECT s.e FROM (SELECT c.email AS e) s) FROM customers c") == [EMAIL]


def test_views_and_nested_views_resolve_to_base_columns() -> None:
    v, v2 = "public.contacts", "public.contacts2"
    assert lineage("SELECT contact, who, id FROM contacts") == [
        EMAIL | {(v, "contact")},
        frozenset({(C, "name"), (v, "who")}),
        frozenset({(C, "id"), (v, "id")}),
    ]
    assert lineage("SELECT upper(c2) FROM contacts2") == [EMAIL | {(v, "contact"), (v2, "c2")}]
    assert lineage("SELECT e FROM mv") == [EMAIL | {("public.mv", "e")}]


def test_set_returning_functions() -> None:
    assert lineage("SELECT u FROM unnest(ARRAY(SELECT email FROM customers)) AS u") == [EMAIL]
    assert lineage("SELECT v FROM customers p, jsonb_each_text(to_jsonb(p)) AS j(k, v)") == [ALL_C]
    assert lineage("SELECT g FROM generate_series(1, 3) g") == [frozenset()]


def test_values_and_returning() -> None:
    assert lineage("VALUES ((SELECT email FROM customers LIMIT 1), 1)") == [EMAIL, frozenset()]
    out = lineage("DELETE FROM customers RETURNING email")
    assert out == [EMAIL]
    ins = lineage("INSERT INTO orders SELECT 1, id, email FROM customers RETURNING note")
    assert ins is not None and (C, "email") in ins[0] and (ORD, "note") in ins[0]  # type: ignore[operator]
    assert lineage("UPDATE orders SET note = 'x'") == []


def test_copy_forms() -> None:
    assert lineage("COPY customers TO STDOUT") == [
        frozenset({(C, c)}) for c in ("id", "name", "email", "ssn")
    ]
    assert lineage("COPY customers (email) TO STDOUT") == [EMAIL]
    assert lineage("COPY (SELECT upper(email) FROM customers) TO STDOUT") == [EMAIL]
    assert lineage("COPY customers FROM STDIN") == []


def test_unknown_where_code_or_state_hides_the_source() -> None:
    assert lineage("SELECT my_fn(id), id FROM customers") == [None, frozenset({(C, "id")})]
    assert lineage("SELECT query_to_xml('select email from customers', true, true, '')") == [None]
    assert lineage("SELECT table_to_xml('customers', true, true, '')") == [None]
    assert lineage("SELECT * FROM nowhere") is None
    assert lineage("SELECT nope FROM customers") == [None]
    assert lineage("FETCH ALL FROM c") is None
    assert lineage("EXECUTE p") is None
    assert lineage("not sql at all") is None


def test_user_types_and_operators_are_unknown() -> None:
    assert lineage("SELECT id::mytype, id::int, email::text, id + 1 FROM customers") == [
        None,
        frozenset({(C, "id")}),
        EMAIL,
        frozenset({(C, "id")}),
    ]
    assert lineage("SELECT id ### 1, OPERATOR(public.+)(id, 1) FROM customers") == [None, None]


def test_statements_without_rows_and_explain() -> None:
    assert lineage("BEGIN") == []
    assert lineage("SET search_path = public") == []
    assert lineage("EXPLAIN ANALYZE SELECT email FROM customers") == [frozenset()]
    assert lineage("SHOW search_path") == [frozenset()]


def test_hostile_depth_returns_without_raising() -> None:
    deep = "SELECT " + "(" * 3000 + "email" + ")" * 3000 + " FROM customers"
    assert lineage(deep) in (None, [EMAIL])
    chain = "SELECT " + " || ".join(["email"] * 3000) + " FROM customers"
    out = lineage(chain)
    assert out is None or out == [EMAIL]


def test_required_names_skip_cte_names() -> None:
    rels, funcs = required_names(
        "WITH x AS (SELECT 1) SELECT upper(a) FROM x, public.customers, contacts"
    )
    assert rels == {("public", "customers"), (None, "contacts")}
    assert funcs == {(None, "upper")}
    assert required_names("garbage (") == (set(), set())


@pytest.mark.parametrize(
    ("sql", "changes"),
    [
        ("CREATE TEMP VIEW v AS SELECT 1", True),
        ("CREATE TEMPORARY TABLE t (a int)", True),
        ("CREATE VIEW pg_temp.v AS SELECT 1", True),
        ("SELECT 1 INTO TEMP t", True),
        ("SET search_path = s2, public", True),
        ("SET LOCAL search_path TO x", True),
        ("RESET search_path", True),
        ("SELECT set_config('search_path', 'x', false)", True),
        ("UPDATE pg_settings SET setting = 'evil, public' WHERE name = 'search_path'", True),
        ("UPDATE pg_catalog.pg_settings SET setting = $1 WHERE name = $2", True),
        ("WITH u AS (UPDATE pg_settings SET setting = 'x' RETURNING 1) SELECT 1", True),
        ("SELECT name, setting FROM pg_settings", False),
        ("SELECT 1", False),
        ("CREATE VIEW v AS SELECT 1", False),
        ("SET work_mem = '4MB'", False),
        ("SELECT 'temporary' AS note", False),
    ],
)
def test_statements_that_change_name_resolution(sql: str, changes: bool) -> None:
    from hoopy.protocols.postgres.lineagechecks import name_resolution_change

    assert bool(name_resolution_change(sql)) is changes


def test_set_config_of_other_settings_does_not_change_names() -> None:
    from hoopy.protocols.postgres.lineagechecks import name_resolution_change

    assert not name_resolution_change("SELECT set_config('jit', 'off', false)")
    assert name_resolution_change("SELECT set_config($1, 'x', false)")


@pytest.mark.parametrize(
    ("sql", "level"),
    [
        ("CREATE TEMP TABLE t (a int)", "relations"),
        ("CREATE TABLE pg_temp.t (a int)", "relations"),
        ("SET search_path = evil, public", "all"),
        ("CREATE TEMP TABLE t (a int); SET search_path = evil", "all"),
        ("SELECT set_config('search_path', 'x', false) FROM pg_temp.t", "all"),
        ("SELECT 'temporary'", ""),
    ],
)
def test_temporary_relations_shadow_relation_names_only(sql: str, level: str) -> None:
    from hoopy.protocols.postgres.lineagechecks import name_resolution_change

    assert name_resolution_change(sql) == level


@pytest.mark.parametrize(
    ("sql", "level"),
    [
        # SQL-standard spelling of SET search_path, unicode-escaped names (libpg_query unescapes)
        ("SET SCHEMA 'evil'", "all"),
        ("SET LOCAL SCHEMA 'evil'", "all"),
        ('SET U&"s\\0065arch_path" = evil, public', "all"),
        ("SET U&\"s!0065arch_path\" UESCAPE '!' = evil", "all"),
        ('SET "SEARCH_PATH" = evil', "all"),
        ("SELECT set_config(U&'s\\0065arch_path', 'evil', false)", "all"),
        ("SELECT set_config(E'search\\x5fpath', 'evil', false)", "all"),
        ("UPDATE U&\"pg_s\\0065ttings\" SET setting = 'evil' WHERE name = 'search_path'", "all"),
        # "$user" follows the role
        ("SET ROLE other", "all"),
        ("SET SESSION AUTHORIZATION other", "all"),
        ("SELECT set_config('role', 'other', false)", "all"),
        # temporary relations and types, however pg_temp is spelt
        ('CREATE VIEW U&"pg_t\\0065mp".m_orders AS SELECT 1 AS id', "relations"),
        ('CREATE TABLE "pg_temp".t (a int)', "relations"),
        ("CREATE DOMAIN pg_temp.d AS int", "relations"),
        ("SELECT 'pg_temp.x' AS just_text", ""),
        ("SELECT schema_name FROM information_schema.schemata", ""),
        ("SET work_mem = '4MB'", ""),
    ],
)
def test_name_resolution_changes_are_decided_on_the_parsed_tree(sql: str, level: str) -> None:
    from hoopy.protocols.postgres.lineagechecks import name_resolution_change

    assert name_resolution_change(sql) == level


def test_the_word_filter_cannot_miss_what_the_tree_finds() -> None:
    """Every statement the tree check flags contains one of the filter's words."""
    from hoopy.protocols.postgres import lineagechecks as checks

    for sql in ("SET SCHEMA 'x'", 'SET U&"\\0073\\0065\\0061\\0072\\0063\\0068_path" = x'):
        assert any(w in sql.lower() for w in checks._RESOLUTION_WORDS)
        assert checks.name_resolution_change(sql) == checks.ALL_NAMES


@pytest.mark.parametrize(
    ("sql", "untraced"),
    [
        ("INSERT INTO orders VALUES (1, 2, upper('x'))", False),
        ("INSERT INTO orders VALUES (1, 2, 'x' || 'y'), (DEFAULT, 3, NULL)", False),
        ("INSERT INTO orders VALUES (1, 2, m_email_of(1))", True),
        ("INSERT INTO orders VALUES (1, 2, 2 ### 0)", True),
        ("INSERT INTO orders SELECT 1, 2, 'x' FROM customers WHERE leak(id) > 0", True),
        ("INSERT INTO orders VALUES (1, 2, note::mytype)", True),
        ("INSERT INTO orders VALUES (1, 2, 'literal'::mytype)", False),
        ("INSERT INTO orders VALUES (1, 2, 7::mytype)", True),  # a cast from int4 may be user code
        ("CREATE TABLE t (a, b) AS EXECUTE p", True),
        ("SELECT set_config('x', loread(lo_open(1, 262144), 10)::text, false)", True),
        ("CALL proc()", True),
        ("COPY orders FROM '/tmp/x'", True),
        ("COPY orders FROM STDIN", False),
        ("SELECT 1 BETWEEN 0 AND 2", False),
        ("garbage (", True),
    ],
)
def test_untraceable_code_anywhere_in_a_statement(sql: str, untraced: bool) -> None:
    from hoopy.protocols.postgres.lineagechecks import untraceable

    assert untraceable(sql, CAT) is untraced
    assert untraceable("SELECT upper('x')", None)  # no catalog: every function counts


def test_large_object_reads_have_unknown_lineage() -> None:
    for fn in ("loread(lo_open(id, 262144), 100)", "lo_get(id)"):
        assert lineage(f"SELECT {fn} FROM orders") == [None]


def test_casts_of_literals_to_user_types_stay_traceable() -> None:
    assert lineage("SELECT 'gold'::tier, email::tier, 3::tier FROM customers") == [
        frozenset(),
        None,
        None,
    ]


def test_a_write_inside_a_cte_is_not_traced_apart_from_its_with() -> None:
    """A decoy table named like the CTE would make its source look clean."""
    from hoopy.protocols.postgres.sinks import stored_queries

    sql = (
        "WITH c AS (SELECT ssn FROM m_people), "
        "w AS (INSERT INTO notes (body) SELECT ssn FROM c RETURNING 1) SELECT 1"
    )
    assert stored_queries(sql) is None  # the caller assumes the worst
    assert stored_queries("INSERT INTO notes (body) SELECT name FROM m_people") is not None


def test_an_upsert_storing_excluded_values_is_not_traced() -> None:
    from hoopy.protocols.postgres.sinks import stored_queries

    upsert = (
        "INSERT INTO m_people (id, ssn) SELECT id, ssn FROM m_people "
        "ON CONFLICT (id) DO UPDATE SET note = excluded.ssn"
    )
    assert stored_queries(upsert) is None
    plain = "INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET n = t.n + 1"
    assert stored_queries(plain) is not None
