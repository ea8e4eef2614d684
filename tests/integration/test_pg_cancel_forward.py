"""Which cancel requests hoopy passes on to the server.

A cancel that stopped an approval wait hoopy held is hoopy's alone: passing it on as
well would let it land, late, on the agent's next statement (PostgreSQL cancels
whatever runs when the request arrives).  A cancel for a statement the server runs is
the server's.  hoopy's connector here goes through a counting TCP relay, so the test
sees every CancelRequest that reaches the server side."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import asyncpg
import pytest

from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import admin, wait_pending
from tests.integration.test_pg_drivers import agent

CANCEL_CODE = 80877102


class CountingRelay:
    """TCP relay to the real server that counts connections opening with a
    CancelRequest (and still passes them on)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.cancels = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.target))
        first = b""
        while len(first) < 8:
            chunk = conn.recv(8 - len(first))
            if not chunk:
                conn.close()
                up.close()
                return
            first += chunk
        length, code = struct.unpack("!II", first)
        if length == 16 and code == CANCEL_CODE:
            with self.lock:
                self.cancels += 1
        up.sendall(first)
        threading.Thread(target=_pipe, args=(up, conn), daemon=True).start()
        _pipe(conn, up)

    def close(self) -> None:
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def relayed(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Hoopy, CountingRelay]]:
    relay = CountingRelay(backend.cluster.port)
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-cancel"), backend, via_port=relay.port)
    try:
        yield h, relay
    finally:
        stop_hoopy(h)
        relay.close()


async def send_cancel(h: Hoopy, conn: asyncpg.Connection) -> None:
    """A CancelRequest with the key hoopy handed out, on a connection of its own; returns
    once hoopy has dealt with it (it closes that connection when done, after the
    server's side of any cancel it passed on has closed too)."""
    host, port = h.addresses["postgres"].rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    pid, key = conn.get_server_pid(), conn._protocol.backend_secret
    w.write(struct.pack("!IIii", 16, CANCEL_CODE, pid, key))
    await w.drain()
    assert await asyncio.wait_for(r.read(), 30) == b""
    w.close()


async def test_cancelled_approval_wait_is_not_passed_on(
    relayed: tuple[Hoopy, CountingRelay],
) -> None:
    h, relay = relayed
    conn = await agent(h, token=h.token("cancel-agent"))
    try:
        before = relay.cancels
        update = asyncio.ensure_future(
            conn.execute("update orders set status = 'cancelled-fwd' where id = 4")
        )
        a = await asyncio.to_thread(wait_pending, h, "cancelled-fwd")
        await send_cancel(h, conn)
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(update, 30)
        assert relay.cancels == before  # the server ran nothing of this session
        assert await conn.fetchval("select 'still-here'") == "still-here"
        _status, item = admin(h, "GET", f"/api/approvals/{a['id']}")
        assert item["state"] == "cancelled"  # type: ignore[index]
    finally:
        await conn.close()


async def test_cancel_of_a_running_statement_reaches_the_server(
    relayed: tuple[Hoopy, CountingRelay], backend: Backend
) -> None:
    h, relay = relayed
    holder = await backend.app_conn()
    conn = await agent(h, token=h.token("cancel-agent"))
    try:
        await holder.execute("select pg_advisory_lock(4242)")
        before = relay.cancels
        blocked = asyncio.ensure_future(conn.fetchval("select pg_advisory_lock(4242)"))
        pid = await _waiting_on_lock(holder)
        assert pid
        await send_cancel(h, conn)
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(blocked, 30)
        assert relay.cancels == before + 1
        assert await conn.fetchval("select 'after'") == "after"
    finally:
        await conn.close()
        await holder.close()


async def _waiting_on_lock(holder: asyncpg.Connection) -> int:
    """The pid of the backend waiting on the advisory lock (bounded poll)."""
    for _ in range(600):
        pid = await holder.fetchval(
            "select pid from pg_stat_activity where wait_event_type = 'Lock' "
            "and query like 'select pg_advisory_lock(4242)%'"
        )
        if pid:
            return int(pid)
        await asyncio.sleep(0.05)
    return 0
