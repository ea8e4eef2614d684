"""Questions answered over a statement's whole tree rather than per output column
(lineage.py answers those): `untraceable` — does a statement run code whose data hoopy
cannot see anywhere in it (writes and sinks of such data are refused);
`name_resolution_change` and `search_path_schemas` — may it make names resolve
differently in the agent's session than on the catalog connection (search_path however
spelt, `SET SCHEMA`, `U&"…"` names, temporary relations); `required_names` — what to
prefetch from the catalog.
"""

from __future__ import annotations

from postgast import nodes as ast
from postgast.nodes import AstNode

from hoopy.protocols.postgres.lineage import (
    QUERYING_FUNCTIONS,
    _func_name,
    _name,
    _parse_one,
    _qual,
    _untyped_literal,
)
from hoopy.protocols.postgres.lineagescope import Catalog, QualName
from hoopy.protocols.postgres.pgtree import A_Expr_Kind, VariableSetKind, parse_statements
from hoopy.protocols.postgres.pgtree import walk as _nodes

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
