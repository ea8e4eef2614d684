"""backend._Coalescer (asyncssh's `_send` batched per event-loop pass) on real asyncssh
connections over TCP: whatever mix of writes, explicit flushes, yields and closes, every
byte arrives once and in order (a reordered or dropped packet breaks the SSH MAC
sequence, so the connection would fail), and what was written before a close arrives."""

from __future__ import annotations

import asyncio
import random

import asyncssh

from hoopy.protocols.ssh import backend as be


class _Open(asyncssh.SSHServer):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        be.coalesce_sends(conn)

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this is about the transport


async def _echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
        if random.random() < 0.3:
            be.flush_sends(process.channel.get_extra_info("connection"))
    process.exit(7)  # exit status, EOF and close leave in one pass: after the data


async def test_coalesced_sends_keep_every_byte_in_order() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Open, "127.0.0.1", 0, server_host_keys=[key], process_factory=_echo, encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    rng = random.Random(1234)
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="x", client_keys=None,
            agent_path=None, config=None,
        ) as conn:  # fmt: skip
            be.coalesce_sends(conn)
            for _ in range(3):
                proc = await conn.create_process(encoding=None)
                sent = bytearray()
                for i in range(2000):
                    chunk = rng.randbytes(rng.choice((1, 7, 100, 5000, 40000)))
                    proc.stdin.write(chunk)
                    sent += chunk
                    if i % 17 == 0:
                        be.flush_sends(conn)
                    if i % 5 == 0:
                        await asyncio.sleep(0)
                proc.stdin.write_eof()
                got = await asyncio.wait_for(proc.stdout.read(), 60)
                await proc.wait_closed()
                assert got == bytes(sent)
                assert proc.exit_status == 7
    finally:
        server.close()
        await server.wait_closed()
