"""PostgreSQL message bodies → events: one checked parser per message type (sans-I/O).

The codec (codec.py) frames messages and picks the parser by type byte; each parser
here gets the message's exact bytes (`raw`, type byte and length included) and
returns its event, or raises ProtocolViolation when the body is not exactly what its
fields say.  Agents' strings must be valid UTF-8 (strict); the server's are decoded
leniently, since they are only shown.  Runs of DataRow messages, which the codec only
frames, are decoded by framing.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from hoopy.protocols.postgres import messages as m
from hoopy.protocols.postgres.cmdlane import COMPILED as _FAST_BINDS
from hoopy.protocols.postgres.cmdlane import bind_fields

_I = struct.Struct("!I")
_i = struct.Struct("!i")
_H = struct.Struct("!H")
_FIELD = struct.Struct("!IhIhih")  # RowDescription, after the name
_DATA_ROW = 0x44  # 'D'
_READY = 0x5A  # 'Z'

E = TypeVar("E")


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection cannot be used any more."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


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
    """Every Bind is parsed (its values are recorded): by cmdlane.bind_fields when compiled,
    and here, without the generic reader, to say what is wrong with a malformed one."""
    fields = bind_fields(raw) if _FAST_BINDS else None
    if fields is not None:  # (portal, statement, param formats, params, result formats)
        return m.Bind(fields[0], fields[1], raw, fields[4], fields[2], fields[3])
    end = len(raw)
    p0 = raw.find(b"\0", 5)
    p1 = raw.find(b"\0", p0 + 1) if p0 >= 0 else -1
    if p1 < 0:
        raise ProtocolViolation("malformed Bind message")
    portal, statement = _decode(raw[5:p0], "Bind", True), _decode(raw[p0 + 1 : p1], "Bind", True)
    try:
        pos = p1 + 3
        nf = _H.unpack_from(raw, p1 + 1)[0]
        param_formats = struct.unpack_from(f"!{nf}H", raw, pos) if nf else ()
        pos += 2 * nf
        count = _H.unpack_from(raw, pos)[0]
        pos += 2
        params: list[bytes | None] = []
        for _ in range(count):
            size = _i.unpack_from(raw, pos)[0]
            pos += 4
            if size == -1:
                params.append(None)
                continue
            if size < -1 or pos + size > end:
                raise ProtocolViolation("malformed Bind message")
            params.append(raw[pos : pos + size])
            pos += size
        nr = _H.unpack_from(raw, pos)[0]
        formats = struct.unpack_from(f"!{nr}H", raw, pos + 2) if nr else ()
    except struct.error:
        raise ProtocolViolation("malformed Bind message") from None
    if pos + 2 + 2 * nr != end:
        raise ProtocolViolation("malformed Bind message")
    return m.Bind(portal, statement, raw, formats, param_formats, tuple(params))


def decode_binds(raw: bytes, types: bytes) -> list[m.Bind]:
    """The Bind messages of a Passthrough run (`raw`, with its `types`), parsed."""
    out: list[m.Bind] = []
    pos = 0
    for t in types:
        stop = pos + 1 + _I.unpack_from(raw, pos + 1)[0]
        if t == 0x42:
            out.append(_f_bind(raw[pos:stop]))
        pos = stop
    return out


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
_SUSPENDED = ord("s")  # PortalSuspended: an Execute's row limit was reached
_PARAMETERS = ord("t")
_BODILESS = frozenset(b"I123ns")
_RELAYED = frozenset(b"DTCZt") | _BODILESS


def decode_row_description(raw: bytes) -> m.RowDescription:
    """Parse one RowDescription message (remembered: a session's queries repeat)."""
    return _b_row_description(raw)


# Until the first ReadyForQuery the server may only authenticate and report settings.
_BACKEND_STARTUP_TYPES = frozenset(b"RENSKZv")
_BACKEND_NORMAL_TYPES = frozenset(_BACKEND) - frozenset(b"RKv") | {_DATA_ROW}
