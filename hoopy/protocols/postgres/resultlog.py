"""What one statement's result looked like to the agent, as its recording keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hoopy.protocols.postgres import cmdlane
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.resultrun import add_rows


@dataclass
class ResultLog:
    """What one statement's result looked like to the agent, capped."""

    max_rows: int
    max_bytes: int
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    size: int = 0
    truncated: bool = False

    def add(self, chunk: pg.DataRows) -> None:
        self.add_rows(chunk.raw)

    def add_rows(self, raw: bytes, start: int = 0, stop: int | None = None) -> None:
        """The DataRow messages in raw[start:stop] (resultrun.add_rows, compiled)."""
        add_rows(self, raw, start, len(raw) if stop is None else stop)

    def add_copy(self, data: bytes) -> None:
        if self.size >= self.max_bytes:
            self.truncated = True
            return
        self.rows.append([_show(data)])
        self.size += len(data)

    def fields(self, tag: str) -> dict[str, Any]:
        out: dict[str, Any] = {"tag": tag, "rows": self.rows}
        if self.columns:
            out["columns"] = self.columns
        if self.truncated:
            out["truncated"] = True
        return out

    def describe(self, desc: pg.RowDescription) -> None:
        """A new result starts, with these columns."""
        self.describe_columns([f.name for f in desc.fields])

    def describe_columns(self, columns: list[str] | tuple[str, ...]) -> None:
        """`describe`, from the column names (the relay keeps them per description)."""
        self.columns, self.rows, self.size, self.truncated = list(columns), [], 0, False

    def take(self, tag: str) -> dict[str, Any]:
        """`fields(tag)`, and the log starts afresh for the next result."""
        out: dict[str, Any] = {"tag": tag, "rows": self.rows}  # as fields(), then reset()
        if self.columns:
            out["columns"] = self.columns
        if self.truncated:
            out["truncated"] = True
        self.columns, self.rows, self.size, self.truncated = [], [], 0, False
        return out

    def reset(self) -> None:
        self.columns, self.rows, self.size, self.truncated = [], [], 0, False


def bind_fields(bind: pg.Bind, max_bytes: int, text: str | None = None) -> dict[str, Any]:
    """A Bind's recording: `bind_statement` then `bind_values` (the proxy encodes the
    first once per statement)."""
    return {**bind_statement(bind.statement, text), **bind_values(bind, max_bytes)}


def bind_statement(name: str, text: str | None) -> dict[str, Any]:
    """Which statement a Bind runs: its name, and its text when hoopy knows it."""
    return {"statement": name} if text is None else {"statement": name, "text": text}


def bind_values(bind: pg.Bind, max_bytes: int) -> dict[str, Any]:
    """What one execution binds: the portal and the values (text-format values as text,
    binary ones and invalid UTF-8 as base64), at most `max_bytes` of them (then
    `"truncated": true`): cmdlane.bind_values, compiled when built."""
    return cmdlane.bind_values(bind.portal, bind.param_formats, bind.params, max_bytes)


# A value as the recording keeps it: text when it is plain UTF-8 text, else its exact
# bytes as {"b64": …} (cmdlane.shown, which Bind values go through too).
_show = cmdlane.shown
