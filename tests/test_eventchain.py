"""hoopy/eventchain.py (and resultrun.result_members): the recording's lines, compiled
or interpreted, are byte for byte the lines the Python chain made before them
(eventline.chain_line, kept as the reference): recordings are verified and replayed,
so their format must never move.  Golden lines pin both; odd texts (non-ASCII, lone
surrogates, control characters, quotes, events over MAX_EVENT_BYTES) and odd kinds and
clocks are compared one by one.  CI runs this file on both builds (HOOPY_PURE=1), and
`test_both_builds_make_the_same_lines` compares the two in one run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hoopy import compiled, eventchain
from hoopy.eventchain import EventChain
from hoopy.eventline import MAX_EVENT_BYTES, ZERO_HASH, _dumps, _json_str, chain_line
from hoopy.eventline import encode_members as members_of
from hoopy.protocols.postgres.resultlog import ResultLog
from hoopy.protocols.postgres.resultrun import result_members

ROOT = Path(__file__).resolve().parents[1]
STATIC = (members_of({"outcome": "allow", "rule": "bench"}), {"outcome": "allow", "rule": "bench"})

ODD_TEXTS = [
    "select 1",
    "",
    'naïve ☃ "quoted" \\ back\nslash\t\r',
    "controls \x00\x01\x08\x0b\x0c\x1f\x7f end",
    "lone surrogates a\udc80b\ud800 and a pair \U0001f600",
    "\u2028\u2029 line separators, </script>",
    "x" * (MAX_EVENT_BYTES + 10),  # capped as before: truncated with a marker
    "é" * (MAX_EVENT_BYTES // 2 + 1),  # over the cap in bytes, not in characters
]
ODD_FIELDS: list[dict[Any, Any]] = [
    {},
    {"text": "select 1"},
    {"tag": "SELECT 1", "rows": [["1", None, {"b64": "AAE="}]], "columns": ["a"]},
    {"blob": b"\x00\xff", "set": {3, 1, 2}, "nan": math.nan, "inf": -math.inf},
    {"nested": {"deep": [1, 2.5, True, None, "ü"]}, "t": (1, 2)},
    {1: "int key", b"k": "bytes key"},  # keys JSON cannot hold: the slow encoder
    {"rows": [["y" * 1000] for _ in range(2000)]},  # over the cap: lists shortened
]
KINDS = ["command", "result", "session_start", "odd kind", "kïnd", "", "x-y"]


class Clock:
    """A fixed sequence of times (the old and new chains each get a fresh one)."""

    def __init__(self, values: list[Any]) -> None:
        self.values = list(values)
        self.i = 0

    def __call__(self) -> Any:
        v = self.values[self.i % len(self.values)]
        self.i += 1
        return v


TIMES = [1700000000.123456, 2, 1.5, 1e300, math.nan, 1733600000.0000004, -0.5]


def reference(events: list[tuple[str, Any, Any, Any]], clock: Callable[[], Any]) -> bytes:
    """The lines the Python chain made (SessionLog._append before eventchain.py)."""
    out, prev = [], ZERO_HASH
    for seq, (kind, fields, static, text) in enumerate(events):
        ts = clock()
        ts_bytes = b"%.6f" % ts if type(ts) is float and ts - ts == 0.0 else _dumps(ts)
        members = None
        if text is not None:  # event_text
            fields = {"text": text}
            members = b',"text":' + _json_str(text).encode("utf-8", "backslashreplace")
        line, prev = chain_line(seq, ts_bytes, kind, fields, members, static, prev)
        out.append(line)
    return b"".join(out)


def chained(events: list[tuple[str, Any, Any, Any]], clock: Callable[[], Any]) -> bytes:
    chain = EventChain(-1, clock)
    for kind, fields, static, text in events:
        if text is not None:
            chain.add_text(kind, static, text, False)
        else:
            chain.add(kind, fields, None, static, False)
    data = bytes(chain.pending)
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert chain.prev == hashlib.sha256(last).hexdigest() and chain.seq == len(events)
    return data


def corpus() -> list[tuple[str, Any, Any, Any]]:
    events: list[tuple[str, Any, Any, Any]] = []
    for i, text in enumerate(ODD_TEXTS):
        events.append((KINDS[i % len(KINDS)], None, STATIC, text))
        events.append(("command", None, (b"", {}), text))
    for i, fields in enumerate(ODD_FIELDS):
        events.append((KINDS[(i + 3) % len(KINDS)], fields, None, None))
        if not any(k in fields for k in STATIC[1]):
            events.append(("command", fields, STATIC, None))
    return events


def test_golden_lines() -> None:
    """Three events with a fixed clock, as the Python chain wrote them before."""
    events = [
        ("command", None, STATIC, "select 1"),
        ("result", {"tag": "SELECT 1", "rows": [["1"]], "columns": ["a"]}, None, None),
        ("command", None, STATIC, 'ü "q" \\ \udc80'),
    ]
    assert chained(events, Clock([1700000000.5])) == (
        b'{"seq":0,"ts":1700000000.500000,"type":"command","text":"select 1",'
        b'"outcome":"allow","rule":"bench","prev":"' + ZERO_HASH.encode() + b'"}\n'
        b'{"seq":1,"ts":1700000000.500000,"type":"result","tag":"SELECT 1","rows":[["1"]],'
        b'"columns":["a"],"prev":'
        b'"93b1c1a186587476fabcdfaa06b8f723a1d86ef2354543f53e44acf28fe7d3df"}\n'
        b'{"seq":2,"ts":1700000000.500000,"type":"command","text":"\xc3\xbc \\"q\\" \\\\ '
        b'\\udc80","outcome":"allow","rule":"bench","prev":'
        b'"21afdb904b719d34a1bb2938500d4d9b70afd30d91ab5318aa7fe5dbfd4ec730"}\n'
    )


def test_every_odd_event_is_the_line_it_was() -> None:
    events = corpus()
    assert chained(events, Clock(TIMES)) == reference(events, Clock(TIMES))


@pytest.mark.parametrize("i", range(len(ODD_TEXTS)))
def test_each_odd_text_alone(i: int) -> None:
    events = [("command", None, STATIC, ODD_TEXTS[i])]
    line = chained(events, Clock([1.25]))
    assert line == reference(events, Clock([1.25]))
    assert len(line) <= MAX_EVENT_BYTES + 1
    event = json.loads(line)
    if len(ODD_TEXTS[i].encode("utf-8", "surrogatepass")) < MAX_EVENT_BYTES - 200:
        assert event["text"] == ODD_TEXTS[i]
    else:
        assert event["truncated"] > MAX_EVENT_BYTES and "…[truncated" in event["text"]


@pytest.mark.parametrize(
    "ns",
    [1_700_000_000_000_000_000, 1_700_000_000_999_999_999, 1_000, 999, 1_733_600_000_123_456_789],
)
def test_system_clock_times_are_formatted_as_before(
    ns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system clock's time, from integers: b"%d.%06d" % (s, µs) as before."""
    monkeypatch.setattr(eventchain, "_time_ns", lambda: ns)
    chain = EventChain(-1)
    chain.add_text("command", STATIC, "select 1", False)
    chain.add("result", {"tag": "SELECT 1"}, None, None, False)
    ts = b"%d.%06d" % (ns // 1_000_000_000, ns // 1000 % 1_000_000)
    first, second = bytes(chain.pending).splitlines()
    assert first.startswith(b'{"seq":0,"ts":' + ts + b',"type":"command",')
    assert second.startswith(b'{"seq":1,"ts":' + ts + b',"type":"result",')


def test_writes_what_is_pending_and_keeps_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chain = EventChain(fd, Clock(TIMES))
        events = corpus()
        for n, (kind, fields, static, text) in enumerate(events):
            if text is not None:
                chain.add_text(kind, static, text, n % 3 == 0)
            else:
                chain.add(kind, fields, None, static, n % 3 == 0)
        chain.write()
        assert not chain.pending and chain.written_seq == chain.seq == len(events)
        assert chain.written_prev == chain.prev and chain.size == path.stat().st_size
    finally:
        os.close(fd)
    assert path.read_bytes() == reference(events, Clock(TIMES))
    lines = path.read_bytes().splitlines()
    prevs = [ZERO_HASH] + [hashlib.sha256(line).hexdigest() for line in lines]
    assert [json.loads(line)["prev"] for line in lines] == prevs[:-1]
    assert prevs[-1] == chain.prev


def test_a_failed_write_rolls_back_to_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chain = EventChain(fd, Clock([1.0]))
    chain.add_text("command", STATIC, "select 1", True)
    head, size = chain.prev, chain.size
    os.close(fd)  # the descriptor is gone: the next write fails (EBADF)
    chain.add_text("command", STATIC, "select 2", False)
    with pytest.raises(OSError):
        chain.write()
    assert (chain.seq, chain.prev, chain.size, bytes(chain.pending)) == (1, head, size, b"")
    assert chain.failed


# ---- result events --------------------------------------------------------------------
ROWS: list[list[Any]] = [
    [],
    [["1"]],
    [["a", None, "", {"b64": "AAEC"}]],
    [['q"uote', "back\\slash", "tab\tnl\ncr\r", "ü☃😀", "\x7f"]],
    [["1"], ["2"], [None]],
]


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("columns", [[], ["abalance"], ["é", 'a"b', "\udcff"]])
@pytest.mark.parametrize("truncated", [False, True])
@pytest.mark.parametrize("tag", ["SELECT 1", "", "INSERT 0 1 ü\ufffd"])
def test_result_members_are_the_encoders(
    rows: list[list[Any]], columns: list[str], truncated: bool, tag: str
) -> None:
    """resultrun's result event, encoded by hand, is what `buffer_fields("result",
    ResultLog.take(tag))` encoded: the same keys in the same order."""
    log = ResultLog(100, 1 << 20)
    log.columns, log.rows, log.truncated = list(columns), [list(r) for r in rows], truncated
    fields = log.take(tag)
    assert result_members(tag, [list(r) for r in rows], list(columns), truncated) == (
        b"," + _dumps(fields)[1:-1]
    )


def test_rows_as_add_rows_keeps_them_encode_as_before() -> None:
    """Values straight from DataRows (text, binary, invalid UTF-8, NULL) through
    ResultLog.add_rows (resultrun.add_rows) and result_members."""
    from hoopy.protocols.postgres import codec as pg

    values = [b"1", None, b"\x00\x01", b"\xff\xfe", 'ü\t"\\'.encode(), b"\x1b[31m"]
    raw = pg.data_row(values) + pg.data_row([b"2"] * 6)
    log = ResultLog(10, 1 << 20)
    log.describe_columns(["a", "b", "c", "d", "e", "f"])
    log.add_rows(raw)
    assert log.rows[0] == [
        "1",
        None,
        {"b64": "AAE="},
        {"b64": "//4="},
        'ü\t"\\',
        {"b64": "G1szMW0="},
    ]
    rows, columns = log.rows, log.columns
    fields = log.take("SELECT 2")
    assert result_members("SELECT 2", rows, columns, False) == b"," + _dumps(fields)[1:-1]


def test_rows_are_capped_as_before() -> None:
    from hoopy.protocols.postgres import codec as pg

    raw = b"".join(pg.data_row([b"x" * 10]) for _ in range(5))
    by_rows = ResultLog(3, 1 << 20)
    by_rows.add_rows(raw)
    assert len(by_rows.rows) == 3 and by_rows.truncated
    by_bytes = ResultLog(100, 25)
    by_bytes.add_rows(raw, 0, len(raw))
    assert len(by_bytes.rows) == 3 and by_bytes.truncated and by_bytes.size == 30
    by_bytes.add_rows(raw)  # once truncated, nothing more
    assert len(by_bytes.rows) == 3


# ---- both builds ----------------------------------------------------------------------
DIGEST = """
import json, sys
from hoopy import compiled
from tests.test_eventchain import Clock, TIMES, chained, corpus, ROWS
from hoopy.protocols.postgres.resultrun import result_members
lines = chained(corpus(), Clock(TIMES))
results = b"\\n".join(result_members("SELECT 1", r, ["a", "\\udcff"], True) for r in ROWS)
sys.stdout.buffer.write(lines + b"\\0" + results + b"\\0" + json.dumps(compiled.status()).encode())
"""


def run_digest(pure: bool) -> tuple[bytes, bytes, dict[str, bool]]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", DIGEST], capture_output=True, env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines, results, status = proc.stdout.split(b"\0")
    return lines, results, json.loads(status)


def test_both_builds_make_the_same_lines() -> None:
    pure = run_digest(pure=True)
    installed = run_digest(pure=False)
    assert not any(pure[2].values())
    if all(compiled.extension(n) is not None for n in compiled.MODULES):
        assert (
            installed[2]["hoopy.eventchain"] and installed[2]["hoopy.protocols.postgres.resultrun"]
        )
    assert pure[0] == installed[0] and pure[1] == installed[1]
    assert pure[0] == reference(corpus(), Clock(TIMES))


# ---- SessionLog's methods bound from eventchain.py -------------------------------------
@pytest.fixture
def session_log(tmp_path: Path) -> Any:
    from hoopy.recorder import Recorder
    from hoopy.state import StateStore

    store = StateStore(tmp_path / "state.db")
    recorder = Recorder(tmp_path / "rec", store, Clock([1700000000.25]))
    log = recorder.open_session(
        "s-1", protocol="postgres", connector="db", subject="agent", groups=["g"],
        client="127.0.0.1", tls=True,
    )  # fmt: skip
    yield log
    store.close()


CALLS: list[tuple[str, Callable[[Any], None]]] = [
    ("event", lambda log: log.event("command", text="x")),
    ("event_static", lambda log: log.event_static("command", STATIC, text="x")),
    ("event_text", lambda log: log.event_text("command", STATIC, "x")),
    ("buffer", lambda log: log.buffer("result", tag="x")),
    ("buffer_fields", lambda log: log.buffer_fields("result", {"tag": "x"})),
    ("buffer_fields static", lambda log: log.buffer_fields("bind", {"p": 1}, STATIC)),
]


@pytest.mark.parametrize(("name", "call"), CALLS)
def test_every_call_refuses_a_closed_or_failed_log(
    session_log: Any, name: str, call: Callable[[Any], None]
) -> None:
    from hoopy.recorder import RecorderError

    session_log._failed = "No space left on device"
    with pytest.raises(RecorderError, match="failed earlier: No space left on device"):
        call(session_log)
    session_log._failed = None
    session_log.close("closed")
    with pytest.raises(RecorderError, match="is closed"):
        call(session_log)


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda log: log.event("command", seq=1), "seq"),
        (lambda log: log.buffer("result", prev="x", ts=1), "prev, ts"),
        (lambda log: log.event_static("command", STATIC, rule="again"), "rule"),
        (lambda log: log.buffer_fields("bind", {"type": 1}, STATIC), "type"),
        (lambda log: log.event_text("command", (b'"text":"a"', {"text": "a"}), "b"), "text"),
    ],
)
def test_reserved_and_repeated_fields_are_refused(
    session_log: Any, call: Callable[[Any], None], bad: str
) -> None:
    events = session_log.events
    with pytest.raises(ValueError, match=f"reserved event field\\(s\\): {bad}$"):
        call(session_log)
    assert session_log.events == events and not session_log.pending


