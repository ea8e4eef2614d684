"""Prepared-statement and portal names that change under hoopy (issues 15 §1, 17 §1).

Each test is an attack from a raw protocol client: it swaps what a statement or portal
name holds (Close, Parse, SQL PREPARE/DEALLOCATE/DISCARD/DECLARE/CLOSE, a Bind the
server refuses) between hoopy's check and the server's use of the name, across Syncs
and transactions.  Without the fixes a DELETE ran without its approval or masked
values came back in clear; with them the attack is refused or its rows are masked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hoopy.protocols.postgres import codec as pg
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_hostile import raw_connect
from tests.integration.test_pg_psql import app_count
from tests.integration.test_pg_statements import _decide_in_thread, login

DELETE = "DELETE FROM nm_probe WHERE id <= 5"
COUNT = "select count(*) from nm_probe"


def _run(backend: Backend, sql: str) -> None:
    async def go() -> None:
        conn = await backend.app_conn()
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture
def probe(backend: Backend) -> Iterator[None]:
    _run(
        backend,
        "drop table if exists nm_probe; create table nm_probe (id int);"
        "insert into nm_probe select generate_series(1, 10)",
    )
    yield
    # a failed test may leave a session holding a lock on it: never wait for that
    _run(backend, "set lock_timeout = '2s'; drop table if exists nm_probe")


def _session(h: Hoopy, token: str) -> object:
    s = raw_connect(h)
    login(s, token)
    return s


def _answers(s: object, count: int) -> bytes:
    """Read until `count` ReadyForQuery messages (any transaction status) arrived."""
    got = b""
    while sum(got.count(pg.ready_for_query(x)) for x in "ITE") < count:
        chunk = s.recv(65536)  # type: ignore[attr-defined]
        assert chunk, got
        got += chunk
    return got


def _send(s: object, messages: list[bytes]) -> bytes:
    """Send the messages in one write and read one answer per Sync or Query."""
    s.sendall(b"".join(messages))  # type: ignore[attr-defined]
    return _answers(s, sum(1 for m in messages if m[:1] in (b"S", b"Q")))


def _play(s: object, rounds: list[list[bytes]]) -> bytes:
    return b"".join(_send(s, r) for r in rounds)


# ---- issue 15 §1: a portal of `EXECUTE name` runs what name holds when it executes ----

P = pg.parse
SYNC = pg.sync()

CHANGED = b"changed after portal"

EXECUTE_SWAPS = {
    # the reproduction: Close and re-Parse the name under a bound portal
    "close-and-reparse": [
        [P("s1", "SELECT 1"), SYNC],
        [P("s2", "EXECUTE s1"), SYNC],
        [pg.bind("P", "s2"), pg.close("S", "s1"), P("s1", DELETE), pg.execute("P"), SYNC],
    ],
    # inside a transaction, the portal lives across batches; SQL DEALLOCATE swaps it
    "deallocate-across-batches": [
        [pg.query("BEGIN")],
        [P("s1", "SELECT 1"), SYNC],
        [P("s2", "EXECUTE s1"), pg.bind("P", "s2"), SYNC],
        [pg.query("DEALLOCATE s1")],
        [P("s1", DELETE), SYNC],
        [pg.execute("P"), SYNC],
        [pg.query("COMMIT")],
    ],
    # the same with DEALLOCATE ALL, and the Execute inside a run of
    # messages (Bind, Execute, Execute) that a session without masking relays whole
    "deallocate-all-execute-in-a-run": [
        [pg.query("BEGIN")],
        [P("s1", "SELECT 1"), SYNC],
        [P("s2", "EXECUTE s1"), pg.bind("P", "s2"), SYNC],
        [pg.query("DEALLOCATE ALL")],
        [P("s1", DELETE), P("o", "SELECT 2"), SYNC],
        [pg.execute("P"), pg.bind("X", "o"), pg.execute("X"), SYNC],
        [pg.query("COMMIT")],
    ],
    # EXECUTE inside another statement of a Parse
    "explain-analyze-execute": [
        [P("s1", "SELECT 1"), SYNC],
        [P("s2", "EXPLAIN ANALYZE EXECUTE s1"), SYNC],
        [pg.bind("P", "s2"), pg.close("S", "s1"), P("s1", DELETE), pg.execute("P"), SYNC],
    ],
    # the swap through a Parse of DEALLOCATE, run between the Bind and the Execute
    "deallocate-in-a-parse": [
        [pg.query("BEGIN")],
        [P("s1", "SELECT 1"), SYNC],
        [P("s2", "EXECUTE s1"), pg.bind("P", "s2"), SYNC],
        [P("d", "DEALLOCATE s1"), SYNC],
        [pg.bind("D", "d"), pg.execute("D"), P("s1", DELETE), pg.execute("P"), SYNC],
        [pg.query("COMMIT")],
    ],
}

NESTED = [  # EXECUTE of a statement that is an EXECUTE: two names resolved at run time
    [P("s0", "SELECT 1"), SYNC],
    [P("s1", "EXECUTE s0"), SYNC],
    [pg.close("S", "s0"), P("s0", DELETE), SYNC],
]


@pytest.mark.parametrize("route", sorted(EXECUTE_SWAPS))
def test_a_swapped_execute_target_never_runs_unapproved(
    hoopy: Hoopy, backend: Backend, probe: None, route: str
) -> None:
    s = _session(hoopy, hoopy.token("names-agent"))
    reply = _play(s, EXECUTE_SWAPS[route])
    assert app_count(backend, COUNT) == 10, "the DELETE ran without an approval"
    assert b"42501" in reply and CHANGED in reply
    assert b"DELETE 5" not in reply
    s.sendall(pg.query("SELECT 'usable'"))  # type: ignore[attr-defined]
    assert b"usable" in _answers(s, 1)
    s.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("run", "asks"),
    [
        ([pg.query("EXECUTE s1")], False),
        # a Bind of s1 runs what s0 holds: the DELETE, which needs an approval
        ([pg.bind("", "s1"), pg.execute(""), SYNC], True),
        ([P("s2", "EXECUTE s1"), pg.bind("", "s2"), pg.execute(""), SYNC], False),
    ],
)
def test_an_execute_of_an_execute_is_refused(
    hoopy: Hoopy, backend: Backend, probe: None, run: list[bytes], asks: bool
) -> None:
    s = _session(hoopy, hoopy.token("names-agent"))
    t = _decide_in_thread(hoopy, DELETE, "deny") if asks else None
    reply = _play(s, [*NESTED, run])
    if t is not None:
        t.join()
    assert app_count(backend, COUNT) == 10, "the DELETE ran without an approval"
    assert b"42501" in reply
    s.close()  # type: ignore[attr-defined]


def test_an_approved_prepare_does_not_approve_a_bound_execute(
    hoopy: Hoopy, backend: Backend, probe: None
) -> None:
    """Inside a transaction: a portal of EXECUTE t9 bound over SELECT 1; t9 is then
    deallocated and PREPAREd as a DELETE (approved as a PREPARE, which runs nothing).
    The portal's Execute would run the DELETE: refused."""
    s = _session(hoopy, hoopy.token("names-agent"))
    _play(
        s,
        [
            [pg.query("BEGIN")],
            [pg.query("PREPARE t9 AS SELECT 1")],
            [P("e", "EXECUTE t9"), pg.bind("P", "e"), SYNC],
            [pg.query("DEALLOCATE t9")],
        ],
    )
    t = _decide_in_thread(hoopy, f"PREPARE t9 AS {DELETE}", "approve")
    _play(s, [[pg.query(f"PREPARE t9 AS {DELETE}")]])
    t.join()
    reply = _play(s, [[pg.execute("P"), SYNC], [pg.query("COMMIT")]])
    assert b"42501" in reply and CHANGED in reply
    assert app_count(backend, COUNT) == 10
    s.close()  # type: ignore[attr-defined]


