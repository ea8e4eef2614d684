"""Session recordings: the hash chain, tamper detection, fail-closed writes, size caps,
jsonable(), verify_all/verify_session, asciicast.  Real files in tmp_path throughout."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hoopy.recorder import (
    MAX_EVENT_BYTES,
    ZERO_HASH,
    AsciicastWriter,
    Recorder,
    RecorderError,
    SessionLog,
    jsonable,
    new_session_id,
    read_events,
    verify_all,
    verify_file,
    verify_session,
)
from hoopy.state import StateStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state" / "state.db")
    yield s
    s.close()


@pytest.fixture
def recorder(tmp_path: Path, store: StateStore) -> Recorder:
    return Recorder(tmp_path / "recordings", store)


def open_log(recorder: Recorder, sid: str | None = None) -> SessionLog:
    return recorder.open_session(
        new_session_id() if sid is None else sid,
        protocol="postgres",
        connector="app-db",
        subject="alice",
        groups=["agents"],
        client="127.0.0.1:40000",
        tls=True,
        extra={"issuer": "http://idp", "token": "fp:1234"},
    )


def recorded(recorder: Recorder, n: int = 4, close: bool = True) -> SessionLog:
    log = open_log(recorder)
    for i in range(n):
        log.event("command", text=f"select {i}", kinds=["select"], outcome="allow")
    if close:
        log.close("closed")
    return log


def check(store: StateStore, log: SessionLog) -> bool:
    """verify_file with the index's values, as `hoopy verify` does."""
    row = store.get_session(log.id)
    assert row is not None
    return verify_file(log.path, row.head or None, row.events or None, row.ended is not None).ok


# ---- the happy path ----------------------------------------------------------------------
def test_recording_layout_chain_and_index(recorder: Recorder, store: StateStore) -> None:
    log = recorded(recorder, n=3)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", log.path.parent.name)
    assert log.path.name == f"{log.id}.jsonl" and log.path.parent.parent == recorder.directory
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700

    events = read_events(log.path)
    assert [e["type"] for e in events] == ["session_start"] + ["command"] * 3 + ["session_end"]
    assert [e["seq"] for e in events] == list(range(5))
    start, end = events[0], events[-1]
    assert start["session"] == log.id and start["subject"] == "alice"
    assert start["groups"] == ["agents"] and start["tls"] is True
    assert start["extra"] == {"issuer": "http://idp", "token": "fp:1234"}
    assert start["prev"] == ZERO_HASH
    assert end["outcome"] == "closed" and end["events"] == 5
    assert end["counts"] == {"session_start": 1, "command": 3}

    raw = log.path.read_bytes().split(b"\n")[:-1]
    for prev_line, ev in zip(raw, events[1:], strict=False):
        assert ev["prev"] == hashlib.sha256(prev_line).hexdigest()

    row = store.get_session(log.id)
    assert row is not None and row.path == str(log.path)
    assert (row.outcome, row.events, row.head) == ("closed", 5, log.head)
    assert row.head == hashlib.sha256(raw[-1]).hexdigest()
    res = verify_file(log.path, row.head, row.events, True)
    assert res.ok and res.events == 5 and res.head == row.head and not res.open


def test_close_is_idempotent_and_later_events_refused(recorder: Recorder) -> None:
    log = recorded(recorder, n=1)
    size = log.path.stat().st_size
    log.close("again")
    assert log.path.stat().st_size == size
    with pytest.raises(RecorderError):
        log.event("command", text="select 1")
    assert read_events(log.path)[-1]["outcome"] == "closed"


def test_context_manager_closes_with_outcome(recorder: Recorder) -> None:
    with pytest.raises(KeyError), open_log(recorder) as log:
        raise KeyError("boom")
    assert read_events(log.path)[-1]["outcome"] == "error"


def test_reserved_field_names_are_refused(recorder: Recorder) -> None:
    log = open_log(recorder)
    for name in ("seq", "ts", "type", "prev"):
        with pytest.raises(ValueError):
            log.event("command", **{name: 1})
    log.close("closed")
    assert len(read_events(log.path)) == 2


