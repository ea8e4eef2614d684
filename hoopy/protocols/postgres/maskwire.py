"""Masking sessions on the wire: how each allowed statement's results are masked (or
why it is refused), the row masker of each result, what errors and notices may show,
how COPY rows are formatted, which forwarded messages the result tracker must see.
Functions of the masking state (maskplan.Planner and StatementMasks,
results.ResultTracker) that relay.Relay calls for masking sessions only — and
`notification`, which every session calls for NotificationResponse messages.

Errors and notices: one raised by code hoopy cannot see (RAISE, ASSERT, a PL or an
extension: not from the server's own source files, pgsources) may hold anything in any
field under any SQLSTATE, so while column rules apply it is withheld whole.  In the
server's own, quoted values the agent did not write are masked; for statements that
may read masked columns, data errors (SQLSTATE classes 22 and 54: `index 1078051120
out of valid range`) describe the offending value unquoted, so their message, detail
and context are withheld, and other unquoted numbers the agent did not write are
masked.  A message hoopy cannot place in a statement (a Bind planning, a Sync's
commit) is masked by every rule that can apply to the identity.

Notifications (LISTEN / NOTIFY): a payload may come from any session — a trigger's
`pg_notify(ch, row_to_json(NEW)::text)` — so hoopy cannot know what it derives from:
while column rules can apply to the identity, it is masked whole; else the detectors
scan it.  Every session records each notification as the agent receives it."""

from __future__ import annotations

import re
import struct
from dataclasses import replace
from typing import Any, cast

from hoopy.config import PostgresSettings
from hoopy.errors import CommandDenied
from hoopy.policy import Command, Decision, Masks, identity_masks
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.catalog import CatalogUnavailable
from hoopy.protocols.postgres.copyopts import CopyFormat
from hoopy.protocols.postgres.lineagechecks import (
    ALL_NAMES,
    name_resolution_change,
    search_path_schemas,
)
from hoopy.protocols.postgres.maskplan import Planner, StatementMasks
from hoopy.protocols.postgres.namespaces import Binding
from hoopy.protocols.postgres.pgsources import from_server_code
from hoopy.protocols.postgres.results import Result, ResultTracker
from hoopy.protocols.postgres.rowmask import RowMasker
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
# Numbers outside quotes: a data error's offending value (`index 1078051120 out of
# valid range`, `large object 219099999 does not exist`).
_NUMBER = re.compile(r"(?<![\w.])[0-9][0-9.]*(?![\w])")

# Errors raised while evaluating data: their messages show the offending value, not
# always quoted.  What the agent sees instead of the message, per SQLSTATE (class 22
# data_exception, class 54 program_limit_exceeded: `chr(2001120)`).
_DATA_ERRORS = {
    "22000": "data exception",
    "22001": "value too long for its type",
    "22003": "numeric value out of range",
    "22004": "null value not allowed",
    "22007": "invalid date/time format",
    "22008": "date/time field value out of range",
    "22012": "division by zero",
    "22015": "interval field overflow",
    "22018": "invalid character value for cast",
    "22021": "invalid byte sequence (character not in repertoire)",
    "22023": "invalid parameter value",
    "22025": "invalid escape sequence",
    "2201B": "invalid regular expression",
    "2201E": "invalid argument for logarithm",
    "2201F": "invalid argument for power function",
    "2201G": "invalid argument for width_bucket",
    "2202E": "array subscript out of range",
    "22P01": "floating point exception",
    "22P02": "invalid input syntax",
    "22P03": "invalid binary representation",
    "22P05": "untranslatable character",
    "22032": "invalid JSON text",
    "2200M": "invalid XML document",
    "2200N": "invalid XML content",
    "54000": "program limit exceeded",
}
_DATA_ERRORS |= {
    "42P01": "undefined table",
    "42704": "undefined object",
    "42883": "undefined function",
    "42804": "datatype mismatch",
    "42846": "cannot coerce",
    "0A000": "feature not supported",
    "XX000": "internal error",
}
# Errors whose text holds only what the agent wrote or the server's own names: kept.
# Every other error of a statement that reads masked columns is withheld — a value
# can be made to show in almost any message (`current_setting('x"' || email)`,
# `email::regoper`, `email::regclass`), quoted so as to defeat scrubbing or not at all.
# Integrity errors (23) name constraints; their DETAIL is scrubbed of key values.
_KEPT_ERRORS = frozenset(
    {"42601", "42501", "42703", "57014", "25P02", "25001", "25006", "40001", "40P01"}
)


