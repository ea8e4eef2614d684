"""hoopy/protocols/kube/h1server.py byte by byte: which heads the plain-GET server serves
(and that it reads each exactly as aiohttp, which it hands everything else to, would),
response framing, and the pump against an in-memory transport: pipelining in order,
the hand-over to aiohttp from the exact first byte of the request it does not serve,
Connection: close, read and write flow control, deadlines and failures; and that real
kubectl's heads are ones it serves."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.http_parser import HttpRequestParser as AiohttpParser
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.protocols.kube import h1server
from hoopy.protocols.kube.h1server import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    PAUSE_AT,
    Answer,
    Connection,
    PlainRequest,
    head_end,
    parse_head,
    response_head,
)
from tests.kubefixture import KUBECTL

TOKEN = "Authorization: Bearer abc.def.ghi\r\n"


def get(target: str = "/k8s/c/api/v1/pods", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: h\r\n{TOKEN}{extra}\r\n".encode()


# ---- parse_head: what is served -------------------------------------------------------


def test_a_plain_get_is_served_as_sent() -> None:
    h = parse_head(get("/k8s/c/api/v1/pods?limit=5", "Accept: application/json  \r\n"))
    assert h is not None
    assert (h.method, h.target, h.keep_alive) == ("GET", "/k8s/c/api/v1/pods?limit=5", True)
    assert h.headers["authorization"] == "Bearer abc.def.ghi"
    assert h.headers["Accept"] == "application/json"  # trailing blanks dropped, as aiohttp
    assert h.headers.get("Upgrade") is None


@pytest.mark.parametrize(
    ("value", "keep"), [("close", False), ("Close", False), ("keep-alive", True)]
)
def test_connection_close_and_keep_alive(value: str, keep: bool) -> None:
    h = parse_head(get(extra=f"Connection: {value}\r\n"))
    assert h is not None and h.keep_alive is keep


HANDED_OVER = {
    "POST": b"POST /k8s/c/api/v1/pods HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n",
    "HEAD": b"HEAD /k8s/c/api HTTP/1.1\r\nHost: h\r\n\r\n",
    "DELETE": b"DELETE /k8s/c/api/v1/pods/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "HTTP/1.0": b"GET /k8s/c/api HTTP/1.0\r\nHost: h\r\n\r\n",
    "HTTP/0.9-ish": b"GET /k8s/c/api\r\n\r\n",
    "no host": b"GET /k8s/c/api HTTP/1.1\r\nAccept: x\r\n\r\n",
    "two hosts": get(extra="Host: other\r\n"),
    "HTTP/2.0": b"GET /k8s/c/api HTTP/2.0\r\nHost: h\r\n\r\n",
    "length 0": get(extra="Content-Length: 0\r\n"),
    "length 5": get(extra="Content-Length: 5\r\n"),
    "chunked": get(extra="Transfer-Encoding: chunked\r\n"),
    "expect": get(extra="Expect: 100-continue\r\n"),
    "websocket": get(extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"),
    "spdy": get(extra="Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"),
    "upgrade alone": get(extra="Upgrade: websocket\r\n"),
    "connection list": get(extra="Connection: keep-alive, Upgrade\r\n"),
    "connection other": get(extra="Connection: X-Foo\r\n"),
    "te": get(extra="TE: trailers\r\n"),
    "two tokens": get(extra="authorization: Bearer other\r\n"),
    "two accepts": get(extra="Accept: a\r\nACCEPT: b\r\n"),
    "absolute form": b"GET https://h/k8s/c/api HTTP/1.1\r\nHost: h\r\n\r\n",
    "asterisk": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "long target": get("/" + "a" * MAX_LINE),
    "long header": get(extra="X-Big: " + "b" * MAX_LINE + "\r\n"),
    "many headers": get(extra="".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS))),
    "folded": get(extra="X-A: a\r\n b\r\n"),
    "space before colon": get(extra="X-A : a\r\n"),
    "bad name": get(extra="X(A): a\r\n"),
    "nul in value": get(extra="X-A: a\x00b\r\n"),
    "bare LF": b"GET /k8s/c/api HTTP/1.1\nHost: h\n\n",
    "two messages": b"GET /a HTTP/1.1\nHost: h\n\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
    "leading CRLF": b"\r\n\r\n",
    "lower-case method": b"get /k8s/c/api HTTP/1.1\r\nHost: h\r\n\r\n",
    "space in target": b"GET /k8s/c/a pi HTTP/1.1\r\nHost: h\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    # framing hidden from a reader less strict than llhttp: never served here
    "te space": get(extra="Transfer-Encoding : chunked\r\n"),
    "te tab": get(extra="Transfer-Encoding:\tchunked\r\n"),
    "te xchunked": get(extra="Transfer-Encoding: xchunked\r\n"),
    "te list": get(extra="Transfer-Encoding: gzip, chunked\r\n"),
    "cl plus": get(extra="Content-Length: +5\r\n"),
    "cl twice": get(extra="Content-Length: 5\r\nContent-Length: 5\r\n"),
    "cl and te": get(extra="Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
    "cl in a name": get(extra="X-Content-Length\x00: 5\r\n"),
    "h2c": get(extra="Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"),
    "h2 preface": b"PRI * HTTP/2.0\r\n\r\n",
    "CR alone": b"GET /k8s/c/api HTTP/1.1\r\nHost: h\rX-A: b\r\n\r\n",
}


@pytest.mark.parametrize("name", list(HANDED_OVER))
def test_anything_else_goes_to_aiohttp(name: str) -> None:
    assert parse_head(HANDED_OVER[name]) is None


def test_limits_are_aiohttps_own() -> None:
    """Just under each limit is still served (the limits are where aiohttp's are)."""
    assert parse_head(get("/" + "a" * (MAX_LINE - 20))) is not None
    assert parse_head(get(extra="X-Big: " + "b" * (MAX_LINE - 20) + "\r\n")) is not None
    many = "".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS - 2))
    assert parse_head(get(extra=many)) is not None


