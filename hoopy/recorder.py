"""Tamper-evident session recordings (DESIGN §8).

Theory of operation
-------------------
Each session is one JSON-lines file, `<recordings>/<YYYY-MM-DD>/<session id>.jsonl` (UTC
date; folders 0700, file 0600, created exclusively).  Every line is one event::

    {"seq": n, "ts": <unix time>, "type": "...", ...fields..., "prev": "<sha256 hex>"}

`prev` is the SHA-256 of the previous line's exact bytes (without its newline), or 64 zeros
on the first line, so changing, removing or reordering any line breaks the chain at the
line after it.  The hash of the *last* line (the head) and the event count are stored in the
session index (`hoopy.state`) when the session ends, which covers what the chain alone
cannot: a changed last line, a truncated tail, or a file rewritten with a fresh, internally
consistent chain.  While a session is open its gateway writes the head and count of what is
on disk to the index every second (`SessionLog.progress`), so a tail removed from an open
session is caught too, bar the last second.  A gateway that dies leaves its sessions open;
the next one to start ends them as "crashed" with what their files then hold
(`recover_session`, called only for owners proven dead: see `hoopy.state.OwnerLock`).

Writing is one `os.write` per event on an O_APPEND descriptor: no Python buffering, so what
`event()` returned from is in the kernel.  A proxy that forwards in batches may instead
`defer()` the log's writes: events are chained as they come and written together by
`flush()`, which the proxy calls before it forwards anything those events are about
(one write per relayed batch, not per event; PostgreSQL's relay does this).  Any
OSError marks the log failed; that call and every later one raise `RecorderError`, and
the caller refuses the command (fail closed).  How an event becomes its line is in
eventline.py; reading and verifying recordings in recordverify.py.
Events are capped at `MAX_EVENT_BYTES` by truncating strings and long lists with a visible
marker (never an error).  Values that JSON cannot carry go through `jsonable()`.

Terminal streams are also written as asciicast v2 (`AsciicastWriter`); their SHA-256 is
recorded in the chained log's `session_end`, so they are tamper-evident too.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from hoopy.eventchain import (  # noqa: F401 (FLUSH_BYTES re-exported)
    FLUSH_BYTES,
    EventChain,
    log_buffer,
    log_buffer_fields,
    log_event,
    log_event_static,
    log_event_text,
    log_flush,
)
from hoopy.eventline import (  # noqa: F401 (re-exported: hoopy.recorder is the API)
    MAX_EVENT_BYTES,
    RESERVED,
    ZERO_HASH,
    _dumps,
    _encode_event,
    _json_str,
    chain_line,
    encode_members,
    jsonable,
)
from hoopy.recordverify import (  # noqa: F401 (re-exported)
    CRASHED,
    VerifyResult,
    parse_line,
    recover_session,
    verify_all,
    verify_file,
    verify_row,
    verify_session,
)
from hoopy.state import SessionRow, StateError, StateStore

_RESERVED = RESERVED
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's alphabet, lower case
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW

Clock = Callable[[], float]


class RecorderError(Exception):
    """A recording cannot be written (or read); the caller refuses the command."""


def new_session_id(now: float | None = None) -> str:
    """Sortable, unique, URL- and file-name-safe: UTC time to the millisecond + 50 random bits,
    e.g. `20250314150926123-k7d2m9x4qp`."""
    t = time.time() if now is None else now
    ms = int(t * 1000)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}"
    return stamp + "-" + "".join(secrets.choice(_B32) for _ in range(10))


def valid_session_id(session_id: str) -> bool:
    return bool(_ID_RE.match(session_id))


# ---- writing -----------------------------------------------------------------------------
def _write_all(fd: int, data: bytes | memoryview) -> None:
    n = os.write(fd, data)
    if n == len(data):  # the usual case: one call
        return
    view = memoryview(data)[max(n, 0) :]
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[n:]


def _create(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, _OPEN_FLAGS, 0o600)


class SessionLog:
    """The hash-chained event log of one session.  Safe to call from several threads."""

    def __init__(
        self, session_id: str, path: Path, fd: int, store: StateStore, clock: Clock = time.time
    ) -> None:
        self.id = session_id
        self.path = path
        self._fd = fd
        self._store = store
        self._lock = threading.Lock()
        # seq, prev, the pending bytes, counts and what is on disk (eventchain.py,
        # compiled when built): one call per event on the paths every statement takes.
        self._chain = EventChain(fd, None if clock is time.time else clock)
        self._casts: list[AsciicastWriter] = []
        self._closed = False
        # Non-empty while events are chained but not yet written (buffered, or
        # deferred), for callers to test cheaply: read-only to them.  The same object
        # for the log's life (a bytearray of whole lines).
        self.pending = self._chain.pending
        self._reported = 0  # the seq `progress()` last returned

    @property
    def events(self) -> int:
        """Events written so far."""
        return self._chain.seq

    @property
    def head(self) -> str:
        """SHA-256 of the last line written (64 zeros before the first)."""
        return self._chain.prev

    @property
    def failed(self) -> bool:
        return self._chain.failed is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def _failed(self) -> str | None:
        return self._chain.failed

    @_failed.setter
    def _failed(self, why: str | None) -> None:
        self._chain.failed = why

    @property
    def _clock(self) -> Clock:
        return self._chain.clock or time.time

    @_clock.setter
    def _clock(self, clock: Clock) -> None:
        self._chain.clock = None if clock is time.time else clock

    def fileno(self) -> int:
        return self._fd

    def defer(self, on: bool = True) -> None:
        """From now on `event()` and its kin chain without writing, as `buffer()` does;
        the caller must `flush()` before it lets anything those events record happen
        (forwards a command, shows a result).  Failures then surface at `flush()`.
        `defer(False)` writes what is pending and goes back to a write per event."""
        with self._lock:
            self._chain.deferred = on
            if not on and self.pending and not self._closed:
                self._write_pending()

    # The calls every statement makes, from eventchain.py (compiled when built, no Python
    # frame): `event(kind, **fields)` chains an event and writes it (unless deferred);
    # `event_static(kind, static, **fields)` with fields encoded once (`encode_members`:
    # a command of an already-seen statement); `event_text(kind, static, text)`, that
    # with only the text; `buffer(kind, **fields)` and `buffer_fields(kind, fields[,
    # static])` chain one to be written with the next write (results: what happened
    # after the command's event was written); `flush()` writes what is pending.
    # RecorderError when the log is closed or failed or the write fails (fail closed).
    event = log_event
    event_static = log_event_static
    event_text = log_event_text
    buffer = log_buffer
    buffer_fields = log_buffer_fields
    flush = log_flush

    def _unusable(self) -> RecorderError:
        if self._closed:
            return RecorderError(f"recording {self.id} is closed")
        return RecorderError(f"recording {self.id} failed earlier: {self._chain.failed}")

    def _reserved(
        self, fields: dict[str, Any], static: tuple[bytes, dict[str, Any]] | None
    ) -> ValueError:
        bad = _RESERVED.intersection(fields)
        if static is not None:
            bad |= _RESERVED.intersection(static[1]) | (fields.keys() & static[1].keys())
        return ValueError(f"reserved event field(s): {', '.join(sorted(bad))}")

    def progress(self) -> tuple[int, str] | None:
        """(events, head) on disk if they moved since the last call, for the index of an
        open session; None when nothing new was written or the log is closed."""
        with self._lock:
            chain = self._chain
            if self._closed or chain.written_seq == self._reported:
                return None
            self._reported = chain.written_seq
            return chain.written_seq, chain.written_prev

    def _write_error(self) -> RecorderError:
        return RecorderError(f"cannot write recording {self.path}: {self._chain.failed}")

    def _write_pending(self) -> None:
        try:
            self._chain.write()
        except OSError:
            raise self._write_error() from None

    def _append(
        self,
        kind: str,
        fields: dict[str, Any],
        write: bool = True,
        static: tuple[bytes, dict[str, Any]] | None = None,
        members: bytes | None = None,
    ) -> None:
        """Chain one event (`members`: `fields` already encoded as `,"k":v…`)."""
        chain = self._chain
        if chain.failed is not None:
            raise RecorderError(f"recording {self.id} failed earlier: {chain.failed}")
        try:
            chain.add(kind, fields, members, static, write)
        except OSError:
            raise self._write_error() from None

    def open_asciicast(self, width: int, height: int, name: str = "") -> AsciicastWriter:
        """A terminal-stream file next to this log (`<id>[-name].cast`); its SHA-256 goes
        into `session_end`.  Close it before the log, or the log closes it."""
        suffix = f"-{name}" if name else ""
        if name and not _ID_RE.match(name):
            raise ValueError("asciicast name must be letters, digits, '-' or '_'")
        cast = AsciicastWriter(
            self.path.with_name(f"{self.id}{suffix}.cast"), width, height, clock=self._clock
        )
        with self._lock:
            self._casts.append(cast)
        self.event("asciicast", file=cast.path.name, width=width, height=height)
        return cast

    def close(self, outcome: str, **fields: Any) -> None:
        """Write `session_end` and record the end in the index.  Idempotent.

        Raises RecorderError if the end could not be written or indexed (the index is
        still updated when possible, with outcome "recording_failed")."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            error = self._finish(outcome, fields)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            stored = outcome if self._failed is None else "recording_failed"
            try:
                if not self._store.session_ended(
                    self.id, self._clock(), stored, self._chain.seq, self._chain.prev
                ):
                    error = error or f"session {self.id} is not in the index"
            except StateError as e:
                error = error or str(e)
        if error:
            raise RecorderError(f"cannot finish recording {self.id}: {error}")

    def _finish(self, outcome: str, fields: dict[str, Any]) -> str | None:
        casts: dict[str, str] = {}
        error: str | None = None
        for cast in self._casts:
            try:
                casts[cast.path.name] = cast.close()
            except RecorderError as e:
                error = error or str(e)
        if self._failed is not None:
            return error or self._failed
        end = {k: v for k, v in fields.items() if k not in _RESERVED}
        chain = self._chain
        end.update(outcome=outcome, events=chain.seq + 1, counts=dict(chain.counts))
        if casts:
            end["casts"] = casts
        try:
            self._append("session_end", end)
            os.fsync(self._fd)
        except RecorderError as e:
            return error or str(e)
        except OSError as e:
            self._failed = e.strerror or type(e).__name__
            return error or f"cannot sync recording: {self._failed}"
        return error

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("closed" if exc_type is None else "error")