def _withheld(code: str) -> str:
    what = _DATA_ERRORS.get(code) or (
        "program limit exceeded"
        if code.startswith("54")
        else "data exception"
        if code.startswith("22")
        else "error"
    )
    return (
        f"{what} (SQLSTATE {code}): the message is withheld by hoopy because this "
        "statement reads masked columns"
    )


# Fields a message's text may be in.  s/t/c/d/n (schema, table, column, data type,
# constraint) hold names when the server composes them, anything when code sets them
# (RAISE … USING COLUMN = …).
_TEXT_FIELDS = (*_MESSAGE_FIELDS, "s", "t", "c", "d", "n")
# What stays of a message from code hoopy cannot see: severity, SQLSTATE, the server
# source position (F, L, R: fixed by the server) and the position in the agent's text.
_OPAQUE_KEPT = ("S", "V", "C", "P", "F", "L", "R")


class Unattributed:
    """A message hoopy cannot place in a statement (one raised while a Bind plans a
    query, at a Sync's commit, of a statement hoopy lost track of): the masks that can
    apply to the identity, for messages of code hoopy cannot see."""

    def __init__(self, masks: Masks) -> None:
        self.masks = masks


def message_masks(session: Session, current: Any) -> StatementMasks | Unattributed | None:
    """What masks the next ErrorResponse or NoticeResponse: its statement's, or every
    rule that can apply to the identity when hoopy cannot tell its statement."""
    if isinstance(current, StatementMasks):
        return current
    masks = identity_masks(session.policies, session.identity, session.connector)
    return Unattributed(masks) if masks else None


def mask_message_fields(
    fields: dict[str, str], sm: StatementMasks | Unattributed
) -> dict[str, str]:
    """Errors and notices must not carry what results may not.

    A message from code hoopy cannot see (pgsources.from_server_code: RAISE, ASSERT,
    any PL or extension) is withheld whole, whatever its SQLSTATE and severity, while
    column rules apply.  The server's own messages are scrubbed of what the agent did
    not write, and withheld when they describe a value of a statement reading masked
    columns."""
    masks = sm.masks
    out = dict(fields)
    debug = fields.get("V", fields.get("S", "")) in ("LOG", "DEBUG")
    if masks.column_rules and (debug or not from_server_code(fields)):
        # LOG and DEBUG reach a client that asks (client_min_messages): the server's
        # own then dump plans and parse trees, with the constants a function's query
        # was run with (debug_print_plan) — withheld whole as well
        out = {k: v for k, v in fields.items() if k in _OPAQUE_KEPT}
        out["M"] = (
            f"message from database code (SQLSTATE {fields.get('C', '')}) withheld by "
            "hoopy: mask rules apply and hoopy cannot see what it holds"
        )
    elif masks.column_rules and isinstance(sm, StatementMasks):
        out = _mask_server_message(out, sm)
    elif masks.column_rules:
        out = _mask_unattributed(out)
    written = sm.command.text if isinstance(sm, StatementMasks) else ""
    if masks.column_rules and "q" in out and out["q"] not in written:
        # an internal query (dynamic SQL of a function) is code's text, data and all
        out.pop("q", None)
        out.pop("p", None)
    if masks.detectors:
        from hoopy.masking import ValueMasker

        masker = ValueMasker(masks.detectors)
        for k in _TEXT_FIELDS:
            if k in out:
                out[k] = masker.mask_text(out[k])[0]
    return out if out != fields else fields


