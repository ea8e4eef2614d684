"""The backend → agent path of a session without masking, compiled when built.

What every statement's answer goes through (answers.py's `Answers._relay_backend` is
`relay_backend` here): the runs of ordinary messages the codec frames
(`ClientConnection.relay_run`) are recorded and sent on as the bytes they came in.  Per
run: the column names of a RowDescription (cached per description: a session's queries
repeat), the first rows of each statement (`add_rows`: the recording keeps at most
`record_rows` rows and `record_bytes` bytes), its CommandComplete as a `result` event
(encoded here and chained by the recording's EventChain, no Python frame when
compiled), each ReadyForQuery; then the events are written and the run is sent.

Everything rare stays in answers.py, in Python, as it was: errors, notices,
ParameterStatus, COPY, a recording that is closed, failed or full (the ordinary
`session.record_later` path with its errors), masking sessions (they never come here).
Written in Cython's pure-Python mode (see compiled.py): the same code runs interpreted
and must record the same bytes (tests/protocols/postgres/test_relay_builds.py).
"""

from __future__ import annotations

import base64
import re
from typing import Any

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

from hoopy.eventchain import FLUSH_BYTES
from hoopy.eventline import _dumps, _json_str
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.bodies import ProtocolViolation
from hoopy.protocols.postgres.framing import decode_data_rows
from hoopy.protocols.postgres.framing import relay_run as _framing_relay_run

# Control characters no text value of the usual types holds, and binary-format values
# (an int4 1 is 00 00 00 01) do: such values are recorded as base64 (resultlog._show).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_NEED_DATA = pg.NEED_DATA
_READY_EVENT = pg.ReadyForQuery
_NORMAL = pg.Phase.NORMAL
_b64encode = base64.b64encode


@cython.locals(start=cython.Py_ssize_t, stop=cython.Py_ssize_t, size=cython.Py_ssize_t)
def add_rows(result: Any, raw: bytes, start: int, stop: int) -> None:
    """ResultLog.add_rows: the DataRow messages of raw[start:stop], as the recording
    keeps them (text values as text, others as {"b64": …}), up to the log's caps."""
    if result.truncated:
        return
    rows: list[Any] = result.rows
    size = result.size
    max_bytes = result.max_bytes
    control = _CONTROL.search
    decoded, upto = decode_data_rows(raw, start, stop, result.max_rows - len(rows))
    for values in decoded:
        if size >= max_bytes:
            result.truncated = True
            break
        row: list[Any] = []
        for v in values:
            if v is None:
                row.append(None)
                continue
            size += len(v)
            if control(v) is None:
                try:
                    row.append(v.decode())
                    continue
                except UnicodeDecodeError:
                    pass
            row.append({"b64": _b64encode(v).decode()})
        rows.append(row)
    else:
        if upto < stop:
            result.truncated = True  # more rows than max_rows
    result.size = size


@cython.cfunc
def _value_json(v: Any) -> str:
    """One recorded value as JSON text (what the encoder makes of it)."""
    if v is None:
        return "null"
    if type(v) is str:
        return _json_str(v)
    if type(v) is dict and len(v) == 1:
        b64 = v.get("b64")
        if type(b64) is str:
            return '{"b64":' + _json_str(b64) + "}"
    return _dumps(v).decode("utf-8", "surrogateescape")  # not made by add_rows


@cython.ccall
def result_members(tag: str, rows: list[Any], columns: Any, truncated: Any) -> bytes:
    """`,"tag":…,"rows":…[,"columns":…][,"truncated":true]`: the bytes the encoder makes
    of ResultLog.take()'s dict (the same keys, in its order)."""
    parts = [',"tag":', _json_str(tag), ',"rows":[']
    first = True
    for row in rows:
        if not first:
            parts.append(",")
        first = False
        if type(row) is not list:
            parts.append(_dumps(row).decode("utf-8", "surrogateescape"))
            continue
        parts.append("[")
        parts.append(",".join([_value_json(v) for v in row]))
        parts.append("]")
    parts.append("]")
    if columns:
        parts.append(',"columns":[')
        parts.append(",".join([_json_str(c) for c in columns]))
        parts.append("]")
    if truncated:
        parts.append(',"truncated":true')
    return "".join(parts).encode("utf-8", "backslashreplace")


@cython.cfunc
def _record_result(self: Any, tag: str) -> None:
    """Answers._record_result(tag) without a frame: the statement's result event,
    chained (written with the run, before the agent sees it).  A log that is closed,
    failed or holding FLUSH_BYTES unwritten takes the Python path and its errors."""
    session = self.session
    log = session.log
    chain = getattr(log, "_chain", None)
    if chain is None or log._closed or chain.failed is not None:
        self._record_result(tag)
        return
    if len(chain.pending) >= FLUSH_BYTES:
        self._record_result(tag)
        return
    result = self.result
    rows, columns, truncated = result.rows, result.columns, result.truncated
    result.columns, result.rows, result.size, result.truncated = [], [], 0, False
    members = result_members(tag, rows, columns, truncated)
    fields: dict[str, Any] = {"tag": tag, "rows": rows}  # for the capped (huge) case
    if columns:
        fields["columns"] = columns
    if truncated:
        fields["truncated"] = True
    with log._lock:
        chain.add("result", fields, members, None, False)


