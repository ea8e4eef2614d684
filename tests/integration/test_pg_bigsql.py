"""Large SQL texts through hoopy (issue 15 §2): classified by a worker process, off the
event loop, so other sessions keep being answered; refused with 54000 beyond the
configured ceiling or the worker's limits; never forwarded unclassified."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy

# Texts above 4 KiB go to the worker; above 600 kB are refused; a worker gets 2 s.
LIMITS = {"classify_inline_size": 4096, "max_statement_size": 600_000, "classify_timeout": "2s"}


@pytest.fixture(scope="module")
def big(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    async def table() -> None:
        conn = await backend.app_conn()
        await conn.execute("CREATE TABLE IF NOT EXISTS bigsql_rows (id int, tag text)")
        await conn.close()

    asyncio.run(table())
    h = start_hoopy(tmp_path_factory.mktemp("bigsql"), backend, **LIMITS)  # type: ignore[arg-type]
    yield h
    stop_hoopy(h)


def _insert(rows: int, tag: str) -> str:
    values = ",".join(f"({i}, '{tag}')" for i in range(rows))
    return f"INSERT INTO bigsql_rows (id, tag) VALUES {values}"


async def _agent(h: Hoopy) -> asyncpg.Connection:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return await asyncpg.connect(
        host="127.0.0.1", port=h.pg_port, user="agent", database="app-db",
        password=h.token(), ssl=ctx, statement_cache_size=0,
    )  # fmt: skip


def _workers(h: Hoopy) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{h.proc.pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


async def _count(backend: Backend, tag: str) -> int:
    conn = await backend.app_conn()
    try:
        return int(await conn.fetchval("select count(*) from bigsql_rows where tag = $1", tag))
    finally:
        await conn.close()


def test_other_sessions_answered_while_a_large_statement_is_classified(
    big: Hoopy, backend: Backend
) -> None:
    """The worker is frozen (SIGSTOP) while it holds a 300 kB INSERT: another agent's
    queries are still answered, so nothing of that classification runs on the event
    loop; once the worker resumes, the INSERT completes and was really classified."""

    async def run() -> None:
        first = await _agent(big)
        await first.execute(_insert(500, "warm"))  # starts a worker
        (worker,) = _workers(big)
        os.kill(worker, signal.SIGSTOP)
        try:
            statement = asyncio.ensure_future(first.execute(_insert(12_000, "bulk")))
            other = await _agent(big)
            for i in range(20):
                assert await other.fetchval("select $1::int + 1", i) == i + 1
            assert await other.fetchval("select count(*) from orders") >= 0
            assert not statement.done()  # the worker is stopped: it cannot have finished
        finally:
            os.kill(worker, signal.SIGCONT)
        assert await statement == "INSERT 0 12000"
        await other.close()
        await first.close()
        assert await _count(backend, "bulk") == 12000

    try:
        asyncio.run(run())
    finally:
        asyncio.run(_cleanup(backend))


async def _cleanup(backend: Backend) -> None:
    conn = await backend.app_conn()
    try:
        await conn.execute("delete from bigsql_rows")
    finally:
        await conn.close()


def big_worker_used(h: Hoopy) -> bool:
    return bool(_workers(h))


def test_a_large_statement_is_still_checked_by_policy(big: Hoopy, backend: Backend) -> None:
    """Classified by the worker, a DROP hidden after a long multi-row INSERT is denied."""
    sql = _insert(2000, "hidden") + "; DROP TABLE orders"
    r = big.psql("-v", "VERBOSITY=verbose", "-c", sql)  # one Query message
    assert big_worker_used(big)
    assert r.returncode != 0
    assert "42501" in r.stderr and "no-schema-changes" in r.stderr
    assert asyncio.run(_count(backend, "hidden")) == 0  # nothing of the text ran


def test_statement_over_the_ceiling_is_refused_with_54000(big: Hoopy, backend: Backend) -> None:
    sql = _insert(40_000, "late")  # ~800 kB > max_statement_size
    assert len(sql) > 600_000
    r = big.psql(
        "-v", "VERBOSITY=verbose", "-v", "ON_ERROR_STOP=0", input=sql + ";\nselect 'after';"
    )
    assert "54000" in r.stderr and "postgres.max_statement_size" in r.stderr, r.stderr
    assert "after" in r.stdout  # the session stays usable
    assert asyncio.run(_count(backend, "late")) == 0  # never forwarded


def test_classification_over_its_time_limit_is_refused_with_54000(
    big: Hoopy, backend: Backend
) -> None:
    """A worker that does not answer within classify_timeout is killed; the statement is
    refused naming the setting and the next large statement gets a new worker."""

    async def run() -> None:
        conn = await _agent(big)
        await conn.execute(_insert(500, "warm"))
        (worker,) = _workers(big)
        os.kill(worker, signal.SIGSTOP)  # as if it were stuck on a pathological text
        try:
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute(_insert(3000, "late"))
        finally:
            with contextlib.suppress(ProcessLookupError):  # hoopy killed it
                os.kill(worker, signal.SIGCONT)
        assert info.value.sqlstate == "54000"
        assert "postgres.classify_timeout" in str(info.value)
        assert await conn.execute(_insert(500, "warm")) == "INSERT 0 500"  # a new worker
        await conn.close()
        assert await _count(backend, "late") == 0

    try:
        asyncio.run(run())
    finally:
        asyncio.run(_cleanup(backend))
