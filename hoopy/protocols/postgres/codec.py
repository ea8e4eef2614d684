"""Sans-I/O PostgreSQL protocol v3 codec, both directions (in the manner of h11).

Theory of operation
-------------------
hoopy sits between an agent and PostgreSQL, so it needs both halves:

* `ServerConnection` is hoopy's side facing the agent: it parses *frontend*
  messages.  A connection starts in STARTUP, where packets carry no type byte
  (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage 3.0).  A
  StartupMessage moves it to AUTH, where only password ('p') messages are
  valid; the caller moves it to NORMAL with `start_session()` once it has
  authenticated the agent.  A CancelRequest or a Terminate ends it (CLOSED).
* `ClientConnection` is hoopy's side facing PostgreSQL: it parses *backend*
  messages and has methods that encode what hoopy sends to the server.

Bytes go in with `receive_data()`; `next_event()` returns one event or
`NEED_DATA`, `events()` every event that is complete now.  Nothing here
touches a socket, a task or a clock.  Every event keeps `raw`, its exact wire
bytes, so a proxy forwards them unchanged (see messages.py).

The buffer is a bytearray with a read offset; consumed bytes are dropped
from its front on the next `receive_data()` (CPython makes that O(1)), so
parsing is linear in the input.  Result rows dominate traffic, so a run of
DataRow messages becomes one `DataRows` event whose `raw` is the whole run:
the scan only reads each row's length word and creates no object per row.
`iter_data_rows()` decodes a run when the proxy needs to look at values.
Sessions without masking go further: `ClientConnection.relay_run()` returns a whole
run of the messages they forward unchanged (rows, descriptions, completions,
ReadyForQuery) as its bytes plus the offsets of what they record.  Bodies are parsed
by bodies.py, one checked parser per message type.  The loops that frame messages are
in framing.py, which is compiled when hoopy is built with Cython (compiled.py).

Hostile input is the normal case for a gateway.  Every length is checked
from the header alone, before the body is buffered: a typed message must
declare 4..max_message_size bytes, a startup packet 8..10000.  The unparsed
buffer is capped too.  Message types are checked against the phase, each
body must be exactly as long as its fields say, and strings from the agent
must be valid UTF-8 (a lenient decode would make hoopy see other SQL or
statement names than PostgreSQL does).  Strings from the server are decoded
leniently: they are only shown.  Any failure raises `ProtocolViolation` and
the connection stays failed.  Its message never quotes the bytes received:
they may hold a password.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Final, Generic, Literal, NoReturn, TypeVar

from hoopy.protocols.postgres import cmdlane, framing
from hoopy.protocols.postgres import messages as m
from hoopy.protocols.postgres.bodies import (
    _AUTH_TYPES,
    _BACKEND,
    _BACKEND_NORMAL_TYPES,
    _BACKEND_STARTUP_TYPES,
    _FRONTEND,
    _NORMAL_TYPES,
    ProtocolViolation,
    _startup_params,
    decode_binds,
    decode_row_description,
)
from hoopy.protocols.postgres.framing import decode_data_rows, iter_data_rows
from hoopy.protocols.postgres.messages import *  # noqa: F403  (the codec's public API)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE", "MAX_STARTUP_PACKET", "NEED_DATA", "ClientConnection",
    "NeedData", "Phase", "ProtocolViolation", "ServerConnection", "decode_binds",
    "decode_data_rows", "decode_row_description", "iter_data_rows", *m.__all__,
]  # fmt: skip

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
MAX_STARTUP_PACKET: Final = 10000  # PostgreSQL's own limit
# A message before login (the password: a token) is capped as PostgreSQL caps it
# (PG_MAX_AUTH_TOKEN_LENGTH): no one unauthenticated may make hoopy buffer 64 MiB.
MAX_AUTH_MESSAGE: Final = 65535 + 4

_I = struct.Struct("!I")
_DATA_ROW = 0x44  # 'D'
_READY = 0x5A  # 'Z'
_TERMINATE = 0x58  # 'X'
_QUERY = 0x51  # 'Q'
_LANE_FIRST = frozenset(b"PB")  # what a batch of the Bind lane starts with
_LANE_OPAQUE = frozenset(b"BDE")  # the run the lane frames as the codec's Passthrough
_LANE_FRAMED = frozenset(b"PS")  # events of their own in that batch


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class Phase(enum.Enum):
    STARTUP = "startup"
    AUTH = "authentication"
    NORMAL = "normal"
    CLOSED = "closed"


E = TypeVar("E")


# ---- connections ----------------------------------------------------------------------
class _Connection(Generic[E]):
    """Buffering, size caps, phases and the failed state shared by both directions."""

    _ALLOWED: dict[Phase, frozenset[int]]  # typed messages valid in each phase

    def __init__(self, max_message_size: int, max_buffer_size: int | None) -> None:
        if max_message_size < 8:
            raise ValueError("max_message_size is too small")
        self._max = max_message_size
        # One partial message plus a generous read's worth of whatever follows it.
        self._max_buffer = max_buffer_size or max_message_size + max(max_message_size, 1 << 20)
        self._buf = bytearray()
        self._pos = 0
        self._failed: ProtocolViolation | None = None
        self._set_phase(Phase.STARTUP)

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the peer (b"" is ignored: end of stream is the caller's)."""
        if self._failed is not None:
            self._check_alive()
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        if len(self._buf) > self._max_buffer:
            self._fail(ProtocolViolation("too much unprocessed data", "54000"))

    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return len(self._buf) - self._pos

    def next_event(self) -> E | Literal[NeedData.NEED_DATA]:
        self._check_alive()
        try:
            return self._next()
        except ProtocolViolation as e:
            self._fail(e)

    def events(self) -> list[E]:
        """Every event that is complete in the buffer now."""
        if self._failed is not None:
            self._check_alive()
        out: list[E] = []
        try:
            while (ev := self._next()) is not NEED_DATA:
                out.append(ev)
        except ProtocolViolation as e:
            self._fail(e)
        return out

    def _next(self) -> E | Literal[NeedData.NEED_DATA]:
        raise NotImplementedError

    def _check_alive(self) -> None:
        if self._failed is not None:
            e = self._failed
            raise ProtocolViolation(f"connection already failed: {e.message}", e.sqlstate)

    def _fail(self, e: ProtocolViolation) -> NoReturn:
        self._failed = e
        self._buf = bytearray()
        self._pos = 0
        raise e

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._allowed = self._ALLOWED[phase]

    def _unexpected(self, t: int) -> NoReturn:
        where = self.phase.value
        raise ProtocolViolation(f"unexpected message type {chr(t)!r} during {where}")

    def _take(self, size: int) -> bytes:
        raw = bytes(self._buf[self._pos : self._pos + size])
        self._pos += size
        return raw


