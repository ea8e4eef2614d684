"""postgres.workers: several hoopy processes serve PostgreSQL agents on one address and
port (hoopy/pgworkers.py), with the real PostgreSQL, asyncpg over TLS, the dev issuer.

Which process serves a session is read from the session index (its owner names the
process's pid) and from the cancel key hoopy hands the agent (fake pid mod N)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from hoopy.state import StateStore
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import admin, cli_decide, wait_pending
from tests.integration.test_pg_drivers import agent
from tests.integration.test_pg_psql import app_count
from tests.integration.test_pg_slack import (  # noqa: F401 (the slack fixture)
    SLACK_ENV,
    Slack,
    click,
    slack,
    slack_yaml,
)

WORKERS = 2


@pytest.fixture(scope="module")
def hw(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-workers"), backend, workers=WORKERS)
    try:
        yield h
    finally:
        stop_hoopy(h)


# ---- helpers ----------------------------------------------------------------------------


def worker_pids(h: Hoopy) -> list[int]:
    """hoopy's PostgreSQL workers: the children of the gateway process running serve."""
    out = []
    for task in Path(f"/proc/{h.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with _gone_ok():
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"hoopy.cli" in cmd and b"serve" in cmd:
                    out.append(int(pid))
    return sorted(out)


class _gone_ok:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is not None and issubclass(kind, (FileNotFoundError, ProcessLookupError))  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def wait_until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def accepting(h: Hoopy) -> list[int]:
    """Pids of the workers that said they accept, in order (from the gateway's log)."""
    return [int(p) for p in re.findall(r"postgres worker \d+ \(pid (\d+)\) accepts", h.log_text())]


def owner_pid(h: Hoopy, conn: asyncpg.Connection) -> int:
    """The pid of the hoopy process whose session this connection is (session index)."""
    port = conn._transport.get_extra_info("sockname")[1]
    store = StateStore(h.folder / "state" / "state.db")
    try:
        rows = [r for r in store.list_sessions(limit=None) if r.client == f"127.0.0.1:{port}"]
    finally:
        store.close()
    assert rows, f"no session from port {port}"
    return int(rows[-1].owner.split("/")[1])


def process_of(conn: asyncpg.Connection) -> int:
    return int(conn.get_server_pid()) % WORKERS  # 0: the gateway process, 1…: workers


async def conn_in(h: Hoopy, process: int, tries: int = 60) -> asyncpg.Connection:
    """A connection served by `process` (others are opened and closed meanwhile)."""
    held = []
    try:
        for _ in range(tries):
            conn = await agent(h)
            if process_of(conn) == process:
                return conn
            held.append(conn)  # held open, so the next one is not simply the same slot
        raise AssertionError(f"no connection reached process {process} in {tries} tries")
    finally:
        for c in held:
            await c.close()


def cancel(h: Hoopy, conn: asyncpg.Connection) -> bytes:
    return struct.pack("!IIii", 16, 80877102, conn.get_server_pid(), conn._protocol.backend_secret)


# ---- one gateway with 2 processes -------------------------------------------------------


async def test_concurrent_sessions_are_served_by_every_process(hw: Hoopy) -> None:
    conns = await asyncio.gather(*(agent(hw) for _ in range(16)))
    try:
        got = await asyncio.gather(*(c.fetchval("select count(*) from customers") for c in conns))
        assert len(set(got)) == 1
        owners = {owner_pid(hw, c) for c in conns}
        workers = worker_pids(hw)
        assert len(workers) == WORKERS - 1
        assert owners == {hw.proc.pid, *workers}  # both processes served sessions
        for c in conns:  # the cancel key names the process that holds the session
            index = process_of(c)
            assert owner_pid(hw, c) == (hw.proc.pid if index == 0 else workers[0])
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    log = hw.log_text()
    assert "postgres served by 2 processes" in log
    assert re.search(r"INFO worker-1 hoopy\.", log), "worker logs carry their number"


def test_hash_mask_key_exists_before_the_workers_start(hw: Hoopy) -> None:
    key = (hw.folder / "state" / "masking-key").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)


async def test_denied_statement_is_denied_in_a_worker(hw: Hoopy) -> None:
    conn = await conn_in(hw, 1)
    try:
        assert owner_pid(hw, conn) in worker_pids(hw)
        with pytest.raises(asyncpg.PostgresError, match="vault table is off limits"):
            await conn.fetch("select * from vault")
        assert await conn.fetchval("select 'after-deny'") == "after-deny"
    finally:
        await conn.close()


