"""The backend pool: bounded whatever agents send, and never hands out a dead backend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy


@pytest.fixture(scope="module")
def pooled(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("pool"), backend, pool_size=2)
    yield h
    stop_hoopy(h)


def _psql(h: Hoopy, sql: str, app: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": h.token(), "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        ["psql", h.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def _backends(backend: Backend, where: str) -> list[tuple[int, str, str]]:
    async def go() -> list[tuple[int, str, str]]:
        conn = await backend.app_conn()
        try:
            rows = await conn.fetch(
                "select pid, coalesce(state, ''), query from pg_stat_activity "
                f"where pid <> pg_backend_pid() and usename = 'app_rw' and {where}"
            )
            return [(r[0], r[1], r[2]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


def _until(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)  # polling the server's own view, bounded


def test_varying_startup_parameters_cannot_pile_up_backends(
    pooled: Hoopy, backend: Backend
) -> None:
    for i in range(8):
        r = _psql(pooled, "select 1", f"pool-probe-{i}")
        assert r.stdout.strip() == "1", r.stderr
    # each released backend is reset in the background: wait until all are idle
    _until(
        lambda: all(
            s == "idle" for _, s, _ in _backends(backend, "application_name like 'pool-probe-%'")
        )
    )
    idle = _backends(backend, "application_name like 'pool-probe-%'")
    assert len(idle) <= 2, idle  # pool_size, whatever application_name each one had


def test_a_backend_that_died_while_idle_is_not_handed_out(pooled: Hoopy, backend: Backend) -> None:
    first = _psql(pooled, "select pg_backend_pid()", "pool-dead")
    pid = int(first.stdout.strip())
    _until(lambda: any(p == pid and s == "idle" for p, s, _ in _backends(backend, "true")))

    async def kill() -> None:
        conn = await backend.app_conn()
        try:
            await conn.execute(f"select pg_terminate_backend({pid})")
        finally:
            await conn.close()

    asyncio.run(kill())
    _until(lambda: all(p != pid for p, _, _ in _backends(backend, "true")))
    again = _psql(pooled, "select pg_backend_pid()", "pool-dead")
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.strip()) != pid


def test_a_backend_that_used_temporary_objects_is_not_pooled(
    pooled: Hoopy, backend: Backend
) -> None:
    used = _psql(pooled, "create temp table pool_tmp (x int); select pg_backend_pid()", "pool-tmp")
    assert used.returncode == 0, used.stderr
    pid = int(used.stdout.split()[-1])
    # the reset finds its temporary schema and closes it instead of keeping it idle
    _until(lambda: all(p != pid for p, _, _ in _backends(backend, "true")))
    fresh = _psql(pooled, "select pg_my_temp_schema() = 0", "pool-tmp")
    assert fresh.stdout.strip() == "t", fresh.stderr


def test_a_clean_backend_is_pooled(pooled: Hoopy, backend: Backend) -> None:
    first = _psql(pooled, "select pg_backend_pid()", "pool-clean")
    pid = int(first.stdout.strip())
    _until(lambda: any(p == pid and s == "idle" for p, s, _ in _backends(backend, "true")))
    again = _psql(pooled, "select pg_backend_pid()", "pool-clean")
    assert int(again.stdout.strip()) == pid  # the reset kept it: the check is not a blanket refusal
