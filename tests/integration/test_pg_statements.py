"""What runs is what was checked: approvals per execution of a prepared statement,
prepared-statement names hoopy lost track of, grants within one text, search_path,
token expiry mid-session.  Real asyncpg, psql and raw protocol against a real server."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest

from hoopy.protocols.postgres import codec as pg
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import admin, wait_pending
from tests.integration.test_pg_hostile import raw_connect
from tests.integration.test_pg_psql import app_count


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _agent(h: Hoopy, token: str | None = None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=h.pg_port,
        user="agent",
        database="app-db",
        password=token or h.token("stmt-agent"),
        ssl=_ssl(),
    )


def _decide_in_thread(h: Hoopy, needle: str, verdict: str) -> threading.Thread:
    """An approver who answers the approval for `needle` as soon as it shows up."""

    def run() -> None:
        a = wait_pending(h, needle)
        admin(h, "POST", f"/api/approvals/{a['id']}/{verdict}", {"by": "alice"})

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_each_execution_of_a_prepared_statement_needs_its_own_approval(
    hoopy: Hoopy, backend: Backend
) -> None:
    async def go() -> None:
        conn = await _agent(hoopy)
        st = await conn.prepare("update orders set status = $1 where id = $2")  # no wait
        t = _decide_in_thread(
            hoopy, "as text 'per-exec-1'), $2 = x'00000003' (binary; as integer 3)", "approve"
        )
        await st.fetch("per-exec-1", 3)
        t.join()
        t = _decide_in_thread(
            hoopy, "as text 'per-exec-2'), $2 = x'00000004' (binary; as integer 4)", "deny"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="was denied"):
            await st.fetch("per-exec-2", 4)
        t.join()
        assert await conn.fetchval("select 7") == 7  # the session stays usable
        await conn.close()

    asyncio.run(go())
    assert app_count(backend, "select count(*) from orders where status = 'per-exec-1'") == 1
    assert app_count(backend, "select count(*) from orders where status = 'per-exec-2'") == 0


def login(s: object, token: str) -> None:
    s.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))  # type: ignore[attr-defined]
    assert s.recv(9)[:1] == b"R"  # type: ignore[attr-defined]
    s.sendall(pg.password_message(token.encode() + b"\0"))  # type: ignore[attr-defined]
    got = b""
    while not got.endswith(pg.ready_for_query("I")):
        chunk = s.recv(65536)  # type: ignore[attr-defined]
        assert chunk, got
        got += chunk


def _answers(s: object, count: int, got: bytes = b"") -> bytes:
    """Read on until `count` ReadyForQuery messages have arrived (bounded by the socket's
    timeout): one per Sync or Query sent."""
    ready = (pg.ready_for_query("I"), pg.ready_for_query("E"))
    while sum(got.count(r) for r in ready) < count:
        chunk = s.recv(65536)  # type: ignore[attr-defined]
        assert chunk, got
        got += chunk
    return got


def _round(s: object, *messages: bytes) -> bytes:
    sock = s  # an ssl socket
    sock.sendall(b"".join(messages))  # type: ignore[attr-defined]
    got = b""
    while not got.endswith(pg.ready_for_query("I")) and not got.endswith(pg.ready_for_query("E")):
        chunk = sock.recv(65536)  # type: ignore[attr-defined]
        assert chunk, got
        got += chunk
    return got


@pytest.mark.parametrize(
    "lose_track",
    [
        [pg.query("PREPARE lost AS SELECT 1; DEALLOCATE lost")],
        [pg.query("PREPARE lost AS SELECT 1"), pg.query("DEALLOCATE lost")],
        [
            pg.query("PREPARE lost AS SELECT 1"),
            pg.parse("", "DEALLOCATE lost") + pg.bind("", "") + pg.execute("") + pg.sync(),
        ],
    ],
)
def test_statements_hoopy_lost_track_of_never_run_unchecked(
    hoopy: Hoopy, backend: Backend, lose_track: list[bytes]
) -> None:
    """After hoopy's idea of `lost` is gone, a PREPARE that survives its failed text
    holds a DELETE: neither EXECUTE nor Bind of it may run without a check."""
    s = raw_connect(hoopy)
    login(s, hoopy.token("stmt-agent"))
    for m in lose_track:
        _round(s, m)
    t = _decide_in_thread(hoopy, "PREPARE lost AS DELETE FROM refunds", "approve")
    reply = _round(s, pg.query("PREPARE lost AS DELETE FROM refunds; SELECT 1/0"))
    t.join()
    assert b"22012" in reply  # the PREPARE ran (approved), then the text failed
    before = app_count(backend, "select count(*) from refunds")
    reply = _round(s, pg.query("EXECUTE lost"))
    assert b"42501" in reply and b"DELETE" not in reply
    reply = _round(s, pg.bind("", "lost") + pg.execute("") + pg.sync())
    assert b"42501" in reply and b"not known to hoopy" in reply
    assert app_count(backend, "select count(*) from refunds") == before
    assert _round(s, pg.query("SELECT 5")).count(b"5") >= 1  # still usable
    s.close()


def test_a_grant_covers_only_the_statement_the_approver_saw(hoopy: Hoopy, backend: Backend) -> None:
    """Two inserts in one text match a reusable rule: each needs its own approval."""
    s = raw_connect(hoopy)
    login(s, hoopy.token("grant-agent"))
    s.sendall(
        pg.query("insert into refunds values (300, 10); insert into refunds values (301, 999)")
    )
    first = wait_pending(hoopy, "values (300, 10)")
    assert "301" not in first["command"]
    admin(hoopy, "POST", f"/api/approvals/{first['id']}/approve", {"by": "alice"})
    second = wait_pending(hoopy, "values (301, 999)")  # asked, not covered by the first
    assert app_count(backend, "select count(*) from refunds where id = 301") == 0
    admin(hoopy, "POST", f"/api/approvals/{second['id']}/deny", {"by": "alice"})
    got = b""
    while not got.endswith(pg.ready_for_query("I")):
        chunk = s.recv(65536)
        assert chunk
        got += chunk
    assert b"was denied" in got
    assert app_count(backend, "select count(*) from refunds where id in (300, 301)") == 0
    s.close()


def test_a_prepared_statement_stops_when_the_token_expires(hoopy: Hoopy) -> None:
    clock = {"t": 0.0}

    async def go() -> None:
        conn = await _agent(hoopy, hoopy.token("short-lived", ttl=3))
        st = await conn.prepare("select 1")
        assert await st.fetchval() == 1
        # wait (bounded) until the token is past its expiry and the gateway's leeway
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            try:
                await st.fetchval()
            except (asyncpg.PostgresError, asyncpg.exceptions.ConnectionDoesNotExistError) as e:
                clock["t"] = loop.time()
                assert "token expired" in str(e)
                break
            assert loop.time() < deadline, "an expired token kept running its statement"
            await asyncio.sleep(0.2)  # polling a real clock, not synchronising
        with pytest.raises(Exception):  # noqa: B017 - the session is over, whatever the type
            await conn.fetchval("select 1")
        await conn.close()

    asyncio.run(go())
    assert clock["t"]


# ---- search_path: schema-qualified rules follow where unqualified names point ---------

SCHEMA_POLICY = """\
mode: enforce
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [app-db]}
  - name: no-secret-schema
    effect: deny
    reason: the secret schema is off limits
    match: {sql: {tables: ["secret.*"]}}