def test_the_log_writes_the_reference_lines(session_log: Any) -> None:
    """Through SessionLog (event, buffer, deferred, flush): the file is the chain the
    Python code wrote, line for line after session_start."""
    log = session_log
    log.event_text("command", STATIC, "select 'ü'")
    log.buffer_fields("result", {"tag": "SELECT 1", "rows": [["ü"]]})
    log.defer()
    log.event("command", text="select 2")
    log.buffer("result", tag="SELECT 1", rows=[])
    assert log.pending
    log.flush()
    assert not log.pending
    lines = log.path.read_bytes().splitlines(keepends=True)
    prev = hashlib.sha256(lines[0][:-1]).hexdigest()
    expected = []
    for seq, (kind, fields, text) in enumerate(
        [
            ("command", None, "select 'ü'"),
            ("result", {"tag": "SELECT 1", "rows": [["ü"]]}, None),
            ("command", {"text": "select 2"}, None),
            ("result", {"tag": "SELECT 1", "rows": []}, None),
        ],
        1,
    ):
        members = None
        if text is not None:
            fields = {"text": text}
            members = b',"text":' + _json_str(text).encode("utf-8", "backslashreplace")
        static = STATIC if text is not None else None
        line, prev = chain_line(seq, b"1700000000.250000", kind, fields, members, static, prev)
        expected.append(line)
    assert lines[1:] == expected and log.head == prev and log.events == 5