def test_events_from_several_threads_keep_one_chain(recorder: Recorder, store: StateStore) -> None:
    log = open_log(recorder)

    def work(t: int) -> None:
        for i in range(200):
            log.event("tick", thread=t, i=i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close("closed")
    assert check(store, log)
    assert len(read_events(log.path)) == 802


# ---- tampering ---------------------------------------------------------------------------
def test_any_changed_byte_is_detected(recorder: Recorder, store: StateStore) -> None:
    log = recorded(recorder, n=4)
    original = log.path.read_bytes()
    assert check(store, log)
    starts = [0, *(i + 1 for i, b in enumerate(original[:-1]) if b == ord("\n"))]
    tried = 0
    for start in starts:
        length = original.index(b"\n", start) - start
        for offset in sorted({0, 1, 7, length // 3, length // 2, length - 3, length - 1, length}):
            pos = start + offset
            tampered = bytearray(original)
            tampered[pos] ^= 0x01  # the smallest change: one bit
            log.path.write_bytes(bytes(tampered))
            assert not check(store, log), f"undetected change at line start {start} + {offset}"
            tried += 1
    assert tried >= 6 * 6
    log.path.write_bytes(original)
    assert check(store, log)


def test_changed_value_inside_json_is_detected(recorder: Recorder, store: StateStore) -> None:
    log = recorded(recorder, n=2)
    text = log.path.read_text()
    for old, new in (('"subject":"alice"', '"subject":"mallory"'), ('"select 1"', '"select 2"')):
        log.path.write_text(text.replace(old, new, 1))
        assert not check(store, log)
    log.path.write_text(text.replace('"outcome":"closed"', '"outcome":"rejected"'))
    res = verify_file(log.path, store.get_session(log.id).head)  # type: ignore[union-attr]
    assert not res.ok and "last line" in res.problems[-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_truncated_tail_is_detected_when_the_index_has_the_end(
    recorder: Recorder, store: StateStore
) -> None:
    log = recorded(recorder, n=3)
    lines = log.path.read_bytes().split(b"\n")[:-1]
    write_lines(log.path, lines[:-1])
    res = verify_file(log.path, log.head, 5, ended=True)
    assert not res.ok
    assert any("no session_end" in p for p in res.problems)
    assert any("index says 5 events" in p for p in res.problems)
    # Even with only the expected head (no ended flag) truncation is visible.
    assert not verify_file(log.path, log.head).ok


def test_deleted_middle_line_is_detected_without_the_index(recorder: Recorder) -> None:
    log = recorded(recorder, n=3)
    lines = log.path.read_bytes().split(b"\n")[:-1]
    write_lines(log.path, lines[:2] + lines[3:])
    res = verify_file(log.path)
    assert not res.ok
    assert any(p.startswith("line 3: seq") for p in res.problems)
    assert any("line 3: hash chain broken" in p for p in res.problems)


def test_reordered_lines_are_detected(recorder: Recorder) -> None:
    log = recorded(recorder, n=3)
    lines = log.path.read_bytes().split(b"\n")[:-1]
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(log.path, lines)
    assert not verify_file(log.path).ok


def test_deleted_first_line_is_detected(recorder: Recorder) -> None:
    log = recorded(recorder, n=2)
    write_lines(log.path, log.path.read_bytes().split(b"\n")[:-1][1:])
    res = verify_file(log.path)
    assert not res.ok and any("session_start" in p for p in res.problems)


def rechain(events: list[dict[str, Any]]) -> bytes:
    prev, out = ZERO_HASH, []
    for ev in events:
        ev["prev"] = prev
        line = json.dumps(ev, separators=(",", ":")).encode()
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    return b"".join(line + b"\n" for line in out)


def test_rewritten_file_with_a_fresh_chain_fails_against_the_index(
    recorder: Recorder, store: StateStore
) -> None:
    log = recorded(recorder, n=3)
    events = read_events(log.path)
    events[2]["text"] = "select innocent"
    log.path.write_bytes(rechain(events))
    assert verify_file(log.path).ok  # the chain alone cannot tell…
    assert not check(store, log)  # …the head in the index can
    # Dropping the last command and re-chaining also changes the count.
    events = read_events(log.path)
    del events[3]
    for i, ev in enumerate(events):
        ev["seq"] = i
    events[-1]["events"] = len(events)
    log.path.write_bytes(rechain(events))
    assert verify_file(log.path).ok
    assert not check(store, log)


def test_torn_final_line_is_a_problem(recorder: Recorder) -> None:
    log = recorded(recorder, n=1)
    log.path.write_bytes(log.path.read_bytes()[:-1])
    res = verify_file(log.path)
    assert not res.ok and "torn" in res.problems[0]
    log.path.write_bytes(b"")
    assert not verify_file(log.path).ok


def test_file_of_another_session_is_detected(recorder: Recorder, store: StateStore) -> None:
    a, b = recorded(recorder), recorded(recorder)
    b.path.write_bytes(a.path.read_bytes())
    res = verify_session(b.id, recorder.directory, store)
    assert not res.ok and any("recording is of session" in p for p in res.problems)


def test_open_session_verifies_and_is_flagged_open(recorder: Recorder, store: StateStore) -> None:
    log = recorded(recorder, n=2, close=False)
    res = verify_session(log.id, recorder.directory, store)
    assert res.ok and res.open and res.events == 3
    log.close("closed")
    res = verify_session(log.id, recorder.directory, store)
    assert res.ok and not res.open


def test_end_in_file_but_open_in_index_is_a_problem(recorder: Recorder, store: StateStore) -> None:
    log = recorded(recorder, n=1)
    assert not verify_file(log.path, ended=False).ok


# ---- verify_all / verify_session -----------------------------------------------------------
def test_verify_all_finds_missing_and_unindexed_files(
    recorder: Recorder, store: StateStore, tmp_path: Path
) -> None:
    good, gone, broken = recorded(recorder), recorded(recorder), recorded(recorder)
    still_open = recorded(recorder, close=False)
    gone.path.unlink()
    broken.path.write_bytes(broken.path.read_bytes().replace(b"select 1", b"select 9"))
    # A recording that some other store indexed is "on disk, not in the index" here.
    other_store = StateStore(tmp_path / "other.db")
    stray = recorded(Recorder(recorder.directory, other_store))
    other_store.close()

    results = verify_all(recorder.directory, store)
    assert set(results) == {good.id, gone.id, broken.id, still_open.id, stray.id}
    assert results[good.id].ok
    assert results[still_open.id].ok and results[still_open.id].open
    assert "missing" in results[gone.id].problems[0]
    assert not results[broken.id].ok
    assert "not in the session index" in results[stray.id].problems[0]
    assert recorder.verify_all().keys() == results.keys()


def test_verify_session_of_unknown_ids(recorder: Recorder, store: StateStore) -> None:
    res = verify_session("20250101000000000-nothere00", recorder.directory, store)
    assert not res.ok and "not in the session index" in res.problems[0]
    assert not verify_session("../../etc/passwd", recorder.directory, store).ok
    assert recorder.verify_session(recorded(recorder).id).ok


# ---- failing writes fail closed ----------------------------------------------------------
def fill_disk(log: SessionLog) -> None:
    """Point the log's descriptor at /dev/full: every write fails with ENOSPC."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, log.fileno())
    os.close(full)


def test_write_failure_raises_and_sticks(recorder: Recorder, store: StateStore) -> None:
    log = open_log(recorder)
    log.event("command", text="select 1")
    saved = os.dup(log.fileno())
    fill_disk(log)
    with pytest.raises(RecorderError) as e:
        log.event("command", text="alter role x password 'hunter2'")
    assert "hunter2" not in str(e.value)
    assert log.failed
    os.dup2(saved, log.fileno())  # the disk has room again: the recording stays failed
    os.close(saved)
    with pytest.raises(RecorderError):
        log.event("command", text="select 2")
    with pytest.raises(RecorderError):
        log.close("closed")
    log.close("closed")  # idempotent, even after a failure
    row = store.get_session(log.id)
    assert row is not None and row.outcome == "recording_failed" and row.events == 2
    assert not check(store, log)  # an incomplete recording never verifies


def test_open_session_failures_leave_nothing_behind(
    recorder: Recorder, store: StateStore, tmp_path: Path
) -> None:
    log = recorded(recorder)
    with pytest.raises(RecorderError):  # same id again: the file exists
        open_log(recorder, log.id)
    assert read_events(log.path)[-1]["type"] == "session_end"

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the recordings folder should be")
    with pytest.raises(RecorderError):
        open_log(Recorder(blocked, store))

    store.close()  # the index is unavailable: refuse, and remove the half-made file
    with pytest.raises(RecorderError):
        open_log(recorder, "20250101000000000-orphan0000")
    assert not list(recorder.directory.glob("*/20250101000000000-orphan0000*"))


def test_session_ids_are_validated(recorder: Recorder) -> None:
    for bad in ("", "../x", "a/b", "a.b", ".hidden", "x" * 200):
        with pytest.raises(ValueError):
            open_log(recorder, bad)


def test_new_session_id_sorts_by_time_and_is_unique() -> None:
    t = 1_700_000_000.0
    ids = [new_session_id(t + i * 0.001) for i in range(50)] + [new_session_id(t + 86400)]
    assert ids == sorted(ids)
    assert len({new_session_id() for _ in range(2000)}) == 2000
    assert all(re.fullmatch(r"\d{17}-[0-9a-z]{10}", i) for i in ids)
    assert ids[0].startswith("20231114221320000-")


# ---- values and sizes --------------------------------------------------------------------
class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: bytes


def test_jsonable_handles_awkward_values() -> None:
    value = {
        "bytes": b"\x00\xffhi",
        "bytearray": bytearray(b"ab"),
        "tuple": (1, "two", (3,)),
        "set": {3, 1, 2},
        "frozenset": frozenset({"b", "a"}),
        "nan": float("nan"),
        "inf": float("-inf"),
        "when": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "money": Decimal("1.10"),
        "path": Path("/tmp/x"),
        "enum": Color.RED,
        "dc": Point(1, b"z"),
        7: "int key",
        ("a", 1): "tuple key",
        b"k": "bytes key",
    }
    out = jsonable(value)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert out["bytes"] == {"b64": "AP9oaQ=="} and out["bytearray"] == {"b64": "YWI="}
    assert out["tuple"] == [1, "two", [3]]
    assert out["set"] == [1, 2, 3] and out["frozenset"] == ["a", "b"]
    assert out["nan"] == "nan" and out["inf"] == "-inf"
    assert out["when"] == "2025-01-02T03:04:05+00:00" and out["money"] == "1.10"
    assert out["path"] == "/tmp/x" and out["enum"] == "red"
    assert out["dc"] == {"x": 1, "y": {"b64": "eg=="}}
    assert out["7"] == "int key" and out["('a', 1)"] == "tuple key" and out["k"] == "bytes key"


def test_awkward_values_are_recorded_not_refused(recorder: Recorder, store: StateStore) -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    log = open_log(recorder)
    log.event("result", rows=[(1, b"\x01", None, 2.5)], cols={"b", "a"}, nan=float("nan"))
    log.event("weird", keys={(1, 2): 3}, cycle=cycle, text="lone \udc80 surrogate, ünïcode")
    log.close("closed")
    assert check(store, log)
    events = read_events(log.path)
    assert events[1]["rows"] == [[1, {"b64": "AQ=="}, None, 2.5]]
    assert events[1]["cols"] == ["a", "b"] and events[1]["nan"] == "nan"
    assert events[2]["keys"] == {"(1, 2)": 3}
    assert events[2]["text"] == "lone \udc80 surrogate, ünïcode"


def test_huge_events_are_truncated_never_refused(recorder: Recorder, store: StateStore) -> None:
    log = open_log(recorder)
    log.event("result", text="x" * (3 * MAX_EVENT_BYTES), tag="SELECT 1")
    log.event("result", rows=list(range(400_000)))
    log.event("result", data=b"\x00" * MAX_EVENT_BYTES)
    log.event("result", rows=[["é" * 1000] * 10] * 1000)
    log.close("closed")
    assert check(store, log)
    lines = log.path.read_bytes().split(b"\n")[:-1]
    assert all(len(line) <= MAX_EVENT_BYTES for line in lines)
    events = read_events(log.path)
    assert events[1]["tag"] == "SELECT 1" and events[1]["truncated"] > MAX_EVENT_BYTES
    assert events[1]["text"].startswith("xxx") and "truncated" in events[1]["text"]
    assert "more items" in events[2]["rows"][-1]
    assert all(ev.get("truncated") for ev in events[1:5])


# ---- asciicast ---------------------------------------------------------------------------
def test_asciicast_writer(tmp_path: Path) -> None:
    now = [1000.0]
    cast = AsciicastWriter(tmp_path / "s.cast", 80, 24, clock=lambda: now[0], title="t")
    snow = "☃".encode()
    cast.output(b"$ echo " + snow[:1], ts=1000.5)  # a character split across two reads
    cast.output(snow[1:] + b"\r\n", ts=1000.7)
    cast.input("ls\r", ts=1000.6)  # clocks never run backwards in the file
    cast.resize(100, 30)
    digest = cast.close()
    assert cast.close() == digest
    with pytest.raises(RecorderError):
        cast.output("late")
    data = (tmp_path / "s.cast").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    header, *events = [json.loads(line) for line in data.decode().splitlines()]
    assert header == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1000,
        "env": {"TERM": "xterm-256color"},
        "title": "t",
    }
    assert events == [
        [0.5, "o", "$ echo "],
        [0.7, "o", "☃\r\n"],
        [0.7, "i", "ls\r"],
        [0.7, "r", "100x30"],
    ]


def test_asciicast_digest_is_chained(recorder: Recorder, store: StateStore) -> None:
    log = open_log(recorder)
    cast = log.open_asciicast(80, 24)
    cast.output(b"hello\r\n")
    log.close("closed")  # closes the cast and records its hash
    assert cast.path == log.path.with_suffix(".cast")
    end = read_events(log.path)[-1]
    assert end["casts"] == {cast.path.name: hashlib.sha256(cast.path.read_bytes()).hexdigest()}
    assert check(store, log)
    cast.path.write_bytes(cast.path.read_bytes().replace(b"hello", b"HELLO"))
    assert not check(store, log)


def test_buffered_events_are_chained_and_written_with_the_next_event(
    recorder: Recorder, store: StateStore
) -> None:
    log = open_log(recorder)
    log.event("command", text="select 1")
    size = log.path.stat().st_size
    log.buffer("result", tag="SELECT 1", rows=[["1"]])
    assert log.path.stat().st_size == size  # not yet on disk
    log.event("command", text="select 2")  # writes the buffered result first
    log.buffer("result", tag="SELECT 1", rows=[["2"]])
    log.flush()
    log.close("closed")
    types = [e["type"] for e in read_events(log.path)]
    assert types == ["session_start", "command", "result", "command", "result", "session_end"]
    row = store.get_session(log.id)
    assert row is not None
    assert verify_file(log.path, row.head, row.events, ended=True).ok


def test_deferred_events_are_written_together_at_flush(
    recorder: Recorder, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """defer(): every kind of event waits for flush(), which writes them in one call;
    the chain and the index are the same as when each was written on its own."""
    import hoopy.recorder as rec

    log = open_log(recorder)
    assert log.progress() == (1, log.head)  # session_start
    log.defer()
    writes: list[bytes] = []
    real_write = os.write

    def counted(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(rec.os, "write", counted)
    size = log.path.stat().st_size
    static = (rec.encode_members({"outcome": "allow"}), {"outcome": "allow"})
    log.event_text("command", static, "select 1")
    log.event("bind", portal="", params=["1"])
    log.event_static("command", static, text="select 2")
    assert log.pending and log.path.stat().st_size == size and writes == []
    assert log.progress() is None  # the index hears only of what is on disk
    log.flush()
    assert len(writes) == 1 and writes[0].count(b"\n") == 3 and not log.pending
    log.buffer("result", tag="SELECT 1", rows=[["1"]])
    log.defer(False)  # writes what is pending; events are written one by one again
    assert len(writes) == 2
    log.event("command", text="select 3")
    assert len(writes) == 3
    monkeypatch.undo()
    log.close("closed")
    types = [e["type"] for e in read_events(log.path)]
    start, *middle, end = types
    assert (start, end) == ("session_start", "session_end")
    assert middle == ["command", "bind", "command", "result", "command"]
    assert check(store, log)


def test_a_deferred_write_that_fails_leaves_whole_events_and_sticks(
    recorder: Recorder, store: StateStore
) -> None:
    """A failed flush raises; none of the deferred events stays on disk (so the index
    and the file agree), and every later event is refused."""
    log = open_log(recorder)
    log.event("command", text="select 1")
    log.defer()
    log.event("command", text="insert into t values (1)")
    log.event("bind", portal="", params=["secret-value"])
    saved = os.dup(log.fileno())
    fill_disk(log)
    with pytest.raises(RecorderError) as e:
        log.flush()
    assert "secret-value" not in str(e.value)
    os.dup2(saved, log.fileno())
    os.close(saved)
    assert log.failed and log.events == 2
    with pytest.raises(RecorderError):
        log.event("command", text="select 2")
    with pytest.raises(RecorderError):
        log.close("closed")
    assert [e["type"] for e in read_events(log.path)] == ["session_start", "command"]
    row = store.get_session(log.id)
    assert row is not None and row.outcome == "recording_failed" and row.events == 2


def test_buffered_events_reach_disk_at_close(recorder: Recorder, store: StateStore) -> None:
    log = open_log(recorder)
    log.buffer("result", tag="SELECT 1", rows=[])
    log.close("closed")
    assert [e["type"] for e in read_events(log.path)][-2:] == ["result", "session_end"]


def test_static_events_are_byte_identical_to_plain_ones(
    recorder: Recorder, store: StateStore
) -> None:
    from hoopy.recorder import encode_members

    static_fields = {"kinds": ["select"], "reads": ["t"], "outcome": "allow", "rule": "r"}
    static = (encode_members(static_fields), static_fields)
    plain = open_log(recorder)
    fast = open_log(recorder)
    plain._clock = fast._clock = lambda: 1.5  # same timestamps in both logs
    for text in ("select 1", "sélect 'ü'", "x" * 10):
        plain.event("command", text=text, **static_fields)
        fast.event_static("command", static, text=text)
    with pytest.raises(ValueError):
        fast.event_static("command", static, outcome="deny")  # a key in both parts
    plain.close("closed")
    fast.close("closed")
    lines = [p.path.read_bytes().splitlines() for p in (plain, fast)]
    assert [json.loads(x) | {"prev": ""} for x in lines[0][1:4]] == [
        json.loads(x) | {"prev": ""} for x in lines[1][1:4]
    ]
    for a, b in zip(lines[0][1:4], lines[1][1:4], strict=True):
        assert a.split(b',"prev"')[0] == b.split(b',"prev"')[0]
    assert check(store, fast)


def test_text_events_are_byte_identical_to_plain_ones(
    recorder: Recorder, store: StateStore
) -> None:
    from hoopy.recorder import encode_members

    static_fields = {"kinds": ["select"], "outcome": "allow", "rule": "r"}
    static = (encode_members(static_fields), static_fields)
    plain, fast = open_log(recorder), open_log(recorder)
    plain._clock = fast._clock = lambda: 1.25
    texts = ("select 1", 'sélect "ü" \\ \n\t', "\ud800 lone surrogate", "x" * 10)
    for text in texts:
        plain.event("command", text=text, **static_fields)
        fast.event_text("command", static, text)
    with pytest.raises(ValueError):
        fast.event_text("command", (b'"text":"x"', {"text": "x"}), "y")
    with pytest.raises(ValueError):
        encode_members({"seq": 1})  # reserved keys never reach a static part
    plain.close("closed")
    fast.close("closed")
    a, b = (p.path.read_bytes().splitlines()[1:5] for p in (plain, fast))
    assert [x.split(b',"prev"')[0] for x in a] == [x.split(b',"prev"')[0] for x in b]
    assert [json.loads(x)["text"] for x in b][:2] == list(texts[:2])
    assert check(store, fast)


def test_short_writes_are_completed_not_repeated(
    recorder: Recorder, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hoopy.recorder as rec

    real_write = os.write

    def dribble(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data[:7]))  # the kernel may take less than asked

    log = open_log(recorder)
    monkeypatch.setattr(rec.os, "write", dribble)
    log.event("command", text="select 1")
    log.buffer("result", tag="SELECT 1", rows=[["1"]])
    log.event("command", text="select 2")
    monkeypatch.undo()
    log.close("closed")
    assert [e["type"] for e in read_events(log.path)] == [
        "session_start", "command", "result", "command", "session_end",
    ]  # fmt: skip
    assert check(store, log)


@pytest.mark.parametrize("clock_value", [1.5, 2, float("nan"), 1e300])
def test_any_clock_value_gives_valid_json(recorder: Recorder, clock_value: float) -> None:
    log = open_log(recorder)
    log._clock = lambda: clock_value
    log.event("command", text="select 1")
    log.close("closed")
    (event,) = [e for e in read_events(log.path) if e["type"] == "command"]
    assert "ts" in event


def test_a_write_cut_short_by_a_full_disk_leaves_whole_lines(
    recorder: Recorder, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills in the middle of a line: the partial line is cut off again, so
    the file holds whole events matching the index, and verify names the failure."""
    import errno

    import hoopy.recorder as rec

    real_write = os.write
    log = open_log(recorder)
    log.event("command", text="select 1")
    good = log.path.read_bytes()

    def fills_up(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))  # part of the line fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec.os, "write", fills_up)
    with pytest.raises(RecorderError):
        log.event("command", text="select 2")
    monkeypatch.undo()
    assert log.path.read_bytes() == good
    with pytest.raises(RecorderError):
        log.close("closed")
    res = recorder.verify_session(log.id)
    assert not res.ok
    assert res.problems == [
        "the recording failed during the session (disk full or I/O error): the chain "
        "verifies up to there and every later command was refused, but session_end is missing"
    ]


# ---- open sessions: progress in the index, crash recovery ---------------------------------
def flush_progress(store: StateStore, log: SessionLog) -> None:
    """What the gateway's flusher does every second."""
    log.flush()
    moved = log.progress()
    if moved is not None:
        store.sessions_progress([(log.id, *moved)])


def test_progress_reports_what_is_on_disk_once(recorder: Recorder, store: StateStore) -> None:
    log = open_log(recorder)
    row = store.get_session(log.id)
    assert row is not None and (row.events, row.head) == (1, log.head)  # session_start
    assert log.progress() == (1, log.head)
    assert log.progress() is None  # nothing new
    log.event("command", text="select 1")
    log.buffer("result", tag="SELECT 1")
    assert log.progress() == (2, read_head(log.path))  # the buffered one is not on disk yet
    log.flush()
    assert log.progress() == (3, log.head)
    log.close("closed")
    assert log.progress() is None


def read_head(path: Path) -> str:
    return hashlib.sha256(path.read_bytes().splitlines()[-1]).hexdigest()


def test_cut_tail_of_an_open_session_is_detected(recorder: Recorder, store: StateStore) -> None:
    log = recorded(recorder, n=4, close=False)
    flush_progress(store, log)
    assert verify_session(log.id, recorder.directory, store).ok
    log.event("command", text="select 9")  # grown since the last flush: fine
    res = verify_session(log.id, recorder.directory, store)
    assert res.ok and res.open and res.events == 6
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:3]))  # the tail removed, chain still intact
    res = verify_session(log.id, recorder.directory, store)
    assert not res.ok and any("index says 5 events were on disk" in p for p in res.problems)