class ServerConnection(_Connection[m.FrontendEvent]):
    """hoopy facing the agent: parses frontend messages."""

    _ALLOWED = {
        Phase.STARTUP: frozenset(),  # untyped packets, parsed apart
        Phase.AUTH: _AUTH_TYPES,
        Phase.NORMAL: _NORMAL_TYPES,
        Phase.CLOSED: frozenset(),
    }

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_buffer_size: int | None = None
    ) -> None:
        super().__init__(max_message_size, max_buffer_size)
        self._session_limits = (self._max, self._max_buffer)  # from start_session() on
        self._max = min(self._max, MAX_AUTH_MESSAGE)
        self._max_buffer = min(self._max_buffer, 2 * MAX_AUTH_MESSAGE)
        self._seen: set[int] = set()  # SSLRequest / GSSENCRequest, each allowed once
        # Message types (framed and length-checked, still allowed only where the protocol
        # allows them) returned as Passthrough without parsing their bodies: for sessions
        # that forward them verbatim and never look inside.
        self.opaque: frozenset[int] = frozenset()

    def start_session(self) -> None:
        """The agent is authenticated: ordinary messages are valid from now on."""
        if self.phase is not Phase.AUTH:
            raise RuntimeError(f"start_session() during {self.phase.value}")
        self._max, self._max_buffer = self._session_limits
        self._set_phase(Phase.NORMAL)

    def _next(self) -> m.FrontendEvent | Literal[NeedData.NEED_DATA]:
        if self.phase is Phase.STARTUP:
            return self._startup_packet()
        buf, pos = self._buf, self._pos
        length = framing.header(buf, pos, self._allowed, self._max)
        if length <= 0:
            if length < 0:
                self._unexpected(buf[pos])
            return NEED_DATA
        t = buf[pos]
        if t in self.opaque:
            return self._passthrough()
        self._pos = stop = pos + 1 + length
        event = _FRONTEND[t](bytes(buf[pos:stop]))
        if t == _TERMINATE:
            self._set_phase(Phase.CLOSED)
        return event

    def events(self) -> list[m.FrontendEvent]:
        """Every event that is complete in the buffer now: what one compiled pass frames
        (cmdlane.frontend_run; interpreted, `_next` is as fast), then message by message
        what it leaves (`_next`)."""
        if self._failed is not None:
            self._check_alive()
        out: list[m.FrontendEvent] = []
        try:
            if self.phase is Phase.NORMAL and cmdlane.COMPILED:
                buf = self._buf
                self._pos, marks = cmdlane.frontend_run(
                    buf, self._pos, self._max, self._allowed, self.opaque
                )
                for t, start, stop, types in marks:
                    if types is not None:
                        out.append(m.Passthrough(types, bytes(buf[start:stop])))
                    else:
                        out.append(_FRONTEND[t](bytes(buf[start:stop])))
                if self._pos == len(buf):
                    return out  # the usual end: nothing left for _next to look at
            while (ev := self._next()) is not NEED_DATA:
                out.append(ev)
        except ProtocolViolation as e:
            self._fail(e)
        return out

    def lone_query(self) -> tuple[bytes, str] | None:
        """`(raw, sql)` of the Query the buffer holds when it holds one whole Query and
        nothing else (cmdlane.lone_query), consumed; None otherwise, with nothing
        consumed: `events()` then (which also raises for what is malformed)."""
        buf, pos = self._buf, self._pos
        if pos >= len(buf) or buf[pos] != _QUERY:  # the usual other batch: one look
            return None
        if self._failed is not None or self.phase is not Phase.NORMAL or _QUERY in self.opaque:
            return None
        got = cmdlane.lone_query(buf, pos, self._max)
        if got is not None:
            self._pos = len(buf)
        return got

    def fast_batch(self) -> tuple[bytes, str] | list[tuple[Any, ...]] | None:
        """`lone_query()` or `bind_batch()`, whichever the buffer's first byte calls for
        (the relay's one look per read): a tuple for a Query, a list for the Bind lane."""
        buf, pos = self._buf, self._pos
        if pos >= len(buf) or self._failed is not None or self.phase is not Phase.NORMAL:
            return None
        t = buf[pos]
        opaque = self.opaque
        got: tuple[bytes, str] | list[tuple[Any, ...]] | None
        if t == _QUERY:  # lone_query(), without its frame
            if _QUERY in opaque:
                return None
            got = cmdlane.lone_query(buf, pos, self._max)
        elif t in _LANE_FIRST:  # bind_batch(), without its frame
            if not (opaque >= _LANE_OPAQUE and opaque.isdisjoint(_LANE_FRAMED)):
                return None
            got = cmdlane.bind_batch(buf, pos, self._max)
        else:
            return None
        if got is not None:
            self._pos = len(buf)
        return got

    def bind_batch(self) -> list[tuple[Any, ...]] | None:
        """The usual extended-protocol batch when the buffer holds one whole and nothing
        else (cmdlane.bind_batch: ([Parse] (Bind [Describe] Execute)+)+ Sync, with Bind,
        Describe and Execute opaque, as the events would have them), consumed; None
        otherwise, with nothing consumed: `events()` then."""
        buf, pos = self._buf, self._pos
        if pos >= len(buf) or buf[pos] not in _LANE_FIRST:  # the usual other batch: one look
            return None
        opaque = self.opaque
        if self._failed is not None or self.phase is not Phase.NORMAL:
            return None
        if not (opaque >= _LANE_OPAQUE and opaque.isdisjoint(_LANE_FRAMED)):
            return None
        got = cmdlane.bind_batch(buf, pos, self._max)
        if got is not None:
            self._pos = len(buf)
        return got

    def _passthrough(self) -> m.Passthrough:
        """The opaque message at the front and every complete opaque one after it."""
        start = self._pos
        self._pos, types = framing.opaque_run(self._buf, start, self._max, self.opaque)
        return m.Passthrough(types, bytes(self._buf[start : self._pos]))

    def _startup_packet(self) -> m.FrontendEvent | Literal[NeedData.NEED_DATA]:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return NEED_DATA
        length = _I.unpack_from(buf, pos)[0]
        if not 8 <= length <= MAX_STARTUP_PACKET:
            raise ProtocolViolation("invalid length of startup packet")
        if len(buf) - pos < length:
            return NEED_DATA
        raw = self._take(length)
        code = _I.unpack_from(raw, 4)[0]
        if code >> 16 == 3:  # 3.x: a newer minor is answered with NegotiateProtocolVersion
            params = _startup_params(raw)
            self._set_phase(Phase.AUTH)
            return m.StartupMessage(code, params, raw)
        if code == m.CANCEL_REQUEST_CODE and length == 16:
            self._set_phase(Phase.CLOSED)
            pid, key = struct.unpack_from("!II", raw, 8)
            return m.CancelRequest(pid, key, raw)
        if code in (m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE) and length == 8:
            if code in self._seen:
                raise ProtocolViolation("repeated encryption request")
            self._seen.add(code)
            return m.SSLRequest(raw) if code == m.SSL_REQUEST_CODE else m.GSSENCRequest(raw)
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", "0A000"
        )


