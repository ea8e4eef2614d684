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

Modules: this one holds the walk (statements, FROM items, names, expressions);
lineagescope.py the types and the scopes names resolve in; lineagechecks.py the
questions asked of a whole statement (`untraceable`, `name_resolution_change`,
`search_path_schemas`, `required_names`).
"""

from __future__ import annotations

from typing import Any

import postgast
from postgast import nodes as ast
from postgast.nodes import AstNode

from hoopy.protocols.postgres.lineagescope import (
    EMPTY,
    Catalog,
    Col,
    ColumnLineage,
    QualName,
    Relation,
    _has,
    _Item,
    _lookup,
    _rename,
    _Scope,
    _union,
    _Unknown,
    _whole,
)

# The tree's pitfalls (unset is "" or [], shifted enums, fresh wrappers): see pgtree.py.
from hoopy.protocols.postgres.pgtree import (
    A_Expr_Kind,
    SetOperation,
    SubLinkType,
    children,
    parse_statements,
)

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
