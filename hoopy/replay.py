"""`hoopy replay ID`: play a recorded session back in the terminal, in time.

Everything a recording holds came from an agent (statement text, values, error messages,
token subjects) or from whoever could write the file, and it is shown on a security
team's terminal.  So no recorded character reaches a terminal as a control: C0 controls,
DEL, C1 controls (U+009B is a CSI on its own), bidi overrides and lone surrogates are shown
as visible escapes (`\\x1b`, `\\u202e`) by `clean_line` / `clean_block`, and by
`clean_json` for `hoopy sessions show`.  Multi-line statement text keeps its newlines (and
tabs), but every continuation line is indented behind a `┆` gutter, so no line of it can
pass for an event line.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from hoopy.recorder import read_events

MAX_GAP = 2.0  # seconds: long idle stretches are shortened
INDENT = " " * 18
CONTINUATION = "\n" + INDENT + "┆ "

# DEL, C1, the Arabic letter mark, LRM/RLM, line/paragraph separators, the bidi embeddings,
# overrides and isolates, lone surrogates (printing one would raise, not just mislead).
_UNSAFE_BEYOND_C0 = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_LINE = re.compile(f"[\x00-\x1f{_UNSAFE_BEYOND_C0}]")
_UNSAFE_BLOCK = re.compile(f"[\x00-\x08\x0b-\x1f{_UNSAFE_BEYOND_C0}]")  # keeps \t and \n
_UNSAFE_JSON = re.compile(f"[{_UNSAFE_BEYOND_C0}]")  # json.dumps escapes C0 itself


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _json_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def clean_line(value: object) -> str:
    """`value` as one line of text no terminal interprets: controls, newlines and tabs
    included, become visible escapes."""
    return _UNSAFE_LINE.sub(_escape, value if isinstance(value, str) else str(value))


def clean_block(text: object) -> str:
    """Multi-line text (a statement) made safe like `clean_line`, but keeping its newlines
    and tabs, each continuation line behind the replay's gutter."""
    s = _UNSAFE_BLOCK.sub(_escape, text if isinstance(text, str) else str(text))
    return s.replace("\n", CONTINUATION)


def clean_json(value: Any, indent: int | None = None) -> str:
    """JSON of `value` with every character a terminal could act on escaped as
    `\\uXXXX`: still valid JSON that decodes to the same value."""
    return _UNSAFE_JSON.sub(_json_escape, json.dumps(value, ensure_ascii=False, indent=indent))


def describe(ev: dict[str, Any]) -> str:
    t = ev.get("type")
    if t == "session_start":
        return clean_line(
            f"# session {ev.get('session', '')} {ev.get('protocol')} → {ev.get('connector')}"
            f" by {ev.get('subject')} {ev.get('groups', [])} from {ev.get('client')}"
        )
    if t == "command":
        rule = f" [{clean_line(ev.get('rule'))}]" if ev.get("rule") else ""
        outcome = clean_line(ev.get("outcome", "?"))
        return f"{outcome:>16}{rule}  {clean_block(ev.get('text', ''))}"
    if t == "result":
        return _result(ev)
    if t == "bind":
        params = ev.get("params")
        shown = ", ".join(
            "NULL" if v is None else repr(v) for v in (params if isinstance(params, list) else [])
        )
        name = ev.get("statement") or "(unnamed)"
        more = ", …" if ev.get("truncated") else ""
        return f"{'bind':>16}  {clean_line(f'{name}({shown}{more})')}"
    if t == "error":
        return f"{INDENT}! {clean_line(ev.get('code', ''))} {clean_line(ev.get('message', ''))}"
    if t == "session_end":
        return f"# session end: {clean_line(ev.get('outcome', ''))}"
    if t == "exit":  # an SSH channel's end
        sig = f" signal {clean_line(ev['signal'])}" if ev.get("signal") else ""
        status = "" if ev.get("status") is None else f" status {clean_line(ev.get('status'))}"
        return f"{INDENT}← exit{status}{sig} ({clean_line(ev.get('bytes_out', 0))} bytes out)"
    return f"{INDENT}. {clean_line(t)}"


def play_cast(path: Path, speed: float = 1.0, out: TextIO = sys.stdout) -> None:
    """An asciicast's output in time, every character made safe (see clean_block)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[1:]
    except OSError:
        print(f"{INDENT}! cannot read {clean_line(path.name)}", file=out)
        return
    last = 0.0
    for line in lines:
        try:
            t, code, data = json.loads(line)
        except (ValueError, TypeError):
            continue
        if code != "o" or not isinstance(data, str) or not isinstance(t, int | float):
            continue
        if speed > 0 and math.isfinite(t):
            time.sleep(min(max(t - last, 0.0), MAX_GAP) / speed)
            last = t
        out.write(clean_block(data.replace("\r\n", "\n")))
        out.flush()


def _result(ev: dict[str, Any]) -> str:
    rows = ev.get("rows")
    lines = [f"{INDENT}→ {clean_line(ev.get('tag', ''))}"]
    for r in rows[:20] if isinstance(rows, list) else []:
        cells = r if isinstance(r, list) else [r]
        lines.append(f"{INDENT}| " + " | ".join(clean_line(c) for c in cells))
    return "\n".join(lines)


def _ts(ev: dict[str, Any]) -> float | None:
    ts = ev.get("ts")  # whatever a tampered file holds, replay goes on
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        return None
    return float(ts)


def replay(path: Path, speed: float = 1.0, out: TextIO = sys.stdout) -> None:
    last: float | None = None
    for ev in read_events(path):
        ts = _ts(ev)
        if last is not None and ts is not None and speed > 0:
            time.sleep(min(max(ts - last, 0.0), MAX_GAP) / speed)
        last = ts if ts is not None else last
        cast = path.with_name(f"{path.stem}-ch{ev.get('channel')}.cast")
        if ev.get("type") == "exit" and isinstance(ev.get("channel"), int) and cast.exists():
            play_cast(cast, speed, out)
        print(describe(ev), file=out, flush=True)
