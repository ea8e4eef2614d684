"""The agent → backend lane of a statement hoopy has classified before: its compiled steps.

A Query (or Parse) whose text the classifier's cache already answers for — the same
text, or the same sqlkey key with other literals — needs no parse, no classification and
no decision of its own: the cached commands, the statement's own text (for the
recording) and the session's cached decision say everything.  `StatementCheck._seen`
(statementcheck.py) takes that lane; this module holds the steps of it that are byte
and string work, written in Cython's pure-Python mode (see compiled.py): framing a lone
Query straight from the codec's buffer, cutting a statement's text out of a message as
classcache's `_retext` does, and telling whether a cached command is one the lane may
take at all (`plain`).

Everything the lane does not cover returns None / False here, and the caller goes the
full path (codec events, classify(), _check_now): a first sight, several statements, a
text with a ';' inside, a statement whose meaning depends on its literals beyond its
key (set_config: textsettings.py and searchpath.py read its text).  Both builds must
behave alike (tests/protocols/postgres/test_cmdlane.py).

The Bind lane (bindlane.py) takes its compiled steps from here too: framing the usual
extended-protocol batch ([Parse] Bind [Describe] Execute … Sync) straight from the
codec's buffer with its Parse and Binds decoded (`bind_batch`), and a Bind's event,
its values as the recording keeps them, encoded and chained (`record_bind`); the same
rule holds (None: the codec's events, the full path; tests/protocols/postgres/
test_bindlane.py).
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

import base64
import re
import struct
from typing import Any

from hoopy.eventchain import FLUSH_BYTES
from hoopy.eventline import RESERVED, _json_str
from hoopy.policy import Command

# Compiled, these loops beat the library calls they replace; interpreted, not always:
# callers then keep their own way (bodies._f_bind).
COMPILED: bool = bool(cython.compiled)
_H = struct.Struct("!H")  # interpreted reads (compiled: _u16, _i32)
_I32 = struct.Struct("!i")
_QUERY = cython.declare(cython.int, 0x51)  # 'Q'
# The kinds of a plain DML statement (classcache keeps only these by key).
PLAIN_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})
_b64encode = base64.b64encode


@cython.locals(
    buf=bytearray, pos=cython.Py_ssize_t, cap=cython.Py_ssize_t, end=cython.Py_ssize_t,
    length=cython.Py_ssize_t, raw=bytes,
)  # fmt: skip
def lone_query(buf: bytearray, pos: int, cap: int) -> tuple[bytes, str] | None:
    """`(raw, sql)` when the buffer from `pos` holds one whole Query message and nothing
    after it (what a simple-protocol client sends per statement); None for anything
    else, a malformed or non-UTF-8 Query included: the codec's own parse (bodies.py)
    then frames it and raises what it must."""
    end = len(buf)
    if end - pos < 6 or buf[pos] != _QUERY:
        return None
    length = (
        (cython.cast(cython.Py_ssize_t, buf[pos + 1]) << 24)
        | (buf[pos + 2] << 16)
        | (buf[pos + 3] << 8)
        | buf[pos + 4]
    )
    if length < 5 or length > cap or pos + 1 + length != end or buf[end - 1] != 0:
        return None
    raw = bytes(buf[pos:end])
    if raw.find(b"\0", 5) != length:  # the one NUL ends the text
        return None
    try:
        return raw, raw[5:length].decode()
    except UnicodeDecodeError:
        return None


@cython.locals(sql=str, text=str, semi=cython.Py_ssize_t)
def one_text(sql: str) -> str | None:
    """The text of the one statement `sql` holds, as classcache's `_retext` cuts it (blanks
    around it and final semicolons dropped); None when a ';' stands inside it (a
    literal's, or a second statement's: `_retext` splits those with the parser)."""
    text = sql.strip()
    semi = text.find(";")
    if semi < 0:
        return text
    if semi == len(text) - 1:
        return text.rstrip(";").rstrip()
    return None


@cython.locals(f=str)
def plain(cmd: Command) -> bool:
    """May the lane take a statement classified as `cmd`: one plain DML statement (no
    opaque part), calling no set_config (whose arguments, literals the key does not
    keep, decide what it changes: textsettings.py, searchpath.py)?  What else the full
    path does for other statements (COPY, PREPARE and other session state, EXECUTE's
    names, text settings) does nothing for these."""
    if cmd.opaque or not cmd.kinds <= PLAIN_KINDS:
        return False
    for f in cmd.functions:
        if f.endswith("set_config"):
            return False
    for f in cmd.maybe_functions:  # noqa: SIM110 (a loop compiles to C, a generator not)
        if f.endswith("set_config"):
            return False
    return True


@cython.cfunc
@cython.inline
@cython.locals(raw=bytes, pos=cython.Py_ssize_t)
@cython.returns(cython.Py_ssize_t)
def _u16(raw: bytes, pos: int) -> int:
    return (cython.cast(cython.Py_ssize_t, raw[pos]) << 8) | raw[pos + 1]


@cython.cfunc
@cython.inline
@cython.locals(raw=bytes, pos=cython.Py_ssize_t, u=cython.longlong)
@cython.returns(cython.Py_ssize_t)
def _i32(raw: bytes, pos: int) -> int:
    u = (
        (cython.cast(cython.longlong, raw[pos]) << 24)
        | (raw[pos + 1] << 16)
        | (raw[pos + 2] << 8)
        | raw[pos + 3]
    )
    return cython.cast(cython.Py_ssize_t, u - 0x100000000 if u >= 0x80000000 else u)


@cython.ccall  # a C call from this module's own callers
@cython.locals(
    raw=bytes, end=cython.Py_ssize_t, p0=cython.Py_ssize_t, p1=cython.Py_ssize_t,
    pos=cython.Py_ssize_t, n=cython.Py_ssize_t, _i=cython.Py_ssize_t, size=cython.Py_ssize_t,
    params=list, shorts=list,
)  # fmt: skip
def bind_fields(
    raw: bytes,
) -> tuple[str, str, tuple[int, ...], tuple[bytes | None, ...], tuple[int, ...]] | None:
    """`(portal, statement, param_formats, params, result_formats)` of a well-formed Bind
    message (`raw`, its whole bytes); None for anything else: bodies._f_bind then says
    what is wrong with it.  Every Bind is decoded (its values are recorded)."""
    end = len(raw)
    p0 = raw.find(b"\0", 5)
    if p0 < 0:
        return None
    p1 = raw.find(b"\0", p0 + 1)
    if p1 < 0:
        return None
    pos = p1 + 3
    if pos > end:
        return None
    n = _u16(raw, p1 + 1) if cython.compiled else _H.unpack_from(raw, p1 + 1)[0]
    if pos + 2 * n + 2 > end:
        return None
    shorts: list[int] = []
    for _i in range(n):
        shorts.append(_u16(raw, pos) if cython.compiled else _H.unpack_from(raw, pos)[0])
        pos += 2
    param_formats = tuple(shorts)
    n = _u16(raw, pos) if cython.compiled else _H.unpack_from(raw, pos)[0]
    pos += 2
    params: list[bytes | None] = []
    for _i in range(n):
        if pos + 4 > end:
            return None
        size = _i32(raw, pos) if cython.compiled else _I32.unpack_from(raw, pos)[0]
        pos += 4
        if size == -1:
            params.append(None)
            continue
        if size < -1 or pos + size > end:
            return None
        params.append(raw[pos : pos + size])
        pos += size
    if pos + 2 > end:
        return None
    n = _u16(raw, pos) if cython.compiled else _H.unpack_from(raw, pos)[0]
    pos += 2
    if pos + 2 * n != end:
        return None
    shorts = []
    for _i in range(n):
        shorts.append(_u16(raw, pos) if cython.compiled else _H.unpack_from(raw, pos)[0])
        pos += 2
    try:
        portal = raw[5:p0].decode()
        statement = raw[p0 + 1 : p1].decode()
    except UnicodeDecodeError:
        return None
    return portal, statement, param_formats, tuple(params), tuple(shorts)


_TERMINATE = cython.declare(cython.int, 0x58)  # 'X': the codec's _next changes phase


@cython.locals(
    buf=bytearray, start=cython.Py_ssize_t, cap=cython.Py_ssize_t, pos=cython.Py_ssize_t,
    end=cython.Py_ssize_t, length=cython.Py_ssize_t, stop=cython.Py_ssize_t, t=cython.int,
    run=cython.Py_ssize_t, types=bytearray,
)  # fmt: skip
def frontend_run(
    buf: bytearray, start: int, cap: int, allowed: frozenset[int], opaque: frozenset[int]
) -> tuple[int, list[tuple[int, int, int, bytes | None]]]:
    """`(stop, marks)` of the complete frontend messages from `start`, in one pass:
    `(type, start, stop, None)` per message, `(0, start, stop, types)` per run of
    `opaque` ones (a Passthrough).  It stops at the first message that is incomplete,
    not in `allowed`, of a length outside 4..cap, or a Terminate, and leaves that one to
    the codec's message-by-message `_next`, which raises or changes the phase as it
    must: the events are the ones `_next` would make, with two calls fewer each."""
    end = len(buf)
    pos, run = start, -1
    types = bytearray()
    marks: list[tuple[int, int, int, bytes | None]] = []
    while end - pos >= 5:
        t = buf[pos]
        if t == _TERMINATE or t not in allowed:
            break
        length = (
            (cython.cast(cython.Py_ssize_t, buf[pos + 1]) << 24)
            | (buf[pos + 2] << 16)
            | (buf[pos + 3] << 8)
            | buf[pos + 4]
        )
        if length < 4 or length > cap:
            break
        stop = pos + 1 + length
        if stop > end:
            break
        if t in opaque:
            if run < 0:
                run = pos
            types.append(t)
        else:
            if run >= 0:
                marks.append((0, run, pos, bytes(types)))
                run = -1
                types = bytearray()
            marks.append((t, pos, stop, None))
        pos = stop
    if run >= 0:
        marks.append((0, run, pos, bytes(types)))
    return pos, marks


# ---- the Bind lane: an extended-protocol batch of a statement seen before ---------------
_PARSE = cython.declare(cython.int, 0x50)  # 'P'
_BIND = cython.declare(cython.int, 0x42)  # 'B'
_DESCRIBE = cython.declare(cython.int, 0x44)  # 'D'
_EXECUTE = cython.declare(cython.int, 0x45)  # 'E'
_SYNC = cython.declare(cython.int, 0x53)  # 'S'
SYNC = b"S\x00\x00\x00\x04"


@cython.cfunc
@cython.inline
@cython.locals(buf=bytearray, pos=cython.Py_ssize_t)
@cython.returns(cython.Py_ssize_t)
def _length(buf: bytearray, pos: int) -> int:
    """The length word of the message at `pos` (unsigned, as the codec's header reads it)."""
    return (
        (cython.cast(cython.Py_ssize_t, buf[pos + 1]) << 24)
        | (buf[pos + 2] << 16)
        | (buf[pos + 3] << 8)
        | buf[pos + 4]
    )


@cython.ccall  # a C call from this module's own callers
@cython.locals(
    raw=bytes, name_end=cython.Py_ssize_t, sql_end=cython.Py_ssize_t, count=cython.Py_ssize_t
)
def parse_fields(raw: bytes) -> tuple[str, str] | None:
    """`(name, sql)` of a Parse message (`raw`, its whole bytes) that bodies._f_parse
    accepts; None for anything else (it then says what is wrong)."""
    name_end = raw.find(b"\0", 5)
    if name_end < 0:
        return None
    sql_end = raw.find(b"\0", name_end + 1)
    if sql_end < 0 or sql_end + 3 > len(raw):
        return None
    count = _u16(raw, sql_end + 1) if cython.compiled else _H.unpack_from(raw, sql_end + 1)[0]
    if sql_end + 3 + 4 * count != len(raw):
        return None
    try:
        return raw[5:name_end].decode(), raw[name_end + 1 : sql_end].decode()
    except UnicodeDecodeError:
        return None


@cython.locals(
    buf=bytearray, pos=cython.Py_ssize_t, cap=cython.Py_ssize_t, end=cython.Py_ssize_t,
    last=cython.Py_ssize_t, p=cython.Py_ssize_t, stop=cython.Py_ssize_t,
    length=cython.Py_ssize_t, t=cython.int, state=cython.int, start=cython.Py_ssize_t,
    types=bytearray, binds=list, raw=bytes,
)  # fmt: skip
def bind_batch(buf: bytearray, pos: int, cap: int) -> list[tuple[Any, ...]] | None:
    """The usual extended-protocol batch, when the buffer from `pos` holds exactly one
    and nothing after it: segments of an optional Parse then one or more Bind
    [Describe] Execute, then Sync (pgbench -M extended and -M prepared, asyncpg, psycopg,
    their executemany and pipelines).  Returns one `(parse, name, sql, run, types,
    binds)` per segment: the Parse's bytes, statement name and text (None, "", ""
    without one), the bytes and type bytes of the Bind … Execute run (the codec's
    Passthrough of them) and each Bind's `bind_fields`; the Sync is `SYNC`.  None for
    anything else, a malformed or over-long message included: the codec then frames it
    message by message and raises what it must.  The caller (the codec) has checked
    its phase and that Bind, Describe and Execute are opaque to it."""
    end = len(buf)
    last = end - 5  # where the Sync must start
    if last - pos < 5 or buf[last] != _SYNC or _length(buf, last) != 4:
        return None
    segments: list[tuple[Any, ...]] = []
    p = pos
    while p < last:
        parse = None
        name = sql = ""
        if buf[p] == _PARSE:
            length = _length(buf, p)
            stop = p + 1 + length
            if length < 4 or length > cap or stop > last:
                return None
            raw = bytes(buf[p:stop])
            fields = parse_fields(raw)
            if fields is None:
                return None
            name, sql = fields
            parse = raw
            p = stop
        start = p
        types = bytearray()
        binds: list[Any] = []
        # 0: a Bind next (or the next segment, or the Sync); 1: after a Bind; 2: after
        # its Describe
        state = 0
        while p < last:
            if last - p < 5:
                return None
            t = buf[p]
            if t == _PARSE and state == 0 and binds:
                break  # the next segment
            length = _length(buf, p)
            stop = p + 1 + length
            if length < 4 or length > cap or stop > last:
                return None
            if t == _BIND and state == 0:
                fields = bind_fields(bytes(buf[p:stop]))
                if fields is None:
                    return None
                binds.append(fields)
                state = 1
            elif t == _DESCRIBE and state == 1:
                state = 2
            elif t == _EXECUTE and state != 0:
                state = 0
            else:
                return None
            types.append(t)
            p = stop
        if state != 0 or not binds:
            return None
        segments.append((parse, name, sql, bytes(buf[start:p]), bytes(types), binds))
    return segments


# Control characters no text value of the usual types holds, and binary-format values
# (an int4 1 is 00 00 00 01) do: such values are recorded as base64 (resultrun.py too).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@cython.cfunc
@cython.locals(v=bytes, i=cython.Py_ssize_t, c=cython.int)
@cython.returns(cython.bint)
def _plain_bytes(v: bytes) -> bool:
    """No byte of `_CONTROL` in `v` (compiled: a loop; interpreted: the expression)."""
    if not cython.compiled:
        return _CONTROL.search(v) is None
    for i in range(len(v)):
        c = v[i]
        if c < 0x20 and c != 0x09 and c != 0x0A and c != 0x0D:
            return False
    return True


@cython.ccall  # a C call from this module's own callers
def shown(v: bytes | None) -> Any:
    """A value as the recording keeps it: text when it is plain UTF-8 text, else its
    exact bytes as {"b64": …}."""
    if v is None:
        return None
    if _plain_bytes(v):
        try:
            return v.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": _b64encode(v).decode()}


@cython.ccall  # a C call from this module's own callers
@cython.locals(
    size=cython.Py_ssize_t, i=cython.Py_ssize_t, n=cython.Py_ssize_t, nf=cython.Py_ssize_t,
    truncated=cython.bint, out=list,
)  # fmt: skip
def bind_values(portal: str, formats: tuple[int, ...], values: tuple[bytes | None, ...],
                max_bytes: int) -> dict[str, Any]:  # fmt: skip
    """What one execution binds, as its `bind` event records it (resultlog.bind_values):
    the portal and the values (text-format values as text, binary ones and invalid
    UTF-8 as base64), at most `max_bytes` of them (then `"truncated": true`)."""
    out = []
    size = 0
    truncated = False
    n = len(values)
    nf = len(formats)
    for i in range(n):
        v = values[i]
        if v is not None:
            if size + len(v) > max_bytes:
                v = v[: max(max_bytes - size, 0)]
                truncated = True
            size += len(v)
        fmt = formats[0] if nf == 1 else formats[i] if i < nf else 0
        if fmt and v is not None:
            out.append({"b64": _b64encode(v).decode()})
        else:
            out.append(shown(v))
        if truncated:
            break
    fields: dict[str, Any] = {"portal": portal, "params": out}
    if truncated:
        fields["truncated"] = True
        fields["param_count"] = n
    return fields


@cython.cfunc
def _value_json(v: Any) -> str:
    """One recorded value (`shown`'s or a b64 dict) as the encoder writes it."""
    if v is None:
        return "null"
    if type(v) is str:
        return _json_str(v)
    return '{"b64":' + _json_str(v["b64"]) + "}"


@cython.ccall  # a C call from this module's own callers
@cython.locals(fields=dict, params=list)
def bind_members(fields: dict[str, Any]) -> bytes:
    """`bind_values`'s dict as the recording's encoder writes its members (eventline:
    b"," + _dumps(fields)[1:-1]), without the encoder."""
    params = fields["params"]
    parts = [',"portal":', _json_str(fields["portal"]), ',"params":[']
    parts.append(",".join([_value_json(v) for v in params]))
    parts.append("]")
    if "truncated" in fields:
        parts.append(',"truncated":true,"param_count":')
        parts.append(str(fields["param_count"]))
    return "".join(parts).encode("utf-8", "backslashreplace")


def record_bind(
    session: Any,
    portal: str,
    formats: tuple[int, ...],
    values: tuple[bytes | None, ...],
    max_bytes: int,
    static: tuple[bytes, dict[str, Any]],
) -> None:
    """`session.record_later("bind", bind_values(…), static)`: the Bind's event chained,
    written before the batch is forwarded (Pipeline._record_bound).  Its members are
    encoded here and chained by the recording's EventChain directly, as resultrun.py
    chains results; a log that is closed, failed or holding FLUSH_BYTES unwritten
    takes `record_later` and its errors."""
    fields = bind_values(portal, formats, values, max_bytes)
    log = session.log
    chain = getattr(log, "_chain", None)
    if chain is None or log._closed or chain.failed is not None:
        session.record_later("bind", fields, static)
        return
    keys = static[1].keys()
    if len(chain.pending) >= FLUSH_BYTES or not (
        RESERVED.isdisjoint(keys) and keys.isdisjoint(fields)
    ):
        session.record_later("bind", fields, static)
        return
    members = bind_members(fields)
    with log._lock:
        chain.add("bind", fields, members, static, False)