def aiohttp_reads(data: bytes) -> Any:
    """What aiohttp's server parser (as hoopy's listener configures it) makes of `data`."""
    loop = asyncio.new_event_loop()
    try:
        p = AiohttpParser(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        msgs, upgraded, tail = p.feed_data(data)
        return msgs, upgraded, tail
    finally:
        loop.close()


_names = st.sampled_from(
    ["Accept", "Authorization", "User-Agent", "Kubectl-Command", "X-A", "X-B"] * 3
    + ["Connection", "x-a", "Content-Length", "Host", "Upgrade"]
)
_values = st.one_of(
    st.sampled_from(["close", "keep-alive", "application/json", " a ", ""]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
)
_lines = st.lists(st.tuples(_names, _values), max_size=4)
# mostly what is served, so that the comparison has something to compare
_targets = st.sampled_from(["/k8s/c/api", "/a?b=c", "/%2e%2e/x", "/", "/a b", "*", "http://h/"])
_versions = st.sampled_from(["HTTP/1.1"] * 5 + ["HTTP/1.0", "HTTP/1.2", "HTTP/11"])
_methods = st.sampled_from(["GET"] * 5 + ["POST", "HEAD", "get"])
_ends = st.sampled_from(["\r\n"] * 5 + ["\n", "\r"])
_hosts = st.sampled_from(["h", "h", "127.0.0.1:6443", "", "h h", None])


def _head(method: str, target: str, version: str, host: str | None, lines: Any, end: str) -> bytes:
    first = [("Host", host)] if host is not None else []
    fields = "".join(f"{n}: {v}{end}" for n, v in [*first, *lines])
    return f"{method} {target} {version}{end}{fields}{end}".encode()


@settings(max_examples=300, deadline=None)
@given(_methods, _targets, _versions, _hosts, _lines, _ends)
def test_what_is_served_reads_as_aiohttp_reads_it(
    method: str, target: str, version: str, host: str | None, lines: Any, end: str
) -> None:
    """A differential test: every head parse_head serves, aiohttp parses as one whole
    request with the same method, target and headers (so handing the rest to aiohttp
    never changes what a request means)."""
    data = _head(method, target, version, host, lines, end)
    end_at = head_end(data)
    if end_at < 0:
        return
    head = parse_head(data[:end_at])
    if head is None:
        return
    msgs, upgraded, tail = aiohttp_reads(data[:end_at])
    assert len(msgs) == 1 and not upgraded and not tail
    msg = msgs[0][0]
    assert (msg.method, msg.path, tuple(msg.version)) == ("GET", head.target, (1, 1))
    assert list(msg.headers.items()) == list(head.headers.items())
    assert msg.should_close is (not head.keep_alive)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Accept", "Authorization", "X-A", "User-Agent", "Kubectl-Session"]),
            st.binary(max_size=16).filter(lambda v: not set(v) & set(b"\r\n")),
        ),
        max_size=4,
        unique_by=lambda t: t[0],
    )
)
def test_served_header_values_read_as_aiohttp_reads_them(lines: Any) -> None:
    """Any bytes in header values (tabs, controls, UTF-8, invalid UTF-8)."""
    fields = b"".join(n.encode() + b": " + v + b"\r\n" for n, v in lines)
    data = b"GET /k8s/c/api HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n"
    head = parse_head(data)
    if head is None:
        with pytest.raises(Exception):  # noqa: B017 (llhttp's refusal is aiohttp's too)
            aiohttp_reads(data)
        return
    msg = aiohttp_reads(data)[0][0][0]
    assert list(msg.headers.items()) == list(head.headers.items())


