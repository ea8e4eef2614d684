"""The iterative walk over libpg_query's JSON parse tree (classify.py): what one
statement's walk has found (`_Acc`), relation and function names read off nodes, CTE
scoping, and the node handlers that fire wherever a node appears (function calls,
functional notation, nested DML, EXECUTE of a prepared statement).

Separate from the per-statement handlers (classstatements.py), which decide what a
top-level statement is and walk its parts with this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hoopy.policy import Command
from hoopy.protocols.postgres.classeffects import (
    _CALLS_TOO,
    _DYNAMIC_SQL_FUNCTIONS,
    _OTHER_SESSIONS_FUNCTIONS,
)
from hoopy.protocols.postgres.classkinds import (
    _DML_KINDS,
    _MERGE_KINDS,
    _RELATION_OBJECTS,
    _TABLE_CHILD_OBJECTS,
)

Prepared = Mapping[str, tuple[Command, ...]]
Json = Any  # a value of libpg_query's JSON parse tree
Scope = frozenset[str]  # CTE names visible at a point of the tree
Stack = list[tuple[Json, Scope]]

_NO_SCOPE: Scope = frozenset()
# Leaves that can hold neither relations nor function calls (a ColumnRef can: see
# _on_column_ref).
_SKIP = frozenset(
    {"A_Const", "String", "Integer", "Float", "Boolean", "BitString", "A_Star"}
    | {"ParamRef", "RoleSpec"}
)


@dataclass
class _Acc:
    """What one statement's walk has found so far."""

    prepared: Prepared | None
    kinds: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    maybe_functions: set[str] = field(default_factory=set)  # see Command.maybe_functions
    opaque: set[str] = field(default_factory=set)
    cacheable: bool = True

    def child(self) -> _Acc:
        return _Acc(self.prepared)

    def merge(self, other: _Acc) -> None:
        """Take everything: `other` describes something this statement runs."""
        self.kinds |= other.kinds
        self.opaque |= other.opaque
        self.written |= other.written
        self.absorb_refs(other)

    def absorb_refs(self, other: _Acc) -> None:
        """Take only what `other` touches, as reads: it is described, not run."""
        self.read |= other.read | other.written
        self.functions |= other.functions
        self.maybe_functions |= other.maybe_functions
        self.cacheable = self.cacheable and other.cacheable


# ---------------------------------------------------------------- names


def _dotted(names: list[Json]) -> str:
    """[catalog.][schema.]name from a list of String nodes; the catalog is dropped."""
    parts = [n["String"]["sval"] for n in names if isinstance(n, dict) and "String" in n]
    return ".".join(parts[-2:])


def _rv_name(rv: Json) -> str:
    schema = rv.get("schemaname")
    return f"{schema}.{rv['relname']}" if schema else str(rv["relname"])


def _untag(node: Json) -> Json:
    """The fields of a node, tagged or not."""
    if isinstance(node, dict) and len(node) == 1:
        ((tag, body),) = node.items()
        if tag[:1].isupper() and isinstance(body, dict):
            return body
    return node


def _add_target(acc: _Acc, rv: Json) -> None:
    """A relation being modified: never a CTE reference, whatever is in scope."""
    rv = _untag(rv)
    if isinstance(rv, dict) and "relname" in rv:
        acc.written.add(_rv_name(rv))


def _add_name_list(acc: _Acc, objtype: str | None, obj: Json) -> None:
    """DROP / COMMENT / SECURITY LABEL name relations as lists of String nodes."""
    obj = _untag(obj)
    items = obj.get("items") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return
    if objtype in _TABLE_CHILD_OBJECTS:
        items = items[:-1]
    elif objtype not in _RELATION_OBJECTS:
        return
    if items:
        acc.written.add(_dotted(items))


# ---------------------------------------------------------------- the tree walk


def _walk(acc: _Acc, root: Json, scope: Scope = _NO_SCOPE) -> None:
    """Collect relations, function calls and nested statements below `root`."""
    stack: Stack = [(root, scope)]
    while stack:
        obj, scope = stack.pop()
        if isinstance(obj, list):
            stack.extend((x, scope) for x in obj if isinstance(x, dict | list))
            continue
        if not isinstance(obj, dict):
            continue
        if len(obj) == 1:
            ((tag, body),) = obj.items()
            if tag[:1].isupper() and isinstance(body, dict):
                if tag in _SKIP:
                    continue
                special = _NODE_HANDLERS.get(tag)
                if special is not None:
                    special(acc, body, scope, stack)
                    continue
                obj = body
        if "relname" in obj:
            _read_ref(acc, obj, scope)
        else:
            _push_fields(obj, scope, stack)


def _push_fields(obj: Json, scope: Scope, stack: Stack, skip: tuple[str, ...] = ()) -> None:
    """Queue a node's fields; a WITH clause scopes its CTE names over the rest."""
    with_clause = obj.get("withClause")
    if isinstance(with_clause, dict):
        scope = _push_ctes(with_clause, scope, stack)
    for key, value in obj.items():
        if isinstance(value, dict | list) and key != "withClause" and key not in skip:
            stack.append((value, scope))


