"""Issue 14 item 3: a statement that would change how the server reads later texts
(standard_conforming_strings off, a client-only client_encoding) is refused as a
statement — 0A000, the setting named, recorded, the session usable — whatever the
policy; only a change hoopy could not see coming still ends the session."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest

from hoopy.protocols.postgres import codec as pg
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_hostile import raw_connect, read_all


@pytest.fixture(scope="module")
def h(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    hp = start_hoopy(tmp_path_factory.mktemp("textsettings"), backend, pool_size=0)
    yield hp
    stop_hoopy(hp)


def _events(h: Hoopy, subject: str) -> list[dict[str, object]]:
    listing = h.cli("sessions", "list", "--subject", subject).stdout.splitlines()
    out: list[dict[str, object]] = []
    for sid in reversed([line.split()[0] for line in listing if line.strip()]):
        out += [json.loads(x) for x in h.cli("sessions", "show", sid).stdout.splitlines()]
    return out


def _login(h: Hoopy, s: socket.socket, subject: str) -> None:
    s.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))
    assert s.recv(9)[:1] == b"R"
    s.sendall(pg.password_message(h.token(subject).encode() + b"\0"))
    _until_ready(s)


def _until_ready(s: socket.socket) -> bytes:
    got = b""
    while not (len(got) >= 6 and got[-6:-1] == b"Z\x00\x00\x00\x05"):
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return got


def test_psql_set_standard_conforming_strings_off_is_refused_and_the_session_goes_on(
    h: Hoopy,
) -> None:
    script = (
        "\\set ON_ERROR_STOP 0\n"
        "SET standard_conforming_strings TO off;\n"
        "SHOW standard_conforming_strings;\n"
        "SELECT 'a\\b' AS still_read_as_on;\n"
    )
    r = h.psql("-At", input=script, token=h.token("ts-psql"))
    assert r.returncode == 0, r.stderr
    assert "SET of standard_conforming_strings to 'off' is not supported through hoopy" in (
        r.stderr
    ), r.stderr
    assert r.stdout.split() == ["on", "a\\b"], r.stdout
    events = [e for e in _events(h, "ts-psql") if e.get("type") == "command"]
    refused = [e for e in events if e.get("outcome") == "deny"]
    assert len(refused) == 1 and "standard_conforming_strings" in str(refused[0]["reason"])
    assert refused[0]["text"] == "SET standard_conforming_strings TO off"


REFUSED = [
    "SET standard_conforming_strings = off",
    "SET SESSION standard_conforming_strings = false",
    "set standard_conforming_strings to 0",
    'SET "Standard_Conforming_Strings" = off',
    'SET U&"standard\\005fconforming_strings" = off',
    "select set_config('standard_conforming_strings', 'off', false)",
    "select pg_catalog.set_config('standard_conforming_strings', current_user, false)",
    "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
    "SET NAMES 'SJIS'",
    "SET client_encoding = 'Shift_JIS'",
    "select 1; SET client_encoding TO 'big5'",
    "select set_config('client_encoding', 'GBK', true)",
    "ALTER SYSTEM SET standard_conforming_strings = off",
    "alter system set client_encoding = 'sjis'",
]


def test_every_spelling_is_refused_as_a_statement(h: Hoopy) -> None:
    s = raw_connect(h)
    _login(h, s, "ts-raw")
    for sql in REFUSED:
        s.sendall(pg.query(sql))
        got = _until_ready(s)
        assert got.startswith(b"E") and b"C0A000" in got, (sql, got)
        assert b"is not supported through hoopy" in got, (sql, got)
        s.sendall(pg.query("show standard_conforming_strings; show client_encoding"))
        got = _until_ready(s)
        assert b"on" in got and b"UTF8" in got, (sql, got)
    # inside a transaction, as SET LOCAL: the refusal aborts it, as a server error would
    s.sendall(pg.query("begin"))
    _until_ready(s)
    s.sendall(pg.query("SET LOCAL standard_conforming_strings = off"))
    got = _until_ready(s)
    assert b"C0A000" in got and got.endswith(pg.ready_for_query("E"))
    s.sendall(pg.query("rollback"))
    assert _until_ready(s).endswith(pg.ready_for_query("I"))
    s.close()
    refused = [e for e in _events(h, "ts-raw") if e.get("outcome") == "deny"]
    assert len(refused) == len(REFUSED) + 1


ALLOWED = [
    "SET standard_conforming_strings = on",
    "SET LOCAL standard_conforming_strings TO true",
    "RESET standard_conforming_strings",
    "SET standard_conforming_strings TO DEFAULT",
    "SET client_encoding = 'UTF8'",
    "SET NAMES 'LATIN1'",
    "RESET client_encoding",
    "select set_config('standard_conforming_strings', 'on', false)",
    "RESET ALL",
    "SET backslash_quote = on",
]


def test_values_hoopy_reads_pass(h: Hoopy) -> None:
    s = raw_connect(h)
    _login(h, s, "ts-allowed")
    for sql in ALLOWED:
        s.sendall(pg.query(sql))
        got = _until_ready(s)
        assert b"C0A000" not in got and not got.startswith(b"E"), (sql, got)
    s.close()


def test_backslash_quote_off_only_makes_the_server_reject_what_hoopy_read(h: Hoopy) -> None:
    """backslash_quote decides whether E'\\'' is an error, never where a string ends:
    allowed, and the server then refuses the text rather than reading it otherwise."""
    s = raw_connect(h)
    _login(h, s, "ts-bq")
    s.sendall(pg.query("SET backslash_quote = off"))
    assert not _until_ready(s).startswith(b"E")
    s.sendall(pg.query("select E'x\\'' , 'y'"))
    got = _until_ready(s)
    assert got.startswith(b"E") and b"22P06" in got, got  # unsafe use of \' …
    s.sendall(pg.query("select 'usable'"))
    assert b"usable" in _until_ready(s)
    s.close()


def test_extended_protocol_parse_is_refused_too(h: Hoopy) -> None:
    s = raw_connect(h)
    _login(h, s, "ts-parse")
    s.sendall(
        pg.parse("", "SET standard_conforming_strings = off", [])
        + pg.bind("", "", [], [], [])
        + pg.execute("", 0)
        + pg.sync()
    )
    got = _until_ready(s)
    assert got.startswith(b"E") and b"C0A000" in got
    s.sendall(pg.query("show standard_conforming_strings"))
    assert b"on" in _until_ready(s)
    s.close()


async def test_a_pipelined_switch_is_refused_and_the_text_behind_it_read_as_hoopy_did(
    h: Hoopy, backend: Backend
) -> None:
    """The attack of test_pg_hostile: with the SET refused, the server reads the text
    behind it as hoopy did (one string), and the TRUNCATE never runs."""
    conn = await backend.app_conn()
    try:
        await conn.execute("drop table if exists ts_probe; create table ts_probe (x int)")
        await conn.execute("insert into ts_probe values (1)")
        s = raw_connect(h)
        _login(h, s, "ts-smuggle")
        s.sendall(
            pg.query("SET standard_conforming_strings = off")
            + pg.query("SELECT 'x\\' , ' ; TRUNCATE ts_probe; --'")
        )
        got = _until_ready(s)
        if got.count(b"Z\x00\x00\x00\x05") < 2:
            got += _until_ready(s)
        assert b"C0A000" in got and b"TRUNCATE ts_probe" in got  # the string came back
        s.close()
        assert await conn.fetchval("select count(*) from ts_probe") == 1
    finally:
        await conn.execute("drop table if exists ts_probe")
        await conn.close()


def test_a_role_default_hoopy_could_not_see_ends_the_session_at_login(
    h: Hoopy, backend: Backend
) -> None:
    async def role_default(value: str | None) -> None:
        conn = await backend.app_conn()
        try:
            if value is None:
                await conn.execute("ALTER ROLE app_rw RESET standard_conforming_strings")
            else:
                await conn.execute(f"ALTER ROLE app_rw SET standard_conforming_strings = {value}")
        finally:
            await conn.close()

    asyncio.run(role_default("off"))
    try:
        s = raw_connect(h)
        s.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))
        assert s.recv(9)[:1] == b"R"
        s.sendall(pg.password_message(h.token("ts-role").encode() + b"\0"))
        got = read_all(s)
        assert b"FATAL" in got and b"standard_conforming_strings" in got, got
    finally:
        asyncio.run(role_default(None))


async def test_a_text_with_a_refused_switch_runs_none_of_its_statements(
    h: Hoopy, backend: Backend
) -> None:
    conn = await backend.app_conn()
    try:
        await conn.execute("drop table if exists ts_multi; create table ts_multi (x int)")
        s = raw_connect(h)
        _login(h, s, "ts-multi")
        s.sendall(
            pg.query("insert into ts_multi values (1); /* */ SeT standard_conforming_strings=off")
        )
        got = _until_ready(s)
        assert b"C0A000" in got
        s.close()
        assert await conn.fetchval("select count(*) from ts_multi") == 0
    finally:
        await conn.execute("drop table if exists ts_multi")
        await conn.close()


def test_a_switch_hoopy_cannot_read_ahead_of_time_ends_the_session(h: Hoopy) -> None:
    """set_config with a name computed at run time: hoopy cannot tell it apart from any
    other setting, so it runs; the server's report of the switch ends the session."""
    s = raw_connect(h)
    _login(h, s, "ts-computed")
    s.sendall(
        pg.query(
            "select set_config(n, 'off', false) "
            "from (values ('standard_' || 'conforming_strings')) v(n)"
        )
        + pg.query("select 'never read'")
    )
    got = read_all(s)
    assert b"08P01" in got and b"standard_conforming_strings" in got
    assert b"never read" not in got
