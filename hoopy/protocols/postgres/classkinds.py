"""The statement kinds classification names, and the tables that map libpg_query's
node tags and ObjectType names to them (classify.py).

Separate from the walk because it is data the rest of hoopy reads too: `hoopy check`
(config.py) validates `sql.statements` against STATEMENT_KINDS and object_kind(), so a
kind the classifier never emits is one no rule could be written for.
"""

from __future__ import annotations

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


def _obj(objtype: str | None) -> str:
    name = (objtype or "OBJECT_UNKNOWN").removeprefix("OBJECT_")
    return _OBJECT_NAMES.get(name, name.lower())


def object_kind(verb: str, objtype: str | None) -> str:
    """The kind of `verb` (create, alter, drop) on an object of this ObjectType name."""
    return f"{verb}_{_obj(objtype)}"