def test_the_differential_test_compares_something() -> None:
    served = [
        parse_head(_head("GET", "/a", "HTTP/1.1", "h", [("X-A", v)], "\r\n"))
        for v in ("", "a", " a b ", "~!")
    ]
    assert all(h is not None for h in served)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_and_served_heads_are_clean(data: bytes) -> None:
    for blob in (data, b"GET / HTTP/1.1\r\n" + data, data + b"\r\n\r\n"):
        head = parse_head(blob)
        if head is not None:
            assert head.method == "GET" and head.target.startswith("/")
            names = [n.lower() for n in head.headers]
            assert len(names) == len(set(names))
            assert not set(names) & {"content-length", "transfer-encoding", "upgrade", "expect"}


def test_head_end() -> None:
    assert head_end(b"GET / HTTP/1.1\r\n\r\nGET") == 18
    assert head_end(b"GET / HTTP/1.1\r\nHost: h\r\n") == -1


# ---- response framing -----------------------------------------------------------------


def test_response_heads() -> None:
    whole = response_head(200, [("Content-Type", "application/json")], 5, False)
    assert whole.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    assert b"Content-Length: 5\r\n" in whole and whole.endswith(b"\r\n\r\n")
    assert b"Connection" not in whole and b"Date: " in whole
    chunked = response_head(200, [], None, True)
    assert b"Transfer-Encoding: chunked\r\n" in chunked and b"Connection: close\r\n" in chunked
    for code in (204, 304):
        empty = response_head(code, [], None, False)
        assert b"Transfer-Encoding" not in empty and b"Content-Length" not in empty
    # framing is the server's alone: a handler's own framing headers are dropped
    framed = response_head(200, [("Content-Length", "99"), ("Transfer-Encoding", "x")], 1, False)
    assert framed.count(b"Content-Length") == 1 and b"Transfer-Encoding" not in framed
    assert response_head(599, [], 0, False).startswith(b"HTTP/1.1 599 Unknown\r\n")


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x", "a\nb", "a\rb"])
def test_response_header_injection_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        response_head(200, [("Warning", value)], 0, False)


