"""Column lineage: which base-table columns feed each output column of a statement — pure.

Theory of operation
-------------------
Masking must follow data, not names: `upper(email)`, `row_to_json(c)`, a CTE, a view or
a UNION branch carry `customers.email` as surely as `SELECT email` does.  We walk
libpg_query's AST (postgast's typed wrappers over its protobuf tree) the way
PostgreSQL's analyser resolves names:

* a *scope* holds the FROM items visible at a point (tables, views, subqueries, CTEs,
  function calls, joins), each with its output columns and their lineage, and links to
  the enclosing scope (correlated subqueries, LATERAL);
* an expression's lineage is the union of the lineage of everything it references —
  operators, casts, CASE, aggregates, window functions and builtin function calls alike;
  WHERE / GROUP BY / ORDER BY / JOIN ON only filter and contribute nothing;
* a whole-row reference (`c`, `c.*`, `row_to_json(c)`) carries every column of `c`;
* views and materialized views are expanded through their definitions (depth-limited).

Lineage is a frozenset of `(schema.table, column)` sources, or None when it cannot be
known: a user-defined function (its body may read any table), a builtin that runs a
query (`query_to_xml`), an unresolvable name, a relation the catalog does not know.
Callers mask what is None.  Any unexpected tree shape (or one too deep to walk) makes
the whole answer None: this module never claims a column clean by mistake.

Two more questions are answered on the tree: `untraceable` — does a statement run code
whose data hoopy cannot see anywhere in it (writes and sinks of such data are
refused) — and `name_resolution_change` — may it make names resolve differently in the
agent's session than on the catalog connection (search_path however spelt, `SET
SCHEMA`, `U&"…"` names, temporary relations)?
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import postgast
from postgast import nodes as ast
from postgast.nodes import AstNode

# The tree's pitfalls (unset is "" or [], shifted enums, fresh wrappers): see pgtree.py.
from hoopy.protocols.postgres.pgtree import (
    A_Expr_Kind,
    SetOperation,
    SubLinkType,
    VariableSetKind,
    children,
    parse_statements,
)
from hoopy.protocols.postgres.pgtree import walk as _nodes

Source = tuple[str, str]
ColumnLineage = frozenset[Source] | None
QualName = tuple[str | None, str]

EMPTY: frozenset[Source] = frozenset()

# Builtins whose output is not a function of their arguments: they run a query or read a
# relation named by a string.  Their results are always of unknown lineage.
QUERYING_FUNCTIONS = frozenset(
    {"query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "table_to_xml"}
    | {"table_to_xml_and_xmlschema", "table_to_xmlschema", "cursor_to_xml", "cursor_to_xmlschema"}
    | {"schema_to_xml", "schema_to_xml_and_xmlschema", "schema_to_xmlschema", "database_to_xml"}
    | {"database_to_xml_and_xmlschema", "database_to_xmlschema", "ts_stat", "ts_rewrite"}
    | {"dblink", "dblink_exec", "dblink_get_result", "dblink_fetch"}
    | {"pg_read_file", "pg_read_binary_file", "pg_stat_get_activity", "current_query"}
    # large objects: their bytes were stored by an earlier statement, from anywhere
    | {"lo_get", "loread"}
    # logical decoding: rows of any table, as text
    | {"pg_logical_slot_get_changes", "pg_logical_slot_peek_changes"}
    | {"pg_logical_slot_get_binary_changes", "pg_logical_slot_peek_binary_changes"}
)
# Set-returning builtins whose output column count is known without a column list.
_SRF_COLUMNS = {
    "unnest": 1, "generate_series": 1, "jsonb_array_elements": 1, "json_array_elements": 1,
    "jsonb_array_elements_text": 1, "json_array_elements_text": 1, "regexp_matches": 1,
    "regexp_split_to_table": 1, "string_to_table": 1, "jsonb_object_keys": 1,
    "json_object_keys": 1, "jsonb_each": 2, "json_each": 2, "jsonb_each_text": 2,
    "json_each_text": 2, "generate_subscripts": 1,
}  # fmt: skip
_SRF_NAMES = {"jsonb_each": ("key", "value"), "json_each": ("key", "value")}
_SRF_NAMES |= {"jsonb_each_text": ("key", "value"), "json_each_text": ("key", "value")}

# Statements that never return rows.
_NO_ROWS = frozenset(
    {"TransactionStmt", "VariableSetStmt", "DeclareCursorStmt", "PrepareStmt", "DeallocateStmt"}
    | {"ClosePortalStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt", "DiscardStmt", "LockStmt"}
    | {"CheckPointStmt", "VacuumStmt", "CreateStmt", "CreateTableAsStmt", "ViewStmt", "IndexStmt"}
    | {"DropStmt", "AlterTableStmt", "TruncateStmt", "CommentStmt", "GrantStmt", "RenameStmt"}
    | {"CreateSchemaStmt", "CreateSeqStmt", "AlterSeqStmt", "CreateFunctionStmt", "DoStmt"}
    | {"CreateRoleStmt", "AlterRoleStmt", "DropRoleStmt", "GrantRoleStmt", "CreateExtensionStmt"}
    | {"RefreshMatViewStmt", "CreateTrigStmt", "RuleStmt", "AlterOwnerStmt", "ReindexStmt"}
    | {"ClusterStmt", "CreatedbStmt", "DropdbStmt", "LoadStmt", "ConstraintsSetStmt"}
    | {"CompositeTypeStmt", "CreateEnumStmt", "DefineStmt", "CreateDomainStmt"}
)


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: tuple[str, ...]
    view_sql: str | None = None
    # Parents by inheritance or partitioning ("schema.table"): a partition's rows are its
    # parent's, so a rule naming the parent covers them.
    ancestors: tuple[str, ...] = ()

    def sources(self, column: str) -> frozenset[Source]:
        return frozenset((t, column) for t in (f"{self.schema}.{self.name}", *self.ancestors))


class Catalog(Protocol):
    def relation(self, name: QualName) -> Relation | None: ...

    def function_is_builtin(self, name: QualName) -> bool: ...

    def type_is_builtin(self, name: QualName) -> bool: ...

    def operator_is_builtin(self, name: QualName) -> bool: ...


class _Unknown(Exception):
    """The output shape itself cannot be determined."""


Col = tuple[str, ColumnLineage]  # output column: name, lineage


@dataclass
class _Item:
    """One FROM item as seen by name resolution."""

    name: str | None  # alias or relation name; None for an unaliased join
    columns: list[Col] | None  # None: unknown shape
    fallback: ColumnLineage = None  # lineage of any column when the shape is unknown
    children: list[_Item] = field(
        default_factory=list
    )  # a join's sides (their aliases stay visible)
    hidden: set[str] = field(default_factory=set)  # USING columns merged away


@dataclass
class _Scope:
    items: list[_Item]
    ctes: dict[str, list[Col] | None]
    parent: _Scope | None = None

    def visible(self) -> Iterator[_Item]:
        """Items whose names can qualify a column: joins expose their sides' names."""
        stack = list(reversed(self.items))
        while stack:
            it = stack.pop()
            yield it
            stack.extend(reversed(it.children))

    def cte(self, name: str) -> tuple[bool, list[Col] | None]:
        s: _Scope | None = self
        while s is not None:
            if name in s.ctes:
                return True, s.ctes[name]
            s = s.parent
        return False, None


