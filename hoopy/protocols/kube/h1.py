"""A lean HTTP/1.1 client for the cluster leg of forwarded requests.

Why not aiohttp's client: on the GET path it was the largest single cost of the
gateway (about a third of hoopy's CPU per request: request and response objects,
cookie jar, tracing hooks, connector bookkeeping), for features hoopy does not use.
This client does only what `forward._forward` needs: one request per pooled
keep-alive TLS connection at a time, the response's status and headers, and its
body as it streams (Content-Length, chunked, or up to the close), with flow
control.  The WebSocket relay (execrelay.py) keeps aiohttp.

`ResponseReader` is the sans-I/O part (bytes in, head / body / end out) around
llhttp, the parser of Node.js, uvicorn and aiohttp (through httptools); `_Conn` is
the thin asyncio pump.  Errors are aiohttp.ClientError subclasses, so callers
treat both clients alike.  The upstream is trusted but still read strictly: an
answer hoopy cannot frame without doubt (two lengths, a length with chunking, a
folded header, a coding other than chunked) is refused, never guessed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import Any, cast

import aiohttp
import httptools
from multidict import CIMultiDict

MAX_HEAD = 64 * 1024  # status line + headers of one answer
MAX_IDLE = 64  # idle keep-alive connections kept per cluster
HIGH_WATER = 1024 * 1024  # body bytes buffered before reading pauses
CONNECT_TIMEOUT = 10.0
_NO_BODY = frozenset((204, 304))
_RETRYABLE = frozenset(("GET", "HEAD"))  # resent once when a reused connection was stale
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls in a reason phrase
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # would end or split the request line


class UpstreamError(aiohttp.ClientError):
    """The cluster's answer could not be read (or the connection broke)."""


