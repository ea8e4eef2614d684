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
`event()` returned from is in the kernel.  Any OSError marks the log failed; that call and
every later one raise `RecorderError`, and the caller refuses the command (fail closed).
Events are capped at `MAX_EVENT_BYTES` by truncating strings and long lists with a visible
marker (never an error).  Values that JSON cannot carry go through `jsonable()`.

Terminal streams are also written as asciicast v2 (`AsciicastWriter`); their SHA-256 is
recorded in the chained log's `session_end`, so they are tamper-evident too.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import dataclasses
import enum
import errno
import hashlib
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any
from uuid import UUID

from hoopy.state import SessionRow, StateError, StateStore

ZERO_HASH = "0" * 64
FLUSH_BYTES = 64 * 1024  # buffered events are written once this much is pending
MAX_EVENT_BYTES = 1 << 20
_RESERVED = frozenset({"seq", "ts", "type", "prev"})
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's alphabet, lower case
_MAX_DEPTH = 32
_MAX_PROBLEMS = 50
_MAX_NOTE = 1000
CRASHED = "crashed"  # outcome of a session whose gateway died (see recover_session)
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


# ---- JSON --------------------------------------------------------------------------------
def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable copy of `value`: bytes → {"b64": …}, sets → sorted lists,
    tuples → lists, non-finite floats → strings, dataclasses → dicts, other objects →
    str/repr (hoopy's secret references never reveal their value in repr)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if _depth >= _MAX_DEPTH:
        return "…[nested too deep]"
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v, _depth + 1) for v in value), key=_sort_key)
    if isinstance(value, enum.Enum):
        return jsonable(value.value, _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields_ = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return jsonable(fields_, _depth + 1)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, Decimal | UUID | PurePath | IPv4Address | IPv6Address):
        return str(value)
    return repr(value)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bytes):
        return k.decode("utf-8", "backslashreplace")
    return str(k)


def _sort_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _default(o: Any) -> Any:
    converted = jsonable(o)
    if converted is o:  # cannot happen for the types json rejects; guard against loops
        return repr(o)
    return converted


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default
)
_json_str = json.encoder.encode_basestring  # the C one where available, as _ENCODER's
# The C encoder _ENCODER.encode() builds anew on every call, made once: events are many.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_iterencode: Callable[[Any, int], Any] | None = (
    _c_encoder(
        None,  # no cycle markers: a cycle overflows the stack, caught below like the rest
        _default,
        _json_str,
        None,
        ":",
        ",",
        False,
        False,
        False,  # allow_nan
    )
    if _c_encoder is not None
    else None
)


def _dumps(obj: Any) -> bytes:
    try:
        if _iterencode is not None and type(obj) is dict:
            text = "".join(_iterencode(obj, 0))
        else:
            text = _ENCODER.encode(obj)
    except (TypeError, ValueError, RecursionError):  # odd keys, NaN, cycles
        text = json.dumps(jsonable(obj), ensure_ascii=False, separators=(",", ":"))
    # Lone surrogates become \udXXX escapes, which JSON decodes back to the same string.
    return text.encode("utf-8", "backslashreplace")