def _mask_unattributed(out: dict[str, str]) -> dict[str, str]:
    """A message the server composed, outside any statement hoopy can name: key values
    and failing rows (a deferred constraint checked at a Sync's commit) are masked, and
    a data error's quoted values; other quoted text is a Parse's names, kept."""
    data = out.get("C", "")[:2] in ("22", "54")
    for k in _MESSAGE_FIELDS:
        if k in out:
            v = _FAILING_ROW.sub(r"\1(****)", out[k])
            v = _KEY_VALUES.sub(lambda m: m.group(0).replace(m.group(1), "****"), v)
            out[k] = _QUOTED.sub(lambda m: '"****"', v) if data else v
    return out


def _mask_server_message(out: dict[str, str], sm: StatementMasks) -> dict[str, str]:
    """A message the server composed, for a statement column rules apply to."""
    text = sm.command.text
    code = out.get("C", "")
    # A context (W) tells the error arose in code the statement ran — a trigger, a
    # function, a rule's query — which may read masked columns whatever the text shows.
    reads = sm.reads_masked or sm.stale or bool(out.get("W"))

    def unseen(m: re.Match[str]) -> str:
        inner = m.group(1) if m.lastindex else m.group(0)
        if inner and inner in text:
            return m.group(0)
        return m.group(0).replace(inner, "****") if inner else m.group(0)

    for k in _MESSAGE_FIELDS:
        if k == "M" and code.startswith("23"):
            continue  # the server's integrity errors name only relations and constraints
        if k in out:
            v = _FAILING_ROW.sub(r"\1(****)", out[k])
            v = _KEY_VALUES.sub(unseen, v)
            v = _QUOTED.sub(unseen, v)
            if reads and k in "MDHW":
                v = _unquoted_numbers(v, text)
            out[k] = v
    # classes 00-02: notices and warnings; 23: integrity errors (see _KEPT_ERRORS)
    withhold = not (code in _KEPT_ERRORS or code.startswith(("23", "00", "01", "02")))
    if reads and withhold and out.get("S", out.get("V", "")) != "NOTICE":
        # Data errors describe the offending value, not always quoted (`index
        # 1078051120 out of valid range`, an XML parser's DETAIL quoting the
        # document's line, JSON's CONTEXT `JSON data, line 1: …`): withheld, not
        # scrubbed.  The SQLSTATE stays.
        out["M"] = _withheld(code)
        for k in ("D", "W"):
            if k in out:
                out[k] = "withheld by hoopy: mask rules apply to this statement"
    elif code.startswith("22") and "D" in out:
        out["D"] = "detail withheld by hoopy: mask rules apply to this statement"
    return out


def _unquoted_numbers(v: str, text: str) -> str:
    """Mask the numbers outside double quotes that the statement's text does not hold
    (as numbers: a digit inside a longer literal does not count)."""
    written = set(_NUMBER.findall(text))
    parts = re.split(r'("(?:[^"]|"")*")', v)  # odd parts: quoted, handled by _QUOTED
    for i in range(0, len(parts), 2):
        parts[i] = _NUMBER.sub(lambda m: m.group(0) if m.group(0) in written else "****", parts[i])
    return "".join(parts)


def copy_format(result: Result) -> CopyFormat:
    """How this COPY's rows are written.  Unknown (not a COPY TO hoopy read): text
    without a header, so every line is taken for data (and masked) — none passes as
    column names."""
    sm = result.statement.mask
    fmt = sm.copy if isinstance(sm, StatementMasks) else None
    return CopyFormat() if fmt is None else fmt


def count_tree(counts: Any) -> dict[str, dict[str, int]]:
    """{rule: {detector or "column": n}}: how many values each rule masked."""
    tree: dict[str, dict[str, int]] = {}
    for (rule, what), n in sorted(counts.items()):
        tree.setdefault(rule or "unknown", {})[what] = n
    return tree


