"""Masking sessions on the wire: what their errors and notices may show, how COPY rows
are formatted, which forwarded messages the result tracker must see.  Pure functions
of the masking state (maskplan.StatementMasks, results.ResultTracker)."""

from __future__ import annotations

import re
from typing import Any, cast

from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.maskplan import StatementMasks
from hoopy.protocols.postgres.results import Result, ResultTracker
from hoopy.protocols.postgres.rowmask import CopyFormat

# Statements that cannot change what a relation's columns mean.  Anything else (DDL,
# DO, CALL …) makes the catalog untrustworthy for masking until the transaction ends.
CATALOG_SAFE_KINDS = frozenset(
    {"select", "insert", "update", "delete", "merge", "copy", "explain", "show", "set"}
    | {"reset", "begin", "commit", "rollback", "savepoint", "release", "prepare", "execute"}
    | {"deallocate", "declare", "fetch", "move", "close", "listen", "notify", "unlisten"}
    | {"discard", "lock", "values", "table", "checkpoint", "analyze", "vacuum"}
)

# Server messages quote the values they choke on: `invalid input syntax for type
# integer: "alice@example.com"`, `relation "alice@example.com" does not exist` (a cast to
# regclass), `Key (email)=(alice@example.com) already exists`, `Failing row contains (…)`.
# While column masks apply, a quoted or parenthesised value the agent did not write
# itself is masked; what it wrote (identifiers, literals) stays readable.
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
_KEY_VALUES = re.compile(r"\)=\((.*)\)", re.DOTALL)
_FAILING_ROW = re.compile(r"(Failing row contains )\((.*)\)", re.DOTALL)
_MESSAGE_FIELDS = ("M", "D", "H", "W", "p", "q")


def mask_message_fields(fields: dict[str, str], sm: StatementMasks) -> dict[str, str]:
    """Errors and notices must not carry what results may not."""
    out = dict(fields)
    text = sm.command.text
    if sm.masks.column_rules:

        def unseen(m: re.Match[str]) -> str:
            inner = m.group(1) if m.lastindex else m.group(0)
            if inner and inner in text:
                return m.group(0)
            return m.group(0).replace(inner, "****") if inner else m.group(0)

        for k in _MESSAGE_FIELDS:
            if k in out:
                v = _FAILING_ROW.sub(r"\1(****)", out[k])
                v = _KEY_VALUES.sub(unseen, v)
                out[k] = _QUOTED.sub(unseen, v)
        if user_code(sm) and fields.get("C", "") in ("00000", "P0001", "01000"):
            # RAISE from a function whose output hoopy cannot trace
            out["M"] = "message from database code withheld by hoopy: mask rules apply"
            out.pop("D", None)
            out.pop("H", None)
    if sm.masks.detectors:
        from hoopy.masking import ValueMasker

        masker = ValueMasker(sm.masks.detectors)
        for k in _MESSAGE_FIELDS:
            if k in out:
                out[k] = masker.mask_text(out[k])[0]
    return out if out != fields else fields


def user_code(sm: StatementMasks) -> bool:
    """Does the statement run code whose output hoopy cannot trace?"""
    lineage = sm.lineage if sm.trusted else None
    return lineage is None or any(col is None for col in lineage)


def copy_format(result: Result) -> CopyFormat:
    sm = result.statement.mask
    fmt = sm.copy if isinstance(sm, StatementMasks) else None
    if fmt is None:
        fmt = CopyFormat()
        if isinstance(sm, StatementMasks):
            sm.copy = fmt
    return fmt


def count_tree(counts: Any) -> dict[str, dict[str, int]]:
    """{rule: {detector or "column": n}}: how many values each rule masked."""
    tree: dict[str, dict[str, int]] = {}
    for (rule, what), n in sorted(counts.items()):
        tree.setdefault(rule or "unknown", {})[what] = n
    return tree


def track(tracker: ResultTracker, ev: pg.FrontendEvent) -> None:
    """Forwarded messages whose answers masking must attribute."""
    t = type(ev)
    if t is pg.Bind:
        b = cast(pg.Bind, ev)
        tracker.bind(b.portal, b.statement, b.result_formats)
    elif t is pg.Describe:
        d = cast(pg.Describe, ev)
        tracker.describe(d.kind, d.name)
    elif t is pg.Execute:
        tracker.execute(cast(pg.Execute, ev).portal)
