"""`hoopy replay ID`: play a recorded session back in the terminal, in time.

Everything a recording holds came from an agent (statement text, values, error messages,
token subjects) or from whoever could write the file, and it is shown on a security
team's terminal.  So no recorded character reaches a terminal as a control: C0 controls,
DEL, C1 controls (U+009B is a CSI on its own), bidi overrides and lone surrogates are shown
as visible escapes (`\\x1b`, `\\u202e`) by `clean_line` / `clean_block`, and by
`clean_json` for `hoopy sessions show`.  Multi-line statement text keeps its newlines (and
tabs), but every continuation line is indented behind a `┆` gutter, so no line of it can
pass for an event line; on a terminal (or with $COLUMNS) lines too long for it are broken
the same way, since the terminal would wrap them to column 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, TextIO

from hoopy.recorder import read_events
from hoopy.showsafe import HIDDEN, escape_char

MAX_GAP = 2.0  # seconds: long idle stretches are shortened
INDENT = " " * 18
CONTINUATION = "\n" + INDENT + "┆ "

# DEL, C1, bidi marks, embeddings, overrides and isolates, zero-width and other format
# characters, line/paragraph separators, lone surrogates (printing one would raise, not
# just mislead): see hoopy.showsafe.
_UNSAFE_BEYOND_C0 = HIDDEN
_UNSAFE_LINE = re.compile(f"[\x00-\x1f{_UNSAFE_BEYOND_C0}]")
_UNSAFE_BLOCK = re.compile(f"[\x00-\x08\x0b-\x1f{_UNSAFE_BEYOND_C0}]")  # keeps \t and \n
_UNSAFE_JSON = re.compile(f"[{_UNSAFE_BEYOND_C0}]")  # json.dumps escapes C0 itself


def _escape(m: re.Match[str]) -> str:
    return escape_char(m.group())


def _json_escape(m: re.Match[str]) -> str:
    return json.dumps(m.group())[1:-1]  # \uXXXX, a surrogate pair beyond the BMP


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
        extra = ev.get("extra")
        issuer = extra.get("issuer") if isinstance(extra, dict) else None
        of = f" (of {issuer})" if issuer else ""  # an agent is (issuer, subject)
        return clean_line(
            f"# session {ev.get('session', '')} {ev.get('protocol')} → {ev.get('connector')}"
            f" by {ev.get('subject')}{of} {ev.get('groups', [])} from {ev.get('client')}"
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
    if t in ("forward_open", "forward_close", "forward_data"):
        return _forward(ev)
    return f"{INDENT}. {clean_line(t)}"


def _forward(ev: dict[str, Any]) -> str:
    """SSH TCP forwarding (hoopy.protocols.ssh.forward): its open, close and the bytes
    that passed (text shown escaped, binary as a byte count)."""
    t, n = ev.get("type"), clean_line(ev.get("forward", "?"))
    if t == "forward_open":
        return f"{INDENT}⇄ forward {n} open to {clean_line(ev.get('destination', ''))}"
    if t == "forward_close":
        return (
            f"{INDENT}⇄ forward {n} closed by {clean_line(ev.get('closed_by', '?'))}: "
            f"{clean_line(ev.get('bytes_to', 0))} bytes to, "
            f"{clean_line(ev.get('bytes_from', 0))} from, {clean_line(ev.get('duration', 0))} s"
        )
    arrow = "→" if ev.get("dir") == "to" else "←"
    text = ev.get("text")
    if isinstance(text, str):
        shown = clean_line(text[:200]) + ("…" if len(text) > 200 else "")
    else:
        size = len(ev.get("b64", "")) * 3 // 4 if isinstance(ev.get("b64"), str) else 0
        shown = f"({size} bytes of binary)"
    return f"{INDENT}{arrow} forward {n}: {shown}"


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


def _cells(c: str) -> int:
    """Terminal columns one character takes (wide East Asian: 2; combining: 0; a tab:
    at most 8)."""
    if c == "\t":
        return 8
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


GUTTER = INDENT + "┆ "
_MIN_WRAP = len(GUTTER) + 20


def wrap(text: str, width: int) -> str:
    """`text` with every line longer than `width` columns broken, each piece after the
    first behind the gutter: a terminal would otherwise wrap it to column 0, where
    padded text could pass for an event line."""
    width = max(width, _MIN_WRAP)
    lines: list[str] = []
    for line in text.split("\n"):
        piece: list[str] = []
        room = width
        for c in line:
            n = _cells(c)
            if room - n < 0:
                lines.append("".join(piece))
                piece, room = [GUTTER], width - len(GUTTER)
            piece.append(c)
            room -= n
        lines.append("".join(piece))
    return "\n".join(lines)


def terminal_width(out: TextIO) -> int | None:
    """Columns to wrap at: the terminal's when `out` is one, else $COLUMNS, else none."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def replay(
    path: Path, speed: float = 1.0, out: TextIO = sys.stdout, width: int | None = None
) -> None:
    """`width`: columns to wrap at (None: the terminal's, see `terminal_width`)."""
    width = width if width is not None else terminal_width(out)
    last: float | None = None
    for ev in read_events(path):
        ts = _ts(ev)
        if last is not None and ts is not None and speed > 0:
            time.sleep(min(max(ts - last, 0.0), MAX_GAP) / speed)
        last = ts if ts is not None else last
        cast = path.with_name(f"{path.stem}-ch{ev.get('channel')}.cast")
        if ev.get("type") == "exit" and isinstance(ev.get("channel"), int) and cast.exists():
            play_cast(cast, speed, out)
        text = describe(ev)
        print(wrap(text, width) if width else text, file=out, flush=True)
