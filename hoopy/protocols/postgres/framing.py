"""PostgreSQL message framing: the per-message loops of codec.py, compiled when built.

Every message through hoopy passes here once, so this is where Python's per-operation
cost showed first (see compiled.py for how it is built and how to tell).  The functions
read a codec's buffer (a bytearray) from an offset and return offsets: no object per
message, no state of their own.  They are written in Cython's pure-Python mode: the
`cython.*` declarations type the loop variables as C integers when compiled and do
nothing when interpreted; `cython.compiled` branches only where the C form of a step
(a length word read as four bytes) would be slower interpreted than the library call.
Both builds must behave byte for byte alike (tests/protocols/postgres/test_framing.py).

Every length is checked before anything past the header is trusted; what breaks the
protocol raises ProtocolViolation, whose message never quotes the bytes received.
"""

from __future__ import annotations

import struct

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

from hoopy.protocols.postgres.bodies import _RELAYED, ProtocolViolation

_I = struct.Struct("!I")

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
    """The big-endian length word at `pos` (the caller made sure 4 bytes are there)."""
    if cython.compiled:
        return (
            (cython.cast(cython.Py_ssize_t, buf[pos]) << 24)
            | (buf[pos + 1] << 16)
            | (buf[pos + 2] << 8)
            | buf[pos + 3]
        )
    return _I.unpack_from(buf, pos)[0]  # type: ignore[no-any-return, unused-ignore]


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
    length = _length(buf, pos + 1)
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
        length = _length(buf, pos + 1)
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
        length = _length(buf, pos + 1)
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
        length = _length(buf, pos + 1)
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