def test_an_execute_in_a_parse_still_runs_what_was_checked(
    hoopy: Hoopy, backend: Backend, probe: None
) -> None:
    """Drivers send EXECUTE through the extended protocol (asyncpg's fetch): with the
    name unchanged, its portal runs, and its recording says what EXECUTE ran."""
    s = _session(hoopy, hoopy.token("names-run-agent"))
    reply = _play(
        s,
        [
            [pg.query("PREPARE r1 AS SELECT count(*) FROM nm_probe")],
            [P("", "EXECUTE r1"), pg.bind("", ""), pg.execute(""), SYNC],
            [pg.query("BEGIN")],
            [P("e", "EXECUTE r1"), pg.bind("P", "e"), SYNC],
            [pg.execute("P"), SYNC],
            [pg.query("COMMIT")],
        ],
    )
    assert reply.count(b"\x00\x0210") == 2 and b"42501" not in reply
    s.close()  # type: ignore[attr-defined]
    sid = hoopy.cli("sessions", "list", "--subject", "names-run-agent").stdout.split()[0]
    events = hoopy.cli("sessions", "show", sid).stdout
    assert '"executes": {"r1": ["PREPARE r1 AS SELECT count(*) FROM nm_probe"]}' in events


def test_execute_after_a_redefinition_in_the_same_text_is_refused(
    hoopy: Hoopy, backend: Backend, probe: None
) -> None:
    """EXECUTE is classified against what its name held before the text; a DEALLOCATE
    and PREPARE earlier in the same text change that."""
    s = _session(hoopy, hoopy.token("names-agent"))
    _play(s, [[pg.query("PREPARE t1 AS SELECT 1")]])
    reply = _play(s, [[pg.query("DEALLOCATE t1; PREPARE t1 AS SELECT 2; EXECUTE t1")]])
    assert b"42501" in reply and b"redefines t1 in the same text" in reply
    s.close()  # type: ignore[attr-defined]


