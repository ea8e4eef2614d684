"""The Kubernetes listener's own HTTP/1.1 server, for plain GET requests only.

Why: on a GET, aiohttp's server machinery (protocol, request and response objects,
header multidicts, writer, task per connection plus one per request) was the largest
cost of the gateway left after the cluster-side client became h1.py.  kubectl's
everyday requests are bodiless GETs with a small head, so this module serves exactly
those and nothing else: any connection whose next request is not one is handed, from
that request's first byte on, to aiohttp's server (httpguard.GuardedServer) for the
rest of its life.  aiohttp keeps everything unusual: request bodies (Content-Length,
chunked), Expect: 100-continue, HTTP/1.0, HEAD and other methods, Upgrade (exec,
attach, port-forward WebSockets, SPDY), malformed or oversized heads (its 400s), and
what it answers to them is what hoopy answered before this module existed.

`parse_head` is the sans-I/O part: one complete head (bytes ending CRLF CRLF) in, a
`Head` out if this module may serve it, else None (hand the connection over).  It
serves a head only when llhttp (through httptools, strict) reads it as exactly one
whole bodiless GET/1.1 request with an origin-form target, no header naming a body,
an upgrade or an expectation, no header given twice, a Host, and within aiohttp's own size
limits (so it never serves what aiohttp would have refused).  `Connection` is the
thin asyncio pump: one request at a time (pipelined heads wait in the buffer, in
order), the request-head deadline and idle timeout of httpguard, whole answers in
one write, streamed answers chunked with flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools
from aiohttp import web
from multidict import CIMultiDict

from hoopy.httpguard import HEAD_TIMEOUT, IDLE_TIMEOUT

log = logging.getLogger("hoopy.kube")

MAX_HEAD = 64 * 1024  # bytes buffered without a complete head before aiohttp takes over
MAX_LINE = 8190  # aiohttp's max_line_size and max_field_size: longer goes to aiohttp
MAX_HEADERS = 100  # more header lines go to aiohttp
PAUSE_AT = 2 * MAX_HEAD  # pipelined bytes buffered while a request runs before reading pauses
# Headers that announce a body, an upgrade, an expectation or framing: aiohttp's
# (a GET may carry a body; this module never reads one).
_NOT_HERE = frozenset(("content-length", "transfer-encoding", "upgrade", "expect", "te", "trailer"))
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))
_NO_BODY = frozenset((204, 304))
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Head:
    """One request head this module serves."""

    __slots__ = ("headers", "keep_alive", "method", "target")

    def __init__(
        self, target: str, headers: CIMultiDict[str], keep_alive: bool, method: str = "GET"
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive


class _HeadReader:
    """httptools' callbacks for one head: llhttp validates and frames it, and the
    header lines are split afterwards in one pass (a Python callback per header cost
    more than the rest of the parse).  Every callback attribute is defined: httptools
    looks each up with getattr(..., None), and a missing one costs an exception."""

    __slots__ = ("begun", "complete", "headers_done", "url")
    on_header = None
    on_body = None
    on_chunk_header = None
    on_chunk_complete = None

    def __init__(self) -> None:
        self.begun = self.complete = 0
        self.headers_done = False
        self.url = b""

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url  # (llhttp may call it in pieces)

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_message_complete(self) -> None:
        self.complete += 1


def parse_head(data: bytes) -> Head | None:
    """`data`: one request head, ending with its CRLF CRLF.  A Head if it is a plain
    GET this module serves, None if aiohttp must take the connection from here."""
    if not data.startswith(b"GET /"):
        return None  # (other methods and target forms, and leading empty lines)
    r = _HeadReader()
    parser = httptools.HttpRequestParser(r)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # aiohttp answers its 400 (or relays the upgrade)
    if not (r.begun == 1 and r.complete == 1 and r.headers_done):
        return None  # a body, or bytes llhttp read as a second message: not ours
    if parser.get_http_version() != "1.1":
        return None
    url = r.url
    if len(url) + 14 > MAX_LINE or not url.startswith(b"/"):  # ("GET " + " HTTP/1.1\r\n")
        return None
    if len(data) > MAX_LINE and any(len(line) > MAX_LINE - 2 for line in data.split(b"\r\n")):
        return None  # (a header line aiohttp would refuse)
    # llhttp (strict) has checked every line ends CR LF, every name is a token followed
    # by a colon, and no value holds CR, LF, NUL or another control: the lines split
    # here are the ones it read.  Values: UTF-8 (undecodable bytes kept), as aiohttp.
    lines = data.decode("utf-8", "surrogateescape").split("\r\n")[1:-2]
    if len(lines) > MAX_HEADERS:
        return None
    pairs: list[tuple[str, str]] = []
    names: set[str] = set()
    close = False
    for line in lines:
        name, _, value = line.partition(":")
        low = name.lower()
        if low in _NOT_HERE or low in names:
            return None  # (a header given twice: which one counts is not ours to say)
        names.add(low)
        value = value.strip(" \t")  # (llhttp drops leading blanks; aiohttp trailing ones)
        if low == "connection":
            token = value.lower()
            if token not in ("keep-alive", "close"):
                return None  # ("upgrade", lists and other tokens: aiohttp's)
            close = token == "close"
        pairs.append((name, value))
    if "host" not in names:
        return None  # (an HTTP/1.1 request without Host: aiohttp's 400, RFC 9112 §3.2)
    return Head(url.decode("latin-1"), CIMultiDict(pairs), not close)


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the first head in `buf` ends (just past its CRLF CRLF), or -1; `start`:
    where to look from (the bytes before it were looked at already)."""
    i = buf.find(b"\r\n\r\n", start)
    return i + 4 if i >= 0 else -1


