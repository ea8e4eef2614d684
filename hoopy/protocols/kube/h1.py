"""A lean HTTP/1.1 client for the cluster leg of forwarded requests.

Why not aiohttp's client: on the GET path it was the largest single cost of the
gateway (about a third of hoopy's CPU per request: request and response objects,
cookie jar, tracing hooks, connector bookkeeping), for features hoopy does not use.
This client does only what `proxy._forward` needs: one request per pooled
keep-alive TLS connection at a time, the response's status and headers, and its
body as it streams (Content-Length, chunked, or up to the close), with flow
control.  The WebSocket relay (execrelay.py) keeps aiohttp.

`ResponseReader` is the sans-I/O part (bytes in, head / body / end out); `_Conn`
is the thin asyncio pump.  Errors are aiohttp.ClientError subclasses, so callers
treat both clients alike.  The upstream is trusted but still read strictly: an
answer hoopy cannot frame without doubt (two lengths, a length with chunking, a
folded header) is refused, never guessed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import Any, cast

import aiohttp
from multidict import CIMultiDict

MAX_HEAD = 64 * 1024  # status line + headers of one answer
MAX_IDLE = 64  # idle keep-alive connections kept per cluster
HIGH_WATER = 1024 * 1024  # body bytes buffered before reading pauses
CONNECT_TIMEOUT = 10.0
_NO_BODY = frozenset((204, 304))
_RETRYABLE = frozenset(("GET", "HEAD"))  # resent once when a reused connection was stale
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an RFC 9110 header name
_BAD_HEAD = re.compile(r"\r(?!\n)|(?<!\r)\n|\x00")  # a lone CR or LF, a NUL
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # would end or split the request line


class UpstreamError(aiohttp.ClientError):
    """The cluster's answer could not be read (or the connection broke)."""