def _union(parts: Iterator[ColumnLineage] | list[ColumnLineage]) -> ColumnLineage:
    out: set[Source] = set()
    for p in parts:
        if p is None:
            return None
        out |= p
    return frozenset(out)


def _name(n: Any) -> str:
    return n.sval if isinstance(n, ast.String) else str(n)


def _qual(parts: list[str]) -> QualName:
    """(schema, name) of a possibly qualified name; a catalog name in front is dropped."""
    return (parts[-2] if len(parts) > 1 else None, parts[-1])


class _Analyzer:
    def __init__(self, catalog: Catalog, depth: int) -> None:
        self.catalog = catalog
        self.depth = depth

    # ---- statements --------------------------------------------------------------------
    def statement(self, node: Any, scope: _Scope | None) -> list[Col] | None:
        """Output columns of a statement; None: it returns no rows (or [] when none)."""
        tag = type(node).__name__
        if isinstance(node, ast.SelectStmt):
            return self.select(node, scope)
        if isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
            return self.dml(node, scope)
        if isinstance(node, ast.CopyStmt):
            return self.copy(node, scope)
        if isinstance(node, ast.ExplainStmt | ast.VariableShowStmt):
            return [("", EMPTY)]
        if tag in _NO_ROWS:
            return []
        raise _Unknown(tag)

    def select(self, node: ast.SelectStmt, outer: _Scope | None) -> list[Col]:
        scope = _Scope([], {}, outer)
        if node.with_clause is not None:
            self.with_clause(node.with_clause, scope)
        if _set_operation(node):
            left = self.select(_select_node(node.larg), scope)
            right = self.select(_select_node(node.rarg), scope)
            if len(left) != len(right):
                raise _Unknown("set operation arity")
            return [(ln, _union([ll, rl])) for (ln, ll), (_, rl) in zip(left, right, strict=True)]
        if node.into_clause is not None:
            return []
        values = node.values_lists
        if values:
            rows = [[self.expr(e, scope) for e in _items(row)] for row in values]
            width = len(rows[0])
            if any(len(r) != width for r in rows):
                raise _Unknown("values arity")
            return [(f"column{i + 1}", _union([r[i] for r in rows])) for i in range(width)]
        for item in node.from_clause:
            scope.items.append(self.from_item(item, scope))
        out: list[Col] = []
        for t in node.target_list:
            if not isinstance(t, ast.ResTarget):
                raise _Unknown("target")
            val = t.val
            if _is_star(val):
                out.extend(self.star(val, scope))
            else:
                out.append((t.name or _default_name(val), self.expr(val, scope)))
        return out

    def with_clause(self, w: ast.WithClause, scope: _Scope) -> None:
        for cte in w.ctes:
            if not isinstance(cte, ast.CommonTableExpr):
                raise _Unknown("cte")
            name = cte.ctename
            query = cte.ctequery
            aliases = [_name(c) for c in cte.aliascolnames]
            if w.recursive and isinstance(query, ast.SelectStmt) and _set_operation(query):
                scope.ctes[name] = self._recursive_cte(query, scope, name, aliases)
                continue
            cols = self.statement(query, scope) or []
            scope.ctes[name] = _rename(cols, aliases)

    def _recursive_cte(
        self, query: ast.SelectStmt, scope: _Scope, name: str, aliases: list[str]
    ) -> list[Col] | None:
        base = _rename(self.select(_select_node(query.larg), scope), aliases)
        scope.ctes[name] = base
        for _ in range(8):  # lineage only grows: a fixpoint comes quickly
            step = self.select(_select_node(query.rarg), scope)
            if len(step) != len(base):
                raise _Unknown("recursive cte arity")
            grown = [(n, _union([lin, s])) for (n, lin), (_, s) in zip(base, step, strict=True)]
            if grown == base:
                return base
            base = grown
            scope.ctes[name] = base
        return [(n, None) for n, _ in base]

    def dml(self, node: Any, outer: _Scope | None) -> list[Col]:
        returning = _returning(node)
        if not returning:
            return []
        scope = _Scope([], {}, outer)
        if node.with_clause is not None:
            self.with_clause(node.with_clause, scope)
        target = self.relation_item(node.relation, scope)
        scope.items.append(target)
        extra: list[ColumnLineage] = []
        if isinstance(node, ast.InsertStmt) and node.select_stmt is not None:
            src = self.statement(node.select_stmt, scope) or []
            extra.extend(lin for _, lin in src)
        if isinstance(node, ast.UpdateStmt):
            for item in node.from_clause:
                scope.items.append(self.from_item(item, scope))
            extra.extend(self.expr(t, scope) for t in node.target_list)  # ResTarget: its val
        if isinstance(node, ast.DeleteStmt):
            for item in node.using_clause:
                scope.items.append(self.from_item(item, scope))
        if isinstance(node, ast.MergeStmt):
            raise _Unknown("merge returning")
        more = _union(extra)
        out: list[Col] = []
        for t in returning:
            if not isinstance(t, ast.ResTarget):
                raise _Unknown("returning target")
            val = t.val
            if _is_star(val):
                cols = self.star(val, scope)
            else:
                cols = [(t.name or _default_name(val), self.expr(val, scope))]
            out.extend((n, _union([lin, more])) for n, lin in cols)
        return out

    def copy(self, node: ast.CopyStmt, scope: _Scope | None) -> list[Col]:
        if node.is_from:
            return []
        if node.query is not None:
            return self.statement(node.query, scope) or []
        if node.relation is None:
            raise _Unknown("copy of nothing")
        item = self.relation_item(node.relation, _Scope([], {}, scope))
        if item.columns is None:
            raise _Unknown("copy of an unknown relation")
        if node.attlist:
            wanted = [_name(a) for a in node.attlist]
            by_name = dict(item.columns)
            return [(w, by_name.get(w)) for w in wanted]
        return item.columns

    # ---- FROM items --------------------------------------------------------------------
    def from_item(self, node: Any, scope: _Scope) -> _Item:
        if isinstance(node, ast.RangeVar):
            return self.relation_item(node, scope)
        if isinstance(node, ast.RangeSubselect):
            cols = self.statement(node.subquery, scope) or []
            return self._aliased(node.alias, None, cols)
        if isinstance(node, ast.JoinExpr):
            return self.join(node, scope)
        if isinstance(node, ast.RangeFunction):
            return self.function_item(node, scope)
        if isinstance(node, ast.RangeTableSample):
            return self.from_item(node.relation, scope)
        return _Item(None, None, None)

    def relation_item(self, rv: ast.RangeVar | None, scope: _Scope) -> _Item:
        if rv is None:
            raise _Unknown("no relation")
        name = rv.relname
        schema = rv.schemaname or None  # "" when unqualified
        if schema is None:
            found, cte = scope.cte(name)
            if found:
                return self._aliased(rv.alias, name, cte or [])
        rel = self.catalog.relation((schema, name))
        if rel is None:
            return self._aliased(rv.alias, name, None)
        return self._aliased(rv.alias, name, self.relation_columns(rel))

    def relation_columns(self, rel: Relation) -> list[Col]:
        if rel.kind in ("v", "m"):
            lineage = None
            if rel.view_sql and self.depth > 0:
                lineage = output_lineage(rel.view_sql, self.catalog, self.depth - 1)
            if lineage is None or len(lineage) != len(rel.columns):
                return [(c, None) for c in rel.columns]
            # the view's own column counts too: a rule may name it
            return [
                (c, lin | rel.sources(c) if lin is not None else None)
                for c, lin in zip(rel.columns, lineage, strict=True)
            ]
        return [(c, rel.sources(c)) for c in rel.columns]

    def _aliased(self, alias: Any, name: str | None, cols: list[Col] | None) -> _Item:
        if alias is not None:
            names = [_name(c) for c in alias.colnames]
            return _Item(alias.aliasname, _rename(cols, names) if cols is not None else None)
        return _Item(name, cols)

    def join(self, node: ast.JoinExpr, scope: _Scope) -> _Item:
        left = self.from_item(node.larg, scope)
        right = self.from_item(node.rarg, scope)
        if left.columns is None or right.columns is None:
            cols = None
        else:
            using = [_name(u) for u in node.using_clause]
            if node.is_natural:
                rnames = {n for n, _ in right.columns}
                using = [n for n, _ in left.columns if n in rnames]
            lmap, rmap = dict(left.columns), dict(right.columns)
            merged = [(u, _union([lmap.get(u), rmap.get(u)])) for u in using]
            cols = (
                merged
                + [c for c in left.columns if c[0] not in using]
                + [c for c in right.columns if c[0] not in using]
            )
        name = node.alias.aliasname if node.alias is not None else None
        item = _Item(name, cols, children=[] if name else [left, right])
        if node.alias is not None and cols is not None:
            item.columns = _rename(cols, [_name(c) for c in node.alias.colnames])
        return item

    def function_item(self, node: ast.RangeFunction, scope: _Scope) -> _Item:
        lineages: list[ColumnLineage] = []
        count = 0
        names: list[str] = []
        known = True
        for pair in node.functions:
            # (function call, column definition list): a List whose NIL second item
            # (no column definitions) postgast leaves out
            parts = _items(pair)
            if not parts:
                raise _Unknown("function item")
            fn = parts[0]
            coldefs = _items(parts[1]) if len(parts) > 1 else []
            lineages.append(self.expr(fn, scope))
            fname = _func_name(fn)[1] if isinstance(fn, ast.FuncCall) else ""
            if coldefs:
                count += len(coldefs)
                names += [_colname(c) for c in coldefs]
            elif fname == "unnest" and isinstance(fn, ast.FuncCall):
                count += len(fn.args)
                names += [fname] * len(fn.args)
            elif fname in _SRF_COLUMNS:
                count += _SRF_COLUMNS[fname]
                names += list(_SRF_NAMES.get(fname, (fname,)))
            else:
                known = False
        coldeflist = node.coldeflist
        if coldeflist:
            count, names, known = len(coldeflist), [_colname(c) for c in coldeflist], True
        lin = _union(lineages)
        if node.ordinality:
            count += 1
            names.append("ordinality")
        alias = node.alias
        if alias is not None and alias.colnames:
            names = [_name(c) for c in alias.colnames] + names[len(alias.colnames) :]
            count = max(count, len(alias.colnames))
            known = known or len(alias.colnames) > 0
        item_name = alias.aliasname if alias is not None else (names[0] if names else None)
        if not known:
            return _Item(item_name, None, lin)
        cols = [(n, lin) for n in names[:count]]
        return _Item(item_name, cols, lin)

    # ---- names -------------------------------------------------------------------------
    def star(self, ref: ast.ColumnRef, scope: _Scope) -> list[Col]:
        fields = ref.fields
        if len(fields) == 1:
            out: list[Col] = []
            for item in scope.items:
                if item.columns is None:
                    raise _Unknown("* over an unknown relation")
                out.extend(item.columns)
            return out
        found = self.find_item(_name(fields[-2]), scope)
        if found is None or found.columns is None:
            raise _Unknown("qualified * over an unknown item")
        return found.columns

    def find_item(self, name: str, scope: _Scope | None) -> _Item | None:
        s = scope
        while s is not None:
            for item in s.visible():
                if item.name == name:
                    return item
            s = s.parent
        return None

    def column(self, ref: ast.ColumnRef, scope: _Scope) -> ColumnLineage:
        return self._column(ref.fields, scope)

    def _column(self, fields: list[AstNode], scope: _Scope) -> ColumnLineage:
        if isinstance(fields[-1], ast.A_Star):
            if len(fields) == 1:
                return _union([_whole(i) for i in scope.items])
            return _whole(self.find_item(_name(fields[-2]), scope))
        names = [_name(f) for f in fields]
        if len(names) == 1:
            col = names[0]
            s: _Scope | None = scope
            while s is not None:
                hits = [_lookup(i, col) for i in s.items if _has(i, col)]
                if hits:
                    return _union(hits)
                item = next((i for i in s.visible() if i.name == col), None)
                if item is not None:
                    return _whole(item)  # a whole-row reference
                s = s.parent
            return None
        item = self.find_item(names[-2], scope)
        if item is None:
            # `col.field` of a composite column: the column's lineage
            return self._column(fields[:1], scope)
        return _lookup(item, names[-1])

    # ---- expressions -------------------------------------------------------------------
    def expr(self, node: Any, scope: _Scope) -> ColumnLineage:
        if node is None or isinstance(node, str | int | float | bool):
            return EMPTY
        if isinstance(node, tuple | list):
            return _union([self.expr(n, scope) for n in node])
        if isinstance(node, ast.ColumnRef):
            return self.column(node, scope)
        if isinstance(node, ast.A_Const | ast.ParamRef | ast.SQLValueFunction):
            return EMPTY
        if isinstance(node, ast.FuncCall):
            return self.func_call(node, scope)
        if isinstance(node, ast.SubLink):
            return self.sublink(node, scope)
        if isinstance(node, ast.SelectStmt):
            return _union([lin for _, lin in self.select(node, scope)])
        if isinstance(node, ast.ResTarget):
            return self.expr(node.val, scope)
        if isinstance(node, ast.WindowDef | ast.SortBy):
            return EMPTY  # partitioning and ordering only arrange rows
        if (
            isinstance(node, ast.TypeCast)
            and not _untyped_literal(node.arg)
            and not self._builtin_type(node.type_name)
        ):
            return None  # a cast to a user type may run a user function
        if (
            isinstance(node, ast.A_Expr)
            and node.kind == A_Expr_Kind.AEXPR_OP
            and not self._builtin_operator(node.name)
        ):
            return None  # a user-defined operator runs a user function
        if not isinstance(node, AstNode):
            return None
        # anything else (operators, CASE, casts, row and array constructors, …): the
        # union of everything under it
        return _union([self.expr(c, scope) for c in children(node)])

    def _builtin_type(self, type_name: ast.TypeName | None) -> bool:
        if type_name is None or not type_name.names:
            return False
        return self.catalog.type_is_builtin(_qual([_name(p) for p in type_name.names]))

    def _builtin_operator(self, names: list[AstNode]) -> bool:
        parts = [_name(p) for p in names]
        if not parts:
            return False
        return self.catalog.operator_is_builtin(_qual(parts))

    def func_call(self, node: ast.FuncCall, scope: _Scope) -> ColumnLineage:
        schema, name = _func_name(node)
        if name in QUERYING_FUNCTIONS:
            return None
        if not self.catalog.function_is_builtin((schema, name)):
            return None
        if node.agg_star:
            return EMPTY
        return _union([self.expr(a, scope) for a in node.args])

    def sublink(self, node: ast.SubLink, scope: _Scope) -> ColumnLineage:
        inner = self.select(_select_node(node.subselect), scope)
        lin = _union([lin for _, lin in inner])
        if node.sub_link_type in (SubLinkType.EXPR_SUBLINK, SubLinkType.ARRAY_SUBLINK):
            return lin
        return _union([lin, self.expr(node.testexpr, scope)])


