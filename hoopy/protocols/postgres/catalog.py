"""What masking needs to know about a database, read over a side connection (asyncpg).

Masking follows data to base-table columns: RowDescription names a column by table OID
and attribute number, a view's columns come from its definition, and `*` expands to a
relation's columns.  This module answers those questions from the catalog, with the
connector's own credentials (the agent never sees them), and caches the answers per
connector.

Staleness is the risk: an answer from before a `CREATE OR REPLACE VIEW` could call a
column clean that now carries masked data.  So entries live `TTL` seconds, every session
clears its connector's cache when a transaction that ran DDL ends, and a session inside
such a transaction does not trust the catalog at all (its proxy masks instead).

A side connection that cannot be made or queried raises `CatalogUnavailable`; callers
fail closed (mask every column) rather than pass data through unexamined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from hoopy.config import PostgresConnector
from hoopy.protocols.postgres.backend import ssl_context
from hoopy.protocols.postgres.lineagescope import QualName, Relation

log = logging.getLogger("hoopy.postgres.catalog")

TTL = 30.0
QUERY_TIMEOUT = 10.0

_REL_COLUMNS = """
    SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind,
           coalesce(array(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum), '{}') AS names,
           coalesce(array(SELECT a.attnum::int FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum), '{}') AS nums,
           CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS def,
           coalesce(array(
               WITH RECURSIVE up(oid) AS (
                   SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid
                   UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid)
               SELECT pn.nspname || '.' || pc.relname
                 FROM up JOIN pg_class pc ON pc.oid = up.oid
                 JOIN pg_namespace pn ON pn.oid = pc.relnamespace), '{}') AS ancestors
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
"""
_BY_NAME = (
    "SELECT q.schema, q.name, r.* FROM unnest($1::text[], $2::text[]) AS q(schema, name) "
    "LEFT JOIN LATERAL (" + _REL_COLUMNS + " WHERE c.oid = to_regclass(CASE WHEN q.schema = '' "
    "THEN quote_ident(q.name) ELSE quote_ident(q.schema) || '.' || quote_ident(q.name) END)"
    ") r ON true"
)
_BY_OID = _REL_COLUMNS + " WHERE c.oid = ANY($1::oid[])"
# A name is builtin when the system schemas have it (pg_catalog, and information_schema,
# whose views cast to its domains and call its helpers; only a superuser can add to
# either) and no other schema defines (or overloads) it: a user-defined overload could
# read any table.
_SYSTEM = "IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
_SYSTEM_SCHEMAS = (None, "pg_catalog", "information_schema")  # None: unqualified
_FUNCTIONS = f"""
    SELECT 'f', p.proname::text, bool_and(p.pronamespace {_SYSTEM})
      FROM pg_proc p GROUP BY p.proname
    UNION ALL
    SELECT 't', t.typname::text, bool_and(t.typnamespace {_SYSTEM})
      FROM pg_type t GROUP BY t.typname
    UNION ALL
    SELECT 'o', o.oprname::text, bool_and(o.oprnamespace {_SYSTEM})
      FROM pg_operator o GROUP BY o.oprname
"""
_TYPES = """
    SELECT t.oid, t.typcategory::text, t.typtype::text, t.typbasetype, t.typelem, t.typlen
      FROM pg_type t WHERE t.oid = ANY($1::oid[])