def test_changed_line_below_the_flushed_head_is_detected(
    recorder: Recorder, store: StateStore
) -> None:
    log = recorded(recorder, n=2, close=False)
    flush_progress(store, log)
    lines = log.path.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b"select 1", b"select 7")  # the last line: no chain after it
    log.path.write_bytes(b"".join(lines))
    res = verify_session(log.id, recorder.directory, store)
    assert not res.ok and any("hash does not match the index" in p for p in res.problems)


def test_recover_session_ends_it_as_crashed(recorder: Recorder, store: StateStore) -> None:
    from hoopy.recorder import recover_session

    log = recorded(recorder, n=2, close=False)
    flush_progress(store, log)
    log.event("command", text="select 3")  # written after the last flush, before the crash
    row = store.get_session(log.id)
    assert row is not None
    res = recover_session(store, row, 1234.0)
    assert res.ok
    row = store.get_session(log.id)
    assert row is not None
    assert (row.ended, row.outcome, row.events, row.head, row.note) == (
        1234.0,
        "crashed",
        4,
        log.head,
        "",
    )
    res = verify_session(log.id, recorder.directory, store)
    assert res.ok and res.crashed and not res.open
    with log.path.open("ab") as f:  # the file of a crashed session cannot grow unnoticed
        f.write(log.path.read_bytes().splitlines(keepends=True)[-1])
    assert not verify_session(log.id, recorder.directory, store).ok