class ClientConnection(_Connection[m.BackendEvent]):
    """hoopy facing PostgreSQL: parses backend messages, encodes what hoopy sends."""

    _ALLOWED = {Phase.STARTUP: _BACKEND_STARTUP_TYPES, Phase.NORMAL: _BACKEND_NORMAL_TYPES}

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_buffer_size: int | None = None
    ) -> None:
        super().__init__(max_message_size, max_buffer_size)  # STARTUP until ReadyForQuery
        self._expect_ssl = False

    def expect_ssl_answer(self) -> None:
        """The next byte is the server's one-byte answer to an SSLRequest."""
        self._expect_ssl = True

    def _next(self) -> m.BackendEvent | Literal[NeedData.NEED_DATA]:
        if self._expect_ssl:
            return self._ssl_answer()
        buf, pos = self._buf, self._pos
        length = framing.header(buf, pos, self._allowed, self._max)
        if length <= 0:
            if length < 0:
                self._unexpected(buf[pos])
            return NEED_DATA
        t = buf[pos]
        if t == _DATA_ROW:
            return self._data_rows()
        event = _BACKEND[t](self._take(1 + length))
        if t == _READY and self.phase is Phase.STARTUP:
            self._set_phase(Phase.NORMAL)
        return event

    def relay_run(self) -> tuple[bytes, list[tuple[int, int, int]]] | None:
        """The run of complete messages at the buffer's front that a session without
        masking forwards as they are (`_RELAYED` types: DataRow, RowDescription,
        CommandComplete, ReadyForQuery, ParameterDescription and the bodiless
        acknowledgements), as `(raw, marks)`; None when the next message is another type
        or incomplete (use `next_event()` then).  `marks` locates in `raw` what a proxy
        looks at: `(type, start, stop)` per RowDescription, CommandComplete,
        ReadyForQuery, EmptyQueryResponse, PortalSuspended and ParseComplete, and one
        per run of DataRows.

        One pass, no object per message: this is the hot path of every result."""
        if self._failed is not None:
            self._check_alive()
        if self.phase is not Phase.NORMAL or self._expect_ssl:
            return None
        buf, start = self._buf, self._pos
        try:
            pos, marks = framing.relay_run(buf, start, self._max)
        except ProtocolViolation as e:
            self._fail(e)
        if pos == start:
            return None
        self._pos = pos
        return bytes(buf[start:pos]), marks

    def _ssl_answer(self) -> m.SSLAnswer | Literal[NeedData.NEED_DATA]:
        if not self.buffered():
            return NEED_DATA
        raw = self._take(1)
        if raw not in (m.SSL_ACCEPTED, m.SSL_REFUSED):
            raise ProtocolViolation("invalid answer to SSLRequest")
        self._expect_ssl = False
        return m.SSLAnswer(raw == m.SSL_ACCEPTED, raw)

    def _data_rows(self) -> m.DataRows:
        """Every complete DataRow from here on as one event (at least one is complete)."""
        start = self._pos
        self._pos, count = framing.data_rows(self._buf, start, self._max)
        return m.DataRows(bytes(self._buf[start : self._pos]), count)

    # ---- encoders for what hoopy sends to the server -----------------------------------
    def ssl_request(self) -> bytes:
        return m.ssl_request()

    def startup_message(self, params: dict[str, str]) -> bytes:
        return m.startup_message(params)

    def password_message(self, data: bytes) -> bytes:
        return m.password_message(data)

    def sasl_initial_response(self, mechanism: str, data: bytes) -> bytes:
        return m.sasl_initial_response(mechanism, data)

    def sasl_response(self, data: bytes) -> bytes:
        return m.sasl_response(data)

    def query(self, sql: str) -> bytes:
        return m.query(sql)

    def sync(self) -> bytes:
        return m.sync()

    def terminate(self) -> bytes:
        return m.terminate()

    def cancel_request(self, pid: int, key: int) -> bytes:
        return m.cancel_request(pid, key)
