"""The recording's line, hash chain and unwritten bytes of one session, compiled when built.

`EventChain` holds what SessionLog (recorder.py) used to keep in Python attributes: the
sequence number, the previous line's hash, the bytes chained but not yet written, the
counts per kind and what is on disk.  One call chains one event: the line is put
together, hashed and appended to `pending` without a Python frame when compiled
(the statement's command event, each result event).  SessionLog keeps the lock, the
closed and failed states' errors, and everything rare (session end, asciicasts).

The lines are exactly eventline.chain_line's, byte for byte (recordings are verified
and replayed: the format never changes): tests/test_eventchain.py holds golden lines.
Written in Cython's pure-Python mode (see compiled.py): the same code runs interpreted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from typing import Any

try:
    import cython
except ImportError:  # interpreted without Cython installed: the declarations are no-ops
    from hoopy import _cyshim as cython  # type: ignore[no-redef, unused-ignore]

from hoopy.eventline import (
    MAX_EVENT_BYTES,
    RESERVED,
    ZERO_HASH,
    _dumps,
    _encode_event,
    _json_str,
)

FLUSH_BYTES = 64 * 1024  # buffered events are written once this much is pending
_sha256 = hashlib.sha256
_time_ns = time.time_ns
_ZERO_HEX = ZERO_HASH.encode()


@cython.cfunc
@cython.locals(i=cython.int, n=cython.Py_ssize_t)
def _sha256_hex(line: bytes) -> bytes:
    """SHA-256 of `line` as hex digits.  Compiled, OpenSSL's own SHA-256 (the one
    hashlib runs) is called directly: hashlib's sha256() looks the algorithm up by name
    and hexdigest() copies its context each time, more work than hashing a line."""
    if cython.compiled:
        ctx = cython.declare(SHA256_CTX)  # type: ignore[name-defined]  # noqa: F821
        md = cython.declare(cython.uchar[32])
        out = cython.declare(cython.char[64])
        digits = cython.declare(cython.p_char, b"0123456789abcdef")
        n = len(line)
        SHA256_Init(cython.address(ctx))  # type: ignore[name-defined]  # noqa: F821
        SHA256_Update(  # type: ignore[name-defined]  # noqa: F821
            cython.address(ctx), cython.cast(cython.p_char, line), n
        )
        SHA256_Final(md, cython.address(ctx))  # type: ignore[name-defined]  # noqa: F821
        for i in range(32):
            out[2 * i] = digits[md[i] >> 4]
            out[2 * i + 1] = digits[md[i] & 15]
        return out[:64]
    return _sha256(line).hexdigest().encode()


# hoopy's own event kinds are plain names: their JSON is themselves (found once each).
_KINDS: dict[str, bytes] = {}


@cython.cfunc
def _kind_bytes(kind: str) -> bytes:
    """The kind as it stands in the line, or b"" when it needs the JSON encoder."""
    kb = _KINDS.get(kind)
    if kb is None:
        kb = kind.encode() if kind.isascii() and kind.isidentifier() else b""
        if kb and len(_KINDS) < 256:
            _KINDS[kind] = kb
    return kb


@cython.cclass
class EventChain:
    """seq, prev and the pending bytes of one recording (see the module docstring)."""

    seq = cython.declare(cython.longlong, visibility="public")  # events chained
    prev_hex = cython.declare(bytes, visibility="public")  # SHA-256 of the last line
    pending = cython.declare(bytearray, visibility="public")  # chained, not yet written
    counts = cython.declare(dict, visibility="public")  # kind → events
    clock = cython.declare(object, visibility="public")  # None: the system clock
    fd = cython.declare(cython.int, visibility="public")
    deferred = cython.declare(cython.bint, visibility="public")  # see SessionLog.defer
    failed = cython.declare(object, visibility="public")  # why the last write failed
    written_seq = cython.declare(cython.longlong, visibility="public")  # on disk
    written_hex = cython.declare(bytes, visibility="public")
    size = cython.declare(cython.longlong, visibility="public")  # bytes of whole lines

    def __init__(self, fd: int, clock: Any = None) -> None:
        self.fd = fd
        self.clock = clock
        self.seq = 0
        self.prev_hex = _ZERO_HEX
        self.pending = bytearray()
        self.counts = {}
        self.deferred = False
        self.failed = None
        self.written_seq = 0
        self.written_hex = _ZERO_HEX
        self.size = 0

    @property
    def prev(self) -> str:
        """SHA-256 hex of the last line chained (64 zeros before the first)."""
        return self.prev_hex.decode()

    @property
    def written_prev(self) -> str:
        """`prev` of the last line on disk."""
        return self.written_hex.decode()

    @cython.cfunc
    @cython.locals(ns=cython.longlong)
    def _head(self) -> bytes:
        """`{"seq":N,"ts":T,"type":"`: the time to the microsecond, from integers
        (formatting a float costs more than the rest of the line)."""
        if self.clock is None:
            ns = _time_ns()
            return (
                f'{{"seq":{self.seq},"ts":{ns // 1_000_000_000}.{ns // 1000 % 1_000_000:06d}'
                ',"type":"'
            ).encode()
        ts = self.clock()
        ts_json = b"%.6f" % ts if type(ts) is float and ts - ts == 0.0 else _dumps(ts)
        return b'{"seq":%d,"ts":%s,"type":"' % (self.seq, ts_json)

    @cython.cfunc
    def _line(
        self,
        kind: str,
        fields: Any,
        members: bytes,
        static: tuple[bytes, dict[str, Any]] | None,
        text: str | None,
    ) -> bytes:
        """The event's line (no newline): eventline.chain_line's bytes, put together
        from its parts; over MAX_EVENT_BYTES or of an odd kind, through the encoder
        (`fields` None: they are {"text": text})."""
        kb = _kind_bytes(kind)
        head = self._head()
        prev = self.prev_hex
        line = b"".join(
            [
                head,
                kb,
                b'"',
                members,
                b"," + static[0] if static is not None and static[0] else b"",
                b',"prev":"',
                prev,
                b'"}',
            ]
        )
        if len(line) > MAX_EVENT_BYTES or not kb:
            ts = head[head.index(b',"ts":') + 6 : -len(b',"type":"')]
            record = {"seq": self.seq, "ts": json.loads(ts), "type": kind}
            if fields is None:
                fields = {"text": text}
            merged = {**fields, **static[1]} if static is not None else fields
            line = _encode_event(record, merged, prev.decode())
        return line

    @cython.ccall
    @cython.locals(write=cython.bint)
    def add(
        self,
        kind: str,
        fields: dict[str, Any],
        members: bytes | None,
        static: tuple[bytes, dict[str, Any]] | None,
        write: bool,
    ) -> None:
        """Chain one event (`members`: `fields` already encoded as `,"k":v…`; `static`
        as in SessionLog.event_static), then write what is pending if `write`.
        Raises OSError when the write fails (see `write`)."""
        if members is None:
            members = b"," + _dumps(fields)[1:-1] if fields else b""
        self._chain(kind, self._line(kind, fields, members, static, None))
        if write:
            self.write()

    @cython.ccall
    @cython.locals(write=cython.bint)
    def add_text(
        self, kind: str, static: tuple[bytes, dict[str, Any]], text: str, write: bool
    ) -> None:
        """`add(kind, {"text": text}, …, static, write)`: the command every statement
        records, its text encoded here (the caller checked `static` has no "text")."""
        members = b',"text":' + _json_str(text).encode("utf-8", "backslashreplace")
        self._chain(kind, self._line(kind, None, members, static, text))
        if write:
            self.write()

    @cython.cfunc
    def _chain(self, kind: str, line: bytes) -> None:
        """`line` (no newline) becomes the chain's last: hashed, counted, pending."""
        self.prev_hex = _sha256_hex(line)
        self.seq += 1
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        pending = self.pending
        pending += line
        pending.append(10)  # b"\n"

    @cython.ccall
    @cython.locals(n=cython.Py_ssize_t, done=cython.Py_ssize_t)
    def write(self) -> None:
        """Write what is pending (one call, the usual case).  On OSError the file is cut
        back to its whole lines, the chain back to what is on disk, the error kept in
        `failed`, and the OSError raised."""
        pending = self.pending
        n = len(pending)
        if n == 0:
            return
        try:
            done = os.write(self.fd, pending)  # looked up per call: tests replace it
            while done < n:  # rare: the kernel took part of it
                if done < 0:
                    done = 0
                more = os.write(self.fd, bytes(pending[done:]))
                if more <= 0:
                    raise OSError(28, "short write")  # ENOSPC
                done += more
        except OSError as e:
            self.failed = e.strerror or type(e).__name__
            del pending[:]
            with contextlib.suppress(OSError):  # a short write leaves part of a line
                os.ftruncate(self.fd, self.size)
            self.seq = self.written_seq  # the index must match the disk
            self.prev_hex = self.written_hex
            raise
        del pending[:]
        self.written_seq = self.seq
        self.written_hex = self.prev_hex
        self.size += n


