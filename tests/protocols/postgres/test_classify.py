"""Decision tables for SQL classification (hoopy.protocols.postgres.classify)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.policy import Command, Identity, Match, PolicySet, Rule, SqlMatch, decide
from hoopy.protocols.postgres.classcache import Classifier
from hoopy.protocols.postgres.classify import SqlParseError, classify


def one(sql: str, prepared: dict[str, tuple[Command, ...]] | None = None) -> Command:
    cmds = classify(sql, "db", prepared)
    assert len(cmds) == 1, cmds
    return cmds[0]


# ------------------------------------------------------------------ kinds

KINDS = [
    ("select 1", {"select"}),
    ("SELECT * FROM t", {"select"}),
    ("values (1), (2)", {"select"}),
    ("table t", {"select"}),
    ("insert into t values (1)", {"insert"}),
    ("insert into t select * from s", {"insert"}),
    ("insert into t values (1) on conflict do nothing", {"insert"}),
    ("insert into t values (1) on conflict (a) do update set b = 2", {"insert", "update"}),
    ("update t set a = 1", {"update"}),
    ("delete from t", {"delete"}),
    (
        "merge into t using s on t.id = s.id when matched then update set a = s.a "
        "when not matched then insert values (s.id)",
        {"merge", "update", "insert"},
    ),
    ("merge into t using s on t.id = s.id when matched then delete", {"merge", "delete"}),
    ("merge into t using s on t.id = s.id when matched then do nothing", {"merge"}),
    ("copy t to stdout", {"copy"}),
    ("copy t from stdin", {"copy"}),
    ("copy (select * from t) to stdout", {"copy", "select"}),
    ("copy (delete from t returning *) to stdout", {"copy", "delete"}),
    ("drop table t", {"drop", "drop_table"}),
    ("drop view v", {"drop", "drop_view"}),
    ("drop materialized view m", {"drop", "drop_materialized_view"}),
    ("drop index i", {"drop", "drop_index"}),
    ("drop function f(int)", {"drop", "drop_function"}),
    ("drop schema s cascade", {"drop", "drop_schema"}),
    ("drop database d", {"drop", "drop_database"}),
    ("drop role r", {"drop", "drop_role"}),
    ("drop user u", {"drop", "drop_role"}),
    ("drop extension e", {"drop", "drop_extension"}),
    ("drop trigger tr on t", {"drop", "drop_trigger"}),
    ("drop owned by bob", {"drop", "drop_owned"}),
    ("truncate t", {"truncate"}),
    ("truncate table a, b restart identity", {"truncate"}),
    ("alter table t add column c int", {"alter", "alter_table"}),
    ("alter table t drop column c", {"alter", "alter_table"}),
    ("alter table t rename to u", {"alter", "alter_table"}),
    ("alter table t rename column a to b", {"alter", "alter_table"}),
    ("alter table t rename constraint c to d", {"alter", "alter_table"}),
    ("alter table t set schema s", {"alter", "alter_table"}),
    ("alter table t owner to bob", {"alter", "alter_table"}),
    ("alter index i rename to j", {"alter", "alter_index"}),
    ("alter view v owner to bob", {"alter", "alter_view"}),
    ("alter sequence q restart", {"alter", "alter_sequence"}),
    ("alter function f() owner to bob", {"alter", "alter_function"}),
    ("alter function f() rename to g", {"alter", "alter_function"}),
    ("alter procedure p() set schema s", {"alter", "alter_procedure"}),
    ("alter role bob superuser", {"alter", "alter_role"}),
    ("alter user bob set search_path = x", {"alter", "alter_role"}),
    ("alter database d set x = 1", {"alter", "alter_database"}),
    ("alter system set work_mem = '1MB'", {"alter", "alter_system"}),
    (
        "alter default privileges grant select on tables to bob",
        {"alter", "alter_default_privileges", "grant"},
    ),
    ("create table t (a int)", {"create", "create_table"}),
    ("create temp table t (a int)", {"create", "create_table"}),
    ("create table t as select 1", {"create", "create_table"}),
    ("select 1 as a into t", {"create", "create_table"}),
    ("create materialized view m as select 1", {"create", "create_materialized_view"}),
    ("create view v as select 1", {"create", "create_view"}),
    ("create index on t (a)", {"create", "create_index"}),
    ("create sequence q", {"create", "create_sequence"}),
    ("create schema s", {"create", "create_schema"}),
    ("create schema s create table t (a int)", {"create", "create_schema", "create_table"}),
    ("create database d", {"create", "create_database"}),
    ("create extension pg_trgm", {"create", "create_extension"}),
    ("create role r", {"create", "create_role"}),
    ("create user u", {"create", "create_role", "create_user"}),
    ("create function f() returns int as 'select 1' language sql", {"create", "create_function"}),
    (
        "create or replace procedure p() as $$ select 1 $$ language sql",
        {"create", "create_procedure", "alter", "alter_procedure", "replace"},
    ),
    (
        "create trigger tr after insert on t for each row execute function f()",
        {"create", "create_trigger"},
    ),
    (
        "create event trigger e on ddl_command_start execute function f()",
        {"create", "create_event_trigger"},
    ),
    # a rule is the statements it will run unseen
    ("create rule r as on insert to t do also delete from u", {"create", "create_rule", "delete"}),
    ("create rule r as on update to t do instead nothing", {"create", "create_rule"}),
    ("create type ty as (a int)", {"create", "create_type"}),
    ("create type e as enum ('a')", {"create", "create_type"}),
    ("create domain d as int", {"create", "create_domain"}),
    ("create aggregate a (int) (sfunc = f, stype = int)", {"create", "create_aggregate"}),
    ("create policy p on t using (true)", {"create", "create_policy"}),
    ("create foreign table ft (a int) server s", {"create", "create_foreign_table"}),
    ("create server s foreign data wrapper w", {"create", "create_server"}),
    ("grant select on t to bob", {"grant"}),
    ("grant r to bob", {"grant"}),
    ("revoke select on t from bob", {"revoke"}),
    ("revoke r from bob", {"revoke"}),
    ("set search_path = x", {"set", "set_search_path"}),
    ("set local statement_timeout = 5", {"set"}),
    ("reset all", {"set"}),
    ("reset work_mem", {"set"}),
    ("set role bob", {"set", "set_role"}),
    ("reset role", {"set", "set_role"}),
    ("set session authorization bob", {"set", "set_session_authorization"}),
    ("set transaction isolation level serializable", {"set"}),
    ("set constraints all deferred", {"set", "set_constraints"}),
    ("show work_mem", {"show"}),
    ("show all", {"show"}),
    ("do $$ begin end $$", {"do"}),
    ("call p(1)", {"call"}),
    ("begin", {"begin"}),
    ("start transaction read only", {"begin"}),
    ("commit", {"commit"}),
    ("end", {"commit"}),
    ("rollback", {"rollback"}),
    ("abort", {"rollback"}),
    ("savepoint a", {"savepoint"}),
    ("release savepoint a", {"release"}),
    ("rollback to savepoint a", {"rollback"}),
    ("prepare transaction 'x'", {"prepare_transaction"}),
    ("commit prepared 'x'", {"commit_prepared"}),
    ("rollback prepared 'x'", {"rollback_prepared"}),
    ("explain select 1", {"explain"}),
    ("explain delete from t", {"explain"}),
    ("explain analyze select 1", {"explain", "select"}),
    ("explain analyze delete from t", {"explain", "delete"}),
    ("explain (analyze, buffers) update t set a = 1", {"explain", "update"}),
    # ANALYZE with any value counts: classification never reads literals.
    ("explain (analyze false) delete from t", {"explain", "delete"}),
    ("explain (format json) delete from t", {"explain"}),
    ("prepare p as select 1", {"prepare", "select"}),
    ("prepare p (int) as delete from t where a = $1", {"prepare", "delete"}),
    ("execute p", {"execute"}),
    ("deallocate p", {"deallocate"}),
    ("deallocate all", {"deallocate"}),
    ("listen ch", {"listen"}),
    ("notify ch, 'x'", {"notify"}),
    ("unlisten *", {"unlisten"}),
    ("lock table t in access exclusive mode", {"lock"}),
    ("vacuum", {"vacuum"}),
    ("vacuum full t", {"vacuum"}),
    ("analyze t", {"analyze"}),
    ("reindex table t", {"reindex"}),
    ("cluster t using i", {"cluster"}),
    ("refresh materialized view m", {"refresh", "refresh_materialized_view"}),
    ("comment on table t is 'x'", {"comment"}),
    ("discard all", {"discard"}),
    ("declare c cursor for select * from t", {"declare", "select"}),
    ("fetch 10 from c", {"fetch"}),
    ("move next in c", {"move"}),
    ("close c", {"close"}),
    ("checkpoint", {"checkpoint"}),
    ("load 'auto_explain'", {"load"}),
    ("reassign owned by a to b", {"reassign"}),
    ("security label on table t is 'x'", {"security_label"}),
    ("import foreign schema s from server x into y", {"import", "import_foreign_schema"}),
    # data-modifying CTEs run whatever the outer statement is
    ("with d as (delete from t returning *) select * from d", {"select", "delete"}),
    (
        "with u as (update t set a = 1 returning *) insert into log select * from u",
        {"insert", "update"},
    ),
]


@pytest.mark.parametrize(("sql", "kinds"), KINDS, ids=[k[0][:50] for k in KINDS])
def test_kinds(sql: str, kinds: set[str]) -> None:
    assert one(sql).kinds == kinds


def test_command_fields() -> None:
    cmd = one("SELECT * FROM t WHERE a = 42")
    assert cmd.protocol == "postgres"
    assert cmd.connector == "db"
    assert cmd.text == "SELECT * FROM t WHERE a = 42"
    assert cmd.fingerprint.startswith("SELECT * FROM t WHERE a = $1\n-- classified ")


# ------------------------------------------------------------------ tables

TABLES = [
    # (sql, read, written)
    ("select * from t", {"t"}, set()),
    ("select * from S.T", {"s.t"}, set()),
    ('select * from "S"."T"', {"S.T"}, set()),
    ('select * from "MixedCase"', {"MixedCase"}, set()),
    ("select * from db.s.t", {"s.t"}, set()),
    ("select * from a join b on a.id = b.id left join c using (id)", {"a", "b", "c"}, set()),
    ("select * from a, lateral (select * from b where b.x = a.x) l", {"a", "b"}, set()),
    ("select (select max(x) from a) from b", {"a", "b"}, set()),
    ("select * from a where id in (select id from b)", {"a", "b"}, set()),
    ("select * from a where exists (select 1 from b where b.id = a.id)", {"a", "b"}, set()),
    ("select * from (select * from a) s", {"a"}, set()),
    ("select * from a union select * from b except select * from c", {"a", "b", "c"}, set()),
    ("select * from a intersect all select * from b", {"a", "b"}, set()),
    ("table t", {"t"}, set()),
    ("select * from t tablesample system (10)", {"t"}, set()),
    ("select * from t for update", {"t"}, set()),
    # CTE names are not tables; their bodies' tables are
    ("with x as (select * from t) select * from x", {"t"}, set()),
    ("with x as (select * from t), y as (select * from x) select * from y", {"t"}, set()),
    # non-recursive: a CTE cannot see a later one, so b in a's body is a real table
    ("with a as (select * from b), b as (select 1) select * from a, b", {"b"}, set()),
    ("with recursive a as (select * from b), b as (select 1) select * from a, b", set(), set()),
    ("with recursive r as (select 1 union all select * from r) select * from r", set(), set()),
    # a CTE is scoped to its query: the outer "secrets" is the real table
    (
        "select * from (with secrets as (select 1) select * from secrets) a, secrets",
        {"secrets"},
        set(),
    ),
    ("(with x as (select 1) select * from x) union select * from x", {"x"}, set()),
    ("with x as (select 1) select * from public.x", {"public.x"}, set()),
    ("with d as (delete from t returning *) select * from d", set(), {"t"}),
    ("with t as (select 1) delete from t", set(), {"t"}),
    ("insert into t select * from s", {"s"}, {"t"}),
    ("insert into s.t (a) values ((select max(a) from u))", {"u"}, {"s.t"}),
    ("insert into t values (1) returning (select 1 from r)", {"r"}, {"t"}),
    ("update t set a = s.a from s where t.id = s.id", {"s"}, {"t"}),
    ("update t set a = (select a from s limit 1)", {"s"}, {"t"}),
    ("delete from t using u where t.id = u.id", {"u"}, {"t"}),
    ("delete from t where id in (select id from u) returning *", {"u"}, {"t"}),
    ("merge into t using s on t.id = s.id when matched then delete", {"s"}, {"t"}),
    (
        "merge into t using (select * from s) x on t.id = x.id when matched then delete",
        {"s"},
        {"t"},
    ),
    ("copy t to stdout", {"t"}, set()),
    ("copy t (a, b) from stdin", set(), {"t"}),
    ("copy (select * from a join b using (id)) to stdout", {"a", "b"}, set()),
    # writes through an auto-updatable view land in its tables
    ("create view v as select * from a join b using (id)", set(), {"a", "b", "v"}),
    ("create materialized view m as select * from a", {"a"}, {"m"}),
    ("create table n as select * from a", {"a"}, {"n"}),
    ("select * into n from a", {"a"}, {"n"}),
    ("create table t (a int references other (id))", {"other"}, {"t"}),
    ("create table t (like u)", {"u"}, {"t"}),
    ("create table p partition of q for values in (1)", {"q"}, {"p"}),
    ("truncate a, only s.b", set(), {"a", "s.b"}),
    ('drop table a, s.b, db.s.c, "D"', set(), {"a", "s.b", "s.c", "D"}),
    ("drop view if exists v", set(), {"v"}),
    ("drop materialized view m", set(), {"m"}),
    ("drop index s.i", set(), {"s.i"}),
    ("drop sequence q", set(), {"q"}),
    ("drop trigger tr on s.t", set(), {"s.t"}),
    ("drop policy p on t", set(), {"t"}),
    ("drop function f(int)", set(), set()),
    ("alter table t add column c int", set(), {"t"}),
    ("alter table only s.t rename to u", set(), {"s.t"}),
    ("alter table t set schema s", set(), {"t"}),
    ("alter table t add constraint fk foreign key (a) references o (id)", {"o"}, {"t"}),
    ("lock t, u", set(), {"t", "u"}),
    ("vacuum full t, u", set(), {"t", "u"}),
    ("analyze t", {"t"}, set()),
    ("grant select on t, s.u to bob", set(), {"t", "s.u"}),
    ("grant select on all tables in schema s to bob", set(), {"s.*"}),
    ("comment on table s.t is 'x'", set(), {"s.t"}),
    ("comment on column t.c is 'x'", set(), {"t"}),
    ("create index on s.t (a)", set(), {"s.t"}),
    ("create trigger tr after insert on t for each row execute function f()", set(), {"t"}),
    ("create rule r as on insert to t do also insert into log values (1)", set(), {"t", "log"}),
    (
        "create rule r as on insert to t where new.a > (select max(b) from u) do nothing",
        {"u"},
        {"t"},
    ),
    ("create policy p on t using (a in (select b from u))", {"u"}, {"t"}),
    ("refresh materialized view m", set(), {"m"}),
    ("explain select * from t", {"t"}, set()),
    ("explain delete from t", {"t"}, set()),
    ("explain analyze delete from t", set(), {"t"}),
    ("declare c cursor for select * from t", {"t"}, set()),
    ("prepare p as update t set a = 1 from s", {"s"}, {"t"}),
    ("select 'tbl'::regclass", set(), set()),
]


@pytest.mark.parametrize(("sql", "read", "written"), TABLES, ids=[t[0][:50] for t in TABLES])
def test_tables(sql: str, read: set[str], written: set[str]) -> None:
    cmd = one(sql)
    assert (cmd.tables_read, cmd.tables_written) == (read, written)


# ------------------------------------------------------------------ functions

FUNCTIONS = [
    ("select 1 + 2", set()),
    ("select pg_catalog.pg_sleep(1)", {"pg_catalog.pg_sleep"}),
    ('select "Upper"(x) from t', {"Upper"}),
    ("select UPPER(x) from t", {"upper"}),
    ("select count(*), sum(a) from t", {"count", "sum"}),
    ("select row_number() over (order by a) from t", {"row_number"}),
    ("select * from t where a = f(b)", {"f"}),
    ("select * from t order by g(a)", {"g"}),
    ("select a from t group by h(a) having count(*) > k()", {"h", "count", "k"}),
    ("select * from generate_series(1, 3) g", {"generate_series"}),
    ("select * from t, lateral s.fn(t.a) x", {"s.fn"}),
    ("select (select f(a) from t)", {"f"}),
    ("with x as (select f() from t) select g() from x", {"f", "g"}),
    ("insert into t values (nextval('s'))", {"nextval"}),
    ("update t set a = lower(b) returning upper(a)", {"lower", "upper"}),
    ("delete from t where a < now()", {"now"}),
    ("select db.s.fn()", {"s.fn"}),
    ("call s.proc(f(1))", {"s.proc", "f"}),
    ("call proc()", {"proc"}),
    ("select f(a) filter (where g(a)) from t", {"f", "g"}),
    ("create trigger tr after insert on t for each row execute function s.trg()", {"s.trg"}),
    ("alter table t add column c int default nextval('s')", {"nextval"}),
    ("copy t from stdin where a > f(1)", {"f"}),
    ("explain select pg_sleep(1)", {"pg_sleep"}),
    ("execute p(f(1))", {"f"}),
    # functions the server will call implicitly, and PostgreSQL's functional notation
    ("create operator ### (function = pg_read_file, rightarg = text)", {"pg_read_file"}),
    ("create operator !!! (procedure = s.f, leftarg = int, rightarg = int)", {"s.f"}),
    (
        "create aggregate a(text, boolean) (sfunc = set_config, stype = text, finalfunc = f)",
        {"set_config", "f"},
    ),
    ("create type t (input = tin, output = tout)", {"tin", "tout"}),
    ("create cast (int as text) with function pg_read_file(int)", {"pg_read_file"}),
    ("create operator class c for type int using btree as function 1 f(int)", {"f"}),
    ("select ('/etc/hostname'::text).pg_read_file", {"pg_read_file"}),
    ("select (t.c).pg_ls_dir from t", {"pg_ls_dir"}),
    ("update pg_settings set setting = 'off' where name = 'x'", {"set_config"}),
    ("update pg_catalog.pg_settings set setting = $1 where name = $2", {"set_config"}),
    ("select setting from pg_settings", set()),
]


@pytest.mark.parametrize(("sql", "functions"), FUNCTIONS, ids=[f[0][:50] for f in FUNCTIONS])
def test_functions(sql: str, functions: set[str]) -> None:
    assert one(sql).functions == functions


# ------------------------------------------------------------------ opaque

OPAQUE = [
    ("do $$ begin execute 'drop table x'; end $$", {"do"}),
    ("DO LANGUAGE plpgsql 'begin end'", {"do"}),
    ("create function f() returns int as 'select 1' language sql", {"create_function"}),
    (
        "create function f() returns int language sql begin atomic delete from t; select 1; end",
        {"create_function"},
    ),
    ("create procedure p() as $$ delete from t $$ language sql", {"create_procedure"}),
    ("copy t from program 'rm -rf /'", {"copy_program"}),
    ("copy (select 1) to program 'cat'", {"copy_program"}),
    ("copy t to '/tmp/x'", {"copy_file"}),
    ("copy t from '/etc/passwd'", {"copy_file"}),
    ("load 'plugin'", {"load"}),
    ("execute unknown_statement", {"execute"}),
    # built-ins that run SQL (or read whole relations) named only by a value
    ("select query_to_xml('select * from secrets', true, false, '')", {"dynamic_sql"}),
    ("select pg_catalog.table_to_xml('secrets', true, false, '')", {"dynamic_sql"}),
    ("select x from t where y = schema_to_xmlschema('public', true, false, '')", {"dynamic_sql"}),
    ("select * from ts_stat('select v from secrets')", {"dynamic_sql"}),
    ("select ts_rewrite('a'::tsquery, 'select * from secrets')", {"dynamic_sql"}),
    ("select * from dblink('host=x', 'delete from t') as r(a int)", {"dynamic_sql"}),
    ("select \"QUERY_TO_XML\"('x', true, false, '')", set()),  # not the built-in
    ("select xmlelement(name a, 'query_to_xml')", set()),
    ("copy t to stdout", set()),
    ("call p()", set()),
    ("create trigger tr after insert on t for each row execute function f()", set()),
    ("select 1", set()),
]


@pytest.mark.parametrize(("sql", "opaque"), OPAQUE, ids=[o[0][:50] for o in OPAQUE])
def test_opaque(sql: str, opaque: set[str]) -> None:
    assert one(sql).opaque == opaque


def test_function_bodies_are_never_walked() -> None:
    cmd = one("create function f() returns int language sql begin atomic delete from t; end")
    assert cmd.kinds == {"create", "create_function"}
    assert not cmd.tables


# ------------------------------------------------------------------ obfuscated spellings

DENIED = {
    "drop": [
        "drop table x",
        "DROP TABLE x",
        "DrOp TaBlE x",
        "drop\n\ttable\n  x  ;",
        "/* hello */ drop /* there */ table x",
        "-- a comment\ndrop table x -- trailing",
        "drop table if exists public.x cascade",
        'drop table "X"',
        'DROP TABLE "public"."x"',
        "drop view v",
        "DROP SCHEMA s CASCADE",
    ],
    "truncate": ["truncate x", "TRUNCATE TABLE ONLY public.x", "/**/truncate/**/x", "TrUnCaTe\nx"],
    "delete": [
        "delete from x",
        "DELETE FROM public.x WHERE 1=1",
        "with d as (delete from x returning *) select 1",
        "explain analyze delete from x",
        "prepare p as delete from x",
        "merge into x using y on true when matched then delete",
        "copy (delete from x returning *) to stdout",
        '/* c */ DeLeTe\nFROM\n"x"',
    ],
    "alter": [
        "alter table x add column y int",
        "ALTER TABLE x RENAME TO y",
        "alter role r superuser",
    ],
    "do": ["do $$ begin end $$", "DO 'begin end'", "/* x */ do $body$ begin end $body$"],
}
DENIED_CASES = [(kind, sql) for kind, sqls in DENIED.items() for sql in sqls]


@pytest.mark.parametrize(
    ("kind", "sql"), DENIED_CASES, ids=[f"{k}:{s[:40]}" for k, s in DENIED_CASES]
)
def test_denied_kinds_survive_obfuscation(kind: str, sql: str) -> None:
    assert kind in one(sql).kinds
    wrapped = classify(f"BEGIN; select 1; {sql}\n; COMMIT;", "db")
    assert wrapped[0].kinds == {"begin"}
    assert kind in wrapped[2].kinds
    assert wrapped[-1].kinds == {"commit"}


LOOK_ALIKES = [
    "select 'drop table x'",
    "select $$delete from t$$",
    "select $tag$truncate t; drop table x$tag$",
    "select 1 -- drop table x",
    "select 1 /* ; drop table x */",
    'select "drop" from t',
    'select "delete", "truncate" from "drop"',
    "select E'\\'; drop table x; --'",
    "select 'a'';drop table x;--'",
    "select drop from t",  # "drop" as a bare column name is legal
]


@pytest.mark.parametrize("sql", LOOK_ALIKES)
def test_look_alikes_are_plain_selects(sql: str) -> None:
    cmd = one(sql)
    assert cmd.kinds == {"select"}
    assert not cmd.tables_written
    assert not cmd.opaque


# ------------------------------------------------------------------ statements and texts

SPLITS = [
    ("select 1; drop table x", ["select 1", "drop table x"]),
    ("select 1;drop table x;", ["select 1", "drop table x"]),
    ("  select 1 ;\n\n  select 2  ", ["select 1", "select 2"]),
    ("select ';'; select $$;$$", ["select ';'", "select $$;$$"]),
    ("select 1;;; select 2", ["select 1", "select 2"]),
    ("BEGIN; DELETE FROM t; COMMIT", ["BEGIN", "DELETE FROM t", "COMMIT"]),
    ("select 'é'; select 'ü'", ["select 'é'", "select 'ü'"]),
    ("select 1 -- c\n; select 2", ["select 1 -- c", "select 2"]),
]


@pytest.mark.parametrize(("sql", "texts"), SPLITS)
def test_statement_texts(sql: str, texts: list[str]) -> None:
    cmds = classify(sql, "db")
    assert [c.text for c in cmds] == texts
    assert all(c.fingerprint for c in cmds)


@pytest.mark.parametrize("sql", ["", "   ", "\n\t", "-- only a comment", "/* c */", ";", " ; ; "])
def test_empty_sql_has_no_commands(sql: str) -> None:
    assert classify(sql, "db") == ()
    assert Classifier().classify(sql, "db") == ()


def test_each_statement_gets_its_own_fingerprint() -> None:
    a, b = classify("select 1 from t where a = 5; delete from u where b = 'x'", "db")
    assert a.fingerprint.startswith("select $1 from t where a = $2\n-- classified ")
    assert b.fingerprint.startswith("delete from u where b = $1\n-- classified ")


# ------------------------------------------------------------------ prepared statements


def test_execute_resolves_prepared_statement() -> None:
    (prep,) = classify("PREPARE wipe (int) AS DELETE FROM t WHERE a = $1", "db")
    cmd = one("EXECUTE wipe(1)", {"wipe": (prep,)})
    assert cmd.kinds == {"execute", "delete"}
    assert cmd.tables_written == {"t"}
    assert not cmd.opaque


def test_execute_of_protocol_prepared_statement() -> None:
    (parsed,) = classify("select f(a) from s", "db")
    cmd = one("execute S1", {"s1": (parsed,)})  # unquoted names fold to lower case
    assert cmd.kinds == {"execute", "select"}
    assert cmd.tables_read == {"s"}
    assert cmd.functions == {"f"}


def test_execute_carries_opaque_kinds() -> None:
    opaque = Command("postgres", "db", "x", kinds=frozenset({"do"}), opaque=frozenset({"do"}))
    cmd = one("execute p", {"p": (opaque,)})
    assert cmd.kinds == {"execute", "do"}
    assert cmd.opaque == {"do"}


@pytest.mark.parametrize("prepared", [None, {}, {"other": ()}])
def test_execute_of_unknown_statement_is_opaque(
    prepared: dict[str, tuple[Command, ...]] | None,
) -> None:
    cmd = one("execute wipe", prepared)
    assert cmd.kinds == {"execute"}
    assert cmd.opaque == {"execute"}


def test_nested_execute_resolves_too() -> None:
    (prep,) = classify("prepare p as delete from t", "db")
    assert one("explain analyze execute p", {"p": (prep,)}).kinds == {
        "explain",
        "execute",
        "delete",
    }
    assert "delete" not in one("explain execute p", {"p": (prep,)}).kinds
    ctas = one("create table n as execute p", {"p": (prep,)})
    assert {"create_table", "delete", "execute"} <= ctas.kinds
    assert ctas.tables_written == {"n", "t"}


# ------------------------------------------------------------------ the cache


def test_cache_retexts_for_other_literals() -> None:
    c = Classifier()
    first = c.classify("select * from t where a = 1", "db")
    second = c.classify("select * from t where a = 2", "db")
    assert c.hits == 1
    assert first[0].text == "select * from t where a = 1"
    assert second[0].text == "select * from t where a = 2"
    assert first[0].fingerprint == second[0].fingerprint
    assert second[0] == classify("select * from t where a = 2", "db")[0]


def test_cache_retexts_multi_statement() -> None:
    c = Classifier()
    c.classify("select 1; delete from t where a = 'x'", "db")
    cmds = c.classify("select 2; delete from t where a = 'y'", "db")
    assert c.hits == 1
    assert [x.text for x in cmds] == ["select 2", "delete from t where a = 'y'"]
    assert [x.kinds for x in cmds] == [{"select"}, {"delete"}]


def test_cache_never_mixes_connectors() -> None:
    c = Classifier()
    a = c.classify("select 1", "a")
    b = c.classify("select 1", "b")
    assert (a[0].connector, b[0].connector) == ("a", "b")
    assert c.misses == 2


def test_cache_keeps_different_statements_apart() -> None:
    c = Classifier()
    assert c.classify("select * from t", "db")[0].kinds == {"select"}
    assert c.classify("delete from t", "db")[0].kinds == {"delete"}
    assert c.classify("select * from u", "db")[0].tables == {"u"}


def test_execute_is_never_cached() -> None:
    c = Classifier()
    (prep,) = classify("prepare p as delete from t", "db")
    assert c.classify("execute p", "db", {"p": (prep,)})[0].kinds == {"execute", "delete"}
    assert c.classify("execute p", "db")[0].opaque == {"execute"}
    assert c.classify("explain analyze execute p", "db")[0].opaque == {"execute"}
    assert len(c) == 0


def test_cache_is_bounded_lru() -> None:
    # (not plain DML: that has its own key, see test_bigsql.py)
    c = Classifier(max_entries=2)
    c.classify("vacuum a", "db")
    c.classify("vacuum b", "db")
    c.classify("vacuum a", "db")  # a is now most recent
    c.classify("vacuum c", "db")  # evicts b
    assert len(c) == 2
    c.classify("vacuum a", "db")
    assert c.hits == 2
    c.classify("vacuum b", "db")
    assert c.misses == 4


def test_cache_does_not_see_past_nul() -> None:
    c = Classifier()
    c.classify("select 1", "db")
    with pytest.raises(SqlParseError):
        c.classify("select 1\x00; drop table x", "db")


CORPUS = [sql for sql, _ in KINDS] + [t[0] for t in TABLES] + [f[0] for f in FUNCTIONS]


def test_cached_results_equal_uncached() -> None:
    c = Classifier()
    for sql in CORPUS:
        c.classify(sql, "db")
    for sql in CORPUS:
        # a fingerprint may come from an earlier text of the same shape (`table t` and
        # `select * from t` are one tree): everything else is the text's own
        cached, fresh = c.classify(sql, "db"), classify(sql, "db")
        assert [replace(x, fingerprint="") for x in cached] == [
            replace(x, fingerprint="") for x in fresh
        ], sql


_TEMPLATES = [
    "select * from t where a = {} and b in ({}, {})",
    "insert into s.t (a, b) values ({}, {}) on conflict (a) do update set b = {}",
    "update t set a = {} where b = {} returning f({})",
    "with d as (delete from t where a = {} returning *) select g({}) from d limit {}",
    "select {}::regclass, {}::text, nextval({})",
    "set search_path = {}; select {}, {}",
    "listen ch; select {} from t limit {} offset {}",
    "explain (analyze) select * from t where a = {} and b = {} or c = {}",
    "copy (select {}, {}, {}) to stdout",
]
_LITERALS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12).map(
        lambda s: "'" + s.replace("'", "''") + "'"
    ),
    st.sampled_from(["true", "false", "null", "1.5e3", "B'101'", "X'ff'", "'drop table x'"]),
)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(_TEMPLATES), st.lists(_LITERALS, min_size=3, max_size=3))
def test_classification_ignores_literals(template: str, literals: list[str]) -> None:
    c = Classifier()
    base = c.classify(template.format(1, 2, 3), "db")
    sql = template.format(*literals)
    try:
        fresh = classify(sql, "db")
    except SqlParseError:  # e.g. null where the grammar wants a number: the cache agrees
        with pytest.raises(SqlParseError):
            c.classify(sql, "db")
        return
    assert c.classify(sql, "db") == fresh
    strip = [(x.kinds, x.tables_read, x.tables_written, x.functions, x.opaque) for x in fresh]
    assert strip == [
        (x.kinds, x.tables_read, x.tables_written, x.functions, x.opaque) for x in base
    ]


# ------------------------------------------------------------------ errors

BAD = [
    ("selec 1", 'syntax error at or near "selec"', 0),
    ("select * from", "syntax error at end of input", None),
    ("select 1; drop tabl x", 'syntax error at or near "tabl"', 15),
    ("select 'unterminated", "unterminated quoted string", 7),
    ("select (1", "syntax error at end of input", None),
]


@pytest.mark.parametrize(("sql", "message", "position"), BAD)
def test_unparseable_sql_raises(sql: str, message: str, position: int | None) -> None:
    for fn in (classify, Classifier().classify):
        with pytest.raises(SqlParseError) as info:
            fn(sql, "db")
        assert info.value.message.startswith(message)
        assert info.value.position == position


@pytest.mark.parametrize(
    "sql",
    [
        "select 1\x00; drop table x",
        "select '\ud800'",
        "select E'\\xff'",
        "select " + "array[" * 2000 + "1" + "]" * 2000,
        "select " + "(" * 20000 + "1" + ")" * 20000,
    ],
    ids=["nul", "surrogate", "bad-utf8-escape", "deep-arrays", "deep-parens"],
)
def test_hostile_input_fails_closed(sql: str) -> None:
    with pytest.raises(SqlParseError):
        classify(sql, "db")
    with pytest.raises(SqlParseError):
        Classifier().classify(sql, "db")


_TOKENS = st.sampled_from(
    [
        "select",
        "insert",
        "into",
        "update",
        "delete",
        "from",
        "where",
        "with",
        "as",
        "(",
        ")",
        ",",
        ";",
        "t",
        "s.t",
        '"Q"',
        "1",
        "'x'",
        "$$y$$",
        "$1",
        "*",
        "=",
        "and",
        "drop",
        "table",
        "create",
        "function",
        "do",
        "copy",
        "to",
        "stdout",
        "explain",
        "analyze",
        "execute",
        "prepare",
        "p",
        "values",
        "returning",
        "union",
        "join",
        "on",
        "lateral",
        "f(",
        "--",
        "/*",
        "*/",
        "\n",
        "recursive",
        "merge",
        "using",
        "when",
        "matched",
        "then",
        "begin",
        "commit",
        "set",
        "role",
        "call",
        "truncate",
        "alter",
        "grant",
        "::",
        "[",
        "]",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_random_text_raises_only_sql_parse_error(sql: str) -> None:
    try:
        cmds = classify(sql, "db")
    except SqlParseError as e:
        assert e.message
        return
    assert Classifier().classify(sql, "db") == cmds


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=25).map(" ".join))
def test_token_soup_is_consistent(sql: str) -> None:
    try:
        fresh = classify(sql, "db")
    except SqlParseError:
        with pytest.raises(SqlParseError):
            Classifier().classify(sql, "db")
        return
    c = Classifier()
    assert c.classify(sql, "db") == fresh
    assert c.classify(sql, "db") == fresh
    for cmd in fresh:
        assert cmd.kinds, cmd  # every statement is something
        assert cmd.text and cmd.text in sql


# ------------------------------------------------------------------ end to end with decide()

WHO = Identity(subject="agent", groups=frozenset({"agents"}))
POLICY = PolicySet(
    "test",
    (
        Rule("no-drop", "deny", Match(sql=SqlMatch(statements=("drop", "truncate"))), reason="no"),
        Rule("reads", "allow", Match(sql=SqlMatch(statements=("select",)))),
        Rule("do-for-admins", "allow", Match(groups=("admins",), sql=SqlMatch(statements=("do",)))),
    ),
)


def _outcomes(sql: str, who: Identity = WHO) -> list[str]:
    return [decide([POLICY], who, c).outcome for c in classify(sql, "db")]


@pytest.mark.parametrize(
    ("sql", "outcomes"),
    [
        ("select * from t", ["allow"]),
        ("select 'drop table x'", ["allow"]),
        ("select 1; DROP /* sneaky */ TABLE x", ["allow", "deny"]),
        ("select 1; truncate t", ["allow", "deny"]),
        ("delete from t", ["deny"]),  # no allow names delete
        ("do $$ begin end $$", ["deny"]),
        ("explain analyze select 1", ["allow"]),
    ],
)
def test_decide_end_to_end(sql: str, outcomes: list[str]) -> None:
    assert _outcomes(sql) == outcomes


def test_do_needs_an_allow_naming_it() -> None:
    admin = Identity(subject="root", groups=frozenset({"admins"}))
    assert _outcomes("do $$ begin end $$", admin) == ["allow"]
    broad = PolicySet("broad", (Rule("all", "allow", Match(sql=SqlMatch(statements=("*",)))),))
    (cmd,) = classify("do $$ begin end $$", "db")
    assert decide([broad], WHO, cmd).outcome == "deny"


def test_drop_denial_names_rule() -> None:
    (cmd,) = classify('DROP TABLE "public"."x"', "db")
    decision = decide([POLICY], WHO, cmd)
    assert decision.outcome == "deny"
    assert decision.rule == "no-drop"


# ---- ways past deny lists found by probing: each names what really runs -------------

DENY_SLEEP_VAULT_ALTER = PolicySet(
    "p",
    (
        Rule("allow-all", "allow", Match()),
        Rule("no-sleep", "deny", Match(sql=SqlMatch(functions=("pg_sleep",)))),
        Rule("no-vault", "deny", Match(sql=SqlMatch(tables=("vault",)))),
        Rule("no-secret-schema", "deny", Match(sql=SqlMatch(tables=("secret.*",)))),
        Rule("no-alter", "deny", Match(sql=SqlMatch(statements=("alter",)))),
    ),
)
WHO = Identity("a", frozenset({"agents"}))


def outcome(sql: str, schemas: tuple[str, ...] | None = ("public",)) -> tuple[str, str]:
    from dataclasses import replace

    cmds = classify(sql, "db")
    decisions = [decide([DENY_SLEEP_VAULT_ALTER], WHO, replace(c, schemas=schemas)) for c in cmds]
    worst = next((d for d in decisions if d.outcome != "allow"), decisions[0])
    return worst.outcome, worst.rule


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("SELECT t.pg_sleep FROM float8(2) t", "no-sleep"),
        ("SELECT x.t.pg_sleep FROM float8(2) t", "no-sleep"),
        ("SELECT t.pg_sleep_for FROM make_interval(secs => 2) t", "no-sleep"),
        ("SELECT pg_sleep_for('2 s')", "no-sleep"),
        ("SELECT pg_catalog.pg_sleep_until(now())", "no-sleep"),
        ("CREATE AGGREGATE a (basetype = float8, sfunc1 = pg_sleep, stype1 = void)", "no-sleep"),
        ("GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC", "no-vault"),
        ("REVOKE SELECT ON ALL TABLES IN SCHEMA secret FROM bob", "no-vault"),
        ("CREATE OR REPLACE VIEW v AS SELECT 1", "no-alter"),
        ("CREATE OR REPLACE TRIGGER t AFTER INSERT ON o EXECUTE FUNCTION f()", "no-alter"),
        ("CREATE OR REPLACE RULE r AS ON INSERT TO o DO NOTHING", "no-alter"),
        ("SELECT ('2 s'::interval).pg_sleep_for", "no-sleep"),
        ("CREATE OPERATOR ##! (RIGHTARG = interval, FUNCTION = pg_sleep_for)", "no-sleep"),
    ],
)
def test_what_runs_is_what_is_checked(sql: str, rule: str) -> None:
    assert outcome(sql) == ("deny", rule)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT most_common_vals FROM pg_stats WHERE tablename = 'vault'",
        "SELECT * FROM pg_catalog.pg_statistic",
        "SELECT * FROM crosstab('select a, b, c from vault')",
        "SELECT * FROM connectby('vault', 'id', 'parent', '1', 0)",
        "CREATE EXTENSION tablefunc",
        "ALTER EXTENSION tablefunc UPDATE",
        # every agent shares one database role: other agents' sessions are off limits
        "SELECT pg_terminate_backend(1234)",
        "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_stat_activity",
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM pg_stat_get_activity(NULL)",
        # however the function is reached: functional notation, an operator, a column
        "SELECT ('select v from vault').ts_stat",
        "SELECT (5318).pg_terminate_backend",
        "SELECT t.pg_cancel_backend FROM int4(5318) t",
        "CREATE OPERATOR #%# (RIGHTARG = text, FUNCTION = ts_stat)",
        "CREATE OPERATOR ##! (RIGHTARG = int, FUNCTION = pg_cancel_backend)",
        "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
        "SELECT query FROM pg_stat_statements",
    ],
)
def test_reads_and_scripts_nothing_can_see_are_opaque(sql: str) -> None:
    cmd = one(sql)
    assert cmd.opaque, cmd
    assert outcome(sql)[0] == "deny"


def test_qualified_columns_are_not_functions_for_allow_rules() -> None:
    cmd = one("SELECT c.name, now() FROM customers c")
    assert cmd.functions == {"now"} and cmd.maybe_functions == {"name"}
    allow_now = PolicySet("p", (Rule("now", "allow", Match(sql=SqlMatch(functions=("now",)))),))
    assert decide([allow_now], WHO, cmd).outcome == "allow"


@pytest.mark.parametrize(
    ("schemas", "expect"),
    [
        (("public",), ("allow", "allow-all")),
        (("secret", "public"), ("deny", "no-secret-schema")),
        (None, ("deny", "no-secret-schema")),  # set to something hoopy cannot read
    ],
)
def test_unqualified_names_follow_the_search_path(
    schemas: tuple[str, ...] | None, expect: tuple[str, str]
) -> None:
    assert outcome("SELECT * FROM creds", schemas) == expect
    assert outcome("SELECT * FROM public.creds", schemas) == ("allow", "allow-all")


def test_an_allow_must_hold_in_every_schema_a_name_may_be_in() -> None:
    from dataclasses import replace

    public_only = PolicySet(
        "p", (Rule("public", "allow", Match(sql=SqlMatch(tables=("public.*",)))),)
    )
    cmd = one("SELECT * FROM creds")
    assert decide([public_only], WHO, cmd).outcome == "allow"
    for schemas in (("secret", "public"), None):
        assert decide([public_only], WHO, replace(cmd, schemas=schemas)).outcome == "deny"
    grant_all = one("GRANT SELECT ON ALL TABLES IN SCHEMA public TO bob")
    assert decide([public_only], WHO, grant_all).outcome == "allow"
    assert (
        decide([public_only], WHO, one("GRANT SELECT ON ALL TABLES IN SCHEMA s TO b")).outcome
        == "deny"
    )


def test_unqualified_catalog_names_are_pg_catalog_first() -> None:
    from dataclasses import replace

    rules = PolicySet(
        "p",
        (
            Rule("public", "allow", Match(sql=SqlMatch(tables=("public.*",)))),
            Rule("no-proc", "deny", Match(sql=SqlMatch(tables=("pg_catalog.pg_proc",)))),
            Rule("no-own", "deny", Match(sql=SqlMatch(tables=("app_rw.*",)))),
        ),
    )
    assert decide([rules], WHO, one("SELECT * FROM pg_proc")).rule == "no-proc"
    assert decide([rules], WHO, one("SELECT * FROM pg_class")).outcome == "deny"  # not public
    own = replace(one("SELECT * FROM customers"), also_schemas=("app_rw",))  # "$user"
    assert decide([rules], WHO, own).rule == "no-own"
    assert decide([rules], WHO, one("SELECT * FROM customers")).rule == "public"
