"""PostgreSQL message framing: the per-message loops of codec.py, compiled when built.

Every message through hoopy passes here once, so this is where Python's per-operation
cost showed first (see compiled.py for how it is built and how to tell).  The functions
read a codec's buffer (a bytearray) from an offset and return offsets: no object per
message, no state of their own.  They are written in Cython's pure-Python mode: the
`cython.*` declarations type the loop variables as C integers when compiled and do
nothing when interpreted; `cython.compiled` branches only where the C form of a step
(a length word read as four bytes) would be slower interpreted than the library call.
Also here: decoding the values of DataRow runs (for the recording, for masking).
Both builds must behave byte for byte alike (tests/protocols/postgres/test_framing.py).

Every length is checked before anything past the header is trusted; what breaks the
protocol raises ProtocolViolation, whose message never quotes the bytes received.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

from hoopy.protocols.postgres.bodies import _RELAYED, ProtocolViolation

_I = struct.Struct("!I")
_be32 = _I.unpack_from  # the length word, interpreted (compiled: _length, _u32)
_H = struct.Struct("!H")

# Backend message types, C constants when compiled (the loops compare bytes with them).
_DATA_ROW = cython.declare(cython.int, 0x44)  # 'D'
_ROW_DESCRIPTION = cython.declare(cython.int, 0x54)  # 'T'
_COMPLETE = cython.declare(cython.int, 0x43)  # 'C'
_READY = cython.declare(cython.int, 0x5A)  # 'Z'
_PARAMETERS = cython.declare(cython.int, 0x74)  # 't' ParameterDescription
_EMPTY_QUERY = cython.declare(cython.int, 0x49)  # 'I'
_PARSE_COMPLETE = cython.declare(cython.int, 0x31)  # '1'
_BIND_COMPLETE = cython.declare(cython.int, 0x32)  # '2'
_CLOSE_COMPLETE = cython.declare(cython.int, 0x33)  # '3'
_NO_DATA = cython.declare(cython.int, 0x6E)  # 'n'
_SUSPENDED = cython.declare(cython.int, 0x73)  # 's' PortalSuspended


def bad_length(length: int, cap: int) -> ProtocolViolation:
    if length < 4:
        return ProtocolViolation("invalid message length")
    return ProtocolViolation(f"message of {length} bytes exceeds the limit of {cap}", "54000")


@cython.cfunc
@cython.inline
@cython.locals(buf=bytearray, pos=cython.Py_ssize_t)
@cython.returns(cython.Py_ssize_t)
def _length(buf: bytearray, pos: int) -> int:
    """The big-endian length word at `pos` (the caller made sure 4 bytes are there);
    the loops call it only compiled, and `_be32` interpreted (no call per message)."""
    return (
        (cython.cast(cython.Py_ssize_t, buf[pos]) << 24)
        | (buf[pos + 1] << 16)
        | (buf[pos + 2] << 8)
        | buf[pos + 3]
    )


@cython.cfunc
@cython.inline
@cython.locals(raw=bytes, pos=cython.Py_ssize_t)
@cython.returns(cython.Py_ssize_t)
def _u32(raw: bytes, pos: int) -> int:
    """`_length` of a message's bytes (the caller made sure 4 bytes are there)."""
    return (
        (cython.cast(cython.Py_ssize_t, raw[pos]) << 24)
        | (raw[pos + 1] << 16)
        | (raw[pos + 2] << 8)
        | raw[pos + 3]
    )


@cython.locals(
    buf=bytearray, pos=cython.Py_ssize_t, cap=cython.Py_ssize_t,
    avail=cython.Py_ssize_t, length=cython.Py_ssize_t,
)  # fmt: skip
def header(buf: bytearray, pos: int, allowed: frozenset[int], cap: int) -> int:
    """The length word of the typed message at `pos` once all of it is buffered; 0 while
    it is incomplete; -1 when its type is not in `allowed` (known from its first byte).
    A length outside 4..cap raises as soon as the header is there."""
    avail = len(buf) - pos
    if avail <= 0:
        return 0
    if buf[pos] not in allowed:
        return -1
    if avail < 5:
        return 0
    length = _length(buf, pos + 1) if cython.compiled else _be32(buf, pos + 1)[0]
    if length < 4 or length > cap:
        raise bad_length(length, cap)
    if avail <= length:
        return 0
    return length


