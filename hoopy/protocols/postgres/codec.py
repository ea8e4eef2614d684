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
from collections.abc import Callable, Iterator
from typing import Final, Generic, Literal, NoReturn, TypeVar

from hoopy.protocols.postgres import messages as m
from hoopy.protocols.postgres.messages import *  # noqa: F403  (the codec's public API)

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
MAX_STARTUP_PACKET: Final = 10000  # PostgreSQL's own limit

_I = struct.Struct("!I")
_i = struct.Struct("!i")
_H = struct.Struct("!H")
_FIELD = struct.Struct("!IhIhih")  # RowDescription, after the name
_DATA_ROW = 0x44  # 'D'
_READY = 0x5A  # 'Z'


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection cannot be used any more."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class Phase(enum.Enum):
    STARTUP = "startup"
    AUTH = "authentication"
    NORMAL = "normal"
    CLOSED = "closed"


E = TypeVar("E")


# ---- body decoding --------------------------------------------------------------------
class _Reader:
    """Walks one message body; every shortfall or leftover is a ProtocolViolation."""

    __slots__ = ("data", "pos", "strict", "what")

    def __init__(self, raw: bytes, what: str, strict: bool, start: int = 5) -> None:
        self.data = raw
        self.pos = start
        self.what = what
        self.strict = strict

    def bad(self) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self.what} message")

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.bad()
        text = self.data[self.pos : end]
        self.pos = end + 1
        return _decode(text, self.what, self.strict)

    def unpack(self, s: struct.Struct) -> tuple[int, ...]:
        if self.pos + s.size > len(self.data):
            raise self.bad()
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return values

    def u16(self) -> int:
        return self.unpack(_H)[0]

    def u32(self) -> int:
        return self.unpack(_I)[0]

    def i32(self) -> int:
        return self.unpack(_i)[0]

    def array(self, code: str, count: int) -> tuple[int, ...]:
        return self.unpack(struct.Struct(f"!{count}{code}"))

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.bad()
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.bad()


def _empty(cls: Callable[[bytes], E], what: str) -> Callable[[bytes], E]:
    """Parser for a message that has no body."""

    def parse(raw: bytes) -> E:
        if len(raw) != 5:
            raise ProtocolViolation(f"malformed {what} message")
        return cls(raw)

    return parse


def _kind_and_name(raw: bytes, what: str) -> tuple[str, str]:
    r = _Reader(raw, what, strict=True)
    kind = chr(r.unpack(_KIND)[0])
    if kind not in ("S", "P"):
        raise r.bad()
    name = r.cstr()
    r.end()
    return kind, name


_KIND = struct.Struct("!B")


def _only_cstr(raw: bytes, what: str, strict: bool) -> str:
    """The body is exactly one C string (the common case, so without a _Reader)."""
    if raw.find(b"\0", 5) != len(raw) - 1:
        raise ProtocolViolation(f"malformed {what} message")
    return _decode(raw[5:-1], what, strict)


def _decode(text: bytes, what: str, strict: bool) -> str:
    """Agents' strings must decode exactly; the server's are only shown."""
    if not strict:
        return text.decode("utf-8", "replace")
    try:
        return text.decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} message is not valid UTF-8", "22021") from None


# ---- frontend messages ----------------------------------------------------------------
def _f_password(raw: bytes) -> m.PasswordMessage:
    return m.PasswordMessage(raw[5:], raw)


def _f_query(raw: bytes) -> m.Query:
    if raw.find(b"\0", 5) != len(raw) - 1:
        raise ProtocolViolation("malformed Query message")
    try:
        return m.Query(raw[5:-1].decode(), raw)
    except UnicodeDecodeError:
        raise ProtocolViolation("Query message is not valid UTF-8", "22021") from None


def _f_parse(raw: bytes) -> m.Parse:
    # Unrolled rather than walked with a _Reader: drivers send one per statement.
    name_end = raw.find(b"\0", 5)
    sql_end = raw.find(b"\0", name_end + 1) if name_end >= 0 else -1
    if sql_end < 0 or sql_end + 3 > len(raw):
        raise ProtocolViolation("malformed Parse message")
    (count,) = _H.unpack_from(raw, sql_end + 1)
    if sql_end + 3 + 4 * count != len(raw):
        raise ProtocolViolation("malformed Parse message")
    types = struct.unpack_from(f"!{count}I", raw, sql_end + 3) if count else ()
    try:
        return m.Parse(raw[5:name_end].decode(), raw[name_end + 1 : sql_end].decode(), types, raw)
    except UnicodeDecodeError:
        raise ProtocolViolation("Parse message is not valid UTF-8", "22021") from None