def track(tracker: ResultTracker, ev: pg.FrontendEvent, binding: Binding | None = None) -> None:
    """Forwarded messages whose answers masking must attribute; a Bind comes with its
    portal's new entry in the session's Namespaces (Pipeline._record_bind)."""
    t = type(ev)
    if t is pg.Bind:
        b = cast(pg.Bind, ev)
        assert binding is not None
        tracker.bind(b.portal, b.statement, b.result_formats, binding)
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
    planner.recent_texts.append(cmd.text)
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
        if change == ALL_NAMES and default_path(cmd.text):
            change = ""  # search_path set to what the catalog connection has
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

    if sm.copy_unreadable:
        raise refuse(
            f"unreadable COPY options: {sm.copy_unreadable}",
            f"mask rule(s) {rules} apply to this COPY and {sm.copy_unreadable}: hoopy "
            "masks COPY only with options it reads as the server does",
        )
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
    if await planner.refresh(st.mask):
        st.plans.clear()  # planned before names, relations or the catalog changed
    key = result.formats
    plan = st.plans.get(key) if result.fields is st.fields else None
    if plan is None:
        plan = await planner.plan(st.mask, result.fields, result.formats)
        if result.fields is st.fields and result.fields is not None:
            st.plans[key] = plan
    result.plan = plan
    return plan


# Parameters the server reports (GUC_REPORT) whose values come from a fixed set, or
# are numbers (session_authorization: replaced by the identity's subject).
_FIXED_PARAMETERS = frozenset(
    {"client_encoding", "DateStyle", "IntervalStyle", "default_transaction_read_only"}
    | {"in_hot_standby", "integer_datetimes", "is_superuser", "server_encoding"}
    | {"server_version", "session_authorization", "standard_conforming_strings"}
    | {"scram_iterations"}
)


def parameter_value(planner: Planner, session: Session, name: str, value: str) -> str:
    """A reported parameter (ParameterStatus) as a masking session may see it.  Code
    hoopy cannot see may set a free-text one to anything — a function's
    `set_config('application_name', email, false)` — so unless one of the agent's
    latest statements holds the value (`SET application_name = 'etl'`), it is masked
    like a value hoopy cannot trace."""
    if name in _FIXED_PARAMETERS or not value:
        return value
    if any(value in text for text in planner.recent_texts):
        return value  # the agent wrote it (a parameter is reported at the batch's end)
    masks = identity_masks(session.policies, session.identity, session.connector)
    return planner.mask_untraced_text(masks, value)


def notification(planner: Planner | None, session: Session, ev: pg.NotificationResponse) -> bytes:
    """A NotificationResponse as the agent may see it, recorded (every session).  In
    masking sessions the payload is masked: it may come from any session, from any
    data, so no lineage can clear it."""
    payload = ev.payload
    if planner is not None:
        masks: Masks = identity_masks(session.policies, session.identity, session.connector)
        payload = planner.mask_untraced_text(masks, payload)
    session.record("notification", channel=ev.channel, payload=payload)
    if payload == ev.payload:
        return ev.raw
    return notification_response(ev.pid, ev.channel, payload)


def notification_response(pid: int, channel: str, payload: str) -> bytes:
    body = struct.pack("!I", pid & 0xFFFFFFFF) + channel.encode() + b"\0" + payload.encode()
    return b"A" + struct.pack("!I", len(body) + 5) + body + b"\0"


# The catalog connection resolves names with PostgreSQL's default path.
_DEFAULT_PATH = frozenset({"$user", "public", "pg_catalog"})


def default_path(sql: str) -> bool:
    """Does this statement only set search_path back to (a part of) the default one,
    which JDBC's setSchema("public"), ORMs and RESET send?  Then names resolve in the
    agent's session as on the catalog connection."""
    schemas = search_path_schemas(sql)
    return schemas is not None and bool(schemas) and set(schemas) <= _DEFAULT_PATH