async def test_approval_in_a_worker_decided_in_the_gateway_process(
    hw: Hoopy, backend: Backend
) -> None:
    conn = await conn_in(hw, 1)
    try:
        update = asyncio.ensure_future(
            conn.execute("update orders set status = 'worker-approved' where id = 6")
        )
        a = await asyncio.to_thread(wait_pending, hw, "worker-approved")
        assert not update.done()
        # the admin API of the gateway process decides; the worker's wait sees it
        status, _ = await asyncio.to_thread(
            admin, hw, "POST", f"/api/approvals/{a['id']}/approve", {"by": "dba-bob"}
        )
        assert status == 200
        assert await asyncio.wait_for(update, 30) == "UPDATE 1"
        denied = asyncio.ensure_future(
            conn.execute("update orders set status = 'worker-denied' where id = 7")
        )
        b = await asyncio.to_thread(wait_pending, hw, "worker-denied")
        done = await asyncio.to_thread(cli_decide, hw, "deny", b["id"])
        assert done.returncode == 0, done.stderr
        with pytest.raises(asyncpg.PostgresError, match=f"approval {b['id']} was denied"):
            await asyncio.wait_for(denied, 30)
    finally:
        await conn.close()
    assert (
        await asyncio.to_thread(
            app_count, backend, "select count(*) from orders where status = 'worker-approved'"
        )
        == 1
    )
    assert (
        await asyncio.to_thread(
            app_count, backend, "select count(*) from orders where status = 'worker-denied'"
        )
        == 0
    )


async def test_cancel_reaches_the_session_whichever_process_accepts_it(hw: Hoopy) -> None:
    """The CancelRequest's connection lands on any process: each must reach the session
    (passed on over the private Unix socket when another process holds it)."""
    host, port = hw.addresses["postgres"].rsplit(":", 1)

    def passed_on() -> int:
        return hw.log_text().count("cancel request passed on")

    start = passed_on()
    for round_ in range(40):
        if round_ >= 4 and passed_on() - start >= 2:
            break
        conn = await conn_in(hw, round_ % WORKERS)
        try:
            update = asyncio.ensure_future(
                conn.execute(f"update orders set status = 'cancel-{round_}' where id = 8")
            )
            await asyncio.to_thread(wait_pending, hw, f"cancel-{round_}'")
            r, w = await asyncio.open_connection(host, int(port))
            w.write(cancel(hw, conn))
            await w.drain()
            assert await asyncio.wait_for(r.read(), 30) == b""  # closed once acted on
            w.close()
            with pytest.raises(asyncpg.QueryCanceledError):
                await asyncio.wait_for(update, 30)
            assert await conn.fetchval("select 'still-here'") == "still-here"
        finally:
            await conn.close()
    await asyncio.to_thread(
        wait_until, "cancels passed on to the other process", lambda: passed_on() - start >= 2
    )