class ResponseReader:
    """Sans-I/O reader of one HTTP/1.1 response: `feed` bytes, then look at `head`,
    `take()` body pieces, `done` and `reusable`.

    The framing is llhttp's (through httptools: status line, headers, Content-Length,
    chunked, until the close, 1xx); this class adds what llhttp leaves to its caller or
    allows by default: a size limit on the head, HTTP/1.0 and 1.1 only, no 101, a
    Transfer-Encoding of exactly `chunked`, no controls in the reason phrase, HEAD
    answers (llhttp cannot be told through httptools that a HEAD answer has no body:
    the answer is complete at its head, and anything llhttp sees after it is a byte
    beyond the answer), and bytes beyond the answer (the connection is not reused).
    One leniency comes with llhttp: empty lines (CR LF) right after the answer in the
    same read are skipped, as it skips them before any answer (RFC 9112 §2.2); any
    other byte after the answer, or any byte in a later read, still ends the reuse.
    """

    # httptools looks each callback up with getattr(..., None) when a parser is made:
    # a missing one costs an AttributeError per response (11 % of hoopy's CPU per GET)
    on_chunk_header: Any = None
    on_chunk_complete: Any = None

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
        self._body: list[bytes] = []
        self.buffered = 0
        self._chunked = False
        self._until_close = False
        self._keep_alive = False
        self._extra = False  # bytes beyond the answer's end
        self._size = 0  # of the header (and trailer) lines seen
        self._since = 0  # bytes fed since the body last moved (a head, chunk lines, trailers)
        if self.head_only:  # (httptools looks the callbacks up once, when it is made)
            self.on_chunk_header = self._beyond  # a chunked body after a HEAD answer
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)

    # -- input -----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if data:
            self.got_bytes = True
        parser = self._parser
        if self.done or parser is None:
            if data:  # bytes after the answer: the connection is out of step
                self._extra, self.reusable = True, False
            return
        self._since += len(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._parser = None  # (llhttp stays in its error state)
            if not self.done:
                cause = e.__context__
                if isinstance(cause, UpstreamError):  # raised by a callback below
                    raise cause from None
                raise UpstreamError(f"the cluster's answer is not valid HTTP/1.1: {e}") from None
            self._extra = True  # what followed the answer did not even start another one
        if self.done:
            self._parser = None  # (it refers back to self)
            self.reusable = self._keep_alive and not self._extra
        elif self._since > MAX_HEAD:  # a head, chunk line or trailers llhttp would take forever
            self._parser = None
            if self.have_head:
                raise UpstreamError("malformed chunked answer from the cluster")
            raise UpstreamError("the cluster's response headers are too large")

    def eof(self) -> None:
        """The connection closed; raises UpstreamError if the answer was cut short."""
        if self.done:
            return
        self._parser = None
        if self._until_close:
            self.done = True
            return
        if not self.have_head:
            raise UpstreamError("the cluster closed the connection before answering")
        raise UpstreamError("the cluster closed the connection in the middle of an answer")

    def take(self) -> list[bytes]:
        self.taken = True
        body, self._body = self._body, []
        self.buffered = 0
        return body

    # -- llhttp's callbacks ----------------------------------------------------
    def on_message_begin(self) -> None:
        if self.done:  # another answer after this one
            raise UpstreamError("bytes beyond the answer")  # (feed: not reusable)

    def on_status(self, reason: bytes) -> None:
        if _BAD_REASON.search(reason):  # (llhttp takes any byte but CR and LF)
            raise UpstreamError("the cluster answered an invalid status line")

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp has checked the name is a token and the value has no CR, LF, NUL or
        # other control; a folded line, a space before the colon, two Content-Lengths or
        # one that is not digits, and Content-Length with Transfer-Encoding are refused.
        self._size += len(name) + len(value) + 4
        if self._size > MAX_HEAD:
            raise UpstreamError("the cluster's response headers are too large")
        if self.have_head:  # a trailer after a chunked body: not part of the head
            return
        value = value.rstrip(b" \t")  # (llhttp keeps trailing blanks)
        if len(name) in (14, 17):  # (the lengths of the two names below)
            low = name.lower()
            if low == b"content-length":
                if not value.isdigit():
                    raise UpstreamError("the cluster's answer has an invalid Content-Length")
                self.length = int(value)
            elif low == b"transfer-encoding":  # llhttp takes "gzip, chunked" and repeats
                if self._chunked or value.lower() != b"chunked":
                    text = value.decode("latin-1")
                    raise UpstreamError(f"unsupported Transfer-Encoding from the cluster: {text}")
                self._chunked = True
        self.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        if parser.get_http_version() not in ("1.1", "1.0"):  # (llhttp takes 0.9 and 2.0)
            raise UpstreamError("the cluster did not answer HTTP/1.1")
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamError("the cluster switched protocols on a plain request")
            if status < 100:
                raise UpstreamError("the cluster answered an invalid status line")
            # an interim answer (100 Continue): llhttp reads the real one next
            self.headers, self.length, self._chunked = [], None, False
            return
        self.status = status
        self.have_head = True
        self._since = 0
        self._keep_alive = parser.should_keep_alive()  # (HTTP/1.0, Connection, framing)
        if self.head_only:  # llhttp expects the body the head describes (to the close,
            # if it gives no length): whether the connection stays open is hoopy's to say
            self._keep_alive = _keeps_alive(parser.get_http_version(), self.headers)
        if self.head_only or status in _NO_BODY:
            self.done = True
        elif not self._chunked and self.length is None:
            self._until_close = True

    def on_body(self, body: bytes) -> None:
        if self.done:  # (after a HEAD answer)
            self._extra = True
            return
        self._since = 0
        self._body.append(body)
        self.buffered += len(body)

    def _beyond(self) -> None:
        self._extra = True

    def on_message_complete(self) -> None:
        if self.have_head:  # (else an interim answer ended)
            self.done = True


def _keeps_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    tokens = {
        t.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for t in value.split(",")
    }
    return "close" not in tokens and (version == "1.1" or "keep-alive" in tokens)


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
    """What `forward._respond` reads of an answer (the subset of aiohttp's it used)."""

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
