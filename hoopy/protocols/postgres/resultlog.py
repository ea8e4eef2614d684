"""What one statement's result looked like to the agent, as its recording keeps it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from hoopy.protocols.postgres import codec as pg


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
        """The DataRow messages in raw[start:stop]."""
        if self.truncated:
            return
        rows, size = self.rows, self.size
        stop = len(raw) if stop is None else stop
        decoded, upto = pg.decode_data_rows(raw, start, stop, self.max_rows - len(rows))
        for values in decoded:
            if size >= self.max_bytes:
                self.truncated = True
                break
            row: list[Any] = []
            for v in values:
                if v is None:
                    row.append(None)
                    continue
                size += len(v)
                try:
                    row.append(v.decode())
                except UnicodeDecodeError:
                    row.append(_show(v))
            rows.append(row)
        else:
            if upto < stop:
                self.truncated = True  # more rows than max_rows
        self.size = size

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
        self.reset()
        self.columns = [f.name for f in desc.fields]

    def take(self, tag: str) -> dict[str, Any]:
        """`fields(tag)`, and the log starts afresh for the next result."""
        out = self.fields(tag)
        self.reset()
        return out

    def reset(self) -> None:
        self.columns, self.rows, self.size, self.truncated = [], [], 0, False


def _show(v: bytes | None) -> Any:
    if v is None:
        return None
    try:
        return v.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(v).decode()}