class ResponseReader:
    """Sans-I/O reader of one HTTP/1.1 response: `feed` bytes, then look at `head`,
    `take()` body pieces, `done` and `reusable`."""

    def __init__(self, method: str) -> None:
        self.head_only = method == "HEAD"
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None  # the Content-Length, if the answer gave one
        self.have_head = False
        self.done = False
        self.reusable = False  # may the connection carry another request?
        self.got_bytes = False
        self.taken = False  # has any of the body been taken?
        self._buf = bytearray()
        self._body: list[bytes] = []
        self.buffered = 0
        self._mode = ""  # "length" | "chunked" | "close"
        self._left = 0  # of the current length-framed body or chunk
        self._chunk_state = "size"  # size | data | crlf | trailer
        self._close = False
        self._extra = False  # bytes beyond the answer's end

    # -- input -----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if data:
            self.got_bytes = True
        if self.done:
            if data:  # bytes after the answer: the connection is out of step
                self._extra, self.reusable = True, False
            return
        if not self.have_head:
            if self._buf:  # the start of the head came earlier
                data, self._buf = bytes(self._buf) + data, bytearray()
            rest = self._parse_head(data)
            if rest is None:
                return
            if self.done:  # an answer without a body
                if rest:
                    self._extra, self.reusable = True, False
                return
            if not rest:
                return
            data = rest
        if self._mode == "length":
            if len(data) >= self._left:
                if len(data) > self._left:
                    self._extra = True
                    data = data[: self._left]
                self._add(data)
                self._left = 0
                self._finish()
            else:
                self._add(data)
                self._left -= len(data)
        elif self._mode == "chunked":
            self._buf += data
            self._parse_chunks()
        else:  # until the close
            self._add(data)

    def eof(self) -> None:
        """The connection closed; raises UpstreamError if the answer was cut short."""
        if self.done:
            return
        if self.have_head and self._mode == "close":
            self._finish()
            return
        if not self.have_head:
            raise UpstreamError("the cluster closed the connection before answering")
        raise UpstreamError("the cluster closed the connection in the middle of an answer")

    def take(self) -> list[bytes]:
        self.taken = True
        body, self._body = self._body, []
        self.buffered = 0
        return body

    # -- parsing ---------------------------------------------------------------
    def _add(self, data: bytes) -> None:
        if data:
            self._body.append(data)
            self.buffered += len(data)

    def _finish(self) -> None:
        self.done = True
        self.reusable = not (self._close or self._buf or self._extra)

    def _parse_head(self, data: bytes) -> bytes | None:
        """Read the head from `data`; the bytes after it, or None (kept) if incomplete."""
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD:
                    raise UpstreamError("the cluster's response headers are too large")
                self._buf += data
                return None
            if end > MAX_HEAD:
                raise UpstreamError("the cluster's response headers are too large")
            head = data[:end].decode("utf-8", "surrogateescape")
            data = data[end + 4 :]
            if _BAD_HEAD.search(head):
                raise UpstreamError("the cluster answered a malformed header line")
            lines = head.split("\r\n")
            status = _status(lines[0])
            if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
                if status == 101:
                    raise UpstreamError("the cluster switched protocols on a plain request")
                continue
            self.status = status
            self.have_head = True
            self._close = lines[0].startswith("HTTP/1.0")  # (1.0 closes unless it says)
            self._frame(lines)
            return data

    def _frame(self, lines: list[str]) -> None:
        """The header lines (lines[0] is the status line): headers, and how the body ends."""
        lengths: set[str] = set()
        chunked = False
        headers = self.headers
        token = _TOKEN.match
        for i in range(1, len(lines)):
            name, sep, value = lines[i].partition(":")
            if not sep or token(name) is None:  # (a folded line starts with a blank: no token)
                raise UpstreamError("the cluster answered a malformed header line")
            value = value.strip(" \t")
            headers.append((name, value))
            if name[0] not in "CcTt":  # (none of the names below)
                continue
            low = name.lower()
            if low == "content-length":
                lengths.update(v.strip() for v in value.split(","))
            elif low == "transfer-encoding":
                if value.strip().lower() != "chunked" or chunked:
                    raise UpstreamError(f"unsupported Transfer-Encoding from the cluster: {value}")
                chunked = True
            elif low == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                self._close = "close" in tokens or (self._close and "keep-alive" not in tokens)
        if len(lengths) > 1 or (lengths and chunked):
            raise UpstreamError("the cluster's answer has conflicting lengths")
        if lengths:
            (text,) = lengths
            if not text.isdigit() or not text.isascii():
                raise UpstreamError("the cluster's answer has an invalid Content-Length")
            self.length = int(text)
        if self.head_only or self.status in _NO_BODY:
            self._finish()
        elif chunked:
            self._mode = "chunked"
        elif self.length is not None:
            self._mode, self._left = "length", self.length
            if self.length == 0:
                self._finish()
        else:
            self._mode, self._close = "close", True

    def _parse_chunks(self) -> None:
        buf = self._buf
        while not self.done:
            if self._chunk_state == "data":
                if not buf:
                    return
                n = min(self._left, len(buf))
                self._add(bytes(buf[:n]))
                del buf[:n]
                self._left -= n
                if self._left == 0:
                    self._chunk_state = "crlf"
                continue
            i = buf.find(b"\r\n")
            if i < 0:
                if len(buf) > 4096:
                    raise UpstreamError("malformed chunked answer from the cluster")
                return
            line = bytes(buf[:i])
            del buf[: i + 2]
            if self._chunk_state == "crlf":
                if line:
                    raise UpstreamError("malformed chunked answer from the cluster")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise UpstreamError("malformed chunk size from the cluster")
                self._left = int(size, 16)
                self._chunk_state = "data" if self._left else "trailer"
            elif not line:  # the blank line that ends the trailers
                self._finish()