def _f_bind(raw: bytes) -> m.Bind:
    r = _Reader(raw, "Bind", strict=True)
    portal, statement = r.cstr(), r.cstr()
    r.array("H", r.u16())  # parameter formats
    for _ in range(r.u16()):
        size = r.i32()
        if size != -1:
            r.take(size)
    formats = r.array("H", r.u16())  # result formats
    r.end()
    return m.Bind(portal, statement, raw, formats)


def _f_describe(raw: bytes) -> m.Describe:
    return m.Describe(*_kind_and_name(raw, "Describe"), raw)


def _f_close(raw: bytes) -> m.Close:
    return m.Close(*_kind_and_name(raw, "Close"), raw)


def _f_execute(raw: bytes) -> m.Execute:
    r = _Reader(raw, "Execute", strict=True)
    portal = r.cstr()
    max_rows = r.i32()
    r.end()
    return m.Execute(portal, max_rows, raw)


def _copy_data(raw: bytes) -> m.CopyData:
    return m.CopyData(raw[5:], raw)


def _f_copy_fail(raw: bytes) -> m.CopyFail:
    return m.CopyFail(_only_cstr(raw, "CopyFail", strict=True), raw)


_FRONTEND: dict[int, Callable[[bytes], m.FrontendEvent]] = {
    ord("p"): _f_password,
    ord("Q"): _f_query,
    ord("P"): _f_parse,
    ord("B"): _f_bind,
    ord("D"): _f_describe,
    ord("E"): _f_execute,
    ord("C"): _f_close,
    ord("S"): _empty(m.Sync, "Sync"),
    ord("H"): _empty(m.Flush, "Flush"),
    ord("X"): _empty(m.Terminate, "Terminate"),
    ord("d"): _copy_data,
    ord("c"): _empty(m.CopyDone, "CopyDone"),
    ord("f"): _f_copy_fail,
    ord("F"): m.FunctionCall,
}
_AUTH_TYPES = frozenset(b"p")
_NORMAL_TYPES = frozenset(b"QPBDECSHXdcfF")


def _startup_params(raw: bytes) -> dict[str, str]:
    """name\\0value\\0 … \\0; no empty names, no duplicates (the two ends could disagree)."""
    r = _Reader(raw, "startup", strict=True, start=8)
    params: dict[str, str] = {}
    while r.pos < len(raw) - 1:
        name = r.cstr()
        if not name or name in params:
            raise r.bad()
        params[name] = r.cstr()
    if r.pos != len(raw) - 1 or raw[-1] != 0:
        raise r.bad()
    return params


# ---- backend messages -----------------------------------------------------------------
def _b_auth(raw: bytes) -> m.BackendEvent:
    r = _Reader(raw, "Authentication", strict=False)
    code = r.u32()
    if code == 0:
        r.end()
        return m.AuthenticationOk(raw)
    if code == 3:
        r.end()
        return m.AuthenticationCleartextPassword(raw)
    if code == 5:
        salt = r.take(4)
        r.end()
        return m.AuthenticationMD5Password(salt, raw)
    if code == 10:
        return m.AuthenticationSASL(_sasl_mechanisms(r), raw)
    if code == 11:
        return m.AuthenticationSASLContinue(raw[9:], raw)
    if code == 12:
        return m.AuthenticationSASLFinal(raw[9:], raw)
    return m.AuthenticationOther(code, raw)


def _sasl_mechanisms(r: _Reader) -> tuple[str, ...]:
    names: list[str] = []
    while (name := r.cstr()) != "":
        names.append(name)
    r.end()
    return tuple(names)


def _b_parameter_status(raw: bytes) -> m.ParameterStatus:
    r = _Reader(raw, "ParameterStatus", strict=False)
    name, value = r.cstr(), r.cstr()
    r.end()
    return m.ParameterStatus(name, value, raw)


def _b_backend_key(raw: bytes) -> m.BackendKeyData:
    r = _Reader(raw, "BackendKeyData", strict=False)
    pid, key = r.u32(), r.u32()
    r.end()
    return m.BackendKeyData(pid, key, raw)


