"""The cluster-leg HTTP/1.1 client (hoopy/protocols/kube/h1.py): the sans-I/O response
reader against byte fixtures, hostile framings and fuzz, and the pool against a real
TLS server on 127.0.0.1 (keep-alive reuse, stale connections, abandoned answers)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.config import TLSFiles
from hoopy.protocols.kube.h1 import Pool, ResponseReader, UpstreamError
from hoopy.tlsutil import ensure_pair, server_context

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
)


def read(method: str, data: bytes, step: int = 0, eof: bool = False) -> ResponseReader:
    """Feed `data` whole, or `step` bytes at a time."""
    r = ResponseReader(method)
    body = b""
    for i in range(0, len(data), step or len(data) or 1):
        r.feed(data[i : i + (step or len(data))])
        body += b"".join(r.take())
    if eof:
        r.eof()
        body += b"".join(r.take())
    r.body = body  # type: ignore[attr-defined]
    return r


@pytest.mark.parametrize("step", [0, 1, 3, 7])
@pytest.mark.parametrize(
    ("data", "body"),
    [(OK, b"hello"), (CHUNKED, b"hello world")],
)
def test_framed_answers_in_any_split(data: bytes, body: bytes, step: int) -> None:
    r = read("GET", data, step)
    assert r.done and r.reusable and r.status == 200
    assert r.body == body  # type: ignore[attr-defined]


def test_headers_and_length() -> None:
    r = read("GET", OK)
    assert ("Content-Type", "application/json") in r.headers
    assert r.length == 5


def test_answer_up_to_the_close() -> None:
    r = read("GET", b"HTTP/1.1 200 OK\r\n\r\nall of it", 4)
    assert not r.done
    r.eof()
    assert r.done and not r.reusable
    assert r.body + b"".join(r.take()) == b"all of it"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
def test_answers_without_a_body(method: str, data: bytes) -> None:
    r = read(method, data, 2)
    assert r.done and r.reusable and r.body == b""  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "data",
    [
        OK + b"HTTP/1.1 200 OK\r\n",  # bytes after the answer: out of step
        OK.replace(b"Content-Type", b"Connection: close\r\nContent-Type"),
        CHUNKED + b"x",
        OK.replace(b"HTTP/1.1", b"HTTP/1.0"),
    ],
)
def test_not_reusable(data: bytes) -> None:
    r = read("GET", data)
    assert r.done and not r.reusable


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        # llhttp refuses a repeated Content-Length even with equal values (the old reader
        # took them as one; RFC 9110 allows either)
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa5\r\n\r\n",  # an Arabic-Indic five
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nWarning: a\nImpersonate-User: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nWarning: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nWarning: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX\xff: a\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
        # what llhttp takes and hoopy refuses on top of it
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nabc",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nWarning: a\nb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF line ends
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: \x7f\r\n\r\n",
        # a head of many small headers over the limit, and endless 100 Continues
        b"HTTP/1.1 200 OK\r\n" + b"X: aaaaaaaa\r\n" * 6000 + b"\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 3000,
        # trailers or a chunk extension that never end
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: aaaaaaaa\r\n" * 6000,
    ],
)
def test_framing_hoopy_cannot_be_sure_of_is_refused(data: bytes) -> None:
    with pytest.raises(UpstreamError):
        read("GET", data)
    with pytest.raises(UpstreamError):
        read("GET", data, 1)


def test_empty_lines_after_the_answer() -> None:
    """llhttp skips CR LF between answers within one read (RFC 9112 §2.2); in a later
    read, any byte after the answer means the connection is out of step."""
    assert read("GET", OK + b"\r\n\r\n").reusable
    r = read("GET", OK)
    r.feed(b"\r\n")
    assert r.done and not r.reusable


def test_http10_keep_alive_is_reusable() -> None:
    r = read(
        "GET",
        OK.replace(b"HTTP/1.1", b"HTTP/1.0").replace(
            b"\r\n\r\n", b"\r\nConnection: Keep-Alive\r\n\r\n"
        ),
    )
    assert r.done and r.reusable


def test_endless_chunk_extension_is_refused() -> None:
    """llhttp skips chunk extensions without a limit; hoopy counts the bytes fed since
    the body last moved (exact across reads, up to one read within one)."""
    r = ResponseReader("GET")
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=")
    with pytest.raises(UpstreamError, match="chunked"):
        for _ in range(100):
            r.feed(b"a" * 1000)


def test_trailers_are_not_headers() -> None:
    r = read("GET", CHUNKED, 5)
    assert r.done and r.reusable and r.headers == [("Transfer-Encoding", "chunked")]


def test_header_values_lose_trailing_blanks_only() -> None:
    r = read("GET", b"HTTP/1.1 200 OK\r\nX:  a \t b \t\r\nContent-Length: 0\r\n\r\n")
    assert r.done and ("X", "a \t b") in r.headers


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # a body after a HEAD answer
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nx",  # no length: llhttp expected a body up to the close
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
    ],
)
@pytest.mark.parametrize("step", [0, 1])
def test_head_answer_with_more_bytes_is_not_reused(data: bytes, step: int) -> None:
    r = read("HEAD", data, step)
    assert r.done and not r.reusable and r.status == 200
    assert r.body == b""  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n\r\n",  # (llhttp alone would wait for a body to the close)
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    ],
)
def test_head_answer_alone_is_reused(data: bytes) -> None:
    r = read("HEAD", data, 3)
    assert r.done and r.reusable


def test_interim_answers_headers_are_dropped() -> None:
    r = read(
        "GET",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 3\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        4,
    )
    assert r.done and r.reusable and r.length is None
    assert r.headers == [("Transfer-Encoding", "chunked")] and r.body == b"hi"  # type: ignore[attr-defined]


def test_switching_protocols_is_named() -> None:
    with pytest.raises(UpstreamError, match="switched protocols"):
        read("GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")


def test_upstream_error_names_llhttps_reason() -> None:
    with pytest.raises(UpstreamError, match="Duplicate Content-Length"):
        read("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [b"", b"HTTP/1.1 200 OK\r\n", OK[:-1], CHUNKED[:-3], CHUNKED[:60]],
)
def test_cut_short(data: bytes) -> None:
    with pytest.raises(UpstreamError):
        read("GET", data, eof=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_fuzz_only_upstream_errors(noise: bytes, step: int) -> None:
    for data in (noise, OK[:40] + noise, CHUNKED[:48] + noise):
        with contextlib.suppress(UpstreamError):
            read("GET", data, step, eof=True)


# ---- the pool, against a real TLS server -------------------------------------------
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            head += await reader.readexactly(int(line.split(b":")[1]))
    return head


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[Pool]]]:
    files = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    ensure_pair(files)
    servers: list[asyncio.Server] = []
    pools: list[Pool] = []

    async def start(handler: Handler) -> Pool:
        conns = 0

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal conns
            conns += 1
            try:
                await handler(r, w, conns)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()

        srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_context(files))
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        ctx = ssl.create_default_context(cafile=str(files.cert))
        ctx.check_hostname = False  # the test pair names localhost, the pool dials an address
        pool = Pool("127.0.0.1", port, ctx, f"127.0.0.1:{port}")
        pools.append(pool)
        return pool

    yield start
    for p in pools:
        p.close()
    for s in servers:
        s.close()


async def get(pool: Pool, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    async with pool.request(method, "/api/v1/pods", [("Accept", "application/json")], body) as r:
        return r.status, b"".join([c async for c in r.content.iter_any()])


async def test_keep_alive_reuses_one_connection(server: Any) -> None:
    seen: list[tuple[int, bytes]] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        while True:
            seen.append((conn, await _request(r)))
            w.write(OK)
            await w.drain()

    pool = await server(handler)
    assert await get(pool) == (200, b"hello")
    assert await get(pool, "POST", b"{}") == (200, b"hello")
    assert [c for c, _ in seen] == [1, 1]
    first, second = seen[0][1], seen[1][1]
    assert first.startswith(b"GET /api/v1/pods HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAccept: application/json\r\n" in first and b"Content-Length" not in first
    assert second.endswith(b"\r\nContent-Length: 2\r\n\r\n{}")


async def test_connection_close_is_honoured(server: Any) -> None:
    conns: list[int] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        await _request(r)
        conns.append(conn)
        w.write(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        await w.drain()
        await r.read()  # the client closes

    pool = await server(handler)
    assert await get(pool) == (200, b"hello")
    assert await get(pool) == (200, b"hello")
    assert conns == [1, 2]


async def test_stale_connection_retried_for_get_only(server: Any) -> None:
    """The cluster drops an idle keep-alive connection just as a request goes out: a GET
    is sent again on a new connection; a POST (maybe applied) is not."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        await _request(r)
        w.write(OK)
        await w.drain()
        if conn % 2 == 1:
            await _request(r)  # read the next request, then drop the connection unanswered
            return
        await r.read()

    pool = await server(handler)
    assert await get(pool) == (200, b"hello")  # conn 1
    assert await get(pool) == (200, b"hello")  # conn 1 dropped, retried on conn 2
    pool.close()
    assert await get(pool) == (200, b"hello")  # conn 3
    with pytest.raises(UpstreamError):
        await get(pool, "POST", b"{}")  # conn 3 dropped: not retried