def _shrink(value: Any, limit: int) -> Any:
    """Cap strings at `limit` characters and lists/dicts at `limit` items, with markers."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return value[:limit] + f"…[truncated {len(value) - limit} chars]"
    if isinstance(value, list):
        out = [_shrink(v, limit) for v in value[:limit]]
        if len(value) > limit:
            out.append(f"…[{len(value) - limit} more items]")
        return out
    if isinstance(value, dict):
        items = list(value.items())
        d = {k: _shrink(v, limit) for k, v in items[:limit]}
        if len(items) > limit:
            d["…"] = f"[{len(items) - limit} more keys]"
        return d
    return value


def encode_members(fields: dict[str, Any]) -> bytes:
    """Fields as JSON object members (no braces), for SessionLog.event_static."""
    bad = _RESERVED.intersection(fields)
    if bad:
        raise ValueError(f"reserved event field(s): {', '.join(sorted(bad))}")
    return _dumps(fields)[1:-1]


def _encode_event(head: dict[str, Any], fields: dict[str, Any], prev: str) -> bytes:
    """One event line (no newline), at most MAX_EVENT_BYTES."""
    record = {**head, **fields, "prev": prev}
    line = _dumps(record)
    if len(line) <= MAX_EVENT_BYTES:
        return line
    body = jsonable(fields)
    limit = MAX_EVENT_BYTES // 2
    while limit >= 16:
        line = _dumps({**head, **_shrink(body, limit), "truncated": len(line), "prev": prev})
        if len(line) <= MAX_EVENT_BYTES:
            return line
        limit //= 4
    return _dumps({**head, "truncated": len(line), "prev": prev})


# ---- writing -----------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
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
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._prev = ZERO_HASH
        self._counts: dict[str, int] = {}
        self._casts: list[AsciicastWriter] = []
        self._failed: str | None = None
        self._closed = False
        # Events chained but not yet written (see `buffer`); written before the next
        # `event`, at FLUSH_BYTES, by `flush()` and at close.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._written = (0, ZERO_HASH)  # (seq, head) of what is on disk
        self._reported = 0  # the seq `progress()` last returned
        self._size = 0  # bytes of whole lines on disk

    @property
    def events(self) -> int:
        """Events written so far."""
        return self._seq

    @property
    def head(self) -> str:
        """SHA-256 of the last line written (64 zeros before the first)."""
        return self._prev

    @property
    def failed(self) -> bool:
        return self._failed is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._fd

    def event(self, kind: str, /, **fields: Any) -> None:
        """Append one event; raises RecorderError if it cannot be written."""
        self._add(kind, fields, write=True)

    def event_static(
        self, kind: str, static: tuple[bytes, dict[str, Any]], /, **fields: Any
    ) -> None:
        """`event()` for events whose fields are mostly the same every time (a command of
        an already-seen statement): `static` holds those fields JSON-encoded once (object
        members, no braces; see `encode_members`) and as a dict; only `fields` are
        encoded per event."""
        self._add(kind, fields, write=True, static=static)

    def event_text(self, kind: str, static: tuple[bytes, dict[str, Any]], text: str, /) -> None:
        """`event_static(kind, static, text=text)`, the call every command makes: without
        a keyword dict or an encoder run."""
        if "text" in static[1]:
            raise ValueError("reserved event field(s): text")
        members = b',"text":' + _json_str(text).encode("utf-8", "backslashreplace")
        with self._lock:
            if self._closed:
                raise RecorderError(f"recording {self.id} is closed")
            self._append(kind, {"text": text}, True, static, members)

    def buffer(self, kind: str, /, **fields: Any) -> None:
        """Chain one event now but write it with the next `event()` or `flush()`.

        For what happened *after* a command was allowed (its results): the command
        itself goes through `event()`, which writes before the command runs, so
        fail-closed holds while result-heavy sessions save a write per statement.
        """
        self._add(kind, fields, write=False)

    def buffer_fields(
        self,
        kind: str,
        fields: dict[str, Any],
        static: tuple[bytes, dict[str, Any]] | None = None,
        /,
    ) -> None:
        """`buffer()` with the fields as a dict (its keys must be strings), and optionally
        a pre-encoded static part as in `event_static`."""
        self._add(kind, fields, write=False, static=static)

    def _add(
        self,
        kind: str,
        fields: dict[str, Any],
        write: bool,
        static: tuple[bytes, dict[str, Any]] | None = None,
    ) -> None:
        if not _RESERVED.isdisjoint(fields) or (
            static is not None
            and not (_RESERVED.isdisjoint(static[1]) and static[1].keys().isdisjoint(fields))
        ):
            bad = _RESERVED.intersection(fields)
            if static is not None:
                bad |= _RESERVED.intersection(static[1]) | (fields.keys() & static[1].keys())
            raise ValueError(f"reserved event field(s): {', '.join(sorted(bad))}")
        with self._lock:
            if self._closed:
                raise RecorderError(f"recording {self.id} is closed")
            self._append(kind, fields, write or self._pending_size >= FLUSH_BYTES, static)

    def flush(self) -> None:
        with self._lock:
            if self._pending and not self._closed:
                self._write_pending()

    def progress(self) -> tuple[int, str] | None:
        """(events, head) on disk if they moved since the last call, for the index of an
        open session; None when nothing new was written or the log is closed."""
        with self._lock:
            if self._closed or self._written[0] == self._reported:
                return None
            self._reported = self._written[0]
            return self._written

    def _write_pending(self) -> None:
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_size = 0
        try:
            _write_all(self._fd, data)
        except OSError as e:
            self._failed = e.strerror or type(e).__name__
            with contextlib.suppress(OSError):  # a short write leaves part of a line
                os.ftruncate(self._fd, self._size)
            self._seq, self._prev = self._written  # the index must match the disk
            raise RecorderError(f"cannot write recording {self.path}: {self._failed}") from None
        self._written = (self._seq, self._prev)
        self._size += len(data)

    def _append(
        self,
        kind: str,
        fields: dict[str, Any],
        write: bool = True,
        static: tuple[bytes, dict[str, Any]] | None = None,
        members: bytes | None = None,
    ) -> None:
        """Chain one event (`members`: `fields` already encoded as `,"k":v…`)."""
        if self._failed is not None:
            raise RecorderError(f"recording {self.id} failed earlier: {self._failed}")
        # The line _encode_event makes, put together without a dict per event: the head
        # (kind is one of hoopy's own names, needing no escapes), the fields, a pre-encoded
        # static part, the chain.  ts to the microsecond, from integers: formatting a
        # float costs more than the rest of the head.
        if self._clock is time.time:
            ns = time.time_ns()
            ts_bytes = b"%d.%06d" % (ns // 1_000_000_000, ns // 1000 % 1_000_000)
        else:
            ts = self._clock()
            ts_bytes = b"%.6f" % ts if type(ts) is float and ts - ts == 0.0 else _dumps(ts)
        kind_bytes = kind.encode() if kind.isascii() and kind.isidentifier() else b""
        if members is None:
            members = b"," + _dumps(fields)[1:-1] if fields else b""
        line = b'{"seq":%d,"ts":%s,"type":"%s"%s%s,"prev":"%s"}' % (
            self._seq,
            ts_bytes,
            kind_bytes,
            members,
            b"," + static[0] if static is not None and static[0] else b"",
            self._prev.encode(),
        )
        if len(line) > MAX_EVENT_BYTES or not kind_bytes:
            head = {"seq": self._seq, "ts": json.loads(ts_bytes), "type": kind}
            merged = {**fields, **static[1]} if static is not None else fields
            line = _encode_event(head, merged, self._prev)
        self._prev = hashlib.sha256(line).hexdigest()
        self._seq += 1
        counts = self._counts
        counts[kind] = counts.get(kind, 0) + 1
        self._pending.append(line + b"\n")
        self._pending_size += len(line) + 1
        if write:
            self._write_pending()

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
                    self.id, self._clock(), stored, self._seq, self._prev
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
        end.update(outcome=outcome, events=self._seq + 1, counts=dict(self._counts))
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


# ---- reading and verifying ---------------------------------------------------------------
@dataclass
class VerifyResult:
    events: int = 0
    head: str = ZERO_HASH
    problems: list[str] = field(default_factory=list)
    open: bool = False  # no session_end, and the index (if asked) agrees it is still open
    crashed: bool = False  # the index says its gateway died and a later one ended it
    owner: str = ""  # of an open session: the gateway running it, as the index says

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, message: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(message)
        elif len(self.problems) == _MAX_PROBLEMS:
            self.problems.append("… further problems not shown")


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        ev = json.loads(raw)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a recording in order; an unreadable line yields {"type": "unreadable"}."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (generator owns it)
    except OSError as e:
        raise RecorderError(f"cannot read recording {path}: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, 1):
            ev = _parse(raw.rstrip(b"\n"))
            if ev is None:
                text = raw.decode("utf-8", "replace")
                ev = {"type": "unreadable", "line": n, "raw": text[:200]}
            yield ev


def read_events(path: Path) -> list[dict[str, Any]]:
    return list(iter_events(path))


def verify_file(
    path: Path,
    expected_head: str | None = None,
    expected_events: int | None = None,
    ended: bool | None = None,
    failed: bool = False,
    *,
    crashed: bool = False,
    start: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Check one recording's chain, and against the index when its values are given.

    `ended`: True/False as the index says (None: unknown); `failed`: the index says the
    recording failed during the session; `crashed`: its gateway died and a later one ended
    it, so no session_end is expected.  For an open session (`ended` False) the index values
    are what its gateway last flushed: the file must hold at least `expected_events` events,
    the last of those hashing to `expected_head`.  `start`: the fields session_start must
    have (default: `session` is the file's name)."""
    res = VerifyResult()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        res.problem(f"cannot read {path}: {e.strerror}")
        return res
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    elif data:
        res.problem(f"line {len(lines)}: incomplete final line (torn write)")
    if not lines:
        res.problem("empty recording (no session_start)")
        return res
    end_line = _check_chain(lines, start or {"session": Path(path).stem}, res)
    if ended is False:
        _check_open(res, lines, end_line, expected_head, expected_events)
    else:
        _check_index(res, end_line, expected_head, expected_events, ended, failed, crashed)
    _check_casts(Path(path), lines[-1] if end_line else b"", res)
    return res