def _b_ready(raw: bytes) -> m.ReadyForQuery:
    if len(raw) != 6 or raw[5] not in b"ITE":
        raise ProtocolViolation("malformed ReadyForQuery message")
    return m.ReadyForQuery(chr(raw[5]), raw)


_ROW_DESCRIPTIONS: dict[bytes, m.RowDescription] = {}


def _b_row_description(raw: bytes) -> m.RowDescription:
    # Every query has one, and a session's queries repeat: parsed ones are remembered
    # (events are immutable, so sharing them is safe).
    hit = _ROW_DESCRIPTIONS.get(raw)
    if hit is not None:
        return hit
    ev = _parse_row_description(raw)
    if len(raw) <= 4096:
        if len(_ROW_DESCRIPTIONS) >= 4096:
            _ROW_DESCRIPTIONS.clear()
        _ROW_DESCRIPTIONS[raw] = ev
    return ev


def _parse_row_description(raw: bytes) -> m.RowDescription:
    # Unrolled rather than walked with a _Reader.
    make, unpack, size = m.FieldDescription._make, _FIELD.unpack_from, _FIELD.size
    fields = []
    try:
        (count,) = _H.unpack_from(raw, 5)
        pos = 7
        for _ in range(count):
            end = raw.index(b"\0", pos)
            name = raw[pos:end].decode("utf-8", "replace")
            fields.append(make((name, *unpack(raw, end + 1))))
            pos = end + 1 + size
    except (ValueError, struct.error):
        raise ProtocolViolation("malformed RowDescription message") from None
    if pos != len(raw):
        raise ProtocolViolation("malformed RowDescription message")
    return m.RowDescription(tuple(fields), raw)


def _b_command_complete(raw: bytes) -> m.CommandComplete:
    return m.CommandComplete(_only_cstr(raw, "CommandComplete", strict=False), raw)


def _fields(raw: bytes, what: str) -> dict[str, str]:
    r = _Reader(raw, what, strict=False)
    fields: dict[str, str] = {}
    while (code := r.take(1)) != b"\0":
        fields[chr(code[0])] = r.cstr()
    r.end()
    return fields


def _b_error(raw: bytes) -> m.ErrorResponse:
    return m.ErrorResponse(_fields(raw, "ErrorResponse"), raw)


def _b_notice(raw: bytes) -> m.NoticeResponse:
    return m.NoticeResponse(_fields(raw, "NoticeResponse"), raw)


def _b_notification(raw: bytes) -> m.NotificationResponse:
    r = _Reader(raw, "NotificationResponse", strict=False)
    pid = r.u32()
    channel, payload = r.cstr(), r.cstr()
    r.end()
    return m.NotificationResponse(pid, channel, payload, raw)


def _b_parameter_description(raw: bytes) -> m.ParameterDescription:
    r = _Reader(raw, "ParameterDescription", strict=False)
    oids = r.array("I", r.u16())
    r.end()
    return m.ParameterDescription(oids, raw)


_CopyResponse = type[m.CopyInResponse] | type[m.CopyOutResponse] | type[m.CopyBothResponse]


def _copy_response(cls: _CopyResponse) -> Callable[[bytes], m.BackendEvent]:
    def parse(raw: bytes) -> m.BackendEvent:
        r = _Reader(raw, cls.__name__, strict=False)
        fmt = r.unpack(_KIND)[0]
        formats = r.array("H", r.u16())
        r.end()
        return cls(fmt, formats, raw)

    return parse


