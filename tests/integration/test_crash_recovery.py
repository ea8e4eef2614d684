"""A gateway killed with SIGKILL mid-session: `hoopy verify` calls the session unfinished
(exit 1) and catches a tail cut from it; the next `hoopy serve` ends it as crashed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from hoopy.state import SessionRow, StateStore
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_drivers import agent


def restart(h: Hoopy, backend: Backend) -> Hoopy:
    """`hoopy serve` again on the same config, state and recordings."""
    env = {
        **os.environ,
        "TEST_APP_DB_PASSWORD": backend.app_password,
        "TEST_ADMIN_TOKEN": "admin-secret-token",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.cli", "serve", "--config", str(h.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    err = proc.stderr
    threading.Thread(target=lambda: lines.extend(iter(err.readline, "")), daemon=True).start()
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("hoopy ready "):
            addresses = json.loads(line[len("hoopy ready ") :])
            return Hoopy(h.folder, h.config, proc, addresses, h.issuer, lines)
    proc.wait(10)
    raise RuntimeError("hoopy serve did not restart:\n" + "".join(lines))


def indexed(h: Hoopy, subject: str) -> SessionRow:
    store = StateStore(h.folder / "state" / "state.db")
    try:
        (row,) = store.list_sessions(subject=subject)
    finally:
        store.close()
    return row


async def test_sigkill_leaves_an_unfinished_session_the_next_gateway_ends(
    backend: Backend, tmp_path: Path
) -> None:
    h = start_hoopy(tmp_path / "h", backend)
    try:
        conn = await agent(h, h.token("crash-agent"))
        for i in range(3):
            assert await conn.fetchval(f"select {i}") == i
        deadline = time.monotonic() + 10  # the flusher writes progress every second
        while indexed(h, "crash-agent").events < 7:  # start, then a command and a result each
            assert time.monotonic() < deadline, indexed(h, "crash-agent")
            time.sleep(0.1)
        h.proc.kill()
        h.proc.wait(10)
        conn.terminate()
        row = indexed(h, "crash-agent")
        assert row.ended is None

        v = h.cli("verify", row.id)
        assert v.returncode == 1, v.stdout + v.stderr
        assert v.stdout.startswith("unfinished ") and "is gone" in v.stdout, v.stdout

        path = Path(row.path)
        whole = path.read_bytes()
        path.write_bytes(b"".join(whole.splitlines(keepends=True)[:-2]))  # cut the tail
        v = h.cli("verify", row.id)
        assert v.returncode == 1 and "BROKEN" in v.stdout and "tail removed" in v.stdout
        path.write_bytes(whole)
    finally:
        if h.proc.poll() is None:
            stop_hoopy(h)

    h2 = restart(h, backend)
    try:
        row = indexed(h2, "crash-agent")
        assert row.outcome == "crashed" and row.ended is not None and row.note == ""
        assert row.events == len(whole.splitlines())
        v = h2.cli("verify", row.id)
        assert v.returncode == 0, v.stdout + v.stderr
        assert v.stdout.startswith("crashed "), v.stdout
        assert h2.cli("verify").returncode == 0
        assert "crashed" in h2.cli("sessions", "list").stdout
    finally:
        stop_hoopy(h2)
