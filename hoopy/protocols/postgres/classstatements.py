"""One handler per statement type (classify.py): the kinds a top-level statement is,
the relations it modifies, and which of its parts are walked (classwalk.py), run
(EXPLAIN ANALYZE, PREPARE, rules) or only described (view queries).

Separate from the walk: these fire only where a statement stands, the walk's node
handlers anywhere in the tree.
"""

from __future__ import annotations

from collections.abc import Callable

from hoopy.protocols.postgres.classeffects import _FUNCTION_OPTIONS
from hoopy.protocols.postgres.classkinds import (
    _DML_KINDS,
    _RELATION_OBJECTS,
    _TARGET_FIELDS,
    _TRANSACTION_KINDS,
    _UTILITY,
    _obj,
)
from hoopy.protocols.postgres.classwalk import (
    Json,
    _Acc,
    _add_name_list,
    _add_target,
    _calls,
    _dotted,
    _rv_name,
    _untag,
    _walk,
    _walk_fields,
)

StmtHandler = Callable[[_Acc, Json], None]


def _statement(acc: _Acc, node: Json) -> None:
    """Classify one statement node into `acc`."""
    ((tag, body),) = node.items()
    before = set(acc.kinds)
    handler = _STATEMENTS.get(tag)
    if handler is not None:
        handler(acc, body)
    elif tag in _UTILITY:
        _utility(acc, _UTILITY[tag], body)
        _implicit_functions(acc, tag, body)
    else:  # a statement this module does not know: fail closed
        acc.kinds.add("unknown")
        acc.opaque.add("unknown")
    if tag in _SCRIPT_STATEMENTS:
        acc.opaque.add(_UTILITY[tag][-1])
    if isinstance(body, dict) and body.get("replace") is True:
        # CREATE OR REPLACE changes what exists, as ALTER (or DROP and CREATE) would:
        # a deny on alter (alter_view, alter_trigger …) covers it.
        made = [k for k in acc.kinds - before if k.startswith("create_")]
        acc.kinds.update(("alter", "replace", *(f"alter_{k[7:]}" for k in made)))


# An extension's install or update script runs SQL hoopy never sees.
_SCRIPT_STATEMENTS = frozenset({"CreateExtensionStmt", "AlterExtensionStmt"})


def _utility(acc: _Acc, kinds: tuple[str, ...], body: Json) -> None:
    acc.kinds.update(kinds)
    for name in _TARGET_FIELDS:
        _add_target(acc, body.get(name))
    _walk_fields(acc, body, skip=_TARGET_FIELDS)


def _kinds_for(verb: str) -> Callable[[str], tuple[str, str]]:
    return lambda objtype: (verb, f"{verb}_{_obj(objtype)}")


_create = _kinds_for("create")
_alter = _kinds_for("alter")
_drop = _kinds_for("drop")


def _select(acc: _Acc, body: Json) -> None:
    into = body.get("intoClause")
    if into:  # SELECT INTO creates a table
        acc.kinds.update(("create", "create_table"))
        _add_target(acc, into.get("rel"))
    else:
        acc.kinds.add("select")
    _walk(acc, {"SelectStmt": {k: v for k, v in body.items() if k != "intoClause"}})


def _walked(tag: str) -> StmtHandler:
    """Statements the tree walk classifies by itself (DML, EXECUTE), also when nested."""
    return lambda acc, body: _walk(acc, {tag: body})


def _explain(acc: _Acc, body: Json) -> None:
    """EXPLAIN runs its statement only with ANALYZE (whatever its value, to stay literal-free)."""
    acc.kinds.add("explain")
    inner = acc.child()
    _statement(inner, body["query"])
    options = (_untag(o) for o in body.get("options", []))
    if any(o.get("defname") == "analyze" for o in options):
        acc.merge(inner)
    else:
        acc.absorb_refs(inner)


def _runs_query(verb: str) -> StmtHandler:
    """PREPARE / DECLARE: classified as the statement they will run."""

    def handler(acc: _Acc, body: Json) -> None:
        acc.kinds.add(verb)
        _statement(acc, body["query"])

    return handler


def _copy(acc: _Acc, body: Json) -> None:
    acc.kinds.add("copy")
    rel = body.get("relation")
    if rel:
        (acc.written if body.get("is_from") else acc.read).add(_rv_name(rel))
    if body.get("query"):
        _statement(acc, body["query"])
    if body.get("is_program"):
        acc.opaque.add("copy_program")
    elif body.get("filename") is not None:  # a file on the database server
        acc.opaque.add("copy_file")
    _walk_fields(acc, body, skip=("relation", "query"))


def _create_table_as(acc: _Acc, body: Json) -> None:
    acc.kinds.update(_create(body.get("objtype", "OBJECT_TABLE")))
    _add_target(acc, (body.get("into") or {}).get("rel"))
    _walk_fields(acc, body, skip=("into",))


