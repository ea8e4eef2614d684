"""SQL text → protocol-neutral `Command` records, one per statement (libpg_query).

Theory of operation
-------------------
libpg_query (PostgreSQL's own grammar) parses the text; we take its JSON parse tree
(pgquery.parse_json + `json.loads`: ~5x faster than building Python node objects) and
walk it iteratively (no recursion limit to hit) collecting:

* kinds — the statement's lower-case verb, plus a specific kind for DDL
  ("create" + "create_table") and the verbs of any statement it runs: data-modifying
  CTEs, EXPLAIN ANALYZE, PREPARE, DECLARE, COPY (query), EXECUTE of a known prepared
  statement, MERGE actions, INSERT … ON CONFLICT DO UPDATE. Sub-selects add no kind: an
  INSERT … SELECT is an insert, not also a select.
* tables_read / tables_written — every RangeVar, written when it is the target of a
  modification (DML targets, DDL objects, TRUNCATE, LOCK, …). A bare name that resolves to a
  CTE in scope is not a table; CTE bodies are walked with PostgreSQL's scoping rules.
* functions — every FuncCall, anywhere in the tree, plus CALL and trigger targets.
* opaque — effects that cannot be seen statically (DO, function bodies, COPY PROGRAM / server
  files, LOAD, EXECUTE of an unknown prepared statement, built-ins that run SQL given as
  text such as query_to_xml (`dynamic_sql`), statements we do not know).

The JSON tree: a tagged node is `{"TypeName": {fields}}`; fields typed as a specific struct
(e.g. `InsertStmt.relation`, `SelectStmt.larg`) appear untagged, so an untagged dict with a
"relname" is a RangeVar and one with a "withClause" opens a CTE scope.

Classification never looks at literal constants nor at positions in the text: it walks
the tree sqltree.shape() leaves without them, which is also the key `Classifier`
(classcache.py) caches results by: exact by construction.  Results that depend on
session state (EXECUTE of a prepared statement) are never cached.  Long texts are
classified in a worker process (classworker.py), off the event loop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hoopy.policy import Command
from hoopy.protocols.postgres import pgquery
from hoopy.protocols.postgres.sqltree import shape_of

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
# Object types whose DROP / COMMENT / GRANT names a relation.
_RELATION_OBJECTS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX"}
    | {"OBJECT_SEQUENCE", "OBJECT_FOREIGN_TABLE"}
)
# Object types named as [schema.]table.object: the table is all but the last name.
_TABLE_CHILD_OBJECTS = frozenset(
    {"OBJECT_TRIGGER", "OBJECT_RULE", "OBJECT_POLICY", "OBJECT_COLUMN", "OBJECT_TABCONSTRAINT"}
)


def _pairs(spec: str) -> dict[str, str]:
    """'Key=value Key2=value2 …' (any whitespace) → dict: keeps the big tables compact."""
    return dict(item.split("=", 1) for item in spec.split())


# ObjectType names whose lower-cased form is not the SQL spelling.
_OBJECT_NAMES = _pairs("""
    MATVIEW=materialized_view FDW=foreign_data_wrapper FOREIGN_SERVER=server
    TSCONFIGURATION=text_search_configuration TSDICTIONARY=text_search_dictionary
    TSPARSER=text_search_parser TSTEMPLATE=text_search_template OPCLASS=operator_class
    OPFAMILY=operator_family AMOP=operator_family AMPROC=operator_family
    TABCONSTRAINT=constraint DOMCONSTRAINT=constraint LARGEOBJECT=large_object
    STATISTIC_EXT=statistics DEFACL=default_privileges PUBLICATION_NAMESPACE=publication
    PUBLICATION_REL=publication PARAMETER_ACL=parameter
""")
_TRANSACTION_KINDS = _pairs("""
    BEGIN=begin START=begin COMMIT=commit ROLLBACK=rollback SAVEPOINT=savepoint
    RELEASE=release ROLLBACK_TO=rollback PREPARE=prepare_transaction
    COMMIT_PREPARED=commit_prepared ROLLBACK_PREPARED=rollback_prepared
