"""Built-in functions and catalog views whose effect no table rule can see
(classify.py): SQL run from text (`dynamic_sql`), other sessions signalled or watched,
planner statistics read, settings changed, functions a definition makes the server call.

A catalogue, kept apart from the tree walk: it grows with what PostgreSQL and its
common extensions ship, while the walk changes only with the grammar.
"""

from __future__ import annotations

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


# Options of CREATE OPERATOR / AGGREGATE / TYPE … that name a function the server will
# call later, implicitly (`SELECT ### 'x'` runs it): recorded as called, so a deny on
# that function applies to the definition.
_FUNCTION_OPTIONS = frozenset(
    {"function", "procedure", "sfunc", "finalfunc", "combinefunc", "serialfunc"}
    | {"deserialfunc", "msfunc", "minvfunc", "mfinalfunc", "restrict", "join", "input"}
    | {"output", "receive", "send", "typmod_in", "typmod_out", "analyze", "subscript"}
    | {"canonical", "subtype_diff", "sfunc1"}  # sfunc1: the old CREATE AGGREGATE spelling
)


_SETTINGS_VIEWS = frozenset({"pg_settings", "pg_catalog.pg_settings"})
# Catalogs holding copies of other tables' values (planner statistics).
STATISTICS_CATALOGS = (
    *("pg_stats", "pg_statistic", "pg_stats_ext", "pg_stats_ext_exprs"),
    "pg_statistic_ext_data",
)
_STATISTICS_VIEWS = frozenset(
    name for bare in STATISTICS_CATALOGS for name in (bare, f"pg_catalog.{bare}")
)
