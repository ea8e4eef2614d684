"""PostgreSQL protocol v3 messages: the event dataclasses and the wire encoders.

Theory of operation: every message hoopy reads becomes one frozen dataclass
("event") carrying its decoded fields *and* `raw`, the exact wire bytes it came
from, so the proxy forwards what it received instead of re-encoding it.  The
one exception to "one message, one object" is `DataRows`: a run of DataRow
messages is a single event (see codec.py).  `raw` is left out of reprs (it can
be megabytes, or a password), and so is the payload of `PasswordMessage`.

The encoders build the messages hoopy itself originates, toward an agent
(authentication, ParameterStatus, errors, results) or toward PostgreSQL
(startup, SASL, queries).  A string that would contain NUL cannot be framed
as a C string: identifiers and SQL raise ValueError rather than be cut short,
and human-readable error texts have NUL removed so that an error path never
fails.  Integers are unsigned 32-bit where PostgreSQL treats them as opaque
(pids, cancel keys, OIDs) and signed where they carry a sign (type size,
typmod, Execute's row limit).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
SSL_ACCEPTED = b"S"
SSL_REFUSED = b"N"

# fmt: off
__all__ = [
    "CANCEL_REQUEST_CODE", "GSSENC_REQUEST_CODE", "PROTOCOL_3_0", "SSL_ACCEPTED", "SSL_REFUSED",
    "SSL_REQUEST_CODE", "AuthenticationCleartextPassword", "AuthenticationMD5Password",
    "AuthenticationOk", "AuthenticationOther", "AuthenticationSASL", "AuthenticationSASLContinue",
    "AuthenticationSASLFinal", "BackendEvent", "BackendKeyData", "Bind", "BindComplete",
    "CancelRequest", "Close", "CloseComplete", "CommandComplete", "CopyBothResponse", "CopyData",
    "CopyDone", "CopyFail", "CopyInResponse", "CopyOutResponse", "DataRows", "Describe",
    "EmptyQueryResponse", "ErrorResponse", "Execute", "FieldDescription", "Flush", "FrontendEvent",
    "FunctionCall", "FunctionCallResponse", "GSSENCRequest", "NegotiateProtocolVersion", "NoData",
    "NoticeResponse", "NotificationResponse", "ParameterDescription", "ParameterStatus", "Parse",
    "ParseComplete", "Passthrough", "PasswordMessage", "PortalSuspended", "Query", "ReadyForQuery",
    "RowDescription", "SSLAnswer", "SSLRequest", "StartupMessage", "Sync", "Terminate",
    "authentication_cleartext_password", "authentication_ok", "backend_key_data", "bind",
    "bind_complete", "cancel_request", "close", "close_complete", "command_complete", "copy_data",
    "copy_done", "copy_fail", "cstr", "data_row", "describe", "empty_query_response",
    "error_response", "execute", "flush", "frame", "gssenc_request", "negotiate_protocol_version",
    "no_data", "notice_response",
    "parameter_status", "parse", "parse_complete", "password_message", "query", "ready_for_query",
    "row_description", "sasl_initial_response", "sasl_response", "ssl_answer", "ssl_request",
    "startup_message", "sync", "terminate",
]
# fmt: on

_I = struct.Struct("!I")
_H = struct.Struct("!H")
_FIELD = struct.Struct("!IhIhih")  # RowDescription, after the name


# ---- frontend messages (agent → hoopy, hoopy → PostgreSQL) ----------------------------
@dataclass(frozen=True, slots=True)
class SSLRequest:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    key: int = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    params: dict[str, str]
    raw: bytes = field(repr=False)

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database", "")


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """Any 'p' message: a password, a SASL initial response or a SASL response."""

    data: bytes = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Bind:
    """Parameter values are data, not statements: never classified, but recorded."""

    portal: str
    statement: str
    raw: bytes = field(repr=False)
    result_formats: tuple[int, ...] = ()  # empty: all text; one: all that; else per column
    param_formats: tuple[int, ...] = ()  # the same convention, for `params`
    params: tuple[bytes | None, ...] = field(default=(), repr=False)  # None: SQL NULL


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # 'S' statement or 'P' portal
    name: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # 'S' statement or 'P' portal
    name: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Sync:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Flush:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Terminate:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyData:
    """Both directions."""

    data: bytes = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Passthrough:
    """A run of consecutive messages the connection was told to forward unparsed
    (ServerConnection.opaque): `types` holds each message's type byte, in order."""

    types: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyDone:
    """Both directions."""

    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    raw: bytes = field(repr=False)