""")
_MERGE_KINDS = _pairs("CMD_UPDATE=update CMD_DELETE=delete CMD_INSERT=insert")
_DML_KINDS = _pairs("InsertStmt=insert UpdateStmt=update DeleteStmt=delete MergeStmt=merge")
# Utility statements fully described by one kind (plus its verb: "create_table" → "create");
# their target relation, if any, sits in one of _TARGET_FIELDS and counts as written.
_TARGET_FIELDS = ("relation", "view", "table", "sequence", "typevar")
_UTILITY_KINDS = _pairs("""
    VariableShowStmt=show DiscardStmt=discard ListenStmt=listen NotifyStmt=notify
    UnlistenStmt=unlisten CheckPointStmt=checkpoint ClosePortalStmt=close
    DeallocateStmt=deallocate ReassignOwnedStmt=reassign ClusterStmt=cluster
    ReindexStmt=reindex ConstraintsSetStmt=set_constraints CreateStmt=create_table
    IndexStmt=create_index RefreshMatViewStmt=refresh_materialized_view
    ImportForeignSchemaStmt=import_foreign_schema CreatedbStmt=create_database
    DropdbStmt=drop_database AlterDatabaseStmt=alter_database
    AlterDatabaseSetStmt=alter_database AlterDatabaseRefreshCollStmt=alter_database
    AlterSystemStmt=alter_system CreateExtensionStmt=create_extension
    AlterExtensionStmt=alter_extension AlterExtensionContentsStmt=alter_extension
    AlterRoleStmt=alter_role AlterRoleSetStmt=alter_role DropRoleStmt=drop_role
    DropOwnedStmt=drop_owned CreateSeqStmt=create_sequence AlterSeqStmt=alter_sequence
    CreateDomainStmt=create_domain AlterDomainStmt=alter_domain CreateEnumStmt=create_type
    CreateRangeStmt=create_type CompositeTypeStmt=create_type AlterEnumStmt=alter_type
    AlterTypeStmt=alter_type CreateCastStmt=create_cast CreateConversionStmt=create_conversion
    CreateOpClassStmt=create_operator_class CreateOpFamilyStmt=create_operator_family
    AlterOpFamilyStmt=alter_operator_family AlterOperatorStmt=alter_operator
    CreateTransformStmt=create_transform CreateAmStmt=create_access_method
    CreatePLangStmt=create_language CreateFdwStmt=create_foreign_data_wrapper
    AlterFdwStmt=alter_foreign_data_wrapper CreateForeignServerStmt=create_server
    AlterForeignServerStmt=alter_server CreateUserMappingStmt=create_user_mapping
    AlterUserMappingStmt=alter_user_mapping DropUserMappingStmt=drop_user_mapping
    AlterEventTrigStmt=alter_event_trigger CreatePolicyStmt=create_policy
    AlterPolicyStmt=alter_policy CreatePublicationStmt=create_publication
    AlterPublicationStmt=alter_publication CreateSubscriptionStmt=create_subscription
    AlterSubscriptionStmt=alter_subscription DropSubscriptionStmt=drop_subscription
    CreateTableSpaceStmt=create_tablespace DropTableSpaceStmt=drop_tablespace
    AlterTableSpaceOptionsStmt=alter_tablespace CreateStatsStmt=create_statistics
    AlterStatsStmt=alter_statistics AlterCollationStmt=alter_collation
    AlterTSConfigurationStmt=alter_text_search_configuration
    AlterTSDictionaryStmt=alter_text_search_dictionary
""")
_UTILITY = {tag: tuple(dict.fromkeys((k.split("_")[0], k))) for tag, k in _UTILITY_KINDS.items()}
# Kinds the statement handlers below emit literally (the rest come from the tables above,
# and `verb_object` kinds from the parse tree's ObjectType: see STATEMENT_KINDS).
_HANDLER_KINDS = frozenset({
    "select", "explain", "prepare", "declare", "execute", "copy", "create", "alter", "drop",
    "replace", "create_table", "create_view", "create_function", "create_procedure", "do",
    "call", "truncate", "lock", "vacuum", "analyze", "create_role", "create_user",
    "create_group", "grant", "revoke", "alter_default_privileges", "set", "set_role",
    "set_session_authorization", "set_search_path", "transaction", "move", "fetch", "comment",
    "security_label", "create_schema", "create_foreign_table", "create_trigger",
    "create_event_trigger", "create_rule", "load", "unknown",
})  # fmt: skip
# Opaque kinds (Command.opaque): effects no rule on tables or functions can see; an allow
# rule covers one only by naming it in `statements`.
OPAQUE_KINDS = frozenset({
    "do", "load", "execute", "create_function", "create_procedure", "copy_program",
    "copy_file", "dynamic_sql", "read_statistics", "read_activity", "signal_backend",
    "unknown", "create_extension", "alter_extension",
})  # fmt: skip
# `create_<object>`, `alter_<object>`, `drop_<object>`: the object named by ObjectType
# (see object_kind), for every object PostgreSQL has.
OBJECT_KIND_VERBS = ("create", "alter", "drop")
# Every statement kind (and opaque kind) classification can emit but the `verb_object`
# ones: hoopy check reads this list, so a kind it rejects is one no rule could match.
STATEMENT_KINDS: frozenset[str] = frozenset(
    _HANDLER_KINDS
    | OPAQUE_KINDS
    | {k for t in (_DML_KINDS, _MERGE_KINDS, _TRANSACTION_KINDS, _UTILITY_KINDS)
       for k in t.values()}
    | set(OBJECT_KIND_VERBS)
)  # fmt: skip


class SqlParseError(Exception):
    """PostgreSQL's parser rejected the text (or it cannot be analysed safely).

    `position` is the 0-based character index of the error in the text, when known.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


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


