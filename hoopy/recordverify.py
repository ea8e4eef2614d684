"""Reading recordings back and checking them: the hash chain line by line, and against
the session index (head, event count, ended or open, crashed), asciicast hashes, and
the recovery of sessions whose gateway died (recorder.py's theory of operation)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoopy.eventline import ZERO_HASH
from hoopy.state import SessionRow, StateStore

_MAX_PROBLEMS = 50
_MAX_NOTE = 1000
CRASHED = "crashed"  # outcome of a session whose gateway died (see recover_session)
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")  # recorder.valid_session_id


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


def parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        ev = json.loads(raw)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


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
        ev = parse_line(raw)
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
    ev = parse_line(end_raw) if end_raw else None
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
    if recordings_dir is not None and _ID_RE.match(session_id):
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