def _create_view(acc: _Acc, body: Json) -> None:
    acc.kinds.update(("create", "create_view"))
    _add_target(acc, body.get("view"))
    inner = _described(acc, body.get("query"))
    # A simple view is auto-updatable: writes through it land in its tables, which
    # policy would see only as writes to the view.  Creating one counts as writing them.
    acc.written |= inner.read | inner.written


def _described(acc: _Acc, tree: Json) -> _Acc:
    """Statements stored for later (view queries, rule conditions): their tables, not
    kinds; returns what they touch."""
    inner = acc.child()
    _walk(inner, tree)
    acc.absorb_refs(inner)
    return inner


def _create_function(acc: _Acc, body: Json) -> None:
    kind = "create_procedure" if body.get("is_procedure") else "create_function"
    acc.kinds.update(("create", kind))
    acc.opaque.add(kind)  # the body is code: never walked, never trusted


def _call(acc: _Acc, body: Json) -> None:
    acc.kinds.add("call")
    _walk(acc, {"FuncCall": body.get("funccall") or {}})


def _drop_stmt(acc: _Acc, body: Json) -> None:
    objtype = body.get("removeType")
    acc.kinds.update(_drop(objtype))
    for obj in body.get("objects", []):
        _add_name_list(acc, objtype, obj)


def _relations(verb: str) -> StmtHandler:
    """TRUNCATE / LOCK: every listed relation is a target."""

    def handler(acc: _Acc, body: Json) -> None:
        acc.kinds.add(verb)
        for rv in body.get("relations", []):
            _add_target(acc, rv)

    return handler


def _vacuum(acc: _Acc, body: Json) -> None:
    vacuum = bool(body.get("is_vacuumcmd"))
    acc.kinds.add("vacuum" if vacuum else "analyze")
    for rel in body.get("rels", []):
        rv = _untag(_untag(rel).get("relation"))
        if isinstance(rv, dict) and "relname" in rv:
            (acc.written if vacuum else acc.read).add(_rv_name(rv))


def _alter_table(acc: _Acc, body: Json) -> None:
    acc.kinds.update(_alter(body.get("objtype")))
    _add_target(acc, body.get("relation"))
    _walk_fields(acc, body, skip=("relation",))


def _alter_object(type_field: str) -> StmtHandler:
    """ALTER … SET SCHEMA / OWNER TO / DEPENDS ON, ALTER FUNCTION, ALTER TABLE ALL IN …"""

    def handler(acc: _Acc, body: Json) -> None:
        acc.kinds.update(_alter(body.get(type_field)))
        _add_target(acc, body.get("relation"))
        _walk_fields(acc, body, skip=("relation",))

    return handler


def _rename(acc: _Acc, body: Json) -> None:
    objtype = body.get("renameType")
    if objtype in ("OBJECT_COLUMN", "OBJECT_ATTRIBUTE"):
        objtype = body.get("relationType")
    elif objtype == "OBJECT_TABCONSTRAINT":
        objtype = "OBJECT_TABLE"
    acc.kinds.update(_alter(objtype))
    _add_target(acc, body.get("relation"))
    _walk_fields(acc, body, skip=("relation",))


def _function_name(arg: Json) -> str:
    """A function named by a DefElem argument or an ObjectWithArgs."""
    arg = _untag(arg)
    if isinstance(arg, dict):
        names = arg.get("names") or arg.get("objname")
        if isinstance(names, list):
            return _dotted(names)
        if "sval" in arg:
            return str(arg["sval"])
    if isinstance(arg, list):
        return _dotted(arg)
    return ""


def _define(acc: _Acc, body: Json) -> None:
    acc.kinds.update(_create(body.get("kind")))
    for item in body.get("definition") or []:
        opt = _untag(item)
        if isinstance(opt, dict) and opt.get("defname") in _FUNCTION_OPTIONS:
            _calls(acc, _function_name(opt.get("arg")))


def _implicit_functions(acc: _Acc, tag: str, body: Json) -> None:
    """Functions a CREATE CAST / OPERATOR CLASS / CONVERSION makes the server call."""
    named: list[Json] = []
    if tag == "CreateCastStmt":
        named.append(body.get("func"))
    elif tag == "CreateOpClassStmt":
        named += [
            _untag(i).get("name") for i in body.get("items") or [] if _untag(i).get("itemtype") == 2
        ]
    elif tag == "CreateConversionStmt":
        named.append(body.get("func_name"))
    for n in named:
        _calls(acc, _function_name(n) if n else "")


def _create_role(acc: _Acc, body: Json) -> None:
    acc.kinds.update(("create", "create_role"))
    extra = {"ROLESTMT_USER": "create_user", "ROLESTMT_GROUP": "create_group"}
    if body.get("stmt_type") in extra:
        acc.kinds.add(extra[body["stmt_type"]])


def _grant(acc: _Acc, body: Json) -> None:
    acc.kinds.add("grant" if body.get("is_grant") else "revoke")
    if body.get("objtype") not in _RELATION_OBJECTS:
        return
    if body.get("targtype") == "ACL_TARGET_OBJECT":
        for rv in body.get("objects", []):
            _add_target(acc, rv)
    elif body.get("targtype") == "ACL_TARGET_ALL_IN_SCHEMA":  # every table of each schema
        for schema in body.get("objects", []):
            if isinstance(schema, dict) and "String" in schema:
                acc.written.add(f"{schema['String']['sval']}.*")