def _obj(objtype: str | None) -> str:
    name = (objtype or "OBJECT_UNKNOWN").removeprefix("OBJECT_")
    return _OBJECT_NAMES.get(name, name.lower())


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


# Built-ins that run SQL handed to them as text, or read whole tables or schemas named
# by a value: what they run is a literal, invisible to classification, so a call is
# `dynamic_sql` (refused unless an allow rule names that kind), schema-qualified or not.
_DYNAMIC_SQL_FUNCTIONS = frozenset(
    {f"{what}_to_{form}" for what in ("query", "table", "schema", "database")
     for form in ("xml", "xmlschema", "xml_and_xmlschema")}
    | {"ts_stat", "ts_rewrite", "dblink", "dblink_exec", "dblink_open", "dblink_send_query"}
    # tablefunc, a trusted extension a database owner may create
    | {"crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby"}
)  # fmt: skip

# Built-ins that act on, or read, other sessions of the database role every agent
# shares (another agent's backend, hoopy's own connections, their live SQL text):
# refused unless an allow rule names the kind.
_OTHER_SESSIONS_FUNCTIONS = {
    "pg_terminate_backend": "signal_backend",
    "pg_cancel_backend": "signal_backend",
    "pg_signal_backend": "signal_backend",
    "pg_stat_get_activity": "read_activity",
    "pg_stat_get_backend_activity": "read_activity",
    "pg_stat_statements": "read_activity",
}
_ACTIVITY_VIEWS = frozenset(
    name
    for bare in ("pg_stat_activity", "pg_stat_statements", "pg_stat_statements_info")
    for name in (bare, f"pg_catalog.{bare}", f"public.{bare}")
)

# Built-in SQL functions that call another built-in: calling one calls both, so a deny
# on pg_sleep covers pg_sleep_for('5 min').
_CALLS_TOO = {"pg_sleep_for": "pg_sleep", "pg_sleep_until": "pg_sleep"}


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


# ---------------------------------------------------------------- statements

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


def object_kind(verb: str, objtype: str | None) -> str:
    """The kind of `verb` (create, alter, drop) on an object of this ObjectType name."""
    return f"{verb}_{_obj(objtype)}"


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


# Options of CREATE OPERATOR / AGGREGATE / TYPE … that name a function the server will
# call later, implicitly (`SELECT ### 'x'` runs it): recorded as called, so a deny on
# that function applies to the definition.
_FUNCTION_OPTIONS = frozenset(
    {"function", "procedure", "sfunc", "finalfunc", "combinefunc", "serialfunc"}
    | {"deserialfunc", "msfunc", "minvfunc", "mfinalfunc", "restrict", "join", "input"}
    | {"output", "receive", "send", "typmod_in", "typmod_out", "analyze", "subscript"}
    | {"canonical", "subtype_diff", "sfunc1"}  # sfunc1: the old CREATE AGGREGATE spelling
)


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


# ---------------------------------------------------------------- entry points


def _libpg_error(e: Exception) -> SqlParseError:
    if isinstance(e, pgquery.ParseError):
        return SqlParseError(e.message, e.position)
    if isinstance(e, UnicodeError):
        return SqlParseError("statement is not valid UTF-8 text")
    if isinstance(e, RecursionError):
        return SqlParseError("statement is nested too deeply to analyse")
    return SqlParseError("statement could not be analysed")


def _check_text(sql: str) -> None:
    # libpg_query reads a C string: text after a NUL would go unseen by the classifier.
    nul = sql.find("\x00")
    if nul >= 0:
        raise SqlParseError("statement contains a NUL character", nul)


def _split(sql: str) -> tuple[str, ...]:
    try:
        return pgquery.split(sql)
    except (pgquery.ParseError, UnicodeError) as e:
        raise _libpg_error(e) from None


def _normalize(sql: str) -> str:
    try:
        return pgquery.normalize(sql)
    except (pgquery.ParseError, UnicodeError) as e:
        raise _libpg_error(e) from None