# SessionLog's methods on the paths every statement takes, without a Python frame when
# compiled (recorder.py binds them into the class; its lock, states and errors).
def log_event_text(log: Any, kind: str, static: tuple[bytes, dict[str, Any]], text: str, /) -> None:
    """`event_static(kind, static, text=text)`, the call every command makes: without
    a keyword dict or an encoder run."""
    if "text" in static[1]:
        raise ValueError("reserved event field(s): text")
    chain: EventChain = log._chain
    with log._lock:
        if log._closed or chain.failed is not None:
            raise log._unusable()
        try:
            chain.add_text(
                kind, static, text, not chain.deferred or len(chain.pending) >= FLUSH_BYTES
            )
        except OSError:
            raise log._write_error() from None


def log_flush(log: Any) -> None:
    """Write what is pending (SessionLog.flush)."""
    chain: EventChain = log._chain
    with log._lock:
        if chain.pending and not log._closed:
            try:
                chain.write()
            except OSError:
                raise log._write_error() from None


@cython.cfunc
@cython.locals(write=cython.bint)
def _log_add(
    log: Any,
    kind: str,
    fields: dict[str, Any],
    write: bool,
    static: tuple[bytes, dict[str, Any]] | None,
) -> None:
    """SessionLog's event, chained (and written if `write` and not deferred)."""
    if not RESERVED.isdisjoint(fields) or (
        static is not None
        and not (RESERVED.isdisjoint(static[1]) and static[1].keys().isdisjoint(fields))
    ):
        raise log._reserved(fields, static)
    chain: EventChain = log._chain
    with log._lock:
        if log._closed or chain.failed is not None:
            raise log._unusable()
        write = (write and not chain.deferred) or len(chain.pending) >= FLUSH_BYTES
        try:
            chain.add(kind, fields, None, static, write)
        except OSError:
            raise log._write_error() from None


