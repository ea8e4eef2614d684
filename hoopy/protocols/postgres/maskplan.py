"""From a statement, its mask rules and its result columns to a RowMasker.

Theory of operation
-------------------
When a statement is allowed and mask rules apply to it, `StatementMasks.lineage` traces
each output column back to base-table columns (lineage.py over pglast's tree, with
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
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hoopy.masking import ValueMasker, column_matches
from hoopy.policy import Command, MaskRule, Masks, strictest
from hoopy.protocols.postgres import lineage as lin
from hoopy.protocols.postgres import sinks
from hoopy.protocols.postgres.catalog import Catalog, CatalogUnavailable, RelInfo, TypeInfo
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
    CopyFormat,
    Counts,
    RowMasker,
    detector_action,
    whole_action,
)

log = logging.getLogger("hoopy.postgres.masking")

Lineage = list[lin.ColumnLineage] | None
MAX_VIEW_DEPTH = 16


@dataclass
class StatementMasks:
    """What masking knows about one allowed statement."""

    command: Command
    masks: Masks
    lineage: Lineage = None  # per output column; None: not traced
    copy: CopyFormat | None = None  # COPY … TO STDOUT options
    trusted: bool = True  # False: the catalog could not be trusted for this statement
    # Columns the server names by table OID (RowDescription) may still be traced by that
    # OID when only names were untrusted: an OID resolves the same in every session.
    by_oid: bool = False


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
    _maskers: dict[tuple[tuple[str, ...], str], ValueMasker] = field(default_factory=dict)
    _lineage: dict[tuple[str, int, bool], Lineage] = field(default_factory=dict)
    _views: dict[tuple[int, int], Lineage] = field(default_factory=dict)

    # ---- before forwarding -------------------------------------------------------------
    async def statement(self, cmd: Command, masks: Masks) -> StatementMasks:
        sm = StatementMasks(cmd, masks, copy=copy_format(cmd))
        if not masks.column_rules:
            return sm
        if self.catalog_dirty or self.names_untrusted:
            sm.trusted = False
            sm.by_oid = not self.catalog_dirty
            return sm
        blind = self.relations_untrusted
        sm.by_oid = blind
        key = (cmd.fingerprint or cmd.text, self.catalog.generation, blind)
        if key in self._lineage:
            sm.lineage = self._lineage[key]
            return sm
        try:
            sm.lineage = await self._trace(cmd.text, blind)
        except CatalogUnavailable:
            sm.trusted = False
            return sm
        if len(self._lineage) > 2048:
            self._lineage.clear()
        self._lineage[key] = sm.lineage
        return sm

    async def _trace(self, sql: str, blind: bool = False) -> Lineage:
        """Lineage of `sql`'s output; `blind`: as if no relation were known by name."""
        rels, funcs = lin.required_names(sql)
        if blind:
            await self._prefetch(set(), funcs)
            return lin.output_lineage(sql, _NoRelations(self.catalog), MAX_VIEW_DEPTH)
        await self._prefetch(rels, funcs)
        return lin.output_lineage(sql, self.catalog, MAX_VIEW_DEPTH)

    async def _prefetch(self, rels: set[lin.QualName], funcs: set[lin.QualName]) -> None:
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
                r, f = lin.required_names(rel.view_sql)
                rels |= r
                funcs |= f
            if not rels and not funcs:
                return

    # ---- writes ------------------------------------------------------------------------
    async def stores_masked(self, cmd: Command, masks: Masks) -> str:
        """Why this statement would store masked data where masks do not reach ("" if not).

        Raises CatalogUnavailable (callers refuse: they cannot tell)."""
        rules = masks.column_rules
        if not rules or self.catalog_dirty or self.names_untrusted or self.relations_untrusted:
            return "" if not rules else await self._dirty_write(cmd, rules)
        if sinks.calls_sink(cmd.functions) and await self._reads_masked(cmd.tables_read, rules):
            return "it passes data from masked columns to a function that keeps it"
        if not cmd.tables_written:
            return ""
        stores = sinks.stored_queries(cmd.text)
        if stores is None:
            names = cmd.tables_read | cmd.tables_written
            if await self._reads_masked(names, rules):
                return "hoopy cannot trace what it writes, and it reads masked columns"
            return ""
        for store in stores:
            why = await self._store_masked(store, rules)
            if why:
                return why
        return ""

    async def _dirty_write(self, cmd: Command, rules: tuple[MaskRule, ...]) -> str:
        """Writes hoopy cannot trace right now: refused when they read anything."""
        if not (cmd.tables_written or sinks.calls_sink(cmd.functions)) or not cmd.tables_read:
            return ""  # nothing read: nothing masked can be stored
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
            rels, _ = lin.required_names(store.query)
            names = {f"{s}.{n}" if s else n for s, n in rels}
            if await self._reads_masked(frozenset(names), rules):
                return "hoopy cannot trace what it writes, and it reads masked columns"
            return ""
        for i, sources in enumerate(lineage):
            target = targets[i] if targets is not None and i < len(targets) else None
            if target is not None and any(
                column_matches(r.columns, store.table, target) for r in rules
            ):
                continue  # stored into a column the same masks cover
            if sources is None:
                rels, _ = lin.required_names(store.query)
                names = {f"{s}.{n}" if s else n for s, n in rels}
                if await self._reads_masked(frozenset(names), rules):
                    return "hoopy cannot trace what it writes, and it reads masked columns"
                continue
            for table, column in sorted(sources):
                if any(column_matches(r.columns, table, column) for r in rules):
                    where = f"{store.table or 'a table'}" + (f".{target}" if target else "")
                    return f"it would copy masked column {table}.{column} into {where}"
        return ""

    async def _reads_masked(self, names: frozenset[str], rules: tuple[MaskRule, ...]) -> bool:
        """Does any of these relations (tables or views) expose a masked column?"""
        for name in sorted(names):
            lineage = await self._trace(f"SELECT * FROM {_quoted(name)}")
            if lineage is None or any(s is None for s in lineage):
                return True
            for sources in lineage:
                for table, column in sources or ():
                    if any(column_matches(r.columns, table, column) for r in rules):
                        return True
        return False

    # ---- when columns are described ----------------------------------------------------
    async def plan(
        self, sm: Any, fields: tuple[FieldDescription, ...] | None, formats: tuple[int, ...]
    ) -> RowMasker:
        if sm is None:
            return RowMasker([], self.counts)
        if not isinstance(sm, StatementMasks) or fields is None:
            return self._mask_all(len(formats))
        masks = sm.masks
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
    ) -> frozenset[lin.Source] | None:
        found = await self._traced(sm, i, f, rels)
        if found is not None and any(t in VALUE_CATALOGS for t, _ in found):
            return None  # values of other columns, kept by the server: unknown lineage
        return found

    async def _traced(
        self, sm: StatementMasks, i: int, f: FieldDescription, rels: dict[int, RelInfo | None]
    ) -> frozenset[lin.Source] | None:
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

    async def _view_column(self, info: RelInfo, attnum: int) -> frozenset[lin.Source] | None:
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

    def relation(self, name: lin.QualName) -> None:
        return None

    def function_is_builtin(self, name: lin.QualName) -> bool:
        return self._catalog.function_is_builtin(name)

    def type_is_builtin(self, name: lin.QualName) -> bool:
        return self._catalog.type_is_builtin(name)

    def operator_is_builtin(self, name: lin.QualName) -> bool:
        return self._catalog.operator_is_builtin(name)