def _status(line: str) -> int:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0"):
        raise UpstreamError("the cluster did not answer HTTP/1.1")
    code = parts[1]
    if len(code) != 3 or not code.isascii() or not code.isdigit():
        raise UpstreamError("the cluster answered an invalid status line")
    return int(code)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: the pump between the transport and a reader."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        r = self.reader
        if r is None:  # nothing asked: the cluster is out of step with us
            self.close()
            return
        try:
            r.feed(data)
        except UpstreamError as e:
            self.error = e
            self.close()
        if r.buffered >= HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        r = self.reader
        if r is not None and self.error is None:
            try:
                r.eof()
            except UpstreamError as e:
                self.error = e
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class Response:
    """What `proxy._respond` reads of an answer (the subset of aiohttp's it used)."""

    def __init__(self, conn: _Conn, reader: ResponseReader) -> None:
        self._conn = conn
        self._reader = reader
        self.status = reader.status
        self.headers = CIMultiDict(reader.headers)
        self.content_length = reader.length
        self.content = self  # resp.content.iter_any(), as aiohttp spells it

    def whole(self) -> bytes | None:
        """The whole body if it has all arrived and none of it was taken, else None."""
        r = self._reader
        if not r.done or r.taken:
            return None
        body = r.take()
        return body[0] if len(body) == 1 else b"".join(body)

    async def iter_any(self) -> Any:
        r, conn = self._reader, self._conn
        while True:
            if r.buffered:
                body = r.take()
                conn.resume()
                yield body[0] if len(body) == 1 else b"".join(body)
            elif r.done:
                return
            elif conn.error is not None:
                raise conn.error
            elif conn.closed:
                raise UpstreamError("the connection to the cluster was lost")
            else:
                await conn.wait()


class Pool:
    """Keep-alive connections to one cluster."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext, hostport: str) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.host_header = hostport
        self._idle: deque[_Conn] = deque()

    def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> _Exchange:
        """`async with pool.request(...) as resp:`; the connection goes back to the pool
        only if the answer was read to its end and the cluster keeps it open."""
        if not target.startswith("/") or _BAD_TARGET.search(target):
            raise UpstreamError("hoopy will not send a request target with spaces or controls")
        parts = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        accept = False
        for name, value in headers:
            if "\r" in value or "\n" in value or "\0" in value or not name.isascii():
                raise UpstreamError(f"hoopy will not forward header {name!r}: control characters")
            if name == "Accept":
                accept = True
            parts.append(f"{name}: {value}\r\n")
        if not accept:
            parts.append("Accept: */*\r\n")
        if body is not None:
            parts.append(f"Content-Length: {len(body)}\r\n")
        parts.append("\r\n")
        data = "".join(parts).encode("utf-8", "surrogateescape")
        return _Exchange(self, method, data + body if body else data)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Conn, self.host, self.port, ssl=self.tls, server_hostname=self.host
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, ssl.SSLError) as e:
            raise aiohttp.ClientConnectionError(type(e).__name__) from None
        return conn

    def _release(self, conn: _Conn, reader: ResponseReader) -> None:
        conn.reader = None
        ok = reader.done and reader.reusable and not conn.closed and conn.error is None
        if ok and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _Exchange:
    def __init__(self, pool: Pool, method: str, data: bytes) -> None:
        self.pool = pool
        self.method = method
        self.data = data
        self.conn: _Conn | None = None
        self.reader: ResponseReader | None = None

    async def __aenter__(self) -> Response:
        idle = self.pool._idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                conn.close()
                continue
            try:
                return await self._send(conn)
            except UpstreamError:
                r = self.reader
                if self.method not in _RETRYABLE or r is None or r.got_bytes:
                    raise
                break  # a stale keep-alive connection: once more on a new one
        return await self._send(await self.pool._connect())

    async def _send(self, conn: _Conn) -> Response:
        self.conn = conn
        self.reader = reader = conn.reader = ResponseReader(self.method)
        assert conn.transport is not None
        try:
            conn.transport.write(self.data)
            while not reader.have_head:
                if conn.error is not None:
                    raise conn.error
                if conn.closed:
                    raise UpstreamError("the cluster closed the connection before answering")
                await conn.wait()
        except BaseException:  # (cancelled too: the agent went away) never reused
            conn.close()
            raise
        return Response(conn, reader)

    async def __aexit__(self, *exc: object) -> None:
        conn, reader = self.conn, self.reader
        if conn is not None and reader is not None:
            self.pool._release(conn, reader)
