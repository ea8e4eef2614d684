"""TLS helpers: the generated pair, and DirectSSLObject through a real handshake over
memory BIOs (as event loops drive it) and a real asyncio TLS connection."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest

from hoopy.config import TLSFiles
from hoopy.tlsutil import DirectSSLObject, ensure_pair, fast_objects, server_context


@pytest.fixture
def pair(tmp_path: Path) -> TLSFiles:
    files = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    assert ensure_pair(files)
    assert not ensure_pair(files)  # kept, not regenerated
    assert (files.key.stat().st_mode & 0o777) == 0o600
    return files


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return fast_objects(ctx)


def pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def test_direct_objects_handshake_and_carry_records(pair: TLSFiles) -> None:
    server_ctx = server_context(pair)
    assert server_ctx.sslobject_class is DirectSSLObject
    bios = [ssl.MemoryBIO() for _ in range(4)]  # server in/out, client in/out
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_context().wrap_bio(bios[2], bios[3])
    assert isinstance(server, DirectSSLObject) and isinstance(client, DirectSSLObject)
    assert server.read == server._sslobj.read  # type: ignore[attr-defined]
    assert type(server.write).__name__ == "builtin_function_or_method"
    for _ in range(10):
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        pump(bios[3], bios[0])
        pump(bios[1], bios[2])
    assert client.version() and server.version() == client.version()
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)  # nothing yet: the C method raises as SSLObject.read does
    payload = b"Q" + b"x" * 70000  # several records
    assert client.write(payload) == len(payload)
    pump(bios[3], bios[0])
    got = bytearray()
    buffer = bytearray(16384)
    while server.pending() or bios[0].pending:
        try:
            n = server.read(len(buffer), buffer)  # the form uvloop uses
        except ssl.SSLWantReadError:
            break
        got += buffer[:n]
    assert bytes(got) == payload


async def test_direct_objects_under_the_running_event_loop(pair: TLSFiles) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context(pair))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
