"""Masking sessions on the wire: how each allowed statement's results are masked (or
why it is refused), the row masker of each result, what errors and notices may show,
how COPY rows are formatted, which forwarded messages the result tracker must see.
Functions of the masking state (maskplan.Planner and StatementMasks,
results.ResultTracker) that relay.Relay calls for masking sessions only."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, cast

from hoopy.config import PostgresSettings
from hoopy.errors import CommandDenied
from hoopy.policy import Command, Decision, identity_masks
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.catalog import CatalogUnavailable
from hoopy.protocols.postgres.lineage import ALL_NAMES, name_resolution_change
from hoopy.protocols.postgres.maskplan import Planner, StatementMasks
from hoopy.protocols.postgres.results import Result, ResultTracker
from hoopy.protocols.postgres.rowmask import CopyFormat, RowMasker
from hoopy.session import Session

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
        if fields.get("C", "").startswith("22") and "D" in out:
            # Data exceptions describe the offending value, not always quoted (an XML
            # parser's DETAIL quotes the document's line): withheld, not scrubbed.
            out["D"] = "detail withheld by hoopy: mask rules apply to this statement"
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


async def statement_masks(
    planner: Planner, session: Session, settings: PostgresSettings, cmd: Command, decision: Decision
) -> StatementMasks | None:
    """How this allowed statement's results are masked; raises CommandDenied to refuse
    what cannot be masked (recorded as `refused`)."""
    if not cmd.kinds.isdisjoint(("fetch", "move")):
        # a cursor's rows come from a statement declared earlier, perhaps under
        # other mask rules: every rule that can apply to this identity applies
        masks = identity_masks(session.policies, session.identity, session.connector)
        decision = replace(decision, masks=masks)
    sm = await _masks_for(planner, session, settings, cmd, decision) if decision.masks else None
    if not planner.catalog_dirty and cmd.kinds - CATALOG_SAFE_KINDS:
        planner.catalog_dirty = True  # schema changes: trust no catalog until commit
    if not planner.names_untrusted:
        change = name_resolution_change(cmd.text)
        if change == ALL_NAMES:
            planner.names_untrusted = True
            session.record("masking_conservative", reason="names may resolve differently")
        elif change and not planner.relations_untrusted:
            planner.relations_untrusted = True
            session.record("masking_conservative", reason="relation names may resolve differently")
    return sm


async def _masks_for(
    planner: Planner, session: Session, settings: PostgresSettings, cmd: Command, decision: Decision
) -> StatementMasks:
    sm = await planner.statement(cmd, decision.masks)
    rules = ", ".join(decision.masks.rules)

    def refuse(why: str, message: str) -> CommandDenied:
        session.record("refused", text=cmd.text, reason=why, masks=rules)
        return CommandDenied(message)

    if sm.copy is not None and sm.copy.binary:
        raise refuse(
            "binary COPY cannot be masked",
            f"mask rule(s) {rules} apply to this COPY: use FORMAT text or csv, "
            "binary COPY cannot be masked",
        )
    try:
        why = await planner.stores_masked(cmd, decision.masks)
    except CatalogUnavailable:
        why = "hoopy cannot read the catalog to check what it writes"
    if why:
        raise refuse(why, f"mask rule(s) {rules} apply and {why}")
    if settings.unknown_lineage == "refuse" and decision.masks.column_rules:
        lineage = sm.lineage if sm.trusted else None
        if lineage is None or any(col is None for col in lineage):
            raise refuse(
                "unknown lineage",
                f"mask rule(s) {rules} apply and hoopy cannot trace every output column "
                "of this statement to its source columns (postgres.unknown_lineage: "
                "refuse); select the columns directly",
            )
    return sm


async def result_plan(planner: Planner, result: Result) -> RowMasker:
    """The row masker of one result (remembered per statement, fields and formats)."""
    st = result.statement
    if st.mask is None:
        result.plan = RowMasker([], planner.counts)
        return result.plan
    key = result.formats
    plan = st.plans.get(key) if result.fields is st.fields else None
    if plan is None:
        plan = await planner.plan(st.mask, result.fields, result.formats)
        if result.fields is st.fields and result.fields is not None:
            st.plans[key] = plan
    result.plan = plan
    return plan
