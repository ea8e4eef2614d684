"""Statements libpg_query cannot parse are refused (never forwarded) with the error a real
PostgreSQL 15 gives for them: SQLSTATE, message, cursor, HINT and DETAIL, field by field
(grammarerrors.py); hoopy's only addition is its DETAIL line."""

from __future__ import annotations

import os
import subprocess

import asyncpg
import pytest

from hoopy.protocols.postgres.statementcheck import UNPARSEABLE_DETAIL

from .conftest import Backend, Hoopy
from .test_pg_drivers import agent

# Each one the server rejects while parsing (or, for PARTITION BY, before touching
# anything); libpg_query rejects each with a message grammarerrors.py knows.
STATEMENTS = [
    # HINT / DETAIL the grammar attaches
    "DROP OPERATOR === (int4)",
    "CREATE POLICY p ON vault AS foo FOR SELECT USING (true)",
    "SELECT 1 LIMIT 1,2",
    "CREATE PUBLICATION p FOR CURRENT_SCHEMA",
    "ALTER ROLE app_rw WITH UNENCRYPTED PASSWORD 'x'",
    "SELECT E'\\u12'",
    "SELECT U&'\\12'",
    # SQLSTATE other than 42601
    "CREATE ASSERTION a CHECK (true)",
    "CREATE ROLE public",
    "SELECT sum(1) OVER (ROWS BETWEEN UNBOUNDED FOLLOWING AND CURRENT ROW)",
    "SELECT 1::float(0)",
    "CREATE TABLE t PARTITION OF p FOR VALUES WITH (modulus 2, modulus 3)",
    # PostgreSQL 15 words or places it differently than libpg_query (18)
    "SELECT 1 FETCH FIRST 2 ROWS WITH TIES",
    "SELECT 1 ORDER BY 1 FETCH FIRST 1 ROW WITH TIES FOR UPDATE SKIP LOCKED",
    "ALTER TABLE vault ALTER CONSTRAINT c NOT VALID",
    "ALTER TABLE vault ALTER CONSTRAINT c DEFERRABLE NOT VALID NO INHERIT",
    "ALTER TABLE vault ALTER CONSTRAINT c NOT VALID, ALTER CONSTRAINT d NOT ENFORCED",
    "SELECT 1; ALTER TABLE vault ALTER CONSTRAINT c NOT VALID",
    "CREATE TABLE t (a int) PARTITION BY MAGIC (a)",
    "CREATE TABLE t PARTITION OF p FOR VALUES WITH (modulus 2)",
    "CREATE OR REPLACE CONSTRAINT TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE FUNCTION f(OUT a int) RETURNS TABLE (b int) AS 'select 1' LANGUAGE sql",
    "ALTER TABLE vault ADD CONSTRAINT c CHECK (k <> '') DEFERRABLE",
    "CREATE TABLE t (a int, UNIQUE (a) NO INHERIT)",
    "(SELECT 1 LIMIT 1) LIMIT 2",
    "(SELECT 1 OFFSET 1) OFFSET 2",
    "(SELECT 'éé' LIMIT 1) LIMIT  2",
    "(SELECT 1 LIMIT 1) FETCH FIRST 3 ROWS ONLY",
    "(SELECT 1 FETCH FIRST 1 ROW ONLY) FETCH NEXT ROW ONLY",
    "(SELECT 1 LIMIT 1) LIMIT ALL",
    "(SELECT 1 LIMIT 1) LIMIT -1",
    "(SELECT 1 LIMIT 1) LIMIT +1",
    "(SELECT 1 LIMIT 1) FETCH FIRST -1 ROW ONLY",
    "(SELECT 1 LIMIT 1) FETCH FIRST +1 ROW ONLY",
    "(SELECT 1 LIMIT 1) FETCH FIRST (1) ROW ONLY",
    "(SELECT 1 LIMIT 1) FETCH NEXT (SELECT 1) ROWS ONLY",
    "(SELECT 1 LIMIT 1) LIMIT (SELECT 1) + 1",
    "(SELECT 1 LIMIT 1) LIMIT (1 + 2) * 3",
    "(SELECT 1 LIMIT 1) LIMIT -- c\n 3",
    "(SELECT 1 LIMIT 1) LIMIT /* c */ 3",
    "(SELECT 1 OFFSET 1) OFFSET -2 ROWS",
    "(SELECT 1 LIMIT 1) LIMIT 1 IS NULL",
    'CREATE AGGREGATE a (VARIADIC "any" ORDER BY VARIADIC int) (sfunc = f, stype = int)',
    'CREATE AGGREGATE a (VARIADIC "any" ORDER BY VARIADIC pg_catalog.int4) (sfunc = f, stype = i)',
    'CREATE AGGREGATE a (VARIADIC "any" ORDER BY IN int, int) (sfunc = f, stype = int)',
    "ALTER TYPE t DROP VALUE 'x'",
    "alter type public.t drop value 'x'",
    "CREATE CONSTRAINT TRIGGER tr AFTER INSERT ON t DEFERRABLE NOT VALID"
    " FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE TABLE t (a int, PRIMARY KEY (a) NOT VALID)",
    "ALTER TABLE t ADD CONSTRAINT c PRIMARY KEY USING INDEX i NO INHERIT",
    "CREATE TABLE t (a int, FOREIGN KEY (a) REFERENCES p NO INHERIT)",
    "ALTER TABLE t ALTER CONSTRAINT c INITIALLY DEFERRED NOT VALID",
    "SELECT 1 FOR UPDATE SKIP LOCKED FETCH FIRST 1 ROW WITH TIES",
    "SELECT 1 UNION SELECT 2 FETCH FIRST 1 ROW WITH TIES",
    "CREATE FUNCTION f(a int) RETURNS TABLE (b int, OUT c int) AS 'select 1' LANGUAGE sql",
    "  CREATE ASSERTION a CHECK (1 = 1) DEFERRABLE",
    # no change: the same in both grammars
    "SELECT (1,2) OVERLAPS (1,2,3)",
    "SELECT 1 + ",
    "COPY t FROM PROGRAM 'x' TO STDOUT",
    "COPY t TO STDOUT WHERE a > 1",
    "ALTER INDEX i ALTER COLUMN 0 SET STATISTICS 1",
    "SELECT * FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x int PATH 'a' PATH 'b')",
    "SELECT * FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x int NULL NOT NULL)",
    'CREATE TABLE t (a text COLLATE "C" COLLATE "POSIX")',
    "SELECT count(DISTINCT 1) WITHIN GROUP (ORDER BY 1)",
    "SELECT count(1 ORDER BY 1) WITHIN GROUP (ORDER BY 1)",
    "CREATE TABLE t (a numeric(p => 1))",
    "CREATE ROLE current_user",
    "CREATE USER MAPPING FOR none SERVER s",
    "WITH a AS (SELECT 1) (WITH b AS (SELECT 2) SELECT 3)",
    "(SELECT 1 ORDER BY 1) ORDER BY 1",
    "CREATE RECURSIVE VIEW v (a) AS SELECT 1 WITH LOCAL CHECK OPTION",
    "CREATE TABLE t (a int, FOREIGN KEY (a) REFERENCES p INITIALLY DEFERRED NOT DEFERRABLE)",
    "CREATE TABLE t (a int, FOREIGN KEY (a) REFERENCES p DEFERRABLE NOT DEFERRABLE)",
    "CREATE SCHEMA IF NOT EXISTS s AUTHORIZATION app_rw CREATE TABLE t (a int)",
    "ALTER ROLE r WITH SUPERUSER FOO",
    "CREATE TABLE a.b.c.d.e (x int)",
    "SET TIME ZONE INTERVAL '1' HOUR TO SECOND",
    "CREATE TABLE t (a int REFERENCES p MATCH PARTIAL ON DELETE CASCADE)",
    "ALTER TABLE t ADD COLUMN b int GENERATED BY DEFAULT AS (1) STORED",
    "CREATE TABLE t (a int REFERENCES p ON UPDATE SET DEFAULT (a))",
    'CREATE EXTENSION IF NOT EXISTS e FROM "1.0"',
    "SELECT x FROM t WHERE UNIQUE (SELECT 1) AND true",
    "SELECT sum(1) OVER (GROUPS BETWEEN 1 FOLLOWING AND CURRENT ROW)",
    "SELECT 1::float(54)",
    "CREATE PUBLICATION p FOR CURRENT_SCHEMA, TABLE t",
    "ALTER PUBLICATION p ADD t",
    "CREATE PUBLICATION p FOR TABLES IN SCHEMA s, t (a)",
    "SELECT 1 LIMIT ALL, 2",
    "SELECT U&'\\+00D800'",
    "SELECT U&'!12' UESCAPE '!'",
    'SELECT U&"\\12"',
    "SELECT E'\\uD800\\u0041'",
    "SELECT E'\\U11000000'",
    'CREATE ROLE "none"',
]