async def test_abandoned_answer_is_never_reused(server: Any) -> None:
    conns: list[int] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        while True:
            await _request(r)
            conns.append(conn)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")  # half of it
            await w.drain()

    pool = await server(handler)
    async with pool.request("GET", "/a", [], None) as resp:
        assert resp.status == 200  # left before the body was read
    async with pool.request("GET", "/b", [], None) as resp:
        pass
    assert conns == [1, 2]


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/v1/pods HTTP/1.1\r\nX: y", []),
        ("/api/v1/pods\x00", []),
        ("api/v1/pods", []),
        ("/api/v1/pods", [("User-Agent", "kubectl\r\nImpersonate-User: admin")]),
        ("/api/v1/pods", [("User-Agent", "kubectl\nX: y")]),
    ],
)
def test_request_smuggling_refused(target: str, headers: list[tuple[str, str]]) -> None:
    pool = Pool("127.0.0.1", 1, ssl.create_default_context(), "127.0.0.1:1")
    with pytest.raises(UpstreamError):
        pool.request("GET", target, headers, None)


async def test_large_streamed_answer_with_flow_control(server: Any) -> None:
    big = bytes(range(256)) * 16384  # 4 MiB, over the high-water mark

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: int) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(big), 65536):
            part = big[i : i + 65536]
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
        w.write(b"0\r\n\r\n")
        await w.drain()
        await r.read()

    pool = await server(handler)
    async with pool.request("GET", "/logs", [], None) as resp:
        got = bytearray()
        async for chunk in resp.content.iter_any():
            got += chunk
            await asyncio.sleep(0)  # a slow reader
    assert bytes(got) == big
