"""From a statement, its mask rules and its result columns to a RowMasker.

Theory of operation
-------------------
When a statement is allowed and mask rules apply to it, `StatementMasks.lineage` traces
each output column back to base-table columns (lineage.py over libpg_query's tree, with
catalog facts from a side connection).  When its RowDescription arrives, `plan()` picks
one action per column:

1. the column's sources: exact when PostgreSQL names the column's origin (table OID and
   attribute number — a plain column reference, through aliases and subqueries; views
   are resolved to their base columns), else the traced lineage of that position;
2. a column rule matching any source masks the whole value (strictest style wins);
   a column whose sources are unknown is masked whole by the strictest column rule:
   when hoopy cannot show a column is free of masked data, it is not;
3. otherwise, when detectors apply, values are scanned.

A catalog that cannot be read, a session inside a transaction that changed the schema,
rows whose columns were never described: every value of the result is masked.

A statement planned before the session changed how names resolve (search_path,
temporary relations) or before the catalog changed (committed DDL) is planned again
when its next result arrives: a prepared statement's text may read other relations now
(`Planner.epoch`, `Planner.refresh`).

Writes and sinks (`stores_masked`) fail closed the same way: a write is refused unless
hoopy can show that it stores no masked column — every value written traced to clean
columns, or written into a column the same masks cover.  A value from a user-defined
function, operator or cast, a prepared statement (EXECUTE) or planner statistics
(VALUE_CATALOGS) cannot be shown clean.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from hoopy.masking import ValueMasker, column_matches, mask_whole
from hoopy.policy import Command, MaskRule, Masks, strictest
from hoopy.protocols.postgres import lineage as lin
from hoopy.protocols.postgres import sinks
from hoopy.protocols.postgres.catalog import TTL, Catalog, CatalogUnavailable, RelInfo, TypeInfo
from hoopy.protocols.postgres.classeffects import STATISTICS_CATALOGS
from hoopy.protocols.postgres.copyopts import CopyFormat, UnreadableCopy, copy_format
from hoopy.protocols.postgres.lineagechecks import required_names, untraceable
from hoopy.protocols.postgres.lineagescope import ColumnLineage, QualName, Source
from hoopy.protocols.postgres.messages import FieldDescription
from hoopy.protocols.postgres.rowmask import (
    BUILTIN_FAMILIES,
    INERT,
    JSON,
    JSONB,
    NUMBER,
    OPAQUE,
    STRING,
    TEXTUAL,
    Action,
    ColumnType,
    Counts,
    RowMasker,
    detector_action,
    whole_action,
)

log = logging.getLogger("hoopy.postgres.masking")

Lineage = list[ColumnLineage] | None
MAX_VIEW_DEPTH = 16


@dataclass
class StatementMasks:
    """What masking knows about one allowed statement."""

    command: Command
    masks: Masks
    lineage: Lineage = None  # per output column; None: not traced
    copy: CopyFormat | None = None  # COPY … TO STDOUT options
    copy_unreadable: str = ""  # why hoopy cannot read this COPY's options ("" if it can)
    trusted: bool = True  # False: the catalog could not be trusted for this statement
    # Columns the server names by table OID (RowDescription) may still be traced by that
    # OID when only names were untrusted: an OID resolves the same in every session.
    by_oid: bool = False
    # Could the statement read a masked column anywhere (output, WHERE, a function it
    # calls)?  Its data errors are then withheld (maskwire.mask_message_fields).
    reads_masked: bool = True
    # Planner.epoch when this was planned, and the planner (to tell when it is stale).
    epoch: tuple[int, bool, bool, bool] = (-1, False, False, False)
    planner: Planner | None = field(default=None, repr=False, compare=False)

    @property
    def stale(self) -> bool:
        """Planned before names, relations or the catalog changed (see Planner.refresh)."""
        return self.planner is not None and self.epoch != self.planner.epoch


@dataclass
class MaskSettings:
    hash_key: bytes
    redact_numeric: str = "null"


@dataclass
class Planner:
    """One per masking session."""

    catalog: Catalog
    settings: MaskSettings
    counts: Counts = field(default_factory=Counter)
    catalog_dirty: bool = False  # inside a transaction that ran DDL
    # Set for good once the session made names resolve differently than on the catalog
    # connection: lineage by name is then untrusted.  relations_untrusted (temporary
    # relations, which shadow relation names only): expressions are still traced, with
    # every relation named in them unknown.  names_untrusted (search_path): nothing is
    # traced by name.  Either way, columns the server names by OID are traced by OID.
    relations_untrusted: bool = False
    names_untrusted: bool = False
    # Texts of the latest statements the agent sent: a reported parameter (SET
    # application_name = …) arrives at the end of its batch (maskwire.parameter_value).
    recent_texts: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    _maskers: dict[tuple[tuple[str, ...], str], ValueMasker] = field(default_factory=dict)
    # (lineage, whether the text runs code hoopy cannot see into: None until asked)
    _lineage: dict[tuple[str, int, bool], tuple[Lineage, bool | None]] = field(default_factory=dict)
    _views: dict[tuple[int, int], Lineage] = field(default_factory=dict)
    # (relation, catalog generation, rules' columns, TTL period): does it expose masked data
    _exposes: dict[tuple[str, int, tuple[str, ...], int], bool] = field(default_factory=dict)

    @property
    def epoch(self) -> tuple[int, bool, bool, bool]:
        """What every plan depends on: a statement planned under another is stale."""
        return (
            self.catalog.generation,
            self.catalog_dirty,
            self.names_untrusted,
            self.relations_untrusted,
        )

    # ---- before forwarding -------------------------------------------------------------
    async def statement(self, cmd: Command, masks: Masks) -> StatementMasks:
        sm = StatementMasks(cmd, masks, planner=self)
        if "copy" in cmd.kinds:
            try:
                sm.copy = copy_format(cmd.text)
            except UnreadableCopy as e:
                sm.copy_unreadable = str(e)
        await self._fill(sm)
        return sm

    async def refresh(self, sm: Any) -> bool:
        """Plan again a statement planned before the session changed how names resolve
        or the catalog changed (PostgreSQL re-analyses a prepared statement then, and
        the same text may read other relations); True when it was stale."""
        if not isinstance(sm, StatementMasks) or sm.epoch == self.epoch:
            return False
        sm.lineage, sm.trusted, sm.by_oid, sm.reads_masked = None, True, False, True
        await self._fill(sm)
        return True

    async def _fill(self, sm: StatementMasks) -> None:
        sm.epoch = self.epoch  # before any wait: a change meanwhile makes it stale
        cmd, masks = sm.command, sm.masks
        rules = masks.column_rules
        if not rules:
            sm.reads_masked = False
            return
        if self.catalog_dirty or self.names_untrusted:
            sm.trusted = False
            sm.by_oid = not self.catalog_dirty
            return
        blind = self.relations_untrusted
        sm.by_oid = blind
        key = (cmd.fingerprint or cmd.text, self.catalog.generation, blind)
        try:
            if key in self._lineage:
                sm.lineage = self._lineage[key][0]
            else:
                sm.lineage = await self._trace(cmd.text, blind)
                if len(self._lineage) > 2048:
                    self._lineage.clear()
                self._lineage[key] = (sm.lineage, None)
            sm.reads_masked = await self._statement_reads_masked(sm, key, blind)
        except CatalogUnavailable:
            sm.trusted = False
            sm.reads_masked = True

    async def _statement_reads_masked(
        self, sm: StatementMasks, key: tuple[str, int, bool], blind: bool
    ) -> bool:
        """Could the statement read a masked column anywhere, not only in its output?"""
        rules = sm.masks.column_rules
        lineage = sm.lineage
        if lineage is None or any(col is None for col in lineage):
            return True
        if any(_masked_source(rules, t, c) for col in lineage for t, c in col or ()):
            return True
        if sm.command.tables_read and (
            blind or await self._reads_masked(sm.command.tables_read, rules)
        ):
            return True  # blind: a relation named may be a temporary one hoopy cannot see
        cached = self._lineage.get(key)
        untraced = cached[1] if cached is not None else None
        if untraced is None:
            untraced = await self._untraceable(sm.command.text)
            if cached is not None:
                self._lineage[key] = (cached[0], untraced)
        return untraced

    async def _trace(self, sql: str | lin.AstNode, blind: bool = False) -> Lineage:
        """Lineage of `sql`'s output (its text, or a tree sinks built); `blind`: as if no
        relation were known by name."""
        rels, funcs = required_names(sql)
        if blind:
            await self._prefetch(set(), funcs)
            return lin.output_lineage(sql, _NoRelations(self.catalog), MAX_VIEW_DEPTH)
        await self._prefetch(rels, funcs)
        return lin.output_lineage(sql, self.catalog, MAX_VIEW_DEPTH)

    async def _prefetch(self, rels: set[QualName], funcs: set[QualName]) -> None:
        """Load the relations, then what the views among them read, to MAX_VIEW_DEPTH."""
        seen: set[str] = set()
        for _ in range(MAX_VIEW_DEPTH):
            await self.catalog.prefetch(rels, funcs)
            asked, rels, funcs = rels, set(), set()
            for name in asked:
                rel = self.catalog.relation(name)
                if rel is None or rel.view_sql is None or rel.view_sql in seen:
                    continue
                seen.add(rel.view_sql)
                r, f = required_names(rel.view_sql)
                rels |= r
                funcs |= f
            if not rels and not funcs:
                return

    # ---- writes ------------------------------------------------------------------------
    async def stores_masked(self, cmd: Command, masks: Masks) -> str:
        """Why this statement would store masked data where masks do not reach ("" if not):
        while column rules apply, also any write or sink of data hoopy cannot trace.

        Raises CatalogUnavailable (callers refuse: they cannot tell)."""
        rules = masks.column_rules
        if not rules:
            return ""
        sink = sinks.calls_sink(cmd.functions)
        if not (sink or cmd.tables_written):
            return ""
        if self.catalog_dirty or self.names_untrusted or self.relations_untrusted:
            return await self._dirty_write(cmd)
        if sink:
            if await self._reads_masked(cmd.tables_read, rules):
                return "it passes data from masked columns to a function that keeps it"
            if await self._untraceable(cmd.text):
                return (
                    "it passes data hoopy cannot trace (from a function, operator, cast or "
                    "prepared statement it cannot see into) to a function that keeps it"
                )
        if not cmd.tables_written:
            return ""
        stores = sinks.stored_queries(cmd.text)
        if stores is None:
            names = cmd.tables_read | cmd.tables_written
            if await self._reads_masked(names, rules) or await self._untraceable(cmd.text):
                return _untraced_write("it reads masked columns or runs code it cannot see into")
            return ""
        for store in stores:
            why = await self._store_masked(store, rules)
            if why:
                return why
        return ""

    async def _untraceable(self, sql: str) -> bool:
        """Does `sql` run code whose data hoopy cannot see (lineagechecks.untraceable)?  Inside
        a transaction that changed the schema, every function and operator counts."""
        if self.catalog_dirty:
            return untraceable(sql, None)
        await self.catalog.prefetch(set(), set())  # function, type and operator names
        return untraceable(sql, self.catalog)

    async def _dirty_write(self, cmd: Command) -> str:
        """Writes hoopy cannot trace right now: refused when they read anything, or run
        code hoopy cannot see into."""
        if not cmd.tables_read and not await self._untraceable(cmd.text):
            return ""  # nothing read, only constants and builtins: nothing masked stored
        if self.names_untrusted or self.relations_untrusted:
            return (
                "this session made names resolve differently (temporary objects or "
                "search_path), so hoopy cannot trace what it writes"
            )
        return "the schema changed in this transaction; commit it first"

    async def _store_masked(self, store: sinks.Store, rules: tuple[MaskRule, ...]) -> str:
        lineage = await self._trace(store.query)
        targets: tuple[str, ...] | None = store.columns
        if targets is None and store.table:
            await self.catalog.prefetch({_qual(store.table)}, set())
            rel = self.catalog.relation(_qual(store.table))
            targets = rel.columns if rel is not None else None
        if lineage is None:
            # not even its shape (EXECUTE of a prepared statement …): fail closed
            return _untraced_write("a prepared statement or a query it cannot analyse")
        for i, sources in enumerate(lineage):
            target = targets[i] if targets is not None and i < len(targets) else None
            if target is not None and any(
                column_matches(r.columns, store.table, target) for r in rules
            ):
                continue  # stored into a column the same masks cover
            if sources is None:
                return _untraced_write("a function, operator or cast it cannot see into")
            where = f"{store.table or 'a table'}" + (f".{target}" if target else "")
            for table, column in sorted(sources):
                if table in VALUE_CATALOGS:
                    return f"it would copy planner statistics ({table}.{column}) into {where}"
                if any(column_matches(r.columns, table, column) for r in rules):
                    return f"it would copy masked column {table}.{column} into {where}"
        return ""

    async def _reads_masked(self, names: frozenset[str], rules: tuple[MaskRule, ...]) -> bool:
        """Does any of these relations (tables or views) expose a masked column, or
        values of other columns (VALUE_CATALOGS)?"""
        patterns = tuple(c for r in rules for c in r.columns)
        period = int(time.monotonic() // TTL)  # as long as the catalog's own answers
        for name in sorted(names):
            key = (name, self.catalog.generation, patterns, period)
            hit = self._exposes.get(key)
            if hit is None:
                hit = await self._exposes_masked(name, rules)
                if len(self._exposes) > 2048:
                    self._exposes.clear()
                self._exposes[key] = hit
            if hit:
                return True
        return False

    async def _exposes_masked(self, name: str, rules: tuple[MaskRule, ...]) -> bool:
        lineage = await self._trace(f"SELECT * FROM {_quoted(name)}")
        if lineage is None or any(s is None for s in lineage):
            return True
        return any(_masked_source(rules, t, c) for col in lineage for t, c in col or ())

    def mask_untraced_text(self, masks: Masks, text: str) -> str:
        """A value hoopy cannot trace to any column (a NOTIFY payload): masked whole by
        the strictest column rule, as an untraced column is; else scanned by the
        detectors."""
        if not text:
            return text
        if masks.column_rules:
            rule = _column_rule(masks.column_rules, None)
            assert rule is not None
            self.counts[(rule.name, "column")] += 1
            return mask_whole(text, rule.style, self.settings.hash_key)
        if masks.detectors:
            masker = self._masker(masks.detectors, masks.detector_style)
            masked, found = masker.mask_text(text)
            rules_of = {d: e.name for e in reversed(masks.entries) for d in e.detectors}
            for det, n in found.items():
                self.counts[(rules_of.get(det, ""), det)] += n
            return masked
        return text

    # ---- when columns are described ----------------------------------------------------
    async def plan(
        self, sm: Any, fields: tuple[FieldDescription, ...] | None, formats: tuple[int, ...]
    ) -> RowMasker:
        if sm is None:
            return RowMasker([], self.counts)
        if not isinstance(sm, StatementMasks) or fields is None:
            return self._mask_all(len(formats))
        masks = sm.masks  # (result_plan refreshed a stale statement already)
        col_rules = masks.column_rules
        try:
            types = await self._types(fields)
            rels = await self.catalog.by_oids({f.table_oid for f in fields if f.table_oid})
        except CatalogUnavailable:
            return self._mask_all(len(fields))
        actions: list[Action | None] = []
        for i, f in enumerate(fields):
            ctype = types[i]
            binary = (formats[i] if i < len(formats) else 0) == 1
            rule: MaskRule | None = None
            if col_rules:
                sources = await self._sources(sm, i, f, rels)
                rule = _column_rule(col_rules, sources)
            actions.append(self._action(masks, rule, ctype, binary))
        return RowMasker(actions, self.counts)

    async def copy_plan(self, sm: Any, ncols: int) -> RowMasker:
        if sm is None:
            return RowMasker([], self.counts)
        if not isinstance(sm, StatementMasks):
            return self._mask_all(ncols)
        await self.refresh(sm)
        masks = sm.masks
        lineage = sm.lineage if sm.trusted else None
        if masks.column_rules and (lineage is None or len(lineage) != ncols):
            lineage = [None] * ncols
        actions: list[Action | None] = []
        for i in range(ncols):
            rule = _column_rule(masks.column_rules, lineage[i]) if lineage else None
            actions.append(self._action(masks, rule, ColumnType(25, STRING), False))
        return RowMasker(actions, self.counts)

    def _action(
        self, masks: Masks, rule: MaskRule | None, ctype: ColumnType, binary: bool
    ) -> Action | None:
        key, numeric = self.settings.hash_key, self.settings.redact_numeric
        if rule is not None:
            return whole_action(ctype, binary, rule.style, key, numeric, rule.name, self.counts)
        if masks.detectors:
            masker = self._masker(masks.detectors, masks.detector_style)
            rules_of = {d: e.name for e in reversed(masks.entries) for d in e.detectors}
            return detector_action(ctype, binary, masker, rules_of, self.counts)
        return None

    def _mask_all(self, n: int) -> RowMasker:
        """Fail closed: NULL for every value (valid for any type and format)."""
        if n <= 0:
            return RowMasker.nulls(self.counts)  # shape unknown: NULL whatever arrives
        act = whole_action(ColumnType(0, OPAQUE), True, "redact", b"", "null", "", self.counts)
        return RowMasker([act] * n, self.counts)

    def _masker(self, detectors: tuple[str, ...], style: str) -> ValueMasker:
        key = (detectors, style)
        m = self._maskers.get(key)
        if m is None:
            m = self._maskers[key] = ValueMasker(detectors, style, self.settings.hash_key)
        return m

    async def _types(self, fields: tuple[FieldDescription, ...]) -> list[ColumnType]:
        unknown = {f.type_oid for f in fields if f.type_oid not in BUILTIN_FAMILIES}
        infos = await self.catalog.types(unknown) if unknown else {}
        # domains: follow to the base type
        bases = {i.base for i in infos.values() if i and i.kind == "d" and i.base}
        extra = bases - BUILTIN_FAMILIES.keys() - infos.keys()
        if extra:
            infos = {**infos, **await self.catalog.types(extra)}
        return [ColumnType(f.type_oid, _family(f.type_oid, infos)) for f in fields]

    async def _sources(
        self, sm: StatementMasks, i: int, f: FieldDescription, rels: dict[int, RelInfo | None]
    ) -> frozenset[Source] | None:
        found = await self._traced(sm, i, f, rels)
        if found is not None and any(t in VALUE_CATALOGS for t, _ in found):
            return None  # values of other columns, kept by the server: unknown lineage
        return found

    async def _traced(
        self, sm: StatementMasks, i: int, f: FieldDescription, rels: dict[int, RelInfo | None]
    ) -> frozenset[Source] | None:
        if self.catalog_dirty or not (sm.trusted or sm.by_oid):
            return None
        if f.table_oid:
            info = rels.get(f.table_oid)
            if info is None or f.column_attnum not in info.attnames:
                return None
            rel = info.relation
            if rel.kind in ("v", "m"):
                return await self._view_column(info, f.column_attnum)
            return rel.sources(info.attnames[f.column_attnum])
        lineage = sm.lineage if sm.trusted else None
        if lineage is None or i >= len(lineage):
            return None
        return lineage[i]

    async def _view_column(self, info: RelInfo, attnum: int) -> frozenset[Source] | None:
        key = (info.oid, self.catalog.generation)
        if key not in self._views:
            sql = info.relation.view_sql
            try:
                self._views[key] = await self._trace(sql) if sql else None
            except CatalogUnavailable:
                return None
        lineage = self._views[key]
        names = info.relation.columns
        name = info.attnames.get(attnum)
        if lineage is None or name not in names or len(lineage) != len(names):
            return None
        base = lineage[names.index(name)]
        return None if base is None else base | info.relation.sources(name)


class _NoRelations:
    """A catalog that knows no relation by name (the session's temporary relations may
    shadow any of them); functions, types and operators as the real one."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def relation(self, name: QualName) -> None:
        return None

    def function_is_builtin(self, name: QualName) -> bool:
        return self._catalog.function_is_builtin(name)

    def type_is_builtin(self, name: QualName) -> bool:
        return self._catalog.type_is_builtin(name)

    def operator_is_builtin(self, name: QualName) -> bool:
        return self._catalog.operator_is_builtin(name)