@cython.locals(
    buf=bytearray, start=cython.Py_ssize_t, cap=cython.Py_ssize_t, pos=cython.Py_ssize_t,
    end=cython.Py_ssize_t, length=cython.Py_ssize_t, count=cython.Py_ssize_t,
    stop=cython.Py_ssize_t,
)  # fmt: skip
def data_rows(buf: bytearray, start: int, cap: int) -> tuple[int, int]:
    """`(stop, count)` of the run of complete DataRow messages from `start`."""
    end = len(buf)
    pos, count = start, 0
    while end - pos >= 5 and buf[pos] == _DATA_ROW:
        length = _length(buf, pos + 1) if cython.compiled else _be32(buf, pos + 1)[0]
        if length < 4 or length > cap:
            raise bad_length(length, cap)
        stop = pos + 1 + length
        if stop > end:
            break
        pos, count = stop, count + 1
    return pos, count


@cython.locals(
    buf=bytearray, start=cython.Py_ssize_t, cap=cython.Py_ssize_t, pos=cython.Py_ssize_t,
    end=cython.Py_ssize_t, length=cython.Py_ssize_t, stop=cython.Py_ssize_t, t=cython.int,
)  # fmt: skip
def opaque_run(buf: bytearray, start: int, cap: int, opaque: frozenset[int]) -> tuple[int, bytes]:
    """`(stop, types)` of the run of complete messages from `start` whose types are all in
    `opaque` (the frontend's Passthrough)."""
    end = len(buf)
    pos = start
    types = bytearray()
    while end - pos >= 5:
        t = buf[pos]
        if t not in opaque:
            break
        length = _length(buf, pos + 1) if cython.compiled else _be32(buf, pos + 1)[0]
        if length < 4 or length > cap:
            raise bad_length(length, cap)
        stop = pos + 1 + length
        if stop > end:
            break
        types.append(t)
        pos = stop
    return pos, bytes(types)


@cython.locals(
    buf=bytearray, start=cython.Py_ssize_t, cap=cython.Py_ssize_t, pos=cython.Py_ssize_t,
    end=cython.Py_ssize_t, length=cython.Py_ssize_t, stop=cython.Py_ssize_t, t=cython.int,
    rows_from=cython.Py_ssize_t, last=cython.Py_ssize_t, relayed=cython.bint,
)  # fmt: skip
def relay_run(buf: bytearray, start: int, cap: int) -> tuple[int, list[tuple[int, int, int]]]:
    """`(stop, marks)` of the run of complete backend messages from `start` that a
    session without masking forwards unchanged (see `ClientConnection.relay_run`):
    DataRow, RowDescription, CommandComplete, ReadyForQuery, ParameterDescription and
    the bodiless acknowledgements.  `marks` are `(type, start, stop)` relative to
    `start`: one per RowDescription, CommandComplete, ReadyForQuery,
    EmptyQueryResponse, PortalSuspended, ParseComplete and run of DataRows."""
    end = len(buf)
    pos, rows_from = start, -1
    marks: list[tuple[int, int, int]] = []
    while end - pos >= 5:
        t = buf[pos]
        if cython.compiled:  # a C switch
            relayed = t in (
                _DATA_ROW, _ROW_DESCRIPTION, _COMPLETE, _READY, _PARAMETERS, _EMPTY_QUERY,
                _PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE, _NO_DATA, _SUSPENDED,
            )  # fmt: skip
        else:  # one set lookup
            relayed = t in _RELAYED
        if not relayed:
            break
        length = _length(buf, pos + 1) if cython.compiled else _be32(buf, pos + 1)[0]
        if length < 4 or length > cap:
            raise bad_length(length, cap)
        stop = pos + 1 + length
        if stop > end:
            break
        if t == _DATA_ROW:
            if rows_from < 0:
                rows_from = pos
            pos = stop
            continue
        if rows_from >= 0:
            marks.append((_DATA_ROW, rows_from - start, pos - start))
            rows_from = -1
        if t == _ROW_DESCRIPTION:  # parsed (and cached) by the proxy when it records
            marks.append((t, pos - start, stop - start))
        elif t == _COMPLETE:
            last = stop - 1
            if buf.find(0, pos + 5, stop) != last:
                raise ProtocolViolation("malformed CommandComplete message")
            marks.append((t, pos - start, stop - start))
        elif t == _READY:
            if length != 5 or buf[pos + 5] not in b"ITE":
                raise ProtocolViolation("malformed ReadyForQuery message")
            marks.append((t, pos - start, stop - start))
        elif t != _PARAMETERS:  # bodiless
            if length != 4:
                raise ProtocolViolation(f"malformed {chr(t)!r} message")
            if t in (_EMPTY_QUERY, _SUSPENDED, _PARSE_COMPLETE):
                marks.append((t, pos - start, stop - start))
        pos = stop
    if rows_from >= 0:
        marks.append((_DATA_ROW, rows_from - start, pos - start))
    return pos, marks


