"""Where a statement stores data, as queries masking can trace — pure (postgast).

Masking rewrites what a statement returns.  A statement can also move data somewhere
it can be read back later without masks: `INSERT INTO notes SELECT email FROM
customers`, `UPDATE t SET note = c.email FROM customers c`, `CREATE TABLE x AS …`,
`SELECT … INTO`, or a function that keeps its argument (`set_config`, `pg_notify`,
`setval`, large objects).  `stored_queries` turns each write into a SELECT whose
output columns are exactly the values stored, so the same lineage analysis that
guards results guards writes; the proxy refuses a write that stores masked data.

The SELECTs are trees (libpg_query's protobuf messages, cut from the statement's own
tree), never SQL text: lineage reads them as they are, and libpg_query's C deparser,
which can crash the process on a tree it does not expect, is never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import postgast
from google.protobuf.message import Message
from postgast import nodes as ast
from postgast.nodes import AstNode

from hoopy.protocols.postgres.pgtree import child_messages, message, parse_tree, pb2, walk

pb = pb2

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

    query: AstNode  # a SELECT (or what CREATE TABLE AS runs) as postgast's typed tree
    table: str  # as written ("" when unknown)
    columns: tuple[str, ...] | None  # None: the table's columns in order


def _rel(rv: Any) -> str:
    if rv is None:
        return ""
    return ".".join(p for p in (rv.schemaname, rv.relname) if p)


# The Node oneof field that holds each node type ("RangeVar" → "range_var").
_NODE_FIELD = {
    f.message_type.name: f.name for f in pb.Node.DESCRIPTOR.oneofs_by_name["node"].fields
}


def _set_node(node: Message, msg: Message) -> None:
    """Make the Node `node` hold a copy of `msg` (a RangeVar, a JoinExpr …)."""
    getattr(node, _NODE_FIELD[msg.DESCRIPTOR.name]).CopyFrom(msg)


class _Writes:
    """Visits every node of a parse tree (writes in subqueries and CTEs included) and
    collects, per write, the SELECT of what it stores."""

    def __init__(self) -> None:
        self.stores: list[Store] = []
        self.unknown = False

    def visit_tree(self, tree: Message) -> None:
        # (message, inside a CommonTableExpr?)
        stack: list[tuple[Message, bool]] = [(raw, False) for raw in reversed(tree.stmts)]
        while stack:
            msg, in_cte = stack.pop()
            node = postgast.wrap(msg)
            visit = getattr(self, f"visit_{type(node).__name__}", None)
            if visit is not None:
                visit(node, in_cte)
            below = in_cte or isinstance(node, ast.CommonTableExpr)
            stack.extend((c, below) for c in reversed(list(child_messages(message(node)))))

    def _emit(self, stmt: Message, table: str = "", columns: tuple[str, ...] | None = None) -> None:
        self.stores.append(Store(postgast.wrap(stmt), table, columns))

    def visit_InsertStmt(self, node: ast.InsertStmt, in_cte: bool) -> None:
        if in_cte:
            self.unknown = True  # its source may name the enclosing WITH's CTEs
            return
        src = node.select_stmt
        if src is None:
            return  # DEFAULT VALUES
        src_pb = message(src)
        if node.with_clause is not None and isinstance(src, ast.SelectStmt):
            src_pb = _with(message(src), message(node.with_clause))
        table = _rel(node.relation)
        cols = tuple(_target(c).name for c in node.cols) if node.cols else None
        self._emit(src_pb, table, cols)
        conflict = node.on_conflict_clause
        if conflict is not None and conflict.target_list:
            if _reads_excluded(conflict.target_list):
                # `SET note = excluded.ssn` stores a source column into another column
                # than the INSERT itself would: not traced, the caller assumes the worst
                self.unknown = True
                return
            self._emit(
                _select_of(conflict.target_list, [node.relation], None, None),
                table,
                _names(conflict.target_list),
            )

    def visit_UpdateStmt(self, node: ast.UpdateStmt, in_cte: bool) -> None:
        if in_cte:
            self.unknown = True
            return
        from_ = [node.relation, *node.from_clause]
        query = _select_of(node.target_list, from_, node.where_clause, node.with_clause)
        self._emit(query, _rel(node.relation), _names(node.target_list))

    def visit_MergeStmt(self, _node: ast.MergeStmt, _in_cte: bool) -> None:
        self.unknown = True  # MERGE's actions mix source and target: not traced

    def visit_CreateTableAsStmt(self, node: ast.CreateTableAsStmt, _in_cte: bool) -> None:
        query = node.query
        if query is not None:
            into = node.into
            cols = tuple(_string(c) for c in into.col_names) if into and into.col_names else None
            self._emit(message(query), _rel(into.rel if into else None), cols)

    def visit_SelectStmt(self, node: ast.SelectStmt, _in_cte: bool) -> None:
        into = node.into_clause
        if into is not None:
            plain = pb.SelectStmt()
            plain.CopyFrom(message(node))
            plain.ClearField("into_clause")
            self._emit(plain, _rel(into.rel), None)


def _target(node: Any) -> ast.ResTarget:
    if not isinstance(node, ast.ResTarget):
        raise TypeError(f"not a target: {type(node).__name__}")
    return node


def _string(node: Any) -> str:
    if not isinstance(node, ast.String):
        raise TypeError(f"not a name: {type(node).__name__}")
    return node.sval


def _reads_excluded(targets: Any) -> bool:
    return any(
        isinstance(n, ast.ColumnRef)
        and bool(n.fields)
        and isinstance(n.fields[0], ast.String)
        and n.fields[0].sval == "excluded"
        for n in walk(targets)
    )


def _with(select: Message, with_clause: Message) -> Message:
    out = pb.SelectStmt()
    out.CopyFrom(select)
    if not out.HasField("with_clause"):
        out.with_clause.CopyFrom(with_clause)
    return out


def _names(targets: Any) -> tuple[str, ...] | None:
    names = tuple(_target(t).name for t in targets if _target(t).val is not None)
    return names if all(names) else None


def _select_of(targets: Any, from_: list[Any], where: Any, with_clause: Any) -> Message:
    """SELECT <the targets' values> FROM <from_> WHERE <where>, under `with_clause`."""
    out = pb.SelectStmt(op=pb.SETOP_NONE, limit_option=pb.LIMIT_OPTION_DEFAULT)
    for t in targets:
        val = _target(t).val
        if val is None:
            continue
        stored = out.target_list.add().res_target.val
        if isinstance(val, ast.SetToDefault):
            # SET col = DEFAULT stores the column's default: no value of the statement
            stored.a_const.isnull = True
        elif isinstance(val, ast.MultiAssignRef):
            # SET (a, b) = (x, y) / (SELECT …): each column gets the whole source (its
            # lineage is the union of all of it), as a row or a scalar subquery
            stored.CopyFrom(message(val).source)
        else:
            stored.CopyFrom(message(t).val)
    for item in from_:
        if item is None:
            raise TypeError("a FROM item is missing")
        _set_node(out.from_clause.add(), message(item))
    if where is not None:  # never part of the lineage; kept for a faithful SELECT
        _set_node(out.where_clause, message(where))
    if with_clause is not None:
        out.with_clause.CopyFrom(message(with_clause))
    return out


def stored_queries(sql: str) -> list[Store] | None:
    """One SELECT per write in the statement whose outputs are the stored values;
    None when some write cannot be expressed that way (the caller must assume the worst)."""
    try:
        tree = parse_tree(sql)
    except Exception:
        return None
    w = _Writes()
    try:
        w.visit_tree(tree)
    except Exception:
        return None
    return None if w.unknown else w.stores


def calls_sink(functions: frozenset[str]) -> bool:
    return any(f.rsplit(".", 1)[-1].strip('"').lower() in SINK_FUNCTIONS for f in functions)
