#!/usr/bin/env python3
"""The reference point for bench/pg.py: a bare uvloop byte relay in front of PostgreSQL.

It does what any proxy must and nothing else: answers SSLRequest (with TLS when given a
certificate, 'N' otherwise), then pipes bytes both ways with Protocol callbacks.  No
parsing, no policy, no recording.  hoopy's throughput over this relay's, measured side
by side, is how much hoopy's own work costs; this relay's over direct is what a Python
process in the path costs at all on this machine.
Usage: python3 bench/barerelay.py --backend 127.0.0.1:5432 [--cert C --key K] (prints
"ready PORT").
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import struct

import uvloop

SSL_REQUEST = struct.pack("!II", 8, 80877103)


class Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.writer: asyncio.StreamWriter | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(backend: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(8)
        if first == SSL_REQUEST:
            writer.write(b"S" if ctx is not None else b"N")
            await writer.drain()
            if ctx is not None:
                await writer.start_tls(ctx)
            first = b""
        bt, bp = await loop.create_connection(Pipe, *backend)
        agent = Pipe()
        agent.transport = writer.transport  # type: ignore[assignment]
        agent.writer = writer  # a StreamWriter closes its transport when collected
        agent.peer, bp.peer = bp, agent
        left = bytes(reader._buffer)  # what the StreamReader already read
        reader._buffer.clear()
        writer.transport.set_protocol(agent)
        bt.write(first + left)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("ready", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    host, port = a.backend.rsplit(":", 1)
    ctx = None
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
    uvloop.run(serve((host, int(port)), ctx))


if __name__ == "__main__":
    main()
