"""hoopy.httpguard in-process, with a short deadline: a head sent one byte at a time is
cut at the deadline (first request, and a later one on a kept-alive connection), a
connection that sends nothing too, while whole requests, slow handlers and slow bodies
are served.  The listeners' own wiring is tested in test_kube_guards.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from hoopy.httpguard import GuardedAppRunner, GuardedServer

BOUND = 0.6
REQ = b"GET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: a-rather-long-user-agent\r\n\r\n"


async def _handler(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/slow":
        await asyncio.sleep(BOUND * 2)  # longer than the head deadline: never cut
    body = await request.read()
    return web.Response(text=f"ok {len(body)}")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = GuardedServer(_handler, access_log=None)
    server.head_timeout = BOUND
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    await runner.cleanup()


async def _trickle(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes
) -> float:
    """Send one byte every 50 ms until the server closes; seconds it took."""
    t0 = time.monotonic()
    for b in data:
        if reader.at_eof():
            break
        try:
            writer.write(bytes([b]))
            await writer.drain()
        except ConnectionError:
            break
        try:
            if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                break
        except TimeoutError:
            pass
    else:
        raise AssertionError("the server let the whole slow head through")
    return time.monotonic() - t0


async def test_slow_head_is_cut_at_the_deadline(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    took = await _trickle(writer, reader, REQ * 3)
    assert BOUND * 0.9 <= took <= BOUND + 1.0, took
    writer.close()


async def test_silent_connection_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    assert await asyncio.wait_for(reader.read(), BOUND + 2) == b""
    assert time.monotonic() - t0 >= BOUND * 0.9
    writer.close()


async def test_whole_requests_slow_handlers_and_bodies_pass_then_keepalive_head_is_bounded(
    port: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQ)  # the handler sleeps past the deadline: served anyway
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND * 4)
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(4) == b"ok 0"
    # a body sent slowly, after a whole head, is not cut by the head deadline
    writer.write(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    for b in b"abc":
        await asyncio.sleep(BOUND / 2)
        writer.write(bytes([b]))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND * 4)
    assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(4) == b"ok 3"
    # the next head on the kept-alive connection gets its own deadline
    took = await _trickle(writer, reader, REQ * 3)
    assert took <= BOUND + 1.0, took
    writer.close()


async def test_app_runner_is_guarded_too() -> None:
    app = web.Application()
    app.router.add_get("/", lambda r: web.Response(text="hi"))
    runner = GuardedAppRunner(app, access_log=None)
    await runner.setup()
    assert isinstance(runner.server, GuardedServer)
    runner.server.head_timeout = BOUND
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        took = await _trickle(writer, reader, REQ * 3)
        assert took <= BOUND + 1.0
        writer.close()
    finally:
        await runner.cleanup()