"""


@pytest.fixture(scope="module")
def schema_hoopy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    async def seed() -> None:
        conn = await backend.app_conn()
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS secret; "
            "CREATE TABLE IF NOT EXISTS secret.creds (pw text); "
            "DELETE FROM secret.creds; INSERT INTO secret.creds VALUES ('hunter2')"
        )
        await conn.close()

    asyncio.run(seed())
    h = start_hoopy(
        tmp_path_factory.mktemp("schemas"), backend, policies={"schemas": SCHEMA_POLICY}
    )
    yield h
    stop_hoopy(h)


@pytest.mark.parametrize(
    "switch",
    [
        "SET search_path = secret",
        "SET search_path TO public, secret",
        "SELECT set_config('search_path', 'secret', false)",
        "SELECT set_config('search_' || 'path', 'secret', false)",
        "UPDATE pg_settings SET setting = 'secret' WHERE name = 'search_path'",
        "SELECT pg_catalog.set_config('search_path', 'secret', false)",
        "SET SCHEMA 'secret'",
        'SET U&"s\\0065arch_path" = secret',
        "SET ROLE app_rw",  # "$user" then names another role's schema
    ],
)
def test_search_path_cannot_hide_a_schema(schema_hoopy: Hoopy, switch: str) -> None:
    r = schema_hoopy.psql("-At", "-c", switch, "-c", "SELECT pw FROM creds")
    assert "hunter2" not in r.stdout
    assert "no-secret-schema" in r.stderr


def test_search_path_elsewhere_leaves_other_tables_readable(schema_hoopy: Hoopy) -> None:
    r = schema_hoopy.psql(
        "-At", "-c", "SET search_path = public", "-c", "SELECT count(*) > 0 FROM customers"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "t"


def test_a_copy_started_before_the_token_expired_does_not_commit_after(
    hoopy: Hoopy, backend: Backend
) -> None:
    async def go() -> None:
        conn = await _agent(hoopy, hoopy.token("short-copier", ttl=3))  # exp: now + 3
        await conn.execute(f"create table {table} (n int)")

        token_exp = time.time() + 3

        async def rows():  # type: ignore[no-untyped-def]
            yield b"1\n"
            while time.time() <= token_exp + 1:  # wall-clock time must pass: the expiry
                await asyncio.sleep(0.2)
            yield b"2\n"

        with pytest.raises(Exception, match=r"token expired|connection"):
            await conn.copy_to_table(table, source=rows())
        await conn.close()

    table = f"copy_expiry_{time.monotonic_ns()}"
    asyncio.run(go())
    assert app_count(backend, f"select count(*) from {table}") == 0


def _pending_or_none(h: Hoopy, needle: str) -> dict | None:
    try:
        return wait_pending(h, needle, timeout=3)
    except AssertionError:
        return None


@pytest.mark.parametrize(
    ("setup", "attack"),
    [
        # a re-Parse of a name in use fails (42P05): the Bind runs the first statement
        (
            [],
            pg.parse("rp1", "DELETE FROM refunds WHERE id = 901")
            + pg.sync()
            + pg.parse("rp1", "SELECT 1")
            + pg.sync()
            + pg.bind("", "rp1")
            + pg.execute("")
            + pg.sync(),
        ),
        # the same through SQL PREPARE of a name the extended protocol holds
        (
            [pg.parse("rp2", "DELETE FROM refunds WHERE id = 902") + pg.sync()],
            pg.query("PREPARE rp2 AS SELECT 1") + pg.bind("", "rp2") + pg.execute("") + pg.sync(),
        ),
        # a Parse skipped after an error leaves the unnamed statement as it was
        (
            [pg.parse("", "DELETE FROM refunds WHERE id = 905") + pg.sync()],
            pg.parse("rp4e", "SELECT 1/0")
            + pg.bind("rp4p", "rp4e")
            + pg.execute("rp4p")
            + pg.parse("", "SELECT 1")
            + pg.sync()
            + pg.bind("", "")
            + pg.execute("")
            + pg.sync(),
        ),
        # EXECUTE in a Parse runs what the name holds at the Bind
        (
            [
                pg.query("PREPARE rp3 AS SELECT 1"),
                pg.parse("rp3e", "EXECUTE rp3") + pg.sync(),
                pg.query("DEALLOCATE rp3"),
                pg.parse("rp3", "DELETE FROM refunds WHERE id = 903") + pg.sync(),
            ],
            pg.bind("", "rp3e") + pg.execute("") + pg.sync(),
        ),
    ],
)
def test_a_bind_is_checked_against_every_statement_its_name_may_hold(
    hoopy: Hoopy, backend: Backend, setup: list[bytes], attack: bytes
) -> None:
    s = raw_connect(hoopy)
    login(s, hoopy.token("rebind-agent"))
    for m in setup:
        _round(s, m)
    before = app_count(backend, "select count(*) from refunds")
    s.sendall(attack)
    pending = _pending_or_none(hoopy, "DELETE FROM refunds WHERE id = 90")
    if pending is not None:  # asked a human: say no
        admin(hoopy, "POST", f"/api/approvals/{pending['id']}/deny", {"by": "alice"})
    got = _answers(s, attack.count(pg.sync()) + attack.startswith(b"Q"))
    assert b"42501" in got  # refused or denied, never run
    assert app_count(backend, "select count(*) from refunds") == before
    s.close()


def test_a_function_call_inside_an_extended_batch_ends_the_session(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    login(s, hoopy.token("fastpath-agent"))
    function_call = b"F" + (4 + 4 + 2 + 2 + 2).to_bytes(4, "big") + (1).to_bytes(4, "big")
    function_call += b"\0\0" + b"\0\0" + b"\0\0"
    s.sendall(pg.parse("", "SELECT 1/0") + pg.bind("", "") + pg.execute("") + function_call)
    s.sendall(pg.sync())
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert b"08P01" in got and b"fast-path function call" in got
    s.close()


async def test_asyncpg_bulk_copy_of_records(hoopy: Hoopy, backend: Backend) -> None:
    """asyncpg closes its introspection statement, then sends COPY as a simple Query
    before any Sync: a Close cannot fail, so that is no open batch."""
    table = f"bulk_{time.monotonic_ns()}"
    conn = await _agent(hoopy)
    try:
        await conn.execute(f"CREATE TABLE {table} (n int, s text)")
        await conn.copy_records_to_table(table, records=[(1, "a"), (2, "b")])
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2
    finally:
        await conn.close()
