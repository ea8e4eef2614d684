"""The namespace model (namespaces.py) and the masking tracker reading it: which names
an SQL text changes, and what a portal name may hold for a message forwarded now."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.protocols.postgres.classify import classify
from hoopy.protocols.postgres.messages import FieldDescription
from hoopy.protocols.postgres.namespaces import (
    ALL,
    MAX_CANDIDATES,
    Changes,
    Namespaces,
    changes_of,
    executed_names,
    stale_execute,
)
from hoopy.protocols.postgres.results import UNKNOWN_STATEMENT, ResultTracker


def _cmds(sql: str) -> tuple:
    return classify(sql, "c", {})


@pytest.mark.parametrize(
    ("sql", "statements", "portals", "declared"),
    [
        ("prepare a as select 1", {"a"}, set(), set()),
        ("deallocate a", {"a"}, set(), set()),
        ("deallocate prepare a", {"a"}, set(), set()),
        ("deallocate all", {ALL}, set(), set()),
        ("discard all", {ALL}, {ALL}, set()),
        ("close p", set(), {"p"}, set()),
        ("close all", set(), {ALL}, set()),
        ("declare p cursor with hold for select 1", set(), set(), {"p"}),
        ('close "P q"; declare "P q" cursor for select 1', set(), {"P q"}, {"P q"}),
        # names as the server reads them: unescaped, quoted "all" is a name, not ALL
        ('prepare U&"\\0061b" as select 1', {"ab"}, set(), set()),
        ('deallocate "all"', {"all"}, set(), set()),
        ("deallocate prepare all", {ALL}, set(), set()),
        ('close "all"', set(), {"all"}, set()),
        ("/* c */ DISCARD /* d */ ALL", {ALL}, {ALL}, set()),
    ],
)
def test_changes_of_reads_every_form(
    sql: str, statements: set[str], portals: set[str], declared: set[str]
) -> None:
    assert changes_of(_cmds(sql)) == Changes(
        frozenset(statements), frozenset(portals), frozenset(declared)
    )


def test_a_changing_text_that_cannot_be_read_changes_every_name() -> None:
    (cmd,) = _cmds("prepare a as select 1")
    unreadable = replace(cmd, text="prepare a as select (")
    assert changes_of((unreadable,)) == Changes(frozenset({ALL}), frozenset({ALL}), frozenset())


def test_texts_that_change_no_name_change_nothing() -> None:
    assert changes_of(_cmds("select 1; discard plans; fetch all from c")) == Changes()
    assert changes_of(_cmds("select 1")) is None


def test_executed_names_are_found_anywhere_in_a_statement() -> None:
    assert executed_names("execute a(1)") == ("a",)
    assert executed_names("explain analyze execute b") == ("b",)
    assert executed_names("create table t as execute c") == ("c",)
    assert executed_names("select 1") == ()
    assert executed_names("select (") is None


def test_an_execute_after_a_redefinition_in_the_same_text_is_found() -> None:
    assert stale_execute(_cmds("deallocate a; prepare a as select 2; execute a")) == "a"
    assert stale_execute(_cmds("discard all; execute b")) == "b"
    assert stale_execute(_cmds("deallocate a; execute b")) is None
    assert stale_execute(_cmds("execute a; deallocate a")) is None


def test_a_bind_in_this_batch_decides_and_earlier_ones_are_all_candidates() -> None:
    ns = Namespaces()
    first = ns.bind("p", None)
    assert ns.portal("p") == [first]
    ns.sent += 1  # a Sync: the Bind may still fail
    second = ns.bind("p", None)
    assert ns.portal("p") == [second]  # same batch: if it fails, so does the message
    ns.sent += 1
    assert ns.portal("p") == [first, second]
    ns.failed(second)  # 42P03: the name keeps what it held
    assert ns.portal("p") == [first]
    third = ns.bind("p", None)
    ns.sent += 1
    ns.bound(third)  # BindComplete: nothing before it is left
    assert ns.portal("p") == [third]


def test_transaction_end_drops_portals_but_declared_cursors() -> None:
    ns = Namespaces()
    ns.bind("", None)
    ns.declare("c")
    ns.sent += 1
    later = ns.bind("q", None)  # forwarded after the batch that ends
    ns.done += 1
    ns.idle()
    assert ns.portal("") == [] and len(ns.portal("c")) == 1 and ns.portal("q") == [later]
    ns.close(ALL)
    assert ns.portals == {}


def test_the_special_count_follows_every_way_a_binding_goes() -> None:
    ns = Namespaces()
    change = Changes(frozenset({"a"}))
    ns.bind("p", change)
    ns.bind("q", None, (("a", ()),))
    assert ns.special == 2
    for _ in range(MAX_CANDIDATES + 2):  # merged into one unknown candidate: kept
        ns.sent += 1
        ns.bind("p", None)
    assert any(b.changes and "a" in b.changes.statements for b in ns.portals["p"])
    ns.close("p")
    ns.sent += 1
    ns.done = ns.sent
    ns.idle()
    assert ns.special == 0 and ns.portals == {}


# ---- the masking tracker on the shared model ------------------------------------------

F = (FieldDescription("x", 0, 0, 25, -1, -1, 0),)


def _described(t: ResultTracker, name: str, mask: str) -> None:
    t.parse(name, mask)
    t.describe("S", name)
    t.sync()
    t.simple_ack()
    t.row_description(F)
    t.ready()


def test_a_refused_bind_leaves_the_portal_it_replaced() -> None:
    t = ResultTracker()
    _described(t, "s", "secret")
    _described(t, "h", "harmless")
    t.bind("q", "s", ())
    t.sync()
    t.simple_ack()  # BindComplete
    t.ready("T")
    t.bind("q", "h", ())  # 42P03: q exists
    t.sync()
    t.error()
    t.ready("E")
    t.execute("q")
    assert t.rows().statement.mask == "secret"


def test_a_later_batch_does_not_trust_an_unanswered_bind() -> None:
    t = ResultTracker()
    _described(t, "h", "harmless")
    t.bind("c", "h", ())
    t.sync()
    t.execute("c")  # the Bind may fail (a cursor c exists): unknown
    assert t.rows().statement.mask is UNKNOWN_STATEMENT


def test_the_unnamed_portal_outlives_a_sync_inside_a_transaction() -> None:
    t = ResultTracker()
    _described(t, "s", "m")
    t.bind("", "s", ())
    t.sync()
    t.simple_ack()
    t.ready("T")
    t.execute("")
    assert t.rows().statement.mask == "m"
    t.complete()
    t.sync()
    t.ready("I")
    t.execute("")  # the transaction ended: so did the portal
    assert t.rows().statement.mask is UNKNOWN_STATEMENT


def test_forget_voids_a_parse_still_to_be_acknowledged() -> None:
    t = ResultTracker()
    t.parse("foo", "old")
    t.sync()
    t.forget("foo")  # e.g. DEALLOCATE foo; PREPARE foo … sent behind it
    t.simple_ack()
    t.ready()
    t.bind("", "foo", ())
    t.execute("")
    assert t.rows().statement.mask is UNKNOWN_STATEMENT


def test_a_fetch_statement_trusts_only_a_fresh_portal_description() -> None:
    t = ResultTracker()
    t.parse("f", "fetch-mask", dependent="fetch")
    t.describe("S", "f")
    t.sync()
    t.simple_ack()
    t.row_description(F)  # the cursor's columns then: not what the portal will read
    t.ready()
    t.bind("", "f", ())
    t.execute("")
    assert t.rows().fields is None
    t.complete()
    t.sync()
    t.ready()
    t.bind("", "f", ())
    t.describe("P", "")
    t.close("P", "other")  # a cursor closed between: c may be another one now
    t.execute("")
    assert t.rows().statement.mask is UNKNOWN_STATEMENT


# ---- the fast path's count never loses a binding that must be looked at --------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["bind", "special", "sync", "ready", "close", "close_all", "declare"])
        | st.sampled_from(["bound", "failed", "apply"]),
        st.sampled_from(["", "p", "q"]),
        st.integers(0, 20),
    ),
    max_size=60,
)


@given(OPS)
@settings(max_examples=300, deadline=None)
def test_the_special_count_matches_the_bindings_kept(ops: list[tuple[str, str, int]]) -> None:
    ns = Namespaces()
    made = []
    for op, name, k in ops:
        if op == "bind":
            made.append(ns.bind(name, None))
        elif op == "special":
            made.append(ns.bind(name, Changes(frozenset({"a"})), (("a", ()),)))
        elif op == "sync":
            ns.sent += 1
        elif op == "ready" and ns.done < ns.sent:
            ns.done += 1
            ns.idle()
        elif op == "close":
            ns.close(name)
        elif op == "close_all":
            ns.close(ALL)
        elif op == "declare":
            ns.declare(name)
        elif op in ("bound", "failed") and made:
            (ns.bound if op == "bound" else ns.failed)(made[k % len(made)])
        elif op == "apply":
            ns.apply(Changes(portals=frozenset({name}), declared=frozenset({name})))
        kept = [b for found in ns.portals.values() for b in found]
        assert ns.special == sum(1 for b in kept if b.special)
        assert all(found for found in ns.portals.values())