def _select_node(node: Any) -> ast.SelectStmt:
    if not isinstance(node, ast.SelectStmt):
        raise _Unknown("not a SELECT")
    return node


def _set_operation(node: ast.SelectStmt) -> bool:
    """UNION / INTERSECT / EXCEPT?  Anything but a plain SELECT's SETOP_NONE counts (an
    unset op too, when the branches are there) so a surprise is walked, never ignored."""
    if node.op == SetOperation.SETOP_NONE:
        return False
    return node.op != SetOperation.SET_OPERATION_UNDEFINED or node.larg is not None


def _items(node: Any) -> list[AstNode]:
    """The items of a List node (VALUES rows, a FROM function's parts)."""
    if not isinstance(node, ast.List):
        raise _Unknown("not a list")
    return node.items


def _colname(node: Any) -> str:
    if not isinstance(node, ast.ColumnDef):
        raise _Unknown("not a column definition")
    return node.colname


def _is_star(val: Any) -> bool:
    """`*` or `t.*` (a ColumnRef ending in A_Star)."""
    return isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star)


def _untyped_literal(node: Any) -> bool:
    """A string literal, NULL or a bound parameter (`$1::mood`, what drivers send for
    enum columns): its cast to any type runs only that type's input function (C, never
    SQL), not a cast function a user may define."""
    if isinstance(node, ast.ParamRef):
        return True
    return isinstance(node, ast.A_Const) and (node.isnull or isinstance(node.val, ast.String))