class Recorder:
    """Opens session logs under one directory and registers them in the index."""

    def __init__(self, directory: Path, store: StateStore, clock: Clock = time.time) -> None:
        self.directory = Path(directory).absolute()
        self.store = store
        self.clock = clock
        self.owner = ""  # OwnerLock.id of the gateway process, set by the gateway

    def path_for(self, session_id: str, started: float) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(started))
        return self.directory / day / f"{session_id}.jsonl"

    def open_session(
        self,
        session_id: str,
        *,
        protocol: str,
        connector: str,
        subject: str,
        groups: list[str] | tuple[str, ...] | frozenset[str],
        client: str,
        tls: bool,
        extra: dict[str, Any] | None = None,
    ) -> SessionLog:
        """Create the log, write `session_start`, index the session; RecorderError if any
        of it fails (nothing is left behind then)."""
        if not valid_session_id(session_id):
            raise ValueError("session id must be 1-128 letters, digits, '-' or '_'")
        started = self.clock()
        path = self.path_for(session_id, started)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = _create(path)
        except OSError as e:
            raise RecorderError(f"cannot create recording {path}: {e.strerror}") from None
        slog = SessionLog(session_id, path, fd, self.store, self.clock)
        group_list = sorted(groups) if isinstance(groups, frozenset) else list(groups)
        row = SessionRow(
            id=session_id,
            protocol=protocol,
            connector=connector,
            subject=subject,
            groups=group_list,
            client=client,
            tls=bool(tls),
            started=started,
            path=str(path),
            owner=self.owner,
            issuer=str((extra or {}).get("issuer", "")),  # the agent is (issuer, subject)
        )
        try:
            slog.event(
                "session_start",
                session=session_id,
                protocol=protocol,
                connector=connector,
                subject=subject,
                groups=group_list,
                client=client,
                tls=bool(tls),
                extra=extra or {},
            )
            row.events, row.head = slog.events, slog.head  # session_start is on disk
            self.store.session_started(row)
        except (RecorderError, StateError) as e:
            _discard(fd, path)
            raise RecorderError(f"cannot start recording {session_id}: {e}") from None
        return slog

    def verify_session(self, session_id: str) -> VerifyResult:
        return verify_session(session_id, self.directory, self.store)

    def verify_all(self) -> dict[str, VerifyResult]:
        return verify_all(self.directory, self.store)