def _push_ctes(with_clause: Json, scope: Scope, stack: Stack) -> Scope:
    """Queue CTE bodies with what each may see; return the scope of the statement body.

    Without RECURSIVE a CTE sees only the CTEs before it (a later or its own name means a
    real table); with RECURSIVE every CTE of the list is visible in every body.
    """
    ctes = [_untag(c) for c in with_clause.get("ctes", [])]
    names = [str(c.get("ctename", "")) for c in ctes]
    recursive = bool(with_clause.get("recursive"))
    for i, cte in enumerate(ctes):
        visible = names if recursive else names[:i]
        stack.append((cte.get("ctequery"), scope | frozenset(visible)))
    return scope | frozenset(names)


def _read_ref(acc: _Acc, rv: Json, scope: Scope) -> None:
    if rv.get("schemaname") or rv.get("catalogname") or rv["relname"] not in scope:
        acc.read.add(_rv_name(rv))


def _calls(acc: _Acc, name: str, maybe: bool = False) -> None:
    """`name` is called (or, `maybe`, may be: functional notation), however it is
    reached — a call, `(x).f`, an operator's or aggregate's or cast's or trigger's
    function: what it runs and what kind of call it is count the same every way."""
    if not name:
        return
    into = acc.maybe_functions if maybe else acc.functions
    into.add(name)
    bare = name.rpartition(".")[2]
    if bare in _CALLS_TOO:
        into.add(_CALLS_TOO[bare])
    kind = "dynamic_sql" if bare in _DYNAMIC_SQL_FUNCTIONS else _OTHER_SESSIONS_FUNCTIONS.get(bare)
    if kind:
        acc.kinds.add(kind)
        acc.opaque.add(kind)


def _on_func_call(acc: _Acc, body: Json, scope: Scope, stack: Stack) -> None:
    _calls(acc, _dotted(body.get("funcname", [])))
    _push_fields(body, scope, stack, skip=("funcname",))


def _on_indirection(acc: _Acc, body: Json, scope: Scope, stack: Stack) -> None:
    """`(expr).name` is a call of name(expr) when expr has no such field (PostgreSQL's
    functional notation): the name counts as a function called."""
    for item in body.get("indirection") or []:
        if isinstance(item, dict) and "String" in item:
            _calls(acc, str(item["String"].get("sval", "")))
    _push_fields(body, scope, stack)


def _on_column_ref(acc: _Acc, body: Json, scope: Scope, stack: Stack) -> None:
    """`t.f` (or `s.t.f`) is a call of f(t) when t has no column f: PostgreSQL's
    functional notation.  Without the catalog, f may be either."""
    fields = body.get("fields") or []
    last = fields[-1] if len(fields) > 1 else None
    if isinstance(last, dict) and "String" in last:
        _calls(acc, str(last["String"].get("sval", "")), maybe=True)


def _on_dml(tag: str) -> Callable[[_Acc, Json, Scope, Stack], None]:
    def handler(acc: _Acc, body: Json, scope: Scope, stack: Stack) -> None:
        acc.kinds.add(_DML_KINDS[tag])
        _add_target(acc, body.get("relation"))
        conflict = body.get("onConflictClause") or {}
        if conflict.get("action") == "ONCONFLICT_UPDATE":
            acc.kinds.add("update")
        for clause in body.get("mergeWhenClauses", []):
            kind = _MERGE_KINDS.get(_untag(clause).get("commandType", ""))
            if kind:
                acc.kinds.add(kind)
        _push_fields(body, scope, stack, skip=("relation",))

    return handler


def _on_execute(acc: _Acc, body: Json, scope: Scope, stack: Stack) -> None:
    """EXECUTE runs a prepared statement: it is whatever that statement is."""
    acc.kinds.add("execute")
    acc.cacheable = False
    found = (acc.prepared or {}).get(str(body.get("name", "")))
    if found is None:
        acc.opaque.add("execute")
    else:
        for cmd in found:
            acc.kinds |= cmd.kinds - {"prepare"}
            acc.read |= cmd.tables_read
            acc.written |= cmd.tables_written
            acc.functions |= cmd.functions
            acc.opaque |= cmd.opaque
    _push_fields(body, scope, stack)


_NODE_HANDLERS: dict[str, Callable[[_Acc, Json, Scope, Stack], None]] = {
    "RangeVar": lambda acc, body, scope, stack: _read_ref(acc, body, scope),
    "FuncCall": _on_func_call,
    "A_Indirection": _on_indirection,
    "ColumnRef": _on_column_ref,
    "ExecuteStmt": _on_execute,
    **{tag: _on_dml(tag) for tag in _DML_KINDS},
}


def _walk_fields(acc: _Acc, body: Json, skip: tuple[str, ...] = ()) -> None:
    _walk(acc, {k: v for k, v in body.items() if k not in skip})