def _shape(sql: str) -> tuple[str, bool]:
    """The literal-free tree classification reads (see sqltree.py): also the cache key;
    and whether it is plain (sqltree.shape_of)."""
    _check_text(sql)
    try:
        return shape_of(sql)
    except (pgquery.ParseError, UnicodeError, RecursionError, MemoryError) as e:
        raise _libpg_error(e) from None


def _parse(sql: str, tree: str | None = None) -> tuple[list[Json], tuple[str, ...]]:
    """Statement nodes and their source texts; raises SqlParseError, never returns half."""
    if tree is None:
        tree = _shape(sql)[0]
    try:
        stmts = [s["stmt"] for s in json.loads(tree).get("stmts", [])]
    except (RecursionError, ValueError) as e:
        raise _libpg_error(e) from None
    texts = _split(sql)
    if len(texts) != len(stmts):
        raise SqlParseError("statement boundaries could not be determined")
    return stmts, texts


_SETTINGS_VIEWS = frozenset({"pg_settings", "pg_catalog.pg_settings"})
# Catalogs holding copies of other tables' values (planner statistics).
STATISTICS_CATALOGS = (
    *("pg_stats", "pg_statistic", "pg_stats_ext", "pg_stats_ext_exprs"),
    "pg_statistic_ext_data",
)
_STATISTICS_VIEWS = frozenset(
    name for bare in STATISTICS_CATALOGS for name in (bare, f"pg_catalog.{bare}")
)


def _command(node: Json, text: str, connector: str, prepared: Prepared | None) -> _Built:
    acc = _Acc(prepared)
    try:
        _statement(acc, node)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        # A tree shape this module did not expect: refuse rather than guess.
        raise SqlParseError(f"statement could not be analysed ({type(e).__name__})") from None
    if not acc.written.isdisjoint(_SETTINGS_VIEWS):
        acc.functions.add("set_config")  # what an UPDATE of pg_settings runs
    if not acc.read.isdisjoint(_STATISTICS_VIEWS):
        # Planner statistics hold other tables' values (most common values, histogram
        # bounds), for whichever table a WHERE picks: a read no table rule can see.
        acc.kinds.add("read_statistics")
        acc.opaque.add("read_statistics")
    if not acc.read.isdisjoint(_ACTIVITY_VIEWS):
        acc.kinds.add("read_activity")
        acc.opaque.add("read_activity")
    kinds, written = frozenset(acc.kinds), frozenset(acc.written)
    read, functions = frozenset(acc.read - acc.written), frozenset(acc.functions)
    maybe, opaque = frozenset(acc.maybe_functions - acc.functions), frozenset(acc.opaque)
    cmd = Command(
        protocol="postgres",
        connector=connector,
        text=text,
        kinds=kinds,
        tables_read=read,
        tables_written=written,
        functions=functions,
        maybe_functions=maybe,
        opaque=opaque,
        fingerprint=_fingerprint(text, (kinds, read, written, functions, maybe, opaque)),
    )
    return _Built(cmd, acc.cacheable)


# Statements longer than this get no fingerprint (decisions and approvals are then keyed
# by their exact text): normalize() is superlinear in a long target list.
FINGERPRINT_CHARS = 16384


def _fingerprint(text: str, classified: tuple[frozenset[str], ...]) -> str:
    """The literal-free text approvers see (normalize()), plus a digest of the
    classification, so that two statements with one fingerprint are always classified
    alike (sessions cache decisions by it, approvals are reused by it), whatever
    normalize() chooses to replace."""
    if len(text) > FINGERPRINT_CHARS:
        return ""
    digest = hashlib.blake2b(repr([sorted(f) for f in classified]).encode(), digest_size=16)
    return f"{_normalize(text)}\n-- classified {digest.hexdigest()}"


@dataclass(frozen=True)
class _Built:
    command: Command
    cacheable: bool


def _classify(
    sql: str, connector: str, prepared: Prepared | None, tree: str | None = None
) -> tuple[tuple[Command, ...], bool]:
    """The Commands of `sql` and whether they may be cached (none runs session state);
    `tree`: its shape, when already computed."""
    stmts, texts = _parse(sql, tree)
    built = [_command(n, t, connector, prepared) for n, t in zip(stmts, texts, strict=True)]
    return tuple(b.command for b in built), all(b.cacheable for b in built)


def classify(sql: str, connector: str, prepared: Prepared | None = None) -> tuple[Command, ...]:
    """One Command per statement of `sql`; () for empty or comment-only text.

    `prepared` maps prepared-statement names (SQL PREPARE and protocol-level Parse share
    one namespace) to their classification, to resolve EXECUTE.
    """
    return _classify(sql, connector, prepared)[0]
