"""Masking decisions without a database: writes of untraceable data, stale plans, data
errors, notification payloads (maskplan.Planner over an in-memory catalog, maskwire)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hoopy.policy import MaskRule, Masks
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.classify import classify
from hoopy.protocols.postgres.lineagescope import QualName, Relation
from hoopy.protocols.postgres.maskplan import MaskSettings, Planner, StatementMasks
from hoopy.protocols.postgres.maskwire import (
    Unattributed,
    mask_message_fields,
    notification_response,
)

PII = Masks((MaskRule("pii", columns=("customers.email",), detectors=("email",)),))
DETECT = Masks((MaskRule("scan", detectors=("email",)),))
BUILTIN = {"upper", "set_config", "pg_notify", "lo_open", "loread", "convert_to", "get_byte"}


class FakeCatalog:
    """The parts of catalog.Catalog the planner uses, over two tables."""

    generation = 0
    rels = {
        "customers": Relation("public", "customers", "r", ("id", "name", "email")),
        "orders": Relation("public", "orders", "r", ("id", "customer_id", "note")),
        "pg_stats": Relation("pg_catalog", "pg_stats", "r", ("histogram_bounds",)),
    }

    async def prefetch(self, relations: Any, functions: Any) -> None:
        return None

    def relation(self, name: QualName) -> Relation | None:
        return self.rels.get(name[1]) if name[0] in (None, "public", "pg_catalog") else None

    def function_is_builtin(self, name: QualName) -> bool:
        return name[0] in (None, "pg_catalog") and name[1] in BUILTIN

    def type_is_builtin(self, name: QualName) -> bool:
        return name[0] == "pg_catalog" or name[1] == "text"

    def operator_is_builtin(self, name: QualName) -> bool:
        return name[1] in {"||", "=", "+", ">"}


def planner() -> Planner:
    return Planner(FakeCatalog(), MaskSettings(b"k" * 32))  # type: ignore[arg-type]


def stores(sql: str, p: Planner | None = None) -> str:
    cmd = classify(sql, "db")[0]
    return asyncio.run((p or planner()).stores_masked(cmd, PII))


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO orders VALUES (1, 2, leak(1))",
        "INSERT INTO orders VALUES (1, 2, 2 ### 0)",
        "INSERT INTO orders SELECT id, 1, leak(id) FROM orders",
        "CREATE TABLE t (a, b) AS EXECUTE p",
        "SELECT set_config('x', leak(1), false)",
        "SELECT pg_notify('c', leak(1))",
        "SELECT set_config('x', histogram_bounds::text, false) FROM pg_stats",
        "INSERT INTO orders SELECT 1, 2, histogram_bounds::text FROM pg_stats",
    ],
)
def test_writes_hoopy_cannot_show_clean_are_refused(sql: str) -> None:
    assert stores(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO orders VALUES (1, 2, upper('x')), (DEFAULT, 3, NULL)",
        "INSERT INTO orders SELECT id, 1, note FROM orders",
        "UPDATE orders SET note = DEFAULT",
        "SELECT set_config('x', 'plain', false)",
        "DELETE FROM orders WHERE note = 'x'",
    ],
)
def test_writes_of_traced_clean_data_are_allowed(sql: str) -> None:
    assert stores(sql) == ""


def test_inside_a_schema_change_every_function_counts() -> None:
    p = planner()
    p.catalog_dirty = True
    assert stores("INSERT INTO orders VALUES (1, 2, upper('x'))", p)
    assert stores("INSERT INTO orders VALUES (1, 2, 'x')", p) == ""


def test_statements_planned_before_names_changed_are_planned_again() -> None:
    p = planner()
    cmd = classify("SELECT upper(name) FROM customers", "db")[0]

    async def run() -> StatementMasks:
        sm = await p.statement(cmd, PII)
        assert sm.trusted and sm.lineage == [frozenset({("public.customers", "name")})]
        assert not await p.refresh(sm) and not sm.stale
        p.names_untrusted = True  # SET search_path = …
        assert sm.stale
        assert await p.refresh(sm)
        return sm

    sm = asyncio.run(run())
    assert not sm.trusted and sm.by_oid and not sm.stale


def test_a_statement_reads_masked_columns_in_where_and_functions() -> None:
    p = planner()

    def reads(sql: str) -> bool:
        return asyncio.run(p.statement(classify(sql, "db")[0], PII)).reads_masked

    assert reads("SELECT 1 FROM customers WHERE get_byte('\\x00', id) = 0")
    assert reads("SELECT id FROM orders WHERE leak(id) > '0'")
    assert not reads("SELECT get_byte('\\x00', id) FROM orders")


def _sm(sql: str, reads: bool, masks: Masks = PII) -> StatementMasks:
    return StatementMasks(classify(sql, "db")[0], masks, lineage=[frozenset()], reads_masked=reads)


def test_data_errors_of_statements_reading_masked_columns_are_withheld() -> None:
    sql = "SELECT get_byte('\\x00'::bytea, 1000000000 + id) FROM customers"
    fields = {"S": "ERROR", "C": "2202E", "M": "index 1078051120 out of valid range, 0..0"}
    fields["F"] = "varlena.c"  # the server's own code composed it
    out = mask_message_fields(fields, _sm(sql, True))
    assert out["C"] == "2202E" and "1078051120" not in out["M"]
    assert "withheld by hoopy" in out["M"] and "SQLSTATE 2202E" in out["M"]
    assert mask_message_fields(fields, _sm(sql, False)) is fields  # nothing masked read
    chr_error = {"C": "54000", "M": "requested character too large for encoding: 2001120"}
    chr_error["F"] = "oracle_compat.c"
    assert "2001120" not in mask_message_fields(chr_error, _sm(sql, True))["M"]
    lo = {"C": "42704", "M": "large object 219099999 does not exist", "F": "inv_api.c"}
    masked_lo = mask_message_fields(lo, _sm(sql, True))["M"]  # withheld: not class 22, still
    assert "219099999" not in masked_lo and "SQLSTATE 42704" in masked_lo
    quote_trick = {"C": "42704", "M": 'unrecognized configuration parameter "x"alice.secret"'}
    quote_trick["F"] = "guc.c"
    assert "alice" not in mask_message_fields(quote_trick, _sm(sql, True))["M"]
    typo = {"C": "42703", "M": 'column "emial" does not exist', "F": "parse_relation.c"}
    assert mask_message_fields(typo, _sm("SELECT emial FROM customers", True)) is typo


def test_notification_payloads_are_masked_whole_by_column_rules() -> None:
    p = planner()
    assert p.mask_untraced_text(PII, "alice@example.com 078-05-1120") == "****"
    assert p.mask_untraced_text(PII, "") == ""
    assert p.mask_untraced_text(DETECT, "mail alice@example.com now") == "mail **** now"
    assert p.counts[("pii", "column")] == 1 and p.counts[("scan", "email")] == 1


def test_a_masked_notification_is_a_valid_message() -> None:
    raw = notification_response(4242, "pii", "****")
    conn = pg.ClientConnection()
    prelude = pg.frame(b"R", b"\0\0\0\0") + pg.ready_for_query("I")
    conn.receive_data(prelude + raw)
    events = conn.events()
    ev = events[-1]
    assert isinstance(ev, pg.NotificationResponse)
    assert (ev.pid, ev.channel, ev.payload, ev.raw) == (4242, "pii", "****", raw)


RAISED = {  # RAISE EXCEPTION USING MESSAGE = email, ERRCODE = '23505', COLUMN = email …
    "S": "ERROR", "V": "ERROR", "C": "23505", "M": "alice@example.com", "D": "alice@example.com",
    "H": "alice@example.com", "W": "PL/pgSQL function f(integer) line 3 at RAISE",
    "c": "alice@example.com", "n": "alice@example.com", "t": "alice@example.com",
    "s": "alice@example.com", "d": "alice@example.com", "q": "alice@example.com", "p": "1",
    "F": "pl_exec.c", "L": "3907", "R": "exec_stmt_raise",
}  # fmt: skip


@pytest.mark.parametrize("code", ["23505", "42501", "01001", "22000", "00000", "P0001", "42601"])
@pytest.mark.parametrize("severity", ["NOTICE", "WARNING", "ERROR", "INFO"])
def test_messages_of_code_hoopy_cannot_see_are_withheld_whole(code: str, severity: str) -> None:
    fields = {**RAISED, "C": code, "S": severity, "V": severity}
    for sm in (_sm("SELECT f(1)", True), _sm("SELECT 1", False), Unattributed(PII)):
        out = mask_message_fields(fields, sm)
        assert "alice" not in str(out)
        assert out["C"] == code and out["S"] == severity and "withheld by hoopy" in out["M"]
        assert set(out) <= {"S", "V", "C", "M", "F", "L", "R", "P"}
    # without column rules the detectors scan every field, the names ones too
    out = mask_message_fields(fields, _sm("SELECT f(1)", True, DETECT))
    assert "alice" not in str(out)


def test_the_servers_own_messages_keep_their_names() -> None:
    unique = {
        "S": "ERROR", "C": "23505", "F": "nbtinsert.c", "R": "_bt_check_unique",
        "M": 'duplicate key value violates unique constraint "kv_pkey"',
        "D": "Key (k)=(alice@example.com) already exists.", "s": "public", "t": "kv",
        "n": "kv_pkey",
    }  # fmt: skip
    out = mask_message_fields(unique, _sm("INSERT INTO kv SELECT f(1)", True))
    assert out["M"] == unique["M"] and out["n"] == "kv_pkey" and out["t"] == "kv"
    assert out["D"] == "Key (k)=(****) already exists."
    own = {**unique, "D": "Key (k)=(mine) already exists."}
    mine = mask_message_fields(own, _sm("INSERT INTO kv VALUES ('mine')", True))
    assert mine["D"] == own["D"]  # the value the agent wrote itself
    # a message hoopy cannot place (a deferred constraint at a Sync): key values masked
    plain = {**unique, "D": "Key (k)=(secret) already exists."}
    later = mask_message_fields(plain, Unattributed(PII))
    assert later["D"] == "Key (k)=(****) already exists." and later["M"] == unique["M"]
    parse_error = {"S": "ERROR", "C": "42703", "F": "parse_relation.c", "M": 'column "x" …'}
    assert mask_message_fields(parse_error, Unattributed(PII)) is parse_error


def test_internal_queries_and_json_contexts_do_not_carry_values() -> None:
    dyn = {
        "S": "ERROR", "C": "42601", "F": "scan.l", "M": 'syntax error at or near "@"',
        "q": "SELECT alice@example.com", "p": "13",
        "W": "PL/pgSQL function f(integer) line 1 at EXECUTE",
    }  # fmt: skip
    out = mask_message_fields(dyn, _sm("SELECT f(1)", True))
    assert "q" not in out and "p" not in out and "alice" not in str(out)
    json_err = {
        "S": "ERROR", "C": "22P02", "F": "jsonfuncs.c",
        "M": "invalid input syntax for type json", 'D': 'Token "alice" is invalid.',
        "W": "JSON data, line 1: {alice...",
    }  # fmt: skip
    out = mask_message_fields(json_err, _sm("SELECT email::json FROM customers", True))
    assert "alice" not in str(out)