async def test_session_churn_in_every_process_is_indexed_and_recorded(hw: Hoopy) -> None:
    """Both processes open, write and end sessions at once into one SQLite index (WAL)
    and one recordings folder: every session is indexed, ended and verifies."""
    marker = f"churn-{time.time_ns()}"

    async def one(i: int) -> int:
        conn = await agent(hw, token=hw.token(marker))
        try:
            for _ in range(5):
                assert await conn.fetchval("select $1::int", i) == i
            return owner_pid(hw, conn)
        finally:
            await conn.close()

    owners: list[int] = []
    for wave in range(3):
        owners += await asyncio.gather(*(one(wave * 20 + i) for i in range(20)))
    assert set(owners) == {hw.proc.pid, *worker_pids(hw)}
    store = StateStore(hw.folder / "state" / "state.db")
    try:
        rows = store.list_sessions(subject=marker, limit=None)
    finally:
        store.close()
    assert len(rows) == 60 and len({r.id for r in rows}) == 60
    assert all(r.outcome == "closed" for r in rows), {r.outcome for r in rows}
    for r in rows[:: len(rows) // 6]:
        done = await asyncio.to_thread(hw.cli, "verify", r.id)
        assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout


def test_recordings_of_every_process_verify(hw: Hoopy) -> None:
    store = StateStore(hw.folder / "state" / "state.db")
    try:
        owners = {r.owner.split("/")[1] for r in store.list_sessions(limit=None)}
    finally:
        store.close()
    assert len(owners) >= WORKERS
    done = hw.cli("verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and " 0 broken" in done.stderr


def cancel_dir(h: Hoopy) -> Path:
    """The private folder of the processes' cancel sockets (from a worker's spec)."""
    env = Path(f"/proc/{worker_pids(h)[0]}/environ").read_bytes().split(b"\0")
    spec = next(e for e in env if e.startswith(b"HOOPY_PG_WORKER="))
    return Path(json.loads(spec.split(b"=", 1)[1])["cancel_dir"])


async def test_cancel_socket_takes_cancel_requests_only(hw: Hoopy) -> None:
    """The Unix socket that carries cancels between processes serves no session: a
    StartupMessage (or any other message) on it is dropped unanswered."""
    folder = cancel_dir(hw)
    before = worker_pids(hw)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["0.sock", "1.sock"]
    startup = b"\0\0\0\x08\x04\xd2\x16\x2f"  # SSLRequest
    body = b"\0\x03\0\0user\0agent\0database\0app-db\0\0"
    click = 0x686F6F70  # a Slack click handed on: too long, not JSON, not the right JSON
    hostile = [
        struct.pack("!iI", 1 << 30, click) + b"{}",
        struct.pack("!iI", 12, click) + b"{{{{",
        struct.pack("!iI", 10, click) + b"[]",
        struct.pack("!iI", 16, 80877102) + b"\0" * 3,  # a cut cancel request
    ]
    for msg in (startup, struct.pack("!I", len(body) + 4) + body, *hostile):
        r, w = await asyncio.open_unix_connection(str(folder / "1.sock"))
        w.write(msg)
        await w.drain()
        if not msg.endswith(b"\0" * 3):
            assert await asyncio.wait_for(r.read(), 10) == b""  # closed, nothing said
        w.close()
    assert worker_pids(hw) == before and "Traceback" not in hw.log_text()  # none died
    # a cancel for a session of process 0 sent to process 1's socket is not passed on
    conn = await conn_in(hw, 0)
    try:
        update = asyncio.ensure_future(
            conn.execute("update orders set status = 'no-relay' where id = 8")
        )
        a = await asyncio.to_thread(wait_pending, hw, "'no-relay'")
        r, w = await asyncio.open_unix_connection(str(folder / "1.sock"))
        w.write(cancel(hw, conn))
        await w.drain()
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        assert not update.done()
        await asyncio.to_thread(cli_decide, hw, "deny", a["id"])
        with pytest.raises(asyncpg.PostgresError, match="denied"):
            await asyncio.wait_for(update, 30)
    finally:
        await conn.close()


# ---- lifecycle: own gateways ------------------------------------------------------------


def test_sigterm_to_the_gateway_stops_every_worker(backend: Backend, tmp_path: Path) -> None:
    h = start_hoopy(tmp_path, backend, workers=3)
    try:
        workers = worker_pids(h)
        assert len(workers) == 2 and all(alive(p) for p in workers)
        folder = cancel_dir(h)
        h.proc.send_signal(signal.SIGTERM)
        assert h.proc.wait(30) == 0
        # the gateway waited for them: they are gone by the time it exits
        assert not [p for p in workers if alive(p)]
        assert not folder.exists()
    finally:
        stop_hoopy(h)


def test_killed_gateway_takes_its_workers_with_it(backend: Backend, tmp_path: Path) -> None:
    h = start_hoopy(tmp_path, backend, workers=2)
    folder = cancel_dir(h)
    try:
        workers = worker_pids(h)
        assert workers
        h.proc.kill()  # no chance to stop them: PR_SET_PDEATHSIG / stdin EOF must
        h.proc.wait(10)
        wait_until("the orphaned worker to exit", lambda: not any(alive(p) for p in workers))
    finally:
        stop_hoopy(h)
        shutil.rmtree(folder, ignore_errors=True)  # what a killed gateway leaves behind


async def test_killed_worker_is_restarted(backend: Backend, tmp_path: Path) -> None:
    h = await asyncio.to_thread(start_hoopy, tmp_path, backend, workers=2)
    try:
        [old] = worker_pids(h)
        conn = await conn_in(h, 1)
        sid_port = conn._transport.get_extra_info("sockname")[1]
        assert owner_pid(h, conn) == old
        os.kill(old, signal.SIGKILL)
        with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
            await conn.fetchval("select 1")
        conn.terminate()
        await asyncio.to_thread(wait_until, "a new worker", lambda: accepting(h) != [old])
        log = h.log_text()
        assert f"postgres worker 1 (pid {old}) exited unexpectedly (killed by SIGKILL)" in log
        new = accepting(h)[-1]
        assert worker_pids(h) == [new] and not alive(old)
        again = await conn_in(h, 1)  # the restarted worker serves
        try:
            assert owner_pid(h, again) == new
            assert await again.fetchval("select 'back'") == "back"
        finally:
            await again.close()
        # the dead worker's session was ended as crashed by the one that replaced it
        store = StateStore(h.folder / "state" / "state.db")
        try:
            row = next(
                r for r in store.list_sessions(limit=None) if r.client.endswith(f":{sid_port}")
            )
        finally:
            store.close()
        assert row.outcome == "crashed"
        done = await asyncio.to_thread(h.cli, "verify")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        await asyncio.to_thread(stop_hoopy, h)


def test_a_second_gateway_cannot_join_the_port(backend: Backend, tmp_path: Path) -> None:
    """SO_REUSEPORT lets processes of one user share a port: a second `hoopy serve` on a
    port a gateway with workers holds must still fail, as it does with one process."""
    from tests import serveproc

    first = start_hoopy(tmp_path / "a", backend, workers=2)
    try:
        cfg = (tmp_path / "a" / "hoopy.yaml").read_text()
        taken = cfg.replace("postgres: 127.0.0.1:0", f"postgres: 127.0.0.1:{first.pg_port}")
        second = tmp_path / "b"
        second.mkdir()
        for sub in ("connectors", "policies"):
            (second / sub).symlink_to(tmp_path / "a" / sub)
        (second / "hoopy.yaml").write_text(
            re.sub(r"dev_issuer: \{listen: [^}]*\}", "dev_issuer: {listen: 127.0.0.1:0}", taken)
        )
        env = {**os.environ, "TEST_APP_DB_PASSWORD": backend.app_password}
        env["TEST_ADMIN_TOKEN"] = "x"
        try:
            proc, _, _ = serveproc.launch(second / "hoopy.yaml", env)
        except serveproc.ServeFailed as e:
            assert "address already in use" in str(e)
        else:
            serveproc.stop(proc)
            pytest.fail("a second gateway started on the port of the first")
        assert len(worker_pids(first)) == 1  # the first one is untouched
    finally:
        stop_hoopy(first)


def test_default_is_one_process(hoopy: Hoopy) -> None:
    assert worker_pids(hoopy) == []
    assert "postgres served by" not in hoopy.log_text()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "postgres.workers: must be between 1 and 64"),
        ("65", "postgres.workers: must be between 1 and 64"),
        ('"two"', "postgres.workers: expected an integer"),
        ("1.5", "postgres.workers: expected an integer"),
        ("-1", "postgres.workers: must be between 1 and 64"),
    ],
)
def test_bad_workers_setting_names_file_and_line(
    backend: Backend, tmp_path: Path, value: str, message: str
) -> None:
    from tests.integration.conftest import write_config

    cfg = write_config(tmp_path, backend, 1, "postgres:\n  workers: " + value + "\n")
    line = cfg.read_text().splitlines().index("  workers: " + value) + 1
    done = subprocess.run(
        [sys.executable, "-m", "hoopy.cli", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{cfg}:{line}: {message}" in done.stderr


# ---- Slack: the worker's notifier posts, the gateway process takes the click -------------


@pytest.fixture(scope="module")
def hw_slack(
    backend: Backend,
    slack: Slack,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Hoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("hoopy-workers-slack"),
        backend,
        slack_yaml(slack),
        env=SLACK_ENV,
        workers=WORKERS,
    )
    try:
        yield h
    finally:
        stop_hoopy(h)


async def test_slack_click_releases_a_statement_waiting_in_a_worker(
    hw_slack: Hoopy,
    slack: Slack,  # noqa: F811
    backend: Backend,
) -> None:
    h = hw_slack
    conn = await conn_in(h, 1)
    try:
        assert owner_pid(h, conn) in worker_pids(h)
        update = asyncio.ensure_future(
            conn.execute("update orders set status = 'worker-slack' where id = 9")
        )
        a = await asyncio.to_thread(wait_pending, h, "worker-slack")
        posts = await asyncio.to_thread(slack.run, slack.stub.wait_for("chat.postMessage"))
        assert any(a["id"] in json.dumps(p.args) for p in posts)  # posted by the worker
        assert await asyncio.to_thread(click, h, a["id"], "U0RANDOM") == 200  # not an approver
        assert not update.done()
        assert await asyncio.to_thread(click, h, a["id"], "U0DBA1") == 200
        assert await asyncio.wait_for(update, 30) == "UPDATE 1"
        updates = await asyncio.to_thread(slack.run, slack.stub.wait_for("chat.update"))
        assert "approved" in json.dumps(updates[-1].args).lower()
        # both clicks, taken by the gateway process, reach the worker session's recording
        # (handed on beside the decision: awaited while the session is still open)
        await asyncio.to_thread(
            wait_until,
            "the clicks in the recording",
            lambda: {("U0RANDOM", "not_approver"), ("U0DBA1", "approved")} <= clicks(h, a),
        )
    finally:
        await conn.close()
    assert (
        await asyncio.to_thread(
            app_count, backend, "select count(*) from orders where status = 'worker-slack'"
        )
        == 1
    )
    store = StateStore(h.folder / "state" / "state.db")
    try:
        [row] = [r for r in store.list_sessions(limit=None) if r.id == a["session_id"]]
    finally:
        store.close()
    assert int(row.owner.split("/")[1]) in worker_pids(h)


def clicks(h: Hoopy, a: dict) -> set[tuple[str, str]]:
    """The approval clicks recorded in the session that asked for approval `a`."""
    shown = h.cli("sessions", "show", a["session_id"])
    events = [json.loads(x) for x in shown.stdout.splitlines()]
    return {(e["user"], e["outcome"]) for e in events if e["type"] == "approval_click"}