def test_recovering_a_broken_recording_notes_it_for_good(
    recorder: Recorder, store: StateStore
) -> None:
    from hoopy.recorder import recover_session

    log = recorded(recorder, n=4, close=False)
    flush_progress(store, log)
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:2]))  # tail cut between the crash and the recovery
    row = store.get_session(log.id)
    assert row is not None
    recover_session(store, row, 99.0)
    row = store.get_session(log.id)
    assert row is not None and row.outcome == "crashed" and row.events == 2
    assert "index says 5 events were on disk" in row.note
    res = verify_session(log.id, recorder.directory, store)  # file and index agree now, but…
    assert not res.ok and any("crash was found" in p for p in res.problems)


def test_index_row_pointing_at_another_sessions_file(recorder: Recorder, store: StateStore) -> None:
    """`hoopy verify B` where B's row names A's (intact) recording."""
    from hoopy.recorder import verify_row

    a, b = recorded(recorder), recorded(recorder)
    row_a, row_b = store.get_session(a.id), store.get_session(b.id)
    assert row_a is not None and row_b is not None
    forged = dataclasses.replace(row_b, path=row_a.path, events=row_a.events, head=row_a.head)
    res = verify_row(forged)
    assert not res.ok
    assert any("recording is of session" in p for p in res.problems)
    assert any("another session's file" in p for p in res.problems)


@pytest.mark.parametrize(
    "field_, value", [("subject", "mallory"), ("connector", "other-db"), ("protocol", "ssh")]
)
def test_index_identity_must_match_session_start(
    recorder: Recorder, store: StateStore, field_: str, value: str
) -> None:
    from hoopy.recorder import verify_row

    log = recorded(recorder)
    row = store.get_session(log.id)
    assert row is not None and verify_row(row).ok
    res = verify_row(dataclasses.replace(row, **{field_: value}))
    assert not res.ok and any(f"session_start has {field_}" in p for p in res.problems)