# ---- the pump -------------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = self.aborted = self.paused = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class Aiohttp:
    """Stands in for aiohttp's server: records the connection it is handed."""

    def __init__(self) -> None:
        self.made: list[Any] = []
        self.data = bytearray()

    def __call__(self) -> Any:
        outer = self

        class Proto:
            def connection_made(self, transport: Any) -> None:
                outer.made.append(transport)

            def data_received(self, data: bytes) -> None:
                outer.data += data

        return Proto()


class Rig:
    def __init__(self, handler: Any, head_timeout: float = 10.0, idle: float = 120.0):
        self.transport = FakeTransport()
        self.aiohttp = Aiohttp()
        self.live: set[Connection] = set()
        self.conn = Connection(
            handler, mock.Mock(side_effect=self.aiohttp), self.live, head_timeout, idle
        )
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def answers(self) -> list[bytes]:
        return [b"HTTP/1.1" + a for a in bytes(self.transport.out).split(b"HTTP/1.1")[1:]]


async def settle() -> None:
    for _ in range(20):  # let the handler tasks the pump started run to their end
        await asyncio.sleep(0)


async def echo(req: PlainRequest) -> Answer:
    return Answer(200, {"Content-Type": "text/plain"}, req.raw_path.encode())


async def test_pipelined_gets_are_answered_in_order_one_at_a_time() -> None:
    running: list[str] = []
    order: list[str] = []

    async def handler(req: PlainRequest) -> Answer:
        assert not running, "two requests of one connection ran at once"
        running.append(req.raw_path)
        await asyncio.sleep(0)
        order.append(req.raw_path)
        running.pop()
        return await echo(req)

    rig = Rig(handler)
    rig.conn.data_received(get("/one") + get("/two") + get("/three")[:10])
    await settle()
    rig.conn.data_received(get("/three")[10:])
    await settle()
    assert order == ["/one", "/two", "/three"]
    answers = rig.answers()
    assert [a.endswith(p) for a, p in zip(answers, (b"/one", b"/two", b"/three"), strict=True)]
    assert all(b"Content-Length: " in a for a in answers)
    assert not rig.transport.closed and not rig.aiohttp.made


async def test_a_head_arriving_a_byte_at_a_time_is_served_once() -> None:
    rig = Rig(echo)
    for b in get("/slow"):
        rig.conn.data_received(bytes([b]))
    await settle()
    assert len(rig.answers()) == 1 and rig.answers()[0].endswith(b"/slow")


async def test_other_requests_hand_the_connection_over_from_their_first_byte() -> None:
    post = b"POST /k8s/c/api/v1/namespaces/a/pods HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    rig = Rig(echo)
    rig.conn.data_received(get("/first") + post[:30])
    await settle()
    rig.conn.data_received(post[30:] + get("/after"))
    await settle()
    assert len(rig.answers()) == 1 and rig.answers()[0].endswith(b"/first")
    assert rig.aiohttp.made == [rig.transport] and rig.transport.protocol is not None
    assert bytes(rig.aiohttp.data) == post + get("/after")  # everything, from the POST on
    assert rig.conn not in rig.live


async def test_a_head_too_large_to_be_plain_goes_to_aiohttp() -> None:
    rig = Rig(echo)
    big = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * MAX_HEAD
    rig.conn.data_received(big)
    assert bytes(rig.aiohttp.data) == big and not rig.transport.out


async def test_connection_close_is_honoured_and_what_follows_ignored() -> None:
    seen: list[str] = []

    async def handler(req: PlainRequest) -> Answer:
        seen.append(req.raw_path)
        return await echo(req)

    rig = Rig(handler)
    rig.conn.data_received(get("/last", "Connection: close\r\n") + get("/never"))
    await settle()
    assert seen == ["/last"]
    assert b"Connection: close\r\n" in rig.answers()[0] and rig.transport.closed
    assert not rig.aiohttp.made