def test_prepare_run_from_a_portal_makes_the_name_unknown(
    hoopy: Hoopy, backend: Backend, probe: None
) -> None:
    """A Parse of DEALLOCATE and one of PREPARE … DELETE (approved as a PREPARE) run at
    their Executes, after a re-Parse of the name that hoopy saw answered: each Bind of
    the name must still be checked against the DELETE, or refused."""
    s = _session(hoopy, hoopy.token("names-agent"))
    _play(
        s,
        [
            [P("d", "DEALLOCATE g1"), P("p", f"PREPARE g1 AS {DELETE}"), SYNC],
            [P("g1", "SELECT 1"), SYNC],
        ],
    )
    t = _decide_in_thread(hoopy, f"PREPARE g1 AS {DELETE}", "approve")
    _play(s, [[pg.bind("D", "d"), pg.execute("D"), pg.bind("Q", "p"), pg.execute("Q"), SYNC]])
    t.join()
    assert app_count(backend, COUNT) == 10  # prepared, not run
    reply = _play(s, [[pg.bind("", "g1"), pg.execute(""), SYNC]])
    assert b"42501" in reply and b"not known to hoopy" in reply
    assert app_count(backend, COUNT) == 10
    s.close()  # type: ignore[attr-defined]


# ---- issue 17 §1: masking follows what names hold ----------------------------------------

PEOPLE = """
drop table if exists nm_people;
create table nm_people (id int, name text, email text, ssn text);
insert into nm_people values (1, 'Ada', 'ada.hidden@example.com', '078-05-1120'),
                             (2, 'Alan', 'alan.hidden@example.org', '219-09-9999');
"""
LEAKS = (b"ada.hidden", b"ADA.HIDDEN", b"alan.hidden", b"ALAN.HIDDEN", b"078-05", b"219-09")

MASK_POLICY = """\
mode: enforce
rules:
  - name: read
    effect: allow
    match: {groups: [readers], connectors: [app-db]}
  - name: hide
    effect: mask
    columns: ["nm_people.email", "*.ssn"]
    detectors: [credit_card]
    match: {groups: [readers], connectors: [app-db]}
"""

HARMLESS = "select upper(name) as x, name from nm_people order by id"
SECRET = "select upper(email) as x, email from nm_people order by id"