def _check_chain(lines: list[bytes], start: Mapping[str, Any], res: VerifyResult) -> int | None:
    """Line-by-line checks; returns the line number of session_end, if any."""
    prev = ZERO_HASH
    end_line: int | None = None
    for n, raw in enumerate(lines, 1):
        ev = _parse(raw)
        if ev is None:
            res.problem(f"line {n}: not a JSON object")
        else:
            if end_line is not None:
                res.problem(f"line {n}: event after session_end (line {end_line})")
            _check_event(n, ev, prev, res)
            if n == 1:
                _check_start(ev, start, res)
            if ev.get("type") == "session_end":
                end_line = n
        prev = hashlib.sha256(raw).hexdigest()
    res.events = len(lines)
    res.head = prev
    return end_line


def _check_event(n: int, ev: dict[str, Any], prev: str, res: VerifyResult) -> None:
    seq = ev.get("seq")
    if type(seq) is not int or seq != n - 1:
        res.problem(f"line {n}: seq is {seq!r}, expected {n - 1} (line removed or reordered?)")
    if ev.get("prev") != prev:
        what = "is not the zero hash" if n == 1 else f"does not match line {n - 1}"
        res.problem(f"line {n}: hash chain broken: prev {what}")
    if type(ev.get("ts")) not in (int, float) or not isinstance(ev.get("type"), str):
        res.problem(f"line {n}: missing ts or type")
    if ev.get("type") == "session_end" and ev.get("events") != n:
        res.problem(f"line {n}: session_end counts {ev.get('events')!r} events, file has {n}")