def _discard(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()


# ---- reading -----------------------------------------------------------------------------
def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a recording in order; an unreadable line yields {"type": "unreadable"}."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (generator owns it)
    except OSError as e:
        raise RecorderError(f"cannot read recording {path}: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, 1):
            ev = parse_line(raw.rstrip(b"\n"))
            if ev is None:
                text = raw.decode("utf-8", "replace")
                ev = {"type": "unreadable", "line": n, "raw": text[:200]}
            yield ev


def read_events(path: Path) -> list[dict[str, Any]]:
    return list(iter_events(path))


# ---- asciicast v2 ------------------------------------------------------------------------
class AsciicastWriter:
    """An asciicast v2 file (`asciinema play` plays it): a header line, then
    `[seconds since start, "o"|"i"|"r", data]` lines.  `ts` arguments are unix times
    (default: now); bytes are decoded as UTF-8 incrementally, so split characters survive.
    `close()` returns the SHA-256 of the file's bytes."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        *,
        clock: Clock = time.time,
        title: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._start = clock()
        self._last = 0.0
        self._hash = hashlib.sha256()
        self._decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in "oi"}
        self._lock = threading.Lock()
        self._failed = False
        self._digest: str | None = None
        try:
            self._fd = _create(self.path)
        except OSError as e:
            raise RecorderError(f"cannot create asciicast {self.path}: {e.strerror}") from None
        header: dict[str, Any] = {
            "version": 2,
            "width": int(width),
            "height": int(height),
            "timestamp": int(self._start),
            "env": env or {"TERM": "xterm-256color"},
        }
        if title:
            header["title"] = title
        self._write(header)

    def output(self, data: bytes | str, ts: float | None = None) -> None:
        self._event("o", data, ts)

    def input(self, data: bytes | str, ts: float | None = None) -> None:
        self._event("i", data, ts)

    def resize(self, width: int, height: int, ts: float | None = None) -> None:
        self._event("r", f"{int(width)}x{int(height)}", ts)

    def _event(self, code: str, data: bytes | str, ts: float | None) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            data = self._decoders[code].decode(bytes(data))
        if not data:
            return
        with self._lock:
            t = (self._clock() if ts is None else ts) - self._start
            self._last = max(self._last, round(t, 6))  # asciicast times never go back
            self._write([self._last, code, data])

    def _write(self, obj: Any) -> None:
        if self._failed or self._digest is not None:
            raise RecorderError(f"asciicast {self.path} is closed or failed")
        line = json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n"
        try:
            _write_all(self._fd, line)
        except OSError as e:
            self._failed = True
            raise RecorderError(f"cannot write asciicast {self.path}: {e.strerror}") from None
        self._hash.update(line)

    def close(self) -> str:
        """Close the file (idempotent); returns the SHA-256 hex of everything written."""
        with self._lock:
            if self._digest is None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._digest = self._hash.hexdigest()
            if self._failed:
                raise RecorderError(f"asciicast {self.path} is incomplete (write failed)")
            return self._digest