def _returning(node: Any) -> list[AstNode]:
    """RETURNING targets (in a ReturningClause since PostgreSQL 18)."""
    clause = node.returning_clause
    return clause.exprs if clause is not None else []


def _rename(cols: list[Col], names: list[str]) -> list[Col]:
    return [(names[i] if i < len(names) else n, lin) for i, (n, lin) in enumerate(cols)]


def _has(item: _Item, col: str) -> bool:
    if item.columns is None:
        return True  # unknown shape: it may have that column
    return any(n == col for n, _ in item.columns)


def _lookup(item: _Item, col: str) -> ColumnLineage:
    if item.columns is None:
        return item.fallback
    found = [lin for n, lin in item.columns if n == col]
    return _union(found) if found else None


def _whole(item: _Item | None) -> ColumnLineage:
    if item is None or item.columns is None:
        return None
    return _union([lin for _, lin in item.columns])


def _func_name(node: ast.FuncCall) -> QualName:
    return _qual([_name(p) for p in node.funcname])


def _default_name(val: Any) -> str:
    if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.String):
        return str(val.fields[-1].sval)
    if isinstance(val, ast.FuncCall):
        return _func_name(val)[1]
    if isinstance(val, ast.TypeCast):
        return _default_name(val.arg) if isinstance(val.arg, ast.ColumnRef) else "?column?"
    return "?column?"