"""


# A fast-path FunctionCall names its function by OID only (fastpath.py).
_FUNCTION_BY_OID = """
    SELECT p.oid, n.nspname::text, p.proname::text, p.proargtypes::oid[]
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = ANY($1::oid[])
"""


class CatalogUnavailable(Exception):
    """The side connection failed: callers must fail closed."""


@dataclass(frozen=True)
class RelInfo:
    oid: int
    relation: Relation
    attnames: dict[int, str]  # attnum → column name


@dataclass(frozen=True)
class FunctionInfo:
    schema: str
    name: str
    argtypes: tuple[int, ...]


@dataclass(frozen=True)
class TypeInfo:
    oid: int
    category: str  # pg_type.typcategory: S string, N numeric, U user, A array, C composite …
    kind: str  # pg_type.typtype: b base, d domain, c composite, e enum …
    base: int  # domain's base type (0 otherwise)
    elem: int
    length: int


class Catalog:
    """One connector's catalog facts, cached.  Implements lineagescope.Catalog (sync lookups of
    what `prefetch` loaded) and async lookups by OID for RowDescription fields."""

    def __init__(self, connector: PostgresConnector, clock: Any = time.monotonic) -> None:
        self.connector = connector
        self.clock = clock
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._by_name: dict[QualName, tuple[float, RelInfo | None]] = {}
        self._by_oid: dict[int, tuple[float, RelInfo | None]] = {}
        self._types: dict[int, TypeInfo | None] = {}
        # (stamp, {("f" | "t" | "o", name): builtin}) for functions, types, operators
        self._functions: tuple[float, dict[tuple[str, str], bool]] | None = None
        # function OID → (stamp, (schema, name) or None): fast-path calls
        self._procs: dict[int, tuple[float, FunctionInfo | None]] = {}
        self.generation = 0  # bumped on invalidate: plans cached against it go stale
        self.queries = 0

    # ---- lineagescope.Catalog ----------------------------------------------------------
    def relation(self, name: QualName) -> Relation | None:
        hit = self._by_name.get(_key(name))
        return hit[1].relation if hit and hit[1] else None

    def function_is_builtin(self, name: QualName) -> bool:
        schema, fn = name
        if schema not in _SYSTEM_SCHEMAS or self._functions is None:
            return False
        return self._functions[1].get(("f", fn), False)

    def type_is_builtin(self, name: QualName) -> bool:
        schema, typ = name
        if schema == "pg_catalog":
            return True  # the parser's own spelling of SQL types (int, varchar …)
        if schema not in _SYSTEM_SCHEMAS or self._functions is None:
            return False
        return self._functions[1].get(("t", typ), False)

    def operator_is_builtin(self, name: QualName) -> bool:
        schema, op = name
        if schema not in (None, "pg_catalog") or self._functions is None:
            return False
        return self._functions[1].get(("o", op), False)

    # ---- loading -----------------------------------------------------------------------
    def invalidate(self) -> None:
        self._by_name.clear()
        self._by_oid.clear()
        self._functions = None
        self._procs.clear()
        self.generation += 1

    def _fresh(self, stamp: float) -> bool:
        return self.clock() - stamp < TTL

    async def prefetch(self, relations: set[QualName], functions: set[QualName]) -> None:
        """Load what lineage will ask about; raises CatalogUnavailable."""
        missing = [
            _key(n)
            for n in relations
            if not self._fresh(self._by_name.get(_key(n), (-TTL, None))[0])
        ]
        need_functions = self._functions is None or not self._fresh(self._functions[0])
        if not missing and not need_functions:
            return
        now = self.clock()
        if missing:
            rows = await self._fetch(
                _BY_NAME, [s or "" for s, _ in missing], [n for _, n in missing]
            )
            for row in rows:
                name = (row["schema"] or None, row["name"])
                info = _rel_info(row) if row["oid"] is not None else None
                self._by_name[name] = (now, info)
                if info is not None:
                    self._by_oid[info.oid] = (now, info)
        if need_functions:
            rows = await self._fetch(_FUNCTIONS)
            self._functions = (now, {(r[0], r[1]): bool(r[2]) for r in rows})

    async def by_oids(self, oids: set[int]) -> dict[int, RelInfo | None]:
        missing = [o for o in oids if not self._fresh(self._by_oid.get(o, (-TTL, None))[0])]
        if missing:
            now = self.clock()
            found = {row["oid"]: _rel_info(row) for row in await self._fetch(_BY_OID, missing)}
            for o in missing:
                self._by_oid[o] = (now, found.get(o))
        return {o: self._by_oid[o][1] for o in oids}

    async def function_name(self, oid: int) -> FunctionInfo | None:
        """Schema, name and argument types of the function with this OID, None when
        there is none;
        raises CatalogUnavailable.  Cached `TTL` seconds like the rest (an OID of a
        dropped function can be reused, rarely)."""
        hit = self._procs.get(oid)
        if hit is not None and self._fresh(hit[0]):
            return hit[1]
        rows = await self._fetch(_FUNCTION_BY_OID, [oid])
        found = None
        if rows:
            found = FunctionInfo(str(rows[0][1]), str(rows[0][2]), tuple(rows[0][3] or ()))
        if len(self._procs) > 4096:
            self._procs.clear()
        self._procs[oid] = (self.clock(), found)
        return found

    async def types(self, oids: set[int]) -> dict[int, TypeInfo | None]:
        missing = [o for o in oids if o not in self._types]
        if missing:
            rows = await self._fetch(_TYPES, missing)
            found = {
                r[0]: TypeInfo(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in rows
            }
            for o in missing:
                self._types[o] = found.get(o)
        return {o: self._types[o] for o in oids}

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._lock:
            self.queries += 1
            for attempt in (1, 2):  # a pooled side connection may have been dropped
                try:
                    conn = await self._connection()
                    return list(await conn.fetch(sql, *args, timeout=QUERY_TIMEOUT))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                    log.debug("catalog query failed", exc_info=True)
                    await self._drop()
                    if attempt == 2:
                        # The connector's credentials never appear: only the error class.
                        log.warning(
                            "catalog side connection for %s failed: %s",
                            self.connector.name,
                            type(e).__name__,
                        )
                        raise CatalogUnavailable(type(e).__name__) from None
        raise CatalogUnavailable("unreachable")  # pragma: no cover

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        c = self.connector
        sslarg: Any = {"disable": False, "prefer": "prefer"}.get(c.sslmode)
        if sslarg is None:
            sslarg = ssl_context(c)
        self._conn = await asyncpg.connect(
            host=c.host,
            port=c.port,
            user=c.user,
            password=c.password.get() if c.password else None,
            database=c.database,
            ssl=sslarg,
            timeout=QUERY_TIMEOUT,
            server_settings={"application_name": "hoopy-catalog"},
            statement_cache_size=0,
        )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def _key(name: QualName) -> QualName:
    return (name[0] or None, name[1])


def _rel_info(row: Any) -> RelInfo:
    names = tuple(row["names"])
    rel = Relation(
        row["nspname"], row["relname"], row["relkind"], names, row["def"], tuple(row["ancestors"])
    )
    return RelInfo(int(row["oid"]), rel, dict(zip(row["nums"], names, strict=True)))