_date: tuple[int, str] = (0, "")


def _date_header() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, "Date: " + formatdate(now, usegmt=True) + "\r\n")
    return _date[1]


_STATUS_LINES: dict[int, str] = {}


def response_head(
    status: int, headers: Iterable[tuple[str, str]], length: int | None, close: bool
) -> bytes:
    """Status line and headers; `length` None: chunked (unless the status has no body)."""
    first = _STATUS_LINES.get(status)
    if first is None:
        first = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = first
    # (framing is this module's to say: a handler's own framing headers are dropped)
    lines = [f"{n}: {v}\r\n" for n, v in headers if n.lower() not in _FRAMING]
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("control characters in a response header")  # (a split head)
    if status in _NO_BODY or status < 200:
        framing = ""
    elif length is None:
        framing = "Transfer-Encoding: chunked\r\n"
    else:
        framing = f"Content-Length: {length}\r\n"
    end = "Connection: close\r\n\r\n" if close else "\r\n"
    return (first + text + framing + _date_header() + end).encode("utf-8", "surrogateescape")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class Answer:
    """A whole answer: what the Kubernetes proxy returns for a plain request instead of
    a web.Response (no multidict, no writer)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Stream:
    """A streamed (chunked) answer, as web.StreamResponse's write / write_eof."""

    def __init__(self, conn: Connection, status: int, headers: dict[str, str], close: bool):
        self._conn = conn
        self.empty = status in _NO_BODY or status < 200
        self.done = False
        conn.send(response_head(status, headers.items(), None, close))

    async def write(self, data: bytes) -> None:
        if not data or self.empty:
            return
        self._conn.send(chunk(data))
        await self._conn.drain()

    async def write_eof(self) -> None:
        if not self.done:
            self.done = True
            if not self.empty:
                self._conn.send(LAST_CHUNK)


class PlainRequest:
    """What the proxy reads of a request (the subset of web.BaseRequest it uses)."""

    content_length = None  # (no body: parse_head made sure)

    def __init__(self, head: Head, conn: Connection) -> None:
        self.method = head.method
        self.raw_path = head.target
        self.headers = head.headers
        self.transport = conn.transport
        self._conn = conn
        self._close = not head.keep_alive
        self.stream: Stream | None = None

    def open_stream(self, status: int, headers: dict[str, str]) -> Stream:
        assert self.stream is None
        self.stream = Stream(self._conn, status, headers, self._close)
        return self.stream


Handler = Callable[[PlainRequest], Awaitable[Any]]