@pytest.fixture(scope="module")
def masked_names(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    _run(backend, PEOPLE)
    h = start_hoopy(tmp_path_factory.mktemp("names"), backend, policies={"mask": MASK_POLICY})
    try:
        yield h
    finally:
        stop_hoopy(h)
        _run(backend, "drop table if exists nm_people")


def _clean(reply: bytes) -> None:
    for leak in LEAKS:
        assert leak not in reply, f"leaked {leak!r}"


def _reader(h: Hoopy) -> object:
    return _session(h, h.token("names-reader", groups=("readers",)))


ROW = [pg.bind("", "foo"), pg.describe("P", ""), pg.execute(""), SYNC]

NAME_SWAPS = {
    # issue 17: DEALLOCATE and PREPARE of the name in one Query
    "deallocate-prepare": [
        [P("foo", HARMLESS), pg.describe("S", "foo"), *ROW],
        [pg.query(f"deallocate foo; prepare foo as {SECRET}")],
        ROW,
    ],
    "discard-all-prepare": [
        [P("foo", HARMLESS), pg.describe("S", "foo"), *ROW],
        [pg.query("discard all")],
        [pg.query(f"prepare foo as {SECRET}")],
        [pg.bind("", "foo"), pg.execute(""), SYNC],
    ],
    # the same swap from Parses of DEALLOCATE and PREPARE, run at their Executes
    "deallocate-prepare-in-parses": [
        [P("foo", HARMLESS), pg.describe("S", "foo"), SYNC],
        [P("d", "deallocate foo"), P("p", f"prepare foo as {SECRET}"), SYNC],
        [pg.bind("D", "d"), pg.execute("D"), pg.bind("Q", "p"), pg.execute("Q"), SYNC],
        [pg.bind("", "foo"), pg.execute(""), SYNC],
    ],
    # … where hoopy saw the name parsed again after the Parses of DEALLOCATE/PREPARE
    "reparse-between": [
        [P("d", "deallocate foo"), P("p", f"prepare foo as {SECRET}"), SYNC],
        [P("foo", HARMLESS), pg.describe("S", "foo"), SYNC],
        [pg.bind("D", "d"), pg.execute("D"), pg.bind("Q", "p"), pg.execute("Q"), SYNC],
        [pg.bind("", "foo"), pg.execute(""), SYNC],
    ],
    # issue 17: inside BEGIN, CLOSE and DECLARE of the portal's name in a Query
    "close-declare-portal": [
        [pg.query("begin")],
        [P("h", HARMLESS), pg.bind("p", "h"), pg.describe("P", "p"), SYNC],
        [pg.query(f"close p; declare p cursor for {SECRET}")],
        [pg.execute("p"), SYNC],
        [pg.query("commit")],
    ],
    # … the same from Parses of CLOSE and DECLARE
    "close-declare-in-parses": [
        [pg.query("begin")],
        [P("h", HARMLESS), pg.bind("p", "h"), pg.describe("P", "p"), SYNC],
        [P("c", "close p"), P("k", f"declare p cursor for {SECRET}"), SYNC],
        [pg.bind("C", "c"), pg.execute("C"), pg.bind("K", "k"), pg.execute("K"), SYNC],
        [pg.execute("p"), SYNC],
        [pg.query("commit")],
    ],
    # issue 17: a Bind the server refuses (42P03: a WITH HOLD cursor has the name)
    "refused-bind-over-a-cursor": [
        [pg.query(f"declare c cursor with hold for {SECRET}")],
        [P("h", HARMLESS), pg.describe("S", "h"), SYNC],
        [pg.bind("c", "h"), pg.describe("P", "c"), pg.execute("c"), SYNC],
        [pg.execute("c"), SYNC],
        [pg.query("close c")],
    ],
    # … with the Execute pipelined behind the refused Bind's Sync
    "refused-bind-pipelined": [
        [pg.query(f"declare c cursor with hold for {SECRET}")],
        [P("h", HARMLESS), pg.describe("S", "h"), SYNC],
        [pg.bind("c", "h"), pg.describe("P", "c"), SYNC, pg.execute("c"), SYNC],
        [pg.query("close c")],
    ],
    # a refused Bind over a portal hoopy tracked: after ROLLBACK TO SAVEPOINT the
    # first portal runs on, and is masked as itself
    "refused-rebind-of-a-portal": [
        [pg.query("begin")],
        [P("s", SECRET), pg.bind("q", "s"), pg.describe("P", "q"), SYNC],
        [pg.query("savepoint a")],
        [P("h", HARMLESS), pg.describe("S", "h"), pg.bind("q", "h"), SYNC],
        [pg.query("rollback to savepoint a")],
        [pg.execute("q"), SYNC],
        [pg.query("rollback")],
    ],
    # a Parse of FETCH reads whatever cursor has the name when its portal runs
    "fetch-from-a-redeclared-cursor": [
        [pg.query("begin")],
        [pg.query(f"declare c cursor for {HARMLESS}")],
        [P("f", "fetch all from c"), pg.describe("S", "f"), SYNC],
        [pg.query(f"close c; declare c cursor for {SECRET}")],
        [pg.bind("", "f"), pg.execute(""), SYNC],
        [pg.query("commit")],
    ],
    "fetch-portal-bound-before-the-swap": [
        [pg.query("begin")],
        [pg.query(f"declare c cursor for {HARMLESS}")],
        [P("f", "fetch all from c"), pg.bind("F", "f"), pg.describe("P", "F"), SYNC],
        [pg.query(f"close c; declare c cursor for {SECRET}")],
        [pg.execute("F"), SYNC],
        [pg.query("commit")],
    ],
    # a Parse of EXECUTE is described with what its name held at the Parse; a swap of
    # the name before the Bind makes that description wrong
    "execute-described-before-a-swap": [
        [pg.query(f"prepare q2 as {HARMLESS}")],
        [P("e", "execute q2"), pg.describe("S", "e"), SYNC],
        [pg.query(f"deallocate q2; prepare q2 as {SECRET}")],
        [pg.bind("", "e"), pg.execute(""), SYNC],
        [pg.query("deallocate q2")],
    ],
    # issue 15's swap under a bound EXECUTE portal, in a masked session
    "execute-portal-swapped": [
        [P("s1", HARMLESS), SYNC],
        [P("s2", "execute s1"), pg.describe("S", "s2"), SYNC],
        [
            pg.bind("P", "s2"),
            pg.describe("P", "P"),
            pg.close("S", "s1"),
            P("s1", SECRET),
            pg.execute("P"),
            SYNC,
        ],
    ],
    # quoted names are names too
    "quoted-name": [
        [P("Foo", HARMLESS), pg.describe("S", "Foo"), SYNC],
        [pg.query(f'deallocate "Foo"; prepare "Foo" as {SECRET}')],
        [pg.bind("", "Foo"), pg.execute(""), SYNC],
    ],
}


@pytest.mark.parametrize("route", sorted(NAME_SWAPS))
def test_masking_follows_what_a_name_holds(masked_names: Hoopy, route: str) -> None:
    s = _reader(masked_names)
    reply = _play(s, NAME_SWAPS[route])
    _clean(reply)
    s.sendall(pg.query(SECRET))  # type: ignore[attr-defined]
    _clean(_answers(s, 1))  # the session goes on, masking as ever
    s.close()  # type: ignore[attr-defined]


def test_the_harmless_statements_show_their_values(masked_names: Hoopy) -> None:
    """The swaps above are masked because of the swap, not because everything is."""
    s = _reader(masked_names)
    reply = _play(s, [[P("foo", HARMLESS), pg.describe("S", "foo"), *ROW]])
    assert b"ADA" in reply and b"Alan" in reply
    s.close()  # type: ignore[attr-defined]


def test_an_execute_through_the_extended_protocol_shows_its_values(masked_names: Hoopy) -> None:
    """asyncpg sends EXECUTE as Parse, Describe, then Bind and Execute: with the name
    unchanged its description holds, and only the masked columns are masked."""
    s = _reader(masked_names)
    reply = _play(
        s,
        [
            [pg.query("prepare q3 as select name, email from nm_people order by id")],
            [P("", "execute q3"), pg.describe("S", ""), SYNC],
            [pg.bind("", ""), pg.execute(""), SYNC],
        ],
    )
    assert b"Ada" in reply and b"Alan" in reply
    _clean(reply)
    s.close()  # type: ignore[attr-defined]


def test_an_unnamed_portal_inside_begin_survives_a_sync(masked_names: Hoopy) -> None:
    """The server keeps the unnamed portal across Syncs inside a transaction: its rows
    are the statement's, masked as such (not all NULL)."""
    s = _reader(masked_names)
    reply = _play(
        s,
        [
            [pg.query("begin")],
            [P("", HARMLESS), pg.bind("", ""), pg.describe("P", ""), SYNC],
            [pg.execute(""), SYNC],
            [pg.query("commit")],
        ],
    )
    assert b"ADA" in reply and b"Alan" in reply and b"E\0" not in reply
    s.close()  # type: ignore[attr-defined]


def test_the_recording_holds_only_masked_rows(masked_names: Hoopy) -> None:
    """What the agent saw is what was recorded: nothing in clear there either."""
    for route in ("deallocate-prepare", "close-declare-portal", "refused-bind-over-a-cursor"):
        s = _reader(masked_names)
        _play(s, NAME_SWAPS[route])
        s.close()  # type: ignore[attr-defined]
    for f in (masked_names.folder / "recordings").rglob("*"):
        if f.is_file():
            _clean(f.read_bytes())


# ---- issue 15 (lower): a Query during a simple-query COPY FROM STDIN --------------------


def test_a_query_during_copy_from_stdin_is_not_recorded_as_run(
    hoopy: Hoopy, backend: Backend, probe: None
) -> None:
    """The server reads only copy data during COPY FROM STDIN: a Query then is discarded
    (and fails the COPY).  hoopy must not record it as allowed and run: it ends the
    session instead, and the recording says so."""
    s = _session(hoopy, hoopy.token("names-copy-agent"))
    s.sendall(pg.query("COPY nm_probe FROM STDIN"))  # type: ignore[attr-defined]
    assert s.recv(65536).startswith(b"G")  # type: ignore[attr-defined]  # CopyInResponse
    s.sendall(pg.copy_data(b"77\n") + pg.query("INSERT INTO nm_probe VALUES (99)"))  # type: ignore[attr-defined]
    reply = b""
    while True:
        try:
            chunk = s.recv(65536)  # type: ignore[attr-defined]
        except OSError:
            break
        if not chunk:
            break
        reply += chunk
    assert b"08P01" in reply and b"COPY FROM STDIN" in reply
    assert app_count(backend, "select count(*) from nm_probe where id in (77, 99)") == 0
    sid = hoopy.cli("sessions", "list", "--subject", "names-copy-agent").stdout.split()[0]
    events = hoopy.cli("sessions", "show", sid).stdout
    assert "INSERT INTO nm_probe VALUES (99)" not in events


def test_binds_behind_a_name_changing_execute_in_one_run_are_checked_in_order(
    hoopy: Hoopy, backend: Backend, probe: None
) -> None:
    """Sessions without masking relay runs of Bind/Execute whole: a Bind after an
    Execute that deallocates and re-prepares its name must be checked after it."""
    s = _session(hoopy, hoopy.token("names-agent"))
    _play(
        s,
        [
            [pg.query("BEGIN")],
            [P("d", "DEALLOCATE g2"), P("p", f"PREPARE g2 AS {DELETE}"), SYNC],
            [P("g2", "SELECT 1"), SYNC],
        ],
    )
    t = _decide_in_thread(hoopy, f"PREPARE g2 AS {DELETE}", "approve")
    _play(s, [[pg.bind("Pp", "p"), SYNC]])  # approved as a PREPARE: it runs nothing yet
    t.join()
    reply = _play(
        s,
        [
            [
                pg.bind("D", "d"),
                pg.execute("D"),
                pg.execute("Pp"),
                pg.bind("Q", "g2"),
                pg.execute("Q"),
                SYNC,
            ],
            [pg.query("COMMIT")],
        ],
    )
    assert app_count(backend, COUNT) == 10, "the DELETE ran without an approval"
    assert b"42501" in reply
    s.close()  # type: ignore[attr-defined]