def _parse_one(sql: str | AstNode) -> AstNode:
    """The one statement of `sql`, or `sql` itself when it is a statement's tree already
    (sinks builds the SELECTs it traces as trees)."""
    if isinstance(sql, AstNode):
        return sql
    stmts = parse_statements(sql)
    if len(stmts) != 1:
        raise _Unknown("not one statement")
    return stmts[0]


def output_lineage(
    sql: str | AstNode, catalog: Catalog, max_view_depth: int = 16
) -> list[ColumnLineage] | None:
    """Per output column of the single statement `sql`, in output order; None when even
    the output's shape cannot be determined.  [] for statements that return no rows."""
    try:
        node = _parse_one(sql)
        cols = _Analyzer(catalog, max_view_depth).statement(node, None)
    except (_Unknown, RecursionError, postgast.PgQueryError):
        return None
    except Exception:  # an unexpected tree shape: unknown, never clean
        return None
    return [lin for _, lin in cols or ()]


# What a statement may make resolve differently in the agent's session than on hoopy's
# catalog connection (see `name_resolution_change`).
RELATIONS = "relations"  # temporary relations, searched first: relation names only
ALL_NAMES = "all"  # search_path: functions, operators and types as well


# Every spelling of what `name_resolution_change` looks for contains one of these
# (lower-cased): TEMP / TEMPORARY / pg_temp, search_path, SET SCHEMA (search_path by
# its SQL-standard name), set_config, pg_settings, SET ROLE / SESSION AUTHORIZATION
# ($user), and U& for identifiers spelt with Unicode escapes.  A quoted identifier
# holds its characters as written, and PostgreSQL folds only ASCII letters.
_RESOLUTION_WORDS = (
    "temp", "search_path", "schema", "set_config", "pg_settings", "role", "authorization", "u&",
)  # fmt: skip
# Settings that change how unqualified names resolve: search_path, and the role whose
# name "$user" stands for.
_NAME_SETTINGS = frozenset({"search_path", "role", "session_authorization"})