class Connection(asyncio.Protocol):
    """One client connection while its requests are plain GETs."""

    def __init__(
        self,
        handler: Handler,
        aiohttp_server: web.Server,
        live: set[Connection],
        head_timeout: float = HEAD_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._handler = handler
        self._aiohttp = aiohttp_server
        self._live = live
        self._head_timeout = head_timeout
        self._idle_timeout = idle_timeout
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._scanned = 0  # how far _buf was searched for a head's end (a trickled head
        # is searched once, not once per byte: that would be quadratic)
        self._busy = False
        self._closed = False
        self._paused = False  # reading
        self._blocked: asyncio.Future[None] | None = None  # writing (set while paused)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""  # what the deadline is for ("head", "idle"; "": none)
        self._deadline = 0.0
        # the connection's one task runs its requests in turn (a task per request
        # cost more than parsing its head): _ready / _waiter hand it the next head
        self._ready: Head | None = None
        self._waiter: asyncio.Future[Head | None] | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- asyncio ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._live.add(self)
        self._arm("head")
        self._task = asyncio.get_running_loop().create_task(self._run())  # (kept: a
        # task only weakly referenced by the loop could be collected while it waits)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy:
            if len(self._buf) > PAUSE_AT and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            return
        self._next()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self._stop_timer()
        self._live.discard(self)
        self._wake()
        self._give(None)

    def pause_writing(self) -> None:
        if self._blocked is None:
            self._blocked = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()

    def _wake(self) -> None:
        b, self._blocked = self._blocked, None
        if b is not None and not b.done():
            b.set_result(None)

    # ---- writing ----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        t = self.transport
        if self._closed or t is None or t.is_closing():
            raise ConnectionResetError("the client closed the connection")
        t.write(data)

    async def drain(self) -> None:
        if self._blocked is not None:
            await self._blocked
        if self._closed:
            raise ConnectionResetError("the client closed the connection")

    def close(self) -> None:
        self._closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    # ---- requests ---------------------------------------------------------------
    def _next(self) -> None:
        """Serve the next buffered head, wait for more of it, or hand over."""
        buf = self._buf
        if not buf:
            self._arm("idle")
            return
        end = head_end(buf, self._scanned)
        if end < 0:
            self._scanned = max(0, len(buf) - 3)
            if len(buf) > MAX_HEAD:
                self._handoff()
            elif self._timer_kind != "head":
                self._arm("head")  # the first bytes of a later request's head
            return
        head = parse_head(bytes(buf[:end]))
        if head is None:
            self._handoff()
            return
        del buf[:end]
        self._scanned = 0
        self._disarm()
        self._busy = True
        self._give(head)

    def _give(self, head: Head | None) -> None:
        """The next head to the connection's task (None: it is to end)."""
        w, self._waiter = self._waiter, None
        if w is not None:
            if not w.done():
                w.set_result(head)
        else:
            self._ready = head

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            head, self._ready = self._ready, None
            if head is None:
                if self._closed or self.transport is None:
                    return
                self._waiter = loop.create_future()
                head = await self._waiter
                if head is None:
                    return  # closed, or handed to aiohttp
            if not await self._serve(head):
                return

    async def _serve(self, head: Head) -> bool:
        """One request; False when the connection is done with."""
        req = PlainRequest(head, self)
        try:
            answer = await self._handler(req)
            if req.stream is None:
                self._send_whole(answer, not head.keep_alive)
            elif not req.stream.done:  # (the proxy gave up on it: a cut list answer)
                if self.transport is not None:
                    self.transport.abort()  # never let a part pass for a whole answer
                return False
        except Exception as e:
            if not isinstance(e, ConnectionResetError):
                log.exception("error serving %s %s", head.method, head.target[:200])
            if req.stream is None and not self._closed:
                self._fail()
            elif self.transport is not None:
                self.transport.abort()  # part of an answer went out: never pass it as whole
            return False
        if not head.keep_alive or self._closed:
            self.close()
            return False
        self._busy = False
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._next()  # (a pipelined head goes to _ready: the loop takes it at once)
        return True

    def _send_whole(self, answer: Any, close: bool) -> None:
        headers: Iterable[tuple[str, str]]
        if isinstance(answer, Answer):
            status, headers, body = answer.status, answer.headers.items(), answer.body
        elif isinstance(answer, web.Response) and not answer.prepared:
            b = answer.body
            if not isinstance(b, bytes | bytearray) and b is not None:
                raise TypeError(f"unexpected answer body {type(b).__name__}")
            status, headers, body = answer.status, answer.headers.items(), bytes(b or b"")
        else:
            raise TypeError(f"unexpected answer {type(answer).__name__}")
        empty = status in _NO_BODY or status < 200
        data = response_head(status, headers, len(body), close)
        self.send(data if empty or not body else data + body)

    def _fail(self) -> None:
        from hoopy.protocols.kube.status import status_body  # (status imports aiohttp only)

        body = status_body(500, "InternalError", "hoopy: internal error (see the gateway log)")
        head = response_head(500, (("Content-Type", "application/json"),), len(body), True)
        with contextlib.suppress(ConnectionResetError):
            self.send(head + body)
        self.close()

    def _handoff(self) -> None:
        """aiohttp's server takes the connection, from the buffered bytes on."""
        t = self.transport
        if t is None or self._closed:
            return
        self._stop_timer()
        self._live.discard(self)
        self._give(None)
        if self._paused:
            self._paused = False
            t.resume_reading()
        data, self._buf = bytes(self._buf), bytearray()
        self.transport = None
        proto = self._aiohttp()
        t.set_protocol(proto)
        proto.connection_made(t)
        if data:
            proto.data_received(data)

    # ---- deadlines --------------------------------------------------------------
    # One deadline at a time (a head's, or an idle connection's), kept lazily: arming
    # moves the deadline, and the timer is remade only when it would fire too late
    # (a timer per request cost more than the head parse).
    def _arm(self, kind: str) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._head_timeout if kind == "head" else self._idle_timeout
        self._deadline = loop.time() + timeout
        self._timer_kind = kind
        t = self._timer
        if t is None or t.when() > self._deadline:
            if t is not None:
                t.cancel()
            self._timer = loop.call_at(self._deadline, self._expired)

    def _disarm(self) -> None:
        self._timer_kind = ""  # (a pending timer finds nothing to do)

    def _stop_timer(self) -> None:
        self._timer_kind = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if not kind or self._busy or self._closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # re-armed since: wait for the new deadline
            self._timer = loop.call_at(self._deadline, self._expired)
            return
        self._timer_kind = ""
        if kind == "head":
            peer = self.transport.get_extra_info("peername") if self.transport else None
            log.warning("closed a connection from %s: no complete request head in time", peer)
        self.close()