async def test_reading_pauses_while_a_request_runs_and_pipelined_bytes_pile_up() -> None:
    gate = asyncio.Event()

    async def handler(req: PlainRequest) -> Answer:
        await gate.wait()
        return await echo(req)

    rig = Rig(handler)
    rig.conn.data_received(get("/a"))
    await settle()
    rig.conn.data_received(get("/b") * (PAUSE_AT // len(get("/b")) + 1))
    assert rig.transport.paused
    gate.set()
    await settle()
    assert not rig.transport.paused
    assert len(rig.answers()) > 2


async def test_a_streamed_answer_is_chunked_and_waits_for_the_client() -> None:
    proceed, cont = asyncio.Event(), asyncio.Event()

    async def handler(req: PlainRequest) -> Any:
        out = req.open_stream(200, {"Content-Type": "application/json"})
        await out.write(b"first")
        proceed.set()
        await cont.wait()
        await out.write(b"")  # (nothing to send: no empty chunk, which would end it)
        await out.write(b"second")  # sent, then waits for the transport to drain
        await out.write_eof()
        return out

    rig = Rig(handler)
    rig.conn.data_received(get("/watch"))
    await proceed.wait()
    assert bytes(rig.transport.out).endswith(b"5\r\nfirst\r\n")
    rig.conn.pause_writing()  # the client reads slowly
    cont.set()
    await settle()
    assert bytes(rig.transport.out).endswith(b"6\r\nsecond\r\n")  # no last chunk yet
    rig.conn.resume_writing()
    await settle()
    out = bytes(rig.transport.out)
    assert b"Transfer-Encoding: chunked\r\n" in out
    assert out.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")


async def test_a_handler_failing_before_answering_gets_a_500_status_and_a_close() -> None:
    async def handler(req: PlainRequest) -> Any:
        raise RuntimeError("boom")

    rig = Rig(handler)
    rig.conn.data_received(get())
    await settle()
    out = bytes(rig.transport.out)
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b'"kind": "Status"' in out and b"boom" not in out
    assert rig.transport.closed and not rig.transport.aborted


async def test_a_failure_mid_stream_aborts_so_no_cut_answer_looks_whole() -> None:
    async def handler(req: PlainRequest) -> Any:
        out = req.open_stream(200, {})
        await out.write(b"part")
        raise RuntimeError("the cluster went away")

    rig = Rig(handler)
    rig.conn.data_received(get())
    await settle()
    assert rig.transport.aborted and not bytes(rig.transport.out).endswith(b"0\r\n\r\n")


async def test_an_unfinished_stream_is_aborted() -> None:
    async def handler(req: PlainRequest) -> Any:
        out = req.open_stream(200, {})
        await out.write(b"part")
        return out  # (no write_eof)

    rig = Rig(handler)
    rig.conn.data_received(get())
    await settle()
    assert rig.transport.aborted


async def test_writing_to_a_client_that_left_raises() -> None:
    left = asyncio.Event()
    result: list[BaseException] = []

    async def handler(req: PlainRequest) -> Any:
        out = req.open_stream(200, {})
        await left.wait()
        try:
            await out.write(b"more")
        except ConnectionResetError as e:
            result.append(e)
            raise
        return out

    rig = Rig(handler)
    rig.conn.data_received(get())
    await settle()
    rig.transport.closed = True
    rig.conn.connection_lost(None)
    left.set()
    await settle()
    assert result and rig.conn not in rig.live


async def test_an_aiohttp_response_is_framed_too() -> None:
    async def handler(req: PlainRequest) -> Any:
        return web.Response(status=403, body=b'{"kind":"Status"}', content_type="application/json")

    rig = Rig(handler)
    rig.conn.data_received(get())
    await settle()
    out = bytes(rig.transport.out)
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and out.endswith(b'{"kind":"Status"}')
    assert b"Content-Type: application/json" in out and b"Content-Length: 17\r\n" in out


async def test_a_slow_head_is_cut_at_the_deadline() -> None:
    rig = Rig(echo, head_timeout=0.05)
    rig.conn.data_received(b"GET / HTTP/1.1\r\nX-Slow: a\r\n")
    for _ in range(200):
        if rig.transport.closed:
            break
        await asyncio.sleep(0.01)
    assert rig.transport.closed and not rig.transport.out


async def test_an_idle_connection_closes_and_a_busy_one_does_not() -> None:
    gate = asyncio.Event()

    async def handler(req: PlainRequest) -> Answer:
        await gate.wait()
        return await echo(req)

    rig = Rig(handler, head_timeout=0.05, idle=0.05)
    rig.conn.data_received(get())
    await asyncio.sleep(0.15)  # (longer than both deadlines: a running request is not cut)
    assert not rig.transport.closed
    gate.set()
    for _ in range(200):
        if rig.transport.closed:
            break
        await asyncio.sleep(0.01)
    assert rig.transport.closed and len(rig.answers()) == 1


def test_module_limits_are_consistent() -> None:
    assert MAX_LINE < MAX_HEAD < PAUSE_AT and h1server.MAX_HEADERS > 20


async def wait_closed(t: FakeTransport, limit: float = 2.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not t.closed and loop.time() - start < limit:
        await asyncio.sleep(0.01)
    return loop.time() - start


async def test_after_an_answer_the_idle_deadline_holds_then_a_new_heads_own() -> None:
    rig = Rig(echo, head_timeout=0.1, idle=100.0)
    rig.conn.data_received(get())
    await settle()
    assert len(rig.answers()) == 1
    await asyncio.sleep(0.3)  # (past the head deadline: idle now, with its longer one)
    assert not rig.transport.closed
    rig.conn.data_received(b"GET /next HTTP/1.1\r\n")  # a later head, never finished
    took = await wait_closed(rig.transport)
    assert rig.transport.closed and took < 1.5


async def test_a_head_completed_in_time_is_not_cut_by_its_old_deadline() -> None:
    gate = asyncio.Event()

    async def handler(req: PlainRequest) -> Answer:
        await gate.wait()
        return await echo(req)

    rig = Rig(handler, head_timeout=0.1, idle=100.0)
    rig.conn.data_received(get()[:5])
    rig.conn.data_received(get()[5:])  # complete before the deadline
    await asyncio.sleep(0.3)
    assert not rig.transport.closed
    gate.set()
    await settle()
    assert len(rig.answers()) == 1 and not rig.transport.closed


@pytest.mark.parametrize("cut", range(1, 5))
async def test_a_head_end_split_across_reads_is_found(cut: int) -> None:
    """The end of a head is searched incrementally (a head trickled byte by byte is
    not searched whole each time): an end split across reads is still found."""
    data = get("/split")
    rig = Rig(echo)
    rig.conn.data_received(data[:-cut])
    await settle()
    assert not rig.transport.out
    rig.conn.data_received(data[-cut:] + get("/next")[:7])
    await settle()
    rig.conn.data_received(get("/next")[7:])
    await settle()
    answers = rig.answers()
    assert len(answers) == 2 and answers[0].endswith(b"/split") and answers[1].endswith(b"/next")


def test_kubectls_own_request_heads_are_served_here() -> None:
    """Real kubectl's head (captured on a plain socket) is one this module serves, so
    kubectl's GETs take this path and the kubectl tests exercise it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    heads: list[bytes] = []

    def capture() -> None:
        c, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        heads.append(data)
        c.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        c.close()
        srv.close()  # (kubectl's retries are refused at once)

    t = threading.Thread(target=capture)
    t.start()
    port = srv.getsockname()[1]
    subprocess.run(
        [KUBECTL, "--server", f"http://127.0.0.1:{port}/k8s/c", "--token", "abc", "get", "pods"],
        capture_output=True,
        env={**os.environ, "KUBECONFIG": "/dev/null"},
        timeout=30,
    )
    t.join(10)
    assert heads and heads[0].startswith(b"GET /k8s/c/")
    assert parse_head(heads[0][: head_end(heads[0])]) is not None, heads[0]
