"""A cancel request (psql's Ctrl-C) reaches what hoopy holds: a statement waiting for
approval is cancelled as the server cancels one (57014), its approval request is
withdrawn, and the session goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess

import asyncpg
import pytest

from tests.integration.conftest import Backend, Hoopy
from tests.integration.test_pg_approvals import admin, wait_pending
from tests.integration.test_pg_drivers import agent
from tests.integration.test_pg_psql import app_count


def test_ctrl_c_cancels_a_statement_waiting_for_approval(hoopy: Hoopy, backend: Backend) -> None:
    env = {**os.environ, "PGPASSWORD": hoopy.token("cancel-agent")}
    script = "update orders set status = 'cancelled-wait' where id = 2;\nselect 'still-here';\n"
    p = subprocess.Popen(
        ["psql", hoopy.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdin is not None
    p.stdin.write(script)
    p.stdin.flush()
    a = wait_pending(hoopy, "cancelled-wait")
    p.send_signal(signal.SIGINT)  # psql sends a CancelRequest on a new connection
    out, err = p.communicate(timeout=30)
    assert "ERROR:  canceling statement due to user request" in err
    assert "still-here" not in out  # psql ends a script on Ctrl-C (as it does directly)
    status, item = admin(hoopy, "GET", f"/api/approvals/{a['id']}")
    assert status == 200 and item["state"] == "cancelled"  # type: ignore[index]
    status, _done = admin(hoopy, "POST", f"/api/approvals/{a['id']}/approve", {"by": "bob"})
    assert status != 200  # a withdrawn request can no longer be approved
    assert app_count(backend, "select count(*) from orders where status = 'cancelled-wait'") == 0


async def test_cancelled_wait_leaves_the_session_usable(hoopy: Hoopy, backend: Backend) -> None:
    conn = await agent(hoopy, token=hoopy.token("cancel-agent"))
    try:
        update = asyncio.ensure_future(
            conn.execute("update orders set status = 'cancelled-async' where id = 3")
        )
        a = await asyncio.to_thread(wait_pending, hoopy, "cancelled-async")
        # a CancelRequest with the key hoopy handed out, on a connection of its own
        host, port = hoopy.addresses["postgres"].rsplit(":", 1)
        _, w = await asyncio.open_connection(host, int(port))
        pid, key = conn.get_server_pid(), conn._protocol.backend_secret
        w.write(struct.pack("!IIii", 16, 80877102, pid, key))
        await w.drain()
        w.close()
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(update, 30)
        assert await conn.fetchval("select 'still-here'") == "still-here"
        _status, item = admin(hoopy, "GET", f"/api/approvals/{a['id']}")
        assert item["state"] == "cancelled"  # type: ignore[index]
    finally:
        await conn.close()
