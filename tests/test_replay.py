"""What `hoopy replay` / `sessions show` print: no recorded character reaches the terminal
as a control (escape sequences, C1, bidi overrides), yet the text stays readable."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from hoopy.recorder import Recorder
from hoopy.replay import clean_block, clean_json, clean_line, describe, replay
from hoopy.state import StateStore

FORGED = "SELECT 1 /* \x1b[1A\x1b[2K\x1b[32m allow select 1\x1b[0m */"
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
# Anything a terminal acts on: C0 but \t \n, DEL, C1, bidi controls, lone surrogates.
RAW = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
HOSTILE = [
    FORGED,
    OSC52,
    "a\x9b2Jb",
    "evil\u202etxt.exe",
    "\u2066x\u2069",
    "x\x7fy",
    "\x00",
    "\ud800",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_clean_line_leaves_no_control(text: str) -> None:
    out = clean_line(text)
    assert not RAW.search(out) and "\n" not in out and "\t" not in out


def test_escapes_are_visible_and_exact() -> None:
    assert clean_line("a\x1b[2Kb") == "a\\x1b[2Kb"
    assert clean_line("x\x9by") == "x\\x9by"
    assert clean_line("x\u202ey") == "x\\u202ey"
    assert clean_line("one\ntwo\tthree") == "one\\x0atwo\\x09three"
    assert clean_line("café → ok") == "café → ok"  # printable Unicode is kept
    assert clean_line(42) == "42"


def test_multi_line_statements_keep_lines_behind_a_gutter() -> None:
    text = "select 1\n     allow  drop table x\r\n\tfrom t"
    out = clean_block(text)
    lines = out.split("\n")
    assert lines[0] == "select 1"
    # no continuation line can pass for an event line of its own
    assert all(line.startswith(" " * 18 + "┆ ") for line in lines[1:])
    assert "\\x0d" in out and "\tfrom t" in out and not RAW.search(out)


def test_describe_escapes_every_field() -> None:
    events = [
        {"type": "session_start", "session": "s", "subject": "ev\x1b[2Jil", "groups": ["\x9b"]},
        {"type": "command", "outcome": "allow\x1b[1A", "rule": "r\u202e", "text": FORGED},
        {"type": "result", "tag": "SELECT\x1b", "rows": [["a\nb", "\x1b]0;t\x07"], "x\x9b"]},
        {"type": "bind", "statement": "\x1bs", "params": ["\x1b", None]},
        {"type": "error", "code": "42\x1b", "message": "line one\n        allow  forged"},
        {"type": "session_end", "outcome": "closed\x1b[0m"},
        {"type": "\x1b[31mother"},
    ]
    for ev in events:
        out = describe(ev)
        assert not RAW.search(out), (ev, out)
        if ev["type"] != "command":  # only statement text may span lines
            rows = len(ev.get("rows", [])) if ev["type"] == "result" else 0
            assert out.count("\n") == rows, out
    assert "\\x1b[1A" in describe(events[1])


def test_describe_survives_odd_shapes() -> None:
    assert "→" in describe({"type": "result", "rows": "not a list"})
    assert "bind" in describe({"type": "bind", "params": {"a": 1}})
    assert describe({"type": "result", "rows": [5]}).endswith("| 5")


def test_clean_json_is_valid_json_of_the_same_value() -> None:
    value = {"text": "".join(HOSTILE), "n": 1, "nested": ["\x85", "\u2028"]}
    out = clean_json(value)
    assert not RAW.search(out) and "\n" not in out
    assert json.loads(out) == value


def test_replay_of_a_hostile_recording(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    rec = Recorder(tmp_path / "rec", store)
    log = rec.open_session(
        "s1",
        protocol="postgres",
        connector="app-db",
        subject="agent\x1b]52;c;AAAA\x07",
        groups=["agents"],
        client="127.0.0.1:1",
        tls=True,
    )
    for text in HOSTILE:
        log.event("command", text=text, outcome="allow")
    log.event("error", code="XX000", message=OSC52)
    log.close("closed")
    out = io.StringIO()
    replay(log.path, speed=0, out=out)
    shown = out.getvalue()
    assert not RAW.search(shown)
    assert "\\x1b]52;c;AAAA\\x07" in shown and "allow select 1" in shown
    store.close()


def _narrow_recording(tmp_path: Path, text: str) -> Path:
    store = StateStore(tmp_path / "state.db")
    rec = Recorder(tmp_path / "rec", store)
    log = rec.open_session(
        "s2", protocol="postgres", connector="app-db", subject="a", groups=[], client="c", tls=True
    )
    log.event("command", text=text, outcome="allow")
    log.event("result", tag="SELECT 1", rows=[["x" * 200]])
    log.close("closed")
    store.close()
    return log.path


@pytest.mark.parametrize("width", [40, 60, 80])
def test_long_lines_wrap_under_the_gutter_on_a_narrow_terminal(tmp_path: Path, width: int) -> None:
    """Issue 16: a terminal wraps a long line to column 0, where padding could make the
    rest pass for an event line (`   deny [rule]  …`).  Replay wraps it itself, behind
    the gutter."""
    forged = " " * 200 + "            deny [no-ddl]  drop table orders"
    path = _narrow_recording(tmp_path, "select 1 /*" + forged + " */ 中文" * 20)
    out = io.StringIO()
    replay(path, speed=0, out=out, width=width)
    lines = out.getvalue().splitlines()
    gutter = " " * 18 + "┆ "
    events = [ln for ln in lines if not ln.startswith(gutter)]
    assert len(lines) > len(events)  # it did wrap
    assert all(not ln.lstrip().startswith("deny") for ln in events)
    assert all(_cells(ln) <= max(width, len(gutter) + 20) for ln in lines), lines


def test_wrapping_follows_columns_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _narrow_recording(tmp_path, "select " + "1" * 300)
    monkeypatch.setenv("COLUMNS", "50")
    out = io.StringIO()
    replay(path, speed=0, out=out)  # not a terminal: $COLUMNS says
    assert max(len(ln) for ln in out.getvalue().splitlines()) <= 50
    monkeypatch.delenv("COLUMNS")
    out = io.StringIO()
    replay(path, speed=0, out=out)  # neither: a pipe gets whole lines
    assert any(len(ln) > 300 for ln in out.getvalue().splitlines())


def _cells(line: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in line)


def test_zero_width_and_tag_characters_are_escaped() -> None:
    for hidden in ("\u200b", "\u200d", "\u2060", "\ufeff", "\U000e0041", "\u00ad"):
        out = clean_line(f"a{hidden}b")
        assert hidden not in out and "\\" in out
        assert json.loads(clean_json(f"a{hidden}b")) == f"a{hidden}b"
        assert hidden not in clean_json(f"a{hidden}b")


def test_session_start_names_the_issuer() -> None:
    ev = {"type": "session_start", "subject": "agent-1", "extra": {"issuer": "https://b\x1b"}}
    assert "by agent-1 (of https://b\\x1b)" in describe(ev)
    assert "(of" not in describe({"type": "session_start", "subject": "a", "extra": "odd"})


def test_describe_forwards_escapes_what_passed() -> None:
    """Forwarded bytes are whatever the agent sent: shown escaped, on one line."""
    events = [
        {"type": "forward_open", "forward": 3, "destination": "db\x1b[2J:5432"},
        {"type": "forward_data", "forward": 3, "dir": "to", "text": "GET /\r\n\x1b]0;x\x07"},
        {"type": "forward_data", "forward": 3, "dir": "from", "b64": "AAEC"},
        {"type": "forward_data", "forward": "\x1b", "dir": "to", "text": "x" * 500},
        {"type": "forward_close", "forward": 3, "closed_by": "agent\x9b", "bytes_to": 7},
        {"type": "forward_data", "b64": 5},
    ]
    for ev in events:
        out = describe(ev)
        assert not RAW.search(out) and "\n" not in out, (ev, out)
    assert "→ forward 3: GET /\\x0d\\x0a\\x1b]0;x" in describe(events[1])
    assert "(3 bytes of binary)" in describe(events[2])
    assert describe(events[3]).endswith("x…")
    assert "7 bytes to" in describe(events[4])