def name_resolution_change(sql: str) -> str:
    """Could this statement make a name resolve differently in the agent's session than
    in hoopy's catalog connection?  "" if not; RELATIONS for temporary relations and
    types (they shadow those only: functions and operators are never looked up in
    pg_temp unqualified); ALL_NAMES for search_path or role changes, set_config calls,
    writes to pg_settings, and text that cannot be analysed.

    Decided on the parsed tree, where `U&"…"` names are unescaped and `SET SCHEMA`
    is a `SET search_path`; the word test in front only skips texts that cannot
    spell any of it."""
    low = sql.lower()
    if not any(w in low for w in _RESOLUTION_WORDS):
        return ""
    found = ""
    try:
        # _nodes leaves out the String of a constant: a value, not a name
        for node in _nodes(_parse_one(sql)):
            if isinstance(node, ast.UpdateStmt | ast.InsertStmt | ast.DeleteStmt) and (
                getattr(node.relation, "relname", None) == "pg_settings"
            ):
                return ALL_NAMES  # UPDATE pg_settings is set_config by another name
            elif isinstance(node, ast.RangeVar) and (
                node.relpersistence == "t" or _temp_schema(node.schemaname)
            ):
                found = RELATIONS
            elif isinstance(node, ast.String):
                if _temp_schema(node.sval):  # pg_temp.name of a type, a domain …
                    found = RELATIONS
            elif isinstance(node, ast.VariableSetStmt):
                if node.name.lower() in _NAME_SETTINGS:
                    return ALL_NAMES
            elif isinstance(node, ast.FuncCall) and _func_name(node)[1] == "set_config":
                args = node.args
                first = args[0] if args else None
                name = str(_string_const(first)).strip().lower()
                if not isinstance(first, ast.A_Const) or name in _NAME_SETTINGS:
                    return ALL_NAMES
    except Exception:
        return ALL_NAMES
    return found