@cython.cfunc
@cython.locals(t=cython.int, start=cython.Py_ssize_t, stop=cython.Py_ssize_t)
def _on_relayed(self: Any, raw: bytes, marks: list[tuple[int, int, int]]) -> Any:
    """Record a relayed run; returns the spans of ReadyForQuery not to send (or None)."""
    result = self.result
    silent = None
    for mark in marks:
        t, start, stop = mark
        if t == 0x44:  # DataRow run
            if not result.truncated:
                add_rows(result, raw, start, stop)
        elif t == 0x43:  # CommandComplete
            _record_result(self, raw[start + 5 : stop - 1].decode("utf-8", "replace"))
        elif t == 0x5A:  # ReadyForQuery
            if _ready(self, chr(raw[start + 5])):
                if silent is None:
                    silent = []
                silent.append((start, stop))
        elif t == 0x54:  # RowDescription: the same bytes every time a statement runs
            desc = raw[start:stop]
            cache = self._columns
            columns = cache.get(desc)
            if columns is None:
                columns = tuple([f.name for f in pg.decode_row_description(desc).fields])
                if len(cache) >= 256:
                    cache.clear()
                cache[desc] = columns
            result.columns, result.rows, result.size, result.truncated = (
                list(columns),
                [],
                0,
                False,
            )  # describe_columns(columns)
        elif t == 0x31:  # ParseComplete
            _parse_complete(self)
        elif t == 0x73:  # PortalSuspended: rows up to an Execute's limit
            self._record_result("", suspended=True)
        else:  # EmptyQueryResponse
            result.reset()
    return silent


@cython.cfunc
@cython.locals(i=cython.Py_ssize_t)
def _parse_complete(self: Any) -> None:
    """A ParseComplete: the oldest Parse in flight holds its name now."""
    for i, entry in enumerate(self.unconfirmed):
        if entry[3]:  # protocol-level: a Parse (not an SQL PREPARE)
            del self.unconfirmed[i]
            name, cmds = entry[1], entry[2]
            if cmds is None:
                self.prepared.pop(name, None)
            else:
                self.prepared[name] = cmds
            return


def parse_complete(self: Any) -> None:
    """Pipeline._parse_complete (see `_parse_complete`)."""
    _parse_complete(self)


def _cut(raw: bytes, spans: list[tuple[int, int]]) -> bytes:
    """`raw` without these (start, stop) spans, in order."""
    parts, pos = [], 0
    for start, stop in spans:
        parts.append(raw[pos:start])
        pos = stop
    parts.append(raw[pos:])
    return b"".join(parts)


@cython.cfunc
def _ready(self: Any, status: str) -> cython.bint:
    """A ReadyForQuery; True when it ends a batch of hoopy's own (not sent on)."""
    self.backend.status = status
    names = self.names  # batches_done, without its property on every statement
    names.done += 1
    if status == "I" and names.portals:
        names.idle()  # the transaction is over: so are its portals
    # Pipeline._batch_answered has nothing to do unless one of these holds (the usual
    # answer to a statement: none does)
    if self.batch_failed or self.unconfirmed or self.copy_in_flight or self._settled is not None:
        self._batch_answered()
    done = names.done
    refusals = self.refusals
    while refusals and refusals[0][0] <= done:
        refusals.popleft()  # its marker was discarded after an earlier error
    silent = self.silent_ready
    if silent and done in silent:
        silent.discard(done)
        return True
    return False


def on_ready(self: Any, status: str) -> bool:
    """Answers._on_ready (see `_ready`)."""
    return _ready(self, status)


@cython.cfunc
@cython.locals(start=cython.Py_ssize_t, pos=cython.Py_ssize_t)
def _relay_run(codec: Any) -> Any:
    """codec.relay_run() (ClientConnection's), without its frame: (raw, marks) or None."""
    if codec._failed is not None:
        codec._check_alive()
    if codec.phase is not _NORMAL or codec._expect_ssl:
        return None
    buf = codec._buf
    start = codec._pos
    try:
        pos, marks = _framing_relay_run(buf, start, codec._max)
    except ProtocolViolation as e:
        codec._fail(e)  # raises: the codec is failed for good
        raise
    if pos == start:
        return None
    codec._pos = pos
    return bytes(buf[start:pos]), marks


def relay_backend(self: Any) -> None:
    """Answers._relay_backend: runs of ordinary messages go through as the bytes they
    came in, looked at only to record them; anything else is handled event by event
    (answers.py); the events are written before the agent is sent anything."""
    codec = self.backend.codec
    out: list[bytes] = []
    while True:
        run = _relay_run(codec)
        if run is not None:
            raw, marks = run
            silent = _on_relayed(self, raw, marks)
            out.append(raw if silent is None else _cut(raw, silent))
            if len(codec._buf) == codec._pos:  # codec.buffered(), inline
                break
            continue
        ev = codec.next_event()
        if ev is _NEED_DATA:
            break
        if type(ev) is _READY_EVENT:
            if not _ready(self, ev.status):
                out.append(ev.raw)
        else:
            out.append(self._other_backend_event(ev))
    if out:
        if self._unwritten:  # what these messages answer is on disk before they go
            log = self.session.log
            chain = getattr(log, "_chain", None)
            if chain is None or log._closed or chain.failed is not None:
                self._write_events()
            else:
                with log._lock:
                    try:
                        chain.write()
                    except OSError:
                        error = log._write_error()
                    else:
                        error = None
                if error is not None:
                    self._write_failed(error)
        self._agent_write(out[0] if len(out) == 1 else b"".join(out))
