"""Where a statement stores data, as queries masking can trace — pure (pglast).

Masking rewrites what a statement returns.  A statement can also move data somewhere
it can be read back later without masks: `INSERT INTO notes SELECT email FROM
customers`, `UPDATE t SET note = c.email FROM customers c`, `CREATE TABLE x AS …`,
`SELECT … INTO`, or a function that keeps its argument (`set_config`, `pg_notify`,
`setval`, large objects).  `stored_queries` turns each write into a SELECT whose
output columns are exactly the values stored, so the same lineage analysis that
guards results guards writes; the proxy refuses a write that stores masked data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast
from pglast.stream import RawStream
from pglast.visitors import Visitor

from hoopy.protocols.postgres.lineage import _nodes

# Builtins that keep an argument where a later statement can read it back, or send it
# somewhere masking does not reach.
SINK_FUNCTIONS = frozenset(
    {"set_config", "pg_notify", "setval", "lo_from_bytea", "lo_put", "lowrite", "lo_import"}
    | {"lo_export", "pg_file_write", "dblink", "dblink_exec", "dblink_send_query"}
    | {"pg_logical_emit_message", "txid_current_if_assigned"}
    # advisory locks: their keys show in pg_locks, to this session and every other
    | {f"pg_{t}advisory_{x}lock{s}" for t in ("", "try_") for x in ("", "xact_")
       for s in ("", "_shared")}
    # large objects created with a chosen OID: pg_largeobject_metadata shows it
    | {"lo_create", "lo_creat", "lo_truncate", "lo_truncate64"}
)  # fmt: skip


@dataclass(frozen=True)
class Store:
    """Output column i of `query` is stored into `columns[i]` of `table`."""

    query: str
    table: str  # as written ("" when unknown)
    columns: tuple[str, ...] | None  # None: the table's columns in order


def _rel(rv: Any) -> str:
    if rv is None:
        return ""
    return ".".join(p for p in (rv.schemaname, rv.relname) if p)


class _Writes(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.stores: list[Store] = []
        self.unknown = False

    def _emit(self, node: Any, table: str = "", columns: tuple[str, ...] | None = None) -> None:
        try:
            self.stores.append(Store(RawStream()(node), table, columns))
        except Exception:
            self.unknown = True

    def visit_InsertStmt(self, ancestors: Any, node: ast.InsertStmt) -> None:
        if _in_cte(ancestors):
            self.unknown = True  # its source may name the enclosing WITH's CTEs
            return
        src = node.selectStmt
        if src is None:
            return  # DEFAULT VALUES
        if node.withClause is not None and isinstance(src, ast.SelectStmt):
            src = _with(src, node.withClause)
        table = _rel(node.relation)
        cols = tuple(c.name for c in node.cols) if node.cols else None
        self._emit(src, table, cols)
        conflict = node.onConflictClause
        if conflict is not None and conflict.targetList:
            if _reads_excluded(conflict.targetList):
                # `SET note = excluded.ssn` stores a source column into another column
                # than the INSERT itself would: not traced, the caller assumes the worst
                self.unknown = True
                return
            self._emit(
                _select_of(conflict.targetList, (node.relation,), None, None),
                table,
                _names(conflict.targetList),
            )

    def visit_UpdateStmt(self, ancestors: Any, node: ast.UpdateStmt) -> None:
        if _in_cte(ancestors):
            self.unknown = True
            return
        from_ = (node.relation, *(node.fromClause or ()))
        query = _select_of(node.targetList, from_, node.whereClause, node.withClause)
        self._emit(query, _rel(node.relation), _names(node.targetList))

    def visit_MergeStmt(self, _ancestors: Any, _node: Any) -> None:
        self.unknown = True  # MERGE's actions mix source and target: not traced

    def visit_CreateTableAsStmt(self, _ancestors: Any, node: ast.CreateTableAsStmt) -> None:
        if node.query is not None:
            into = node.into
            cols = tuple(c.sval for c in into.colNames) if into and into.colNames else None
            self._emit(node.query, _rel(into.rel if into else None), cols)

    def visit_SelectStmt(self, _ancestors: Any, node: ast.SelectStmt) -> None:
        if node.intoClause is not None:
            import copy

            plain = copy.copy(node)
            plain.intoClause = None
            self._emit(plain, _rel(node.intoClause.rel), None)


def _reads_excluded(targets: Any) -> bool:
    return any(
        isinstance(n, ast.ColumnRef)
        and getattr((n.fields or (None,))[0], "sval", None) == "excluded"
        for n in _nodes(targets)
    )


def _in_cte(ancestors: Any) -> bool:
    """Is this write a data-modifying CTE?  Its source is traced apart from the
    statement, where a CTE name it reads would mean a table of that name instead."""
    a = ancestors
    while a is not None:
        if isinstance(getattr(a, "node", None), ast.CommonTableExpr):
            return True
        a = getattr(a, "parent", None)
    return False


def _with(select: ast.SelectStmt, with_clause: Any) -> ast.SelectStmt:
    import copy

    out = copy.copy(select)
    if out.withClause is None:
        out.withClause = with_clause
    return out


def _names(targets: Any) -> tuple[str, ...] | None:
    names = tuple(t.name for t in targets or () if t.val is not None)
    return names if all(names) else None


def _select_of(targets: Any, from_: tuple[Any, ...], where: Any, with_clause: Any) -> Any:
    vals = tuple(
        # SET col = DEFAULT stores the column's default: no value of the statement
        ast.ResTarget(
            val=ast.A_Const(isnull=True) if isinstance(t.val, ast.SetToDefault) else t.val
        )
        for t in targets or ()
        if t.val is not None
    )
    return ast.SelectStmt(
        targetList=vals, fromClause=from_, whereClause=where, withClause=with_clause
    )


def stored_queries(sql: str) -> list[Store] | None:
    """One SELECT per write in the statement whose outputs are the stored values;
    None when some write cannot be expressed that way (the caller must assume the worst)."""
    try:
        tree = pglast.parse_sql(sql)
    except Exception:
        return None
    w = _Writes()
    try:
        w(tree)
    except Exception:
        return None
    return None if w.unknown else w.stores


def calls_sink(functions: frozenset[str]) -> bool:
    return any(f.rsplit(".", 1)[-1].strip('"').lower() in SINK_FUNCTIONS for f in functions)
