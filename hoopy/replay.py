"""`hoopy replay ID`: play a recorded session back in the terminal, in time."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from hoopy.recorder import read_events

MAX_GAP = 2.0  # seconds: long idle stretches are shortened


def describe(ev: dict[str, Any]) -> str:
    t = ev.get("type")
    if t == "session_start":
        return (
            f"# session {ev.get('session', '')} {ev.get('protocol')} → {ev.get('connector')}"
            f" by {ev.get('subject')} {ev.get('groups', [])} from {ev.get('client')}"
        )
    if t == "command":
        rule = f" [{ev.get('rule')}]" if ev.get("rule") else ""
        return f"{ev.get('outcome', '?'):>16}{rule}  {ev.get('text', '')}"
    if t == "result":
        rows = ev.get("rows") or []
        shown = "\n".join("                  | " + " | ".join(map(str, r)) for r in rows[:20])
        head = f"                  → {ev.get('tag', '')}"
        return head + ("\n" + shown if shown else "")
    if t == "bind":
        params = ", ".join("NULL" if v is None else repr(v) for v in ev.get("params") or [])
        name = ev.get("statement") or "(unnamed)"
        return f"{'bind':>16}  {name}({params}{', …' if ev.get('truncated') else ''})"
    if t == "error":
        return f"                  ! {ev.get('code', '')} {ev.get('message', '')}"
    if t == "session_end":
        return f"# session end: {ev.get('outcome', '')}"
    return f"                  . {t}"


def replay(path: Path, speed: float = 1.0, out: TextIO = sys.stdout) -> None:
    last: float | None = None
    for ev in read_events(path):
        ts = float(ev.get("ts", 0.0))
        if last is not None and speed > 0:
            time.sleep(min(max(ts - last, 0.0), MAX_GAP) / speed)
        last = ts
        print(describe(ev), file=out, flush=True)