# ---- DataRow values -------------------------------------------------------------------
@cython.locals(
    raw=bytes, pos=cython.Py_ssize_t, stop=cython.Py_ssize_t, count=cython.Py_ssize_t,
    _i=cython.Py_ssize_t, size=cython.Py_ssize_t,
)  # fmt: skip
def data_row_values(raw: bytes, pos: int, stop: int) -> list[bytes | None]:
    """The values of the DataRow whose column count is at `pos` and which ends at
    `stop` (NULL as None); every length is checked against `stop`."""
    if stop - pos < 2:
        raise ProtocolViolation("malformed DataRow message")
    if cython.compiled:  # noqa: SIM108
        count = (raw[pos] << 8) | raw[pos + 1]
    else:
        count = _H.unpack_from(raw, pos)[0]
    pos += 2
    values: list[bytes | None] = []
    for _i in range(count):
        if pos + 4 > stop:
            raise ProtocolViolation("malformed DataRow message")
        size = _u32(raw, pos) if cython.compiled else _be32(raw, pos)[0]
        pos += 4
        if size == 0xFFFFFFFF:  # -1: NULL
            values.append(None)
            continue
        if size > 0x7FFFFFFF or pos + size > stop:  # any other negative length
            raise ProtocolViolation("malformed DataRow message")
        values.append(raw[pos : pos + size])
        pos += size
    if pos != stop:
        raise ProtocolViolation("malformed DataRow message")
    return values


@cython.locals(
    raw=bytes, pos=cython.Py_ssize_t, end=cython.Py_ssize_t, limit=cython.Py_ssize_t,
    stop=cython.Py_ssize_t, n=cython.Py_ssize_t,
)  # fmt: skip
def decode_data_rows(
    raw: bytes, pos: int, end: int, limit: int
) -> tuple[list[list[bytes | None]], int]:
    """The values of at most `limit` DataRow messages of raw[pos:end], and the offset
    after the last one decoded (== end when all were)."""
    rows: list[list[bytes | None]] = []
    n = 0
    while pos < end and n < limit:
        if end - pos < 7 or raw[pos] != _DATA_ROW:
            raise ProtocolViolation("malformed DataRow message")
        stop = pos + 1 + (_u32(raw, pos + 1) if cython.compiled else _be32(raw, pos + 1)[0])
        if stop > end:
            raise ProtocolViolation("malformed DataRow message")
        rows.append(data_row_values(raw, pos + 5, stop))
        n += 1
        pos = stop
    return rows, pos


@cython.locals(raw=bytes, pos=cython.Py_ssize_t, stop=cython.Py_ssize_t)
def iter_data_rows(
    raw: bytes, pos: int = 0, end: int | None = None
) -> Iterator[list[bytes | None]]:
    """Decode the DataRow messages concatenated in `raw[pos:end]` (a `DataRows.raw`, or
    a DataRow run of `ClientConnection.relay_run`)."""
    last = len(raw) if end is None else end
    while pos < last:
        if last - pos < 7 or raw[pos] != _DATA_ROW:
            raise ProtocolViolation("malformed DataRow message")
        stop = pos + 1 + (_u32(raw, pos + 1) if cython.compiled else _be32(raw, pos + 1)[0])
        if stop > last:
            raise ProtocolViolation("malformed DataRow message")
        yield data_row_values(raw, pos + 5, stop)
        pos = stop