def _fields(e: asyncpg.PostgresError) -> tuple[object, ...]:
    return (e.sqlstate, e.message, e.position, e.hint, e.detail)


async def _error(conn: asyncpg.Connection, sql: str, prepare: bool = False) -> tuple[object, ...]:
    with pytest.raises(asyncpg.PostgresError) as e:
        if prepare:  # Parse, the extended protocol's path
            await conn.prepare(sql)
        else:
            await conn.execute(sql)
    return _fields(e.value)


def _as_hoopy(direct: tuple[object, ...]) -> tuple[object, ...]:
    """The direct error with hoopy's DETAIL line (after the grammar's own, if any)."""
    sqlstate, message, position, hint, detail = direct
    ours = UNPARSEABLE_DETAIL if detail is None else f"{detail}\n{UNPARSEABLE_DETAIL}"
    return (sqlstate, message, position, hint, ours)


async def test_errors_match_the_server_field_by_field(hoopy: Hoopy, backend: Backend) -> None:
    direct_conn = await backend.app_conn()
    via = await agent(hoopy)
    try:
        assert direct_conn.get_server_version().major == 15
        mismatched = []
        for sql in STATEMENTS:
            direct = await _error(direct_conn, sql)
            assert direct[0] is not None
            for prepare in (False, True):
                got = await _error(via, sql, prepare)
                if got != _as_hoopy(direct):
                    mismatched.append((sql, prepare, direct, got))
        assert not mismatched, "\n".join(map(repr, mismatched))
        assert await via.fetchval("select 3") == 3  # the session stays usable
    finally:
        await via.close()
        await direct_conn.close()