def _temp_schema(name: str | None) -> bool:
    return bool(name) and str(name).lower().startswith("pg_temp")


def _string_const(node: AstNode | None) -> str | None:
    """The text of a string constant ('x'), else None (NULL, a number, an expression)."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return node.val.sval
    return None


def search_path_schemas(sql: str) -> tuple[str, ...] | None:
    """The schemas this statement may set search_path to: () if it sets none, None if
    it may set what cannot be read from its text (a value computed at run time)."""
    found: list[str] = []
    try:
        for node in _nodes(_parse_one(sql)):
            if isinstance(node, ast.UpdateStmt | ast.InsertStmt | ast.DeleteStmt) and (
                getattr(node.relation, "relname", None) == "pg_settings"
            ):
                return None
            if isinstance(node, ast.VariableSetStmt) and node.name.lower() in _ROLE_SETTINGS:
                return None  # "$user" in the path now names another role's schema
            if isinstance(node, ast.VariableSetStmt) and node.name.lower() == "search_path":
                if node.kind in (VariableSetKind.VAR_SET_DEFAULT, VariableSetKind.VAR_RESET):
                    found.append("public")
                    continue
                if node.kind != VariableSetKind.VAR_SET_VALUE:
                    return None
                for arg in node.args:
                    value = _string_const(arg)
                    if value is None:
                        return None
                    found.append(value)
            elif isinstance(node, ast.FuncCall) and _func_name(node)[1] == "set_config":
                args = node.args
                name = _string_const(args[0]) if args else None
                if name is None:
                    return None
                if name.strip().lower() in _ROLE_SETTINGS:
                    return None
                if name.strip().lower() != "search_path":
                    continue
                value = _string_const(args[1]) if len(args) > 1 else None
                if value is None:
                    return None
                found += [v.strip().strip('"') for v in value.split(",")]
    except Exception:
        return None
    return tuple(dict.fromkeys(v for v in found if v))  # "$user": the caller knows who


_ROLE_SETTINGS = frozenset({"role", "session_authorization"})


# Operator-like expressions whose `name` is not an operator (BETWEEN's, resolved to
# comparison operators, which return booleans).
_NOT_OPERATORS = frozenset(
    {A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN}
    | {A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM}
)


def untraceable(sql: str, catalog: Catalog | None) -> bool:
    """Does the statement run code whose data hoopy cannot see: a function, operator or
    cast that is not builtin, a builtin that runs a query or reads stored bytes
    (QUERYING_FUNCTIONS), a prepared statement (EXECUTE), a procedure, a DO block, a
    COPY from a file or a program?  Anywhere in it, not only in its output.  With
    `catalog` None, every function, operator and cast counts.  True also for a text
    that cannot be analysed."""
    try:
        for node in _nodes(parse_statements(sql)):
            if isinstance(node, ast.ExecuteStmt | ast.CallStmt | ast.DoStmt):
                return True
            if isinstance(node, ast.FuncCall):
                name = _func_name(node)
                if name[1] in QUERYING_FUNCTIONS or catalog is None:
                    return True
                if not catalog.function_is_builtin(name):
                    return True
            elif isinstance(node, ast.A_Expr) and node.kind not in _NOT_OPERATORS:
                parts = [_name(p) for p in node.name]
                if not parts:
                    continue
                if catalog is None or not catalog.operator_is_builtin(_qual(parts)):
                    return True
            elif isinstance(node, ast.TypeCast) and not _untyped_literal(node.arg):
                type_name = node.type_name
                parts = [_name(p) for p in type_name.names] if type_name is not None else []
                if not parts or catalog is None:
                    return True
                if not catalog.type_is_builtin(_qual(parts)):
                    return True
            # COPY FROM a file or a program (STDIN leaves filename unset: ""; a file named
            # '' cannot be opened)
            elif (
                isinstance(node, ast.CopyStmt)
                and node.is_from
                and (node.filename or node.is_program)
            ):
                return True
    except Exception:
        return True
    return False


def required_names(sql: str | AstNode) -> tuple[set[QualName], set[QualName]]:
    """(relations, functions) named anywhere in the statement, to prefetch."""
    rels: set[QualName] = set()
    funcs: set[QualName] = set()
    ctes: set[str] = set()
    try:
        for node in _nodes(_parse_one(sql)):
            if isinstance(node, ast.RangeVar):
                rels.add((node.schemaname or None, node.relname))
            elif isinstance(node, ast.FuncCall):
                funcs.add(_func_name(node))
            elif isinstance(node, ast.CommonTableExpr):
                ctes.add(node.ctename)
    except Exception:
        return set(), set()
    return {r for r in rels if not (r[0] is None and r[1] in ctes)}, funcs
