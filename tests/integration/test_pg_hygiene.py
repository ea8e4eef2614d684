"""Issue 15, lower items: client-only encodings refused at startup in every spelling
PostgreSQL accepts; a pooled backend carries neither one agent's random seed nor a
cancel request meant for it into the next agent's session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from hoopy.config import PostgresConnector, Secret
from hoopy.protocols.postgres.backend import BackendPool
from hoopy.protocols.postgres.textsettings import UNSAFE_ENCODINGS, unsafe_encoding
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy

# pg_encname_tbl names of the client-only encodings, in spellings clean_encoding_name()
# folds to them (case, '-', '_' and other punctuation are ignored).
ALIASES = [
    "win932", "WIN-932", "windows932", "Windows_932", "mskanji", "MS_Kanji", "shiftjis",
    "Shift_JIS", "sjis", "SJIS", "shift-jis-2004", "SHIFT_JIS_2004", "windows-936", "win936",
    "gbk", "GBK", "windows949", "WIN949", "uhc", "windows950", "win950", "big5", "Big-5",
    "gb18030", "GB-18030", "johab", "JOHAB",
]  # fmt: skip


def test_every_spelling_of_a_client_only_encoding_is_unsafe() -> None:
    assert all(unsafe_encoding(a) for a in ALIASES)
    assert all(unsafe_encoding(e) for e in UNSAFE_ENCODINGS)
    safe = ["UTF8", "utf-8", "unicode", "LATIN1", "iso-8859-1", "EUC_JP", "win1252", "SQL_ASCII"]
    assert not any(unsafe_encoding(e) for e in safe)


@pytest.fixture(scope="module")
def pooled(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hygiene"), backend, pool_size=2)
    yield h
    stop_hoopy(h)


@pytest.mark.parametrize("encoding", ["win932", "MS_Kanji", "windows-936", "WIN949", "Big-5"])
def test_psql_client_encoding_alias_refused_at_startup(pooled: Hoopy, encoding: str) -> None:
    env = {**os.environ, "PGPASSWORD": pooled.token(), "PGCLIENTENCODING": encoding}
    r = subprocess.run(
        ["psql", pooled.conninfo(), "-X", "-At", "-c", "select 'ran'"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0 and "ran" not in r.stdout
    # refused from the StartupMessage ("use UTF8"), not after the server agreed to it
    assert f"client_encoding {encoding} is not supported; use UTF8" in r.stderr, r.stderr


def _psql(h: Hoopy, sql: str) -> str:
    env = {**os.environ, "PGPASSWORD": h.token(), "PGAPPNAME": "hygiene"}
    r = subprocess.run(
        ["psql", h.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _state(backend: Backend, pid: int) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        conn = await backend.app_conn()
        try:
            row = await conn.fetchrow(
                "select coalesce(state, ''), query from pg_stat_activity where pid = $1", pid
            )
            return (row[0], row[1]) if row else ("gone", "")
        finally:
            await conn.close()

    return asyncio.run(go())


def _seeded_random(backend: Backend) -> str:
    async def go() -> str:
        conn = await backend.app_conn()
        try:
            await conn.execute("select setseed(0.25)")
            return str(await conn.fetchval("select random()::text"))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_seed_set_by_one_agent_does_not_reach_the_next(pooled: Hoopy, backend: Backend) -> None:
    predicted = _seeded_random(backend)
    first = _psql(pooled, "select pg_backend_pid() from (select setseed(0.25)) s")
    pid = int(first.splitlines()[-1])
    deadline = time.monotonic() + 20
    while True:  # the released backend is reset in the background: until it is idle again
        state, query = _state(backend, pid)
        if state == "idle" and "setseed(0.25)" not in query:
            break
        assert state != "gone" and time.monotonic() < deadline, (state, query)
        time.sleep(0.05)  # polling the server's own view, bounded
    out = _psql(pooled, "select pg_backend_pid(), random()::text").split("|")
    assert int(out[0]) == pid  # the same pooled backend
    assert out[1] != predicted


def test_a_backend_with_a_cancel_under_way_is_not_handed_on(backend: Backend) -> None:
    """Between the cancel map's lookup and the CancelRequest reaching the server, the
    session may end and its backend be reset and pooled: the pool waits for the cancel."""
    port = backend.cluster.port
    os.environ["HYGIENE_APP_PASSWORD"] = backend.app_password

    async def go() -> None:
        c = PostgresConnector(
            "app", "127.0.0.1", port, "app", "app_rw", Secret("env:HYGIENE_APP_PASSWORD"),
            sslmode="disable",
        )  # fmt: skip
        got_request, let_go = asyncio.Event(), asyncio.Event()

        async def slow_postmaster(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readexactly(16)  # the CancelRequest
            got_request.set()
            await let_go.wait()
            w.close()

        server = await asyncio.start_server(slow_postmaster, "127.0.0.1", 0)
        fake = PostgresConnector(
            "app", "127.0.0.1", server.sockets[0].getsockname()[1], "app", "app_rw"
        )
        pool = BackendPool(2, 1 << 20)
        try:
            conn = await pool.acquire(c, {})
            cancel = asyncio.ensure_future(pool.cancel(fake, conn.pid, conn.key))
            await got_request.wait()
            pool.release(conn, reusable=True)  # the session ended meanwhile
            done, _ = await asyncio.wait(set(pool._resets), timeout=2)
            assert not done  # the reset waits for the cancel
            assert (await pool.acquire(c, {})) is not conn
            let_go.set()
            await cancel
            await asyncio.wait(set(pool._resets), timeout=10)
            assert (await pool.acquire(c, {})) is conn  # then pooled as usual
        finally:
            pool.close()
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    asyncio.run(go())