def log_event(log: Any, kind: str, /, **fields: Any) -> None:
    """Append one event; raises RecorderError if it cannot be written."""
    _log_add(log, kind, fields, True, None)


def log_event_static(
    log: Any, kind: str, static: tuple[bytes, dict[str, Any]], /, **fields: Any
) -> None:
    """`event()` for events whose fields are mostly the same every time (a command of
    an already-seen statement): `static` holds those fields JSON-encoded once (object
    members, no braces; see `encode_members`) and as a dict; only `fields` are
    encoded per event."""
    _log_add(log, kind, fields, True, static)


def log_buffer(log: Any, kind: str, /, **fields: Any) -> None:
    """Chain one event now but write it with the next `event()` or `flush()`.

    For what happened *after* a command was allowed (its results): the command
    itself goes through `event()`, which writes before the command runs, so
    fail-closed holds while result-heavy sessions save a write per statement.
    """
    _log_add(log, kind, fields, False, None)


def log_buffer_fields(
    log: Any,
    kind: str,
    fields: dict[str, Any],
    static: tuple[bytes, dict[str, Any]] | None = None,
    /,
) -> None:
    """`buffer()` with the fields as a dict (its keys must be strings), and optionally
    a pre-encoded static part as in `event_static`."""
    _log_add(log, kind, fields, False, static)
