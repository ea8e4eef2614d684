"""The PostgreSQL data path driven by the real psql client."""

from __future__ import annotations

import asyncio

from tests.integration.conftest import Backend, Hoopy


def app_count(backend: Backend, sql: str) -> int:
    async def run() -> int:
        conn = await backend.app_conn()
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_select_through_hoopy(hoopy: Hoopy) -> None:
    r = hoopy.psql("-At", "-c", "select name from customers order by id")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["Ada Lovelace", "Alan Turing"]


def test_denied_statement_names_rule_and_session_stays_usable(hoopy: Hoopy) -> None:
    r = hoopy.psql(
        "-At", "-v", "ON_ERROR_STOP=0", input="drop table orders;\nselect 'still here';\n"
    )
    assert "denied by rule 'no-schema-changes'" in r.stderr
    assert "schema changes go through migrations" in r.stderr
    assert "still here" in r.stdout


def test_denial_sqlstate_is_42501(hoopy: Hoopy) -> None:
    r = hoopy.psql("-At", "-v", "VERBOSITY=verbose", "-c", "DROP TABLE orders")
    assert r.returncode != 0
    assert "42501" in r.stderr


def test_multi_statement_nothing_forwarded_when_one_denied(hoopy: Hoopy, backend: Backend) -> None:
    before = app_count(backend, "select count(*) from orders")
    r = hoopy.psql("-c", "insert into orders (amount) values (1); truncate orders")
    assert r.returncode != 0 and "no-schema-changes" in r.stderr
    assert app_count(backend, "select count(*) from orders") == before


def test_denial_inside_transaction_aborts_it_like_postgres(hoopy: Hoopy, backend: Backend) -> None:
    before = app_count(backend, "select count(*) from orders")
    r = hoopy.psql(
        "-v",
        "ON_ERROR_STOP=0",
        input=(
            "begin;\ninsert into orders (amount) values (2);\n"
            "alter table orders add column x int;\ncommit;\nselect 'after';\n"
        ),
    )
    assert "no-schema-changes" in r.stderr
    assert "after" in r.stdout
    assert app_count(backend, "select count(*) from orders") == before  # rolled back


def test_table_and_function_rules(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "select * from (select v from public.vault) s")
    assert "no-secrets-table" in r.stderr
    r = hoopy.psql("-c", "select pg_catalog.pg_sleep(0)")
    assert "no-sleeping" in r.stderr


def test_lookalikes_pass(hoopy: Hoopy) -> None:
    r = hoopy.psql("-At", "-c", "select 'drop table orders', $$truncate orders$$ -- alter")
    assert r.returncode == 0, r.stderr
    assert "drop table orders|truncate orders" in r.stdout


def test_do_block_refused_without_named_allow(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "DO $$ BEGIN EXECUTE 'drop table orders'; END $$")
    assert r.returncode != 0
    assert "cannot be checked statically" in r.stderr


def test_sql_run_from_text_by_builtins_is_refused(hoopy: Hoopy) -> None:
    """query_to_xml and kin run SQL that classification never sees (a deny on the
    vault table would not apply): refused like DO unless an allow rule names it."""
    for sql in (
        "select query_to_xml('select * from vault', true, false, '')",
        "select table_to_xml('vault', true, false, '')",
    ):
        r = hoopy.psql("-c", sql)
        assert r.returncode != 0 and "cannot be checked statically" in r.stderr, r.stderr
        assert "vault" not in r.stdout


def test_unparseable_statement_is_42601_and_not_forwarded(hoopy: Hoopy) -> None:
    r = hoopy.psql("-v", "VERBOSITY=verbose", "-c", "selec 1 frm nowhere")
    assert r.returncode != 0
    assert "42601" in r.stderr and "hoopy cannot parse" in r.stderr


def test_psql_meta_commands(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", r"\d customers")
    assert r.returncode == 0, r.stderr
    assert "email" in r.stdout


def test_copy_out_and_in(hoopy: Hoopy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "orders.csv"
    r = hoopy.psql("-c", rf"\copy (select id, amount from orders order by id) to '{out}' csv")
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines()[0].startswith("1,")
    src = tmp_path / "in.csv"
    src.write_text("Zed,zed@example.com\n")
    r = hoopy.psql("-c", rf"\copy customers (name, email) from '{src}' csv")
    assert r.returncode == 0, r.stderr
    assert "COPY 1" in r.stdout


def test_requires_tls(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "select 1", sslmode="disable")
    assert r.returncode != 0
    assert "requires TLS" in r.stderr


def test_unknown_connector(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "select 1", dbname="no-such-thing")
    assert r.returncode != 0
    assert 'connector "no-such-thing" does not exist' in r.stderr


def test_group_not_admitted(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "select 1", token=hoopy.token("intruder", ("guests",)))
    assert r.returncode != 0
    assert "not allowed to use connector" in r.stderr


def test_backend_tls_connector(hoopy: Hoopy) -> None:
    r = hoopy.psql("-At", "-c", "select 42", dbname="app-db-tls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


def test_backend_credentials_never_reach_agent(hoopy: Hoopy, backend: Backend) -> None:
    r = hoopy.psql(
        "-At",
        "-v",
        "ON_ERROR_STOP=0",
        input=("show session_authorization;\nselect 1/0;\nselect * from pg_catalog.pg_authid;\n"),
    )
    assert backend.app_password not in r.stdout + r.stderr