_BACKEND: dict[int, Callable[[bytes], m.BackendEvent]] = {
    ord("R"): _b_auth,
    ord("S"): _b_parameter_status,
    ord("K"): _b_backend_key,
    ord("Z"): _b_ready,
    ord("T"): _b_row_description,
    ord("C"): _b_command_complete,
    ord("I"): _empty(m.EmptyQueryResponse, "EmptyQueryResponse"),
    ord("E"): _b_error,
    ord("N"): _b_notice,
    ord("A"): _b_notification,
    ord("1"): _empty(m.ParseComplete, "ParseComplete"),
    ord("2"): _empty(m.BindComplete, "BindComplete"),
    ord("3"): _empty(m.CloseComplete, "CloseComplete"),
    ord("n"): _empty(m.NoData, "NoData"),
    ord("s"): _empty(m.PortalSuspended, "PortalSuspended"),
    ord("t"): _b_parameter_description,
    ord("G"): _copy_response(m.CopyInResponse),
    ord("H"): _copy_response(m.CopyOutResponse),
    ord("W"): _copy_response(m.CopyBothResponse),
    ord("d"): _copy_data,
    ord("c"): _empty(m.CopyDone, "CopyDone"),
    ord("v"): m.NegotiateProtocolVersion,
    ord("V"): m.FunctionCallResponse,
}
# What ClientConnection.relay_run passes through in one piece.
_COMPLETE = ord("C")
_EMPTY_QUERY = ord("I")
_PARAMETERS = ord("t")
_BODILESS = frozenset(b"I123ns")
_RELAYED = frozenset(b"DTCZt") | _BODILESS


def decode_row_description(raw: bytes) -> m.RowDescription:
    """Parse one RowDescription message (remembered: a session's queries repeat)."""
    return _b_row_description(raw)


# Until the first ReadyForQuery the server may only authenticate and report settings.
_BACKEND_STARTUP_TYPES = frozenset(b"RENSKZv")
_BACKEND_NORMAL_TYPES = frozenset(_BACKEND) - frozenset(b"RKv") | {_DATA_ROW}


def iter_data_rows(
    raw: bytes, pos: int = 0, end: int | None = None
) -> Iterator[list[bytes | None]]:
    """Decode the DataRow messages concatenated in `raw[pos:end]` (a `DataRows.raw`, or
    a DataRow run of `ClientConnection.relay_run`)."""
    end = len(raw) if end is None else end
    while pos < end:
        if end - pos < 7 or raw[pos] != _DATA_ROW:
            raise ProtocolViolation("malformed DataRow message")
        stop = pos + 1 + _I.unpack_from(raw, pos + 1)[0]
        if stop > end:
            raise ProtocolViolation("malformed DataRow message")
        yield _data_row_values(raw, pos + 5, stop)
        pos = stop


def decode_data_rows(
    raw: bytes, pos: int, end: int, limit: int
) -> tuple[list[list[bytes | None]], int]:
    """The values of at most `limit` DataRow messages of raw[pos:end], and the offset
    after the last one decoded (== end when all were)."""
    rows: list[list[bytes | None]] = []
    while pos < end and len(rows) < limit:
        if end - pos < 7 or raw[pos] != _DATA_ROW:
            raise ProtocolViolation("malformed DataRow message")
        stop = pos + 1 + _I.unpack_from(raw, pos + 1)[0]
        if stop > end:
            raise ProtocolViolation("malformed DataRow message")
        rows.append(_data_row_values(raw, pos + 5, stop))
        pos = stop
    return rows, pos