# Catalogs whose columns hold copies of other tables' values (planner statistics:
# most common values, histogram bounds): their output is masked like an untraced column.
_STATISTICS = ("pg_statistic", "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs")
VALUE_CATALOGS = frozenset(f"pg_catalog.{n}" for n in (*_STATISTICS, "pg_statistic_ext_data"))


def _qual(name: str) -> lin.QualName:
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


def _column_rule(
    rules: tuple[MaskRule, ...], sources: frozenset[lin.Source] | None
) -> MaskRule | None:
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


def copy_format(cmd: Command) -> CopyFormat | None:
    """Options of a COPY … TO STDOUT statement (None for anything else)."""
    if "copy" not in cmd.kinds:
        return None
    import json as _json

    from pglast import parser

    try:
        tree = _json.loads(parser.parse_sql_json(cmd.text))
        stmt = tree["stmts"][0]["stmt"].get("CopyStmt")
    except Exception:
        return CopyFormat()
    if not stmt or stmt.get("is_from"):
        return None
    opts: dict[str, str] = {}
    for o in stmt.get("options", []) or []:
        d = o.get("DefElem", {})
        name = str(d.get("defname", "")).lower()
        arg = d.get("arg")
        opts[name] = _defelem_value(arg)
    return CopyFormat.of(opts)


def _defelem_value(arg: Any) -> str:
    if arg is None:
        return ""
    if isinstance(arg, dict):
        for k in ("String", "Integer", "Boolean", "Float"):
            if k in arg:
                v = arg[k]
                return str(next(iter(v.values()), "")) if v else ""
    return str(arg)