# ---- backend messages (PostgreSQL → hoopy, hoopy → agent) -----------------------------
@dataclass(frozen=True, slots=True)
class SSLAnswer:
    accepted: bool
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    salt: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    mechanisms: tuple[str, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    data: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    data: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationOther:
    """Kerberos, GSSAPI, SSPI…: methods hoopy does not speak."""

    code: int
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    key: int = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # 'I' idle, 'T' in a transaction, 'E' in a failed transaction
    raw: bytes = field(repr=False)


class FieldDescription(NamedTuple):
    """One column of a RowDescription (a tuple, not an event: results can be wide)."""

    name: str
    table_oid: int = 0
    column_attnum: int = 0
    type_oid: int = 25  # text
    type_size: int = -1
    type_mod: int = -1
    format_code: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DataRows:
    """`count` consecutive DataRow messages; decode with codec.iter_data_rows(raw)."""

    raw: bytes = field(repr=False)
    count: int


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    raw: bytes = field(repr=False)


class _Fields:
    """Accessors shared by ErrorResponse and NoticeResponse."""

    __slots__ = ()
    fields: dict[str, str]

    @property
    def code(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        # 'V' is never localised; 'S' is, and is the only one before PostgreSQL 9.6.
        return self.fields.get("V") or self.fields.get("S", "")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    fields: dict[str, str]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    fields: dict[str, str]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    pid: int
    channel: str
    payload: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ParseComplete:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BindComplete:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CloseComplete:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NoData:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    format: int
    column_formats: tuple[int, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    format: int
    column_formats: tuple[int, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    format: int
    column_formats: tuple[int, ...]
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    raw: bytes = field(repr=False)


# fmt: off
FrontendEvent: TypeAlias = (
    SSLRequest | GSSENCRequest | CancelRequest | StartupMessage | PasswordMessage | Query
    | Parse | Bind | Describe | Execute | Close | Sync | Flush | Terminate | CopyData
    | CopyDone | CopyFail | FunctionCall | Passthrough
)
BackendEvent: TypeAlias = (
    SSLAnswer | AuthenticationOk | AuthenticationCleartextPassword | AuthenticationMD5Password
    | AuthenticationSASL | AuthenticationSASLContinue | AuthenticationSASLFinal
    | AuthenticationOther | ParameterStatus | BackendKeyData | ReadyForQuery | RowDescription
    | DataRows | CommandComplete | EmptyQueryResponse | ErrorResponse | NoticeResponse
    | NotificationResponse | ParseComplete | BindComplete | CloseComplete | NoData
    | PortalSuspended | ParameterDescription | CopyInResponse | CopyOutResponse
    | CopyBothResponse | CopyData | CopyDone | NegotiateProtocolVersion | FunctionCallResponse
)
# fmt: on


# ---- framing helpers ------------------------------------------------------------------
def frame(type_byte: bytes, body: bytes = b"") -> bytes:
    """One typed message: type byte, int32 length (counting itself), body."""
    return type_byte + _I.pack(len(body) + 4) + body


def cstr(text: str) -> bytes:
    """A NUL-terminated string; NUL inside would silently truncate it on the wire."""
    if "\0" in text:
        raise ValueError("string contains NUL and cannot be sent as a C string")
    return text.encode() + b"\0"


def _text(text: str) -> bytes:
    """Human-readable text (error messages): drop NUL instead of failing."""
    return text.replace("\0", "").encode() + b"\0"


def _untyped(code: int, body: bytes = b"") -> bytes:
    return _I.pack(len(body) + 8) + _I.pack(code) + body


# ---- encoders: hoopy → agent ----------------------------------------------------------
def ssl_answer(accepted: bool) -> bytes:
    return SSL_ACCEPTED if accepted else SSL_REFUSED


def authentication_ok() -> bytes:
    return frame(b"R", _I.pack(0))


def authentication_cleartext_password() -> bytes:
    return frame(b"R", _I.pack(3))


def negotiate_protocol_version(minor: int, unrecognized: Sequence[str]) -> bytes:
    """The newest minor version of protocol 3 spoken, and the `_pq_.` options not known."""
    body = _I.pack(minor) + _I.pack(len(unrecognized)) + b"".join(map(cstr, unrecognized))
    return frame(b"v", body)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return frame(b"K", _I.pack(pid) + _I.pack(key))


def ready_for_query(status: str = "I") -> bytes:
    if status not in ("I", "T", "E"):
        raise ValueError(f"invalid transaction status {status!r}")
    return frame(b"Z", status.encode())


def _fields_body(
    severity: str,
    code: str,
    text: str,
    detail: str | None,
    hint: str | None,
    position: int | None = None,
) -> bytes:
    parts = [b"S", _text(severity), b"V", _text(severity), b"C", _text(code), b"M", _text(text)]
    if detail is not None:
        parts += [b"D", _text(detail)]
    if hint is not None:
        parts += [b"H", _text(hint)]
    if position is not None:
        parts += [b"P", _text(str(position))]
    return b"".join(parts) + b"\0"


def error_response(
    code: str,
    message: str,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
) -> bytes:
    return frame(b"E", _fields_body(severity, code, message, detail, hint, position))


def notice_response(message: str, code: str = "00000", severity: str = "NOTICE") -> bytes:
    return frame(b"N", _fields_body(severity, code, message, None, None))


def command_complete(tag: str) -> bytes:
    return frame(b"C", cstr(tag))


def row_description(fields: Sequence[FieldDescription]) -> bytes:
    parts = [_H.pack(len(fields))]
    for f in fields:
        parts.append(cstr(f.name))
        attrs = (f.table_oid, f.column_attnum, f.type_oid, f.type_size, f.type_mod)
        parts.append(_FIELD.pack(*attrs, f.format_code))
    return frame(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_H.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I.pack(len(v)))
            parts.append(v)
    return frame(b"D", b"".join(parts))


def empty_query_response() -> bytes:
    return frame(b"I")


def parse_complete() -> bytes:
    return frame(b"1")


def bind_complete() -> bytes:
    return frame(b"2")


def close_complete() -> bytes:
    return frame(b"3")


def no_data() -> bytes:
    return frame(b"n")


# ---- encoders: hoopy → PostgreSQL -----------------------------------------------------
def ssl_request() -> bytes:
    return _untyped(SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return _untyped(GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    return _untyped(CANCEL_REQUEST_CODE, _I.pack(pid) + _I.pack(key))


def startup_message(params: Mapping[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    body = b"".join(cstr(k) + cstr(v) for k, v in params.items() if k) + b"\0"
    return _untyped(protocol, body)


def password_message(data: bytes) -> bytes:
    """A cleartext or md5 password needs its terminating NUL; pass it in `data` or not."""
    return frame(b"p", data if data.endswith(b"\0") else data + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + _I.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


def query(sql: str) -> bytes:
    return frame(b"Q", cstr(sql))


def parse(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    types = b"".join(_I.pack(t) for t in param_types)
    return frame(b"P", cstr(name) + cstr(sql) + _H.pack(len(param_types)) + types)


def bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    parts = [cstr(portal), cstr(statement), _H.pack(len(param_formats))]
    parts += [_H.pack(f) for f in param_formats]
    parts.append(data_row(params)[5:])  # same layout: count, then length-prefixed values
    parts.append(_H.pack(len(result_formats)))
    parts += [_H.pack(f) for f in result_formats]
    return frame(b"B", b"".join(parts))


def describe(kind: str, name: str) -> bytes:
    return frame(b"D", _kind(kind) + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(b"E", cstr(portal) + struct.pack("!i", max_rows))


def close(kind: str, name: str) -> bytes:
    return frame(b"C", _kind(kind) + cstr(name))


def _kind(kind: str) -> bytes:
    if kind not in ("S", "P"):
        raise ValueError(f"kind must be 'S' or 'P', not {kind!r}")
    return kind.encode()


def sync() -> bytes:
    return frame(b"S")


def flush() -> bytes:
    return frame(b"H")


def terminate() -> bytes:
    return frame(b"X")


def copy_data(data: bytes) -> bytes:
    return frame(b"d", data)


def copy_done() -> bytes:
    return frame(b"c")


def copy_fail(reason: str) -> bytes:
    return frame(b"f", _text(reason))