async def test_refused_statements_are_never_forwarded(hoopy: Hoopy, backend: Backend) -> None:
    """The reshaped error is hoopy's: the statement never reached the server (its
    statistics count no error for it)."""
    conn = await backend.app_conn()
    via = await agent(hoopy)
    try:
        await via.execute("SELECT 'marker-before'")
        with pytest.raises(asyncpg.PostgresError) as e:
            await via.execute("ALTER TABLE vault ALTER CONSTRAINT c NOT VALID")
        assert e.value.sqlstate == "0A000" and e.value.detail == UNPARSEABLE_DETAIL
        seen = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%CONSTRAINT c NOT VALID%'"
            " AND pid <> pg_backend_pid()"
        )
        assert seen == 0
    finally:
        await via.close()
        await conn.close()


def _direct_psql(backend: Backend, sql: str) -> str:
    c = backend.cluster
    r = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(c.port), "-U", "app_rw", "-d", "app"],
        input=sql,
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": backend.app_password, "PGCONNECT_TIMEOUT": "10"},
        timeout=30,
    )
    return r.stderr


def test_psql_prints_hint_detail_line_and_caret_as_the_server(
    hoopy: Hoopy, backend: Backend
) -> None:
    """Real psql, through hoopy and directly: the same ERROR, LINE, caret, HINT and
    DETAIL lines, hoopy's DETAIL line apart."""
    sql = (
        "DROP OPERATOR === (int4);\n"
        "CREATE PUBLICATION p FOR CURRENT_SCHEMA;\n"
        "ALTER TABLE vault ALTER CONSTRAINT c NOT VALID;\n"
        "SELECT 1\n  LIMIT 1,2;\n"
    )
    via = hoopy.psql("-v", "ON_ERROR_STOP=0", input=sql).stderr
    direct = _direct_psql(backend, sql)
    assert "HINT:  Use NONE to denote the missing argument of a unary operator." in via
    assert "LINE 1: DROP OPERATOR === (int4);\n" + " " * (8 + 23) + "^\n" in via
    assert "HINT:  Use separate LIMIT and OFFSET clauses." in via
    assert "LINE 2:   LIMIT 1,2;\n" + " " * (8 + 2) + "^\n" in via
    assert (
        "DETAIL:  One of TABLE or TABLES IN SCHEMA must be specified before a standalone "
        f"table or schema name.\n{UNPARSEABLE_DETAIL}\n" in via
    )
    assert "ERROR:  FOREIGN KEY constraints cannot be marked NOT VALID\nDETAIL:" in via
    ours = via.replace(f"DETAIL:  {UNPARSEABLE_DETAIL}\n", "").replace(
        f"\n{UNPARSEABLE_DETAIL}\n", "\n"
    )
    assert ours == direct


async def test_long_texts_classified_off_the_loop_get_the_same_shape(
    hoopy: Hoopy, backend: Backend
) -> None:
    """A text over classify_inline_size goes to a worker process (classworker.py): its
    parse error is reshaped all the same, cursor counted in characters."""
    sql = "SELECT 'é" + "x" * 10_000 + "';\nSELECT 1 LIMIT 1,2"
    direct_conn = await backend.app_conn()
    via = await agent(hoopy)
    try:
        direct = await _error(direct_conn, sql)
        assert direct[3] == "Use separate LIMIT and OFFSET clauses."
        assert await _error(via, sql) == _as_hoopy(direct)
    finally:
        await via.close()
        await direct_conn.close()