def _check_start(ev: dict[str, Any], start: Mapping[str, Any], res: VerifyResult) -> None:
    """The first line is this session's start: a file of another session, or one whose
    identity differs from the index, is not this session's recording."""
    if ev.get("type") != "session_start":
        res.problem("line 1: first event is not session_start")
        return
    for key, want in start.items():
        got = ev.get(key)
        if got == want:
            continue
        if key == "session":
            res.problem(f"line 1: recording is of session {got!r}, not {want!r}")
        else:
            res.problem(f"line 1: session_start has {key} {got!r}, the index says {want!r}")


def _check_open(
    res: VerifyResult,
    lines: list[bytes],
    end_line: int | None,
    flushed_head: str | None,
    flushed_events: int | None,
) -> None:
    """An open session's row holds what its gateway last flushed to disk: the file may have
    grown since, never shrunk or changed below that."""
    if end_line is not None:
        res.problem("recording has session_end but the index says the session is open")
    res.open = end_line is None
    if not flushed_events:
        return
    if len(lines) < flushed_events:
        res.problem(
            f"index says {flushed_events} events were on disk, recording has {len(lines)} "
            "(tail removed?)"
        )
    elif flushed_head and hashlib.sha256(lines[flushed_events - 1]).hexdigest() != flushed_head:
        res.problem(f"line {flushed_events}: hash does not match the index (line changed?)")