def _default_privileges(acc: _Acc, body: Json) -> None:
    acc.kinds.update(("alter", "alter_default_privileges"))
    acc.kinds.add("grant" if (body.get("action") or {}).get("is_grant") else "revoke")


def _set(acc: _Acc, body: Json) -> None:
    acc.kinds.add("set")
    name = body.get("name")
    if name in ("role", "session_authorization", "search_path"):
        acc.kinds.add(f"set_{name}")
    _walk_fields(acc, body)


def _transaction(acc: _Acc, body: Json) -> None:
    kind = str(body.get("kind", "")).removeprefix("TRANS_STMT_")
    acc.kinds.add(_TRANSACTION_KINDS.get(kind, "transaction"))


def _fetch(acc: _Acc, body: Json) -> None:
    acc.kinds.add("move" if body.get("ismove") else "fetch")


def _labelled(verb: str) -> StmtHandler:
    """COMMENT ON / SECURITY LABEL ON an object."""

    def handler(acc: _Acc, body: Json) -> None:
        acc.kinds.add(verb)
        _add_name_list(acc, body.get("objtype"), body.get("object"))

    return handler


def _create_schema(acc: _Acc, body: Json) -> None:
    acc.kinds.update(("create", "create_schema"))
    for element in body.get("schemaElts", []):
        _statement(acc, element)


def _create_foreign_table(acc: _Acc, body: Json) -> None:
    acc.kinds.update(("create", "create_foreign_table"))
    base = body.get("base") or {}
    _add_target(acc, base.get("relation"))
    _walk_fields(acc, base, skip=("relation",))


def _create_trigger(kind: str) -> StmtHandler:
    """CREATE [EVENT] TRIGGER: runs an existing function later, named in `functions`."""

    def handler(acc: _Acc, body: Json) -> None:
        acc.kinds.update(("create", kind))
        _add_target(acc, body.get("relation"))
        _calls(acc, _dotted(body.get("funcname", [])))
        _walk_fields(acc, body, skip=("relation", "funcname"))

    return handler


def _create_rule(acc: _Acc, body: Json) -> None:
    """A rule's actions run, unseen, whenever its event happens on the table: the rule
    counts as those actions (their kinds and writes), like PREPARE."""
    acc.kinds.update(("create", "create_rule"))
    _add_target(acc, body.get("relation"))
    _described(acc, body.get("whereClause"))
    for action in body.get("actions") or []:
        _statement(acc, action)


def _opaque(kind: str) -> StmtHandler:
    """Code whose effect cannot be seen: DO blocks, LOAD (a library's initialiser runs)."""

    def handler(acc: _Acc, body: Json) -> None:
        acc.kinds.add(kind)
        acc.opaque.add(kind)

    return handler


_STATEMENTS: dict[str, StmtHandler] = {
    "SelectStmt": _select,
    **{tag: _walked(tag) for tag in (*_DML_KINDS, "ExecuteStmt")},
    "ExplainStmt": _explain,
    "PrepareStmt": _runs_query("prepare"),
    "DeclareCursorStmt": _runs_query("declare"),
    "CopyStmt": _copy,
    "CreateTableAsStmt": _create_table_as,
    "ViewStmt": _create_view,
    "CreateFunctionStmt": _create_function,
    "DoStmt": _opaque("do"),
    "CallStmt": _call,
    "DropStmt": _drop_stmt,
    "TruncateStmt": _relations("truncate"),
    "LockStmt": _relations("lock"),
    "VacuumStmt": _vacuum,
    "AlterTableStmt": _alter_table,
    "AlterObjectSchemaStmt": _alter_object("objectType"),
    "AlterOwnerStmt": _alter_object("objectType"),
    "AlterObjectDependsStmt": _alter_object("objectType"),
    "AlterFunctionStmt": _alter_object("objtype"),
    "AlterTableMoveAllStmt": _alter_object("objtype"),
    "RenameStmt": _rename,
    "DefineStmt": _define,
    "CreateRoleStmt": _create_role,
    "GrantStmt": _grant,
    "GrantRoleStmt": _grant,
    "AlterDefaultPrivilegesStmt": _default_privileges,
    "VariableSetStmt": _set,
    "TransactionStmt": _transaction,
    "FetchStmt": _fetch,
    "CommentStmt": _labelled("comment"),
    "SecLabelStmt": _labelled("security_label"),
    "CreateSchemaStmt": _create_schema,
    "CreateForeignTableStmt": _create_foreign_table,
    "CreateTrigStmt": _create_trigger("create_trigger"),
    "CreateEventTrigStmt": _create_trigger("create_event_trigger"),
    "RuleStmt": _create_rule,
    "LoadStmt": _opaque("load"),
}