# Catalogs whose columns hold copies of other tables' values (planner statistics:
# most common values, histogram bounds; large objects' bytes): their output is masked
# like an untraced column, and writes and sinks of it are refused.
VALUE_CATALOGS = frozenset(f"pg_catalog.{n}" for n in (*STATISTICS_CATALOGS, "pg_largeobject"))


def _untraced_write(why: str) -> str:
    return (
        f"hoopy cannot trace what it writes ({why}), so it cannot show it stores no masked column"
    )


def _masked_source(rules: tuple[MaskRule, ...], table: str, column: str) -> bool:
    return table in VALUE_CATALOGS or any(column_matches(r.columns, table, column) for r in rules)


def _qual(name: str) -> QualName:
    schema, _, rel = name.rpartition(".")
    return (schema.strip('"') or None, rel.strip('"'))


def _quoted(name: str) -> str:
    schema, rel = _qual(name)
    q = '"' + rel.replace('"', '""') + '"'
    return f'"{schema}".{q}' if schema else q


def _family(oid: int, infos: dict[int, TypeInfo | None]) -> str:
    fam = BUILTIN_FAMILIES.get(oid)
    if fam is not None:
        return fam
    info = infos.get(oid)
    if info is None:
        return OPAQUE
    if info.kind == "d" and info.base:
        return _family(info.base, infos)
    if info.category == "S" or info.kind == "e":
        return STRING  # citext, enums …: their binary form is their text
    if info.category in ("A", "C"):
        return TEXTUAL
    if info.category == "N":
        return NUMBER
    if info.category in ("B", "D", "T", "G", "V", "Z"):
        return INERT
    if info.oid in (114,):
        return JSON
    if info.oid in (3802,):
        return JSONB
    return OPAQUE


def _column_rule(rules: tuple[MaskRule, ...], sources: frozenset[Source] | None) -> MaskRule | None:
    if not rules:
        return None
    if sources is None:
        style = strictest(r.style for r in rules)
        return next(r for r in rules if r.style == style)
    hits = [r for r in rules if any(column_matches(r.columns, t, c) for t, c in sources)]
    if not hits:
        return None
    style = strictest(r.style for r in hits)
    return next(r for r in hits if r.style == style)