def _data_row_values(raw: bytes, pos: int, stop: int) -> list[bytes | None]:
    (count,) = _H.unpack_from(raw, pos)
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > stop:
            raise ProtocolViolation("malformed DataRow message")
        (size,) = _i.unpack_from(raw, pos)
        pos += 4
        if size == -1:
            values.append(None)
            continue
        if size < 0 or pos + size > stop:
            raise ProtocolViolation("malformed DataRow message")
        values.append(raw[pos : pos + size])
        pos += size
    if pos != stop:
        raise ProtocolViolation("malformed DataRow message")
    return values


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

    def _typed(self) -> tuple[int, int] | None:
        """(type, length) of the next typed message once it is complete, checked early."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail <= 0:
            return None
        t = buf[pos]
        if t not in self._allowed:
            where = self.phase.value
            raise ProtocolViolation(f"unexpected message type {chr(t)!r} during {where}")
        if avail < 5:
            return None
        length = _I.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > self._max:
            self._check_length(length)
        if avail <= length:
            return None
        return t, length

    def _check_length(self, length: int) -> None:
        if length < 4:
            raise ProtocolViolation("invalid message length")
        if length > self._max:
            raise ProtocolViolation(
                f"message of {length} bytes exceeds the limit of {self._max}", "54000"
            )

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
        self._seen: set[int] = set()  # SSLRequest / GSSENCRequest, each allowed once
        # Message types (framed and length-checked, still allowed only where the protocol
        # allows them) returned as Passthrough without parsing their bodies: for sessions
        # that forward them verbatim and never look inside.
        self.opaque: frozenset[int] = frozenset()

    def start_session(self) -> None:
        """The agent is authenticated: ordinary messages are valid from now on."""
        if self.phase is not Phase.AUTH:
            raise RuntimeError(f"start_session() during {self.phase.value}")
        self._set_phase(Phase.NORMAL)

    def _next(self) -> m.FrontendEvent | Literal[NeedData.NEED_DATA]:
        if self.phase is Phase.STARTUP:
            return self._startup_packet()
        if self._pos >= len(self._buf):
            return NEED_DATA
        header = self._typed()
        if header is None:
            return NEED_DATA
        t, length = header
        if t in self.opaque:
            return self._passthrough(t, length)
        pos = self._pos
        self._pos = pos + 1 + length
        event = _FRONTEND[t](bytes(self._buf[pos : self._pos]))
        if t == ord("X"):
            self._set_phase(Phase.CLOSED)
        return event

    def _passthrough(self, t: int, length: int) -> m.Passthrough:
        """The opaque message at the front and every complete opaque one after it."""
        buf, opaque, cap, unpack = self._buf, self.opaque, self._max, _I.unpack_from
        start = self._pos
        pos, end = start + 1 + length, len(buf)
        types = [t]
        while end - pos >= 5 and (t := buf[pos]) in opaque:
            length = unpack(buf, pos + 1)[0]
            if length < 4 or length > cap:
                self._check_length(length)
            if pos + 1 + length > end:
                break
            types.append(t)
            pos += 1 + length
        self._pos = pos
        return m.Passthrough(bytes(types), bytes(buf[start:pos]))

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
        if code == m.PROTOCOL_3_0:
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
        header = self._typed()
        if header is None:
            return NEED_DATA
        t, length = header
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
        ReadyForQuery and EmptyQueryResponse, and one per run of DataRows.

        One pass, no object per message: this is the hot path of every result."""
        if self._failed is not None:
            self._check_alive()
        if self.phase is not Phase.NORMAL or self._expect_ssl:
            return None
        buf, start, end, cap = self._buf, self._pos, len(self._buf), self._max
        unpack, relayed = _I.unpack_from, _RELAYED
        pos, rows_from = start, -1
        marks: list[tuple[int, int, int]] = []
        try:
            while end - pos >= 5 and (t := buf[pos]) in relayed:
                length = unpack(buf, pos + 1)[0]
                if length < 4 or length > cap:
                    self._check_length(length)
                stop = pos + 1 + length
                if stop > end:
                    break
                if t == _DATA_ROW:
                    if rows_from < 0:
                        rows_from = pos
                else:
                    if rows_from >= 0:
                        marks.append((_DATA_ROW, rows_from - start, pos - start))
                        rows_from = -1
                    if t in _BODILESS:
                        if length != 4:
                            raise ProtocolViolation(f"malformed {chr(t)!r} message")
                        if t == _EMPTY_QUERY:
                            marks.append((t, pos - start, stop - start))
                    elif t == _READY:
                        if length != 5 or buf[pos + 5] not in b"ITE":
                            raise ProtocolViolation("malformed ReadyForQuery message")
                        marks.append((t, pos - start, stop - start))
                    elif t == _COMPLETE:
                        if buf.find(0, pos + 5, stop) != stop - 1:
                            raise ProtocolViolation("malformed CommandComplete message")
                        marks.append((t, pos - start, stop - start))
                    elif t != _PARAMETERS:  # RowDescription: parsed (cached) when used
                        marks.append((t, pos - start, stop - start))
                pos = stop
        except ProtocolViolation as e:
            self._fail(e)
        if rows_from >= 0:
            marks.append((_DATA_ROW, rows_from - start, pos - start))
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
        buf, start, end, cap = self._buf, self._pos, len(self._buf), self._max
        unpack = _I.unpack_from
        pos, count = start, 0
        while end - pos >= 5 and buf[pos] == _DATA_ROW:
            length = unpack(buf, pos + 1)[0]
            if length < 4 or length > cap:
                self._check_length(length)
            stop = pos + 1 + length
            if stop > end:
                break
            pos, count = stop, count + 1
        self._pos = pos
        return m.DataRows(bytes(buf[start:pos]), count)

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