def _check_index(
    res: VerifyResult,
    end_line: int | None,
    expected_head: str | None,
    expected_events: int | None,
    ended: bool | None,
    failed: bool,
    crashed: bool,
) -> None:
    if ended and end_line is None and failed:
        # hoopy refused every command from the failure on: what ran is all in the file
        res.problem(
            "the recording failed during the session (disk full or I/O error): the chain "
            "verifies up to there and every later command was refused, but session_end "
            "is missing"
        )
    elif ended and end_line is None and not crashed:
        res.problem(
            "index says the session ended but the recording has no session_end (truncated?)"
        )
    if ended is None:
        res.open = end_line is None
    if expected_events is not None and expected_events != res.events:
        res.problem(f"index says {expected_events} events, recording has {res.events}")
    if expected_head is not None and expected_head != res.head:
        res.problem("last line's hash does not match the index (last line changed or removed)")


def _check_casts(path: Path, end_raw: bytes, res: VerifyResult) -> None:
    ev = _parse(end_raw) if end_raw else None
    casts = ev.get("casts") if ev else None
    if not isinstance(casts, dict):
        return
    for name, digest in casts.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            res.problem(f"asciicast {name!r}: not a file name")
            continue
        cast = path.with_name(name)
        try:
            actual = hashlib.sha256(cast.read_bytes()).hexdigest()
        except OSError as e:
            res.problem(f"asciicast {name}: cannot read ({e.strerror})")
            continue
        if actual != digest:
            res.problem(f"asciicast {name}: contents do not match the hash in session_end")


def verify_row(row: SessionRow) -> VerifyResult:
    """One indexed session's recording, checked against its index row: the chain, the head
    and count, and that the file is this session's (its session_start names the row's id,
    identity and connector)."""
    path = Path(row.path)
    if not path.exists():
        res = VerifyResult()
        res.problem(f"recording file missing: {path}")
        return res
    res = verify_file(
        path,
        row.head or None,
        row.events or None,
        row.ended is not None,
        row.outcome == "recording_failed",
        crashed=row.outcome == CRASHED,
        start=_start_fields(row),
    )
    if path.stem != row.id:
        res.problems.insert(0, f"the index points at another session's file: {path.name}")
    if row.note:
        res.problem(f"already failed verification when its gateway's crash was found: {row.note}")
    res.crashed = row.outcome == CRASHED
    res.owner = row.owner if res.open else ""
    return res


def _start_fields(row: SessionRow) -> dict[str, Any]:
    return {
        "session": row.id,
        "protocol": row.protocol,
        "connector": row.connector,
        "subject": row.subject,
        "groups": row.groups,
        "client": row.client,
        "tls": row.tls,
    }


def recover_session(store: StateStore, row: SessionRow, now: float) -> VerifyResult:
    """End an open session whose gateway is proven dead: outcome "crashed", with the count
    and head its file holds now (so later changes are caught) and, if it does not verify
    against what the gateway last flushed, a note saying why.  The file is not touched."""
    res = verify_row(row)
    events, head = (res.events, res.head) if res.events else (row.events, row.head)
    note = "; ".join(res.problems[:3])[:_MAX_NOTE]
    store.session_crashed(row.id, now, events, head, note)
    return res


def verify_session(session_id: str, recordings_dir: Path | None, store: StateStore) -> VerifyResult:
    """Verify one session as `hoopy verify ID` does (also finds unindexed files)."""
    row = store.get_session(session_id)
    if row is not None:
        return verify_row(row)
    found = []
    if recordings_dir is not None and valid_session_id(session_id):
        found = sorted(Path(recordings_dir).glob(f"*/{session_id}.jsonl"))
    res = verify_file(found[0]) if found else VerifyResult()
    res.problems.insert(0, f"session {session_id} is not in the session index")
    return res


def verify_all(recordings_dir: Path, store: StateStore) -> dict[str, VerifyResult]:
    """Every indexed session, plus every recording on disk the index does not know."""
    results: dict[str, VerifyResult] = {}
    indexed: set[Path] = set()
    for row in store.list_sessions(limit=None):
        results[row.id] = verify_row(row)
        indexed.add(Path(row.path).resolve())
    for path in sorted(Path(recordings_dir).glob("*/*.jsonl")):
        if path.resolve() in indexed:
            continue
        res = verify_file(path)
        res.problems.insert(0, f"{path}: not in the session index")
        results[path.stem if path.stem not in results else str(path)] = res
    return results


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
