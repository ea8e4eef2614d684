"""The cached-statement lane (cmdlane.py, StatementCheck._seen): a statement hoopy has
classified and decided before goes without a classification or a Command copy, and
still through `Session.check_now`: a denial, an expired token, a statement that needs
an approval and a recording that cannot be written stop it as on the full path.

The relay runs as in relaydigest.session (real codec, classifier, policy, session and
recorder; in-memory transports).  Both builds (HOOPY_PURE=1 or not) run these tests;
test_relay_builds.py compares their bytes and recordings.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from hoopy.errors import AuthFailed, RecordingFailed
from hoopy.policy import Command
from hoopy.protocols.postgres import bodies, cmdlane, sqlsecrets
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.classcache import Classifier
from hoopy.protocols.postgres.searchpath import SearchPath
from hoopy.protocols.postgres.statementcheck import StatementCheck
from hoopy.recorder import read_events
from tests.protocols.postgres import framedigest, relaydigest
from tests.protocols.postgres.test_relay_recording import ANSWER, ended_with, fill_disk

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"
POLICY = (
    "rules:\n  - name: all\n    effect: allow\n    match: {groups: [g]}\n"
    "  - name: no-secrets\n    effect: deny\n    match: {sql: {tables: [secrets]}}\n"
    "  - name: ask-orders\n    effect: require_approval\n"
    "    match: {sql: {tables: [orders]}}\n    approvers: [boss]\n"
)


@pytest.fixture
async def relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[bytes], list[bytes]]:
    monkeypatch.setattr(relaydigest, "POLICY", POLICY)
    return relaydigest.started(tmp_path)


def commands(conn: Any) -> list[dict[str, Any]]:
    conn.session.log.flush()
    return [e for e in read_events(conn.session.log.path) if e["type"] == "command"]


def run(conn: Any, sql: str) -> None:
    conn._agent_data(pg.query(sql))
    if conn.batches_done < conn.batches_sent and not conn._ended.done():
        conn._backend_data(ANSWER)


def lane_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the full path's classification fails the test: what runs went by
    the lane."""

    def full_path(*args: Any) -> Any:
        raise AssertionError("the statement went the full path")

    monkeypatch.setattr(StatementCheck, "_commands", full_path)


# ---- the compiled steps, byte by byte ---------------------------------------------------
def codec() -> pg.ServerConnection:
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "a"}))
    conn.next_event()
    conn.start_session()
    return conn


def test_lone_query_takes_one_whole_query_and_nothing_else() -> None:
    q = pg.query("select 1")
    conn = codec()
    conn.receive_data(q)
    assert conn.lone_query() == (q, "select 1") and conn.buffered() == 0
    for data in (
        q[:-1],  # incomplete
        q + pg.sync(),  # not alone
        q + q[:3],  # the next one started
        pg.sync() + q,  # not a Query first
        b"Q\x00\x00\x00\x04\x00",  # a length shorter than its NUL
        b"Q\x00\x00\x00\x0aselect\x001\x00",  # a NUL inside: malformed
        b"Q" + (len(b"\xff\xfe") + 5).to_bytes(4, "big") + b"\xff\xfe\x00",  # not UTF-8
    ):
        conn = codec()
        conn.receive_data(data)
        assert conn.lone_query() is None, data
        assert conn.buffered() == len(data)  # nothing consumed: events() decides
    # what is malformed raises from the codec's own parse, as before
    conn = codec()
    conn.receive_data(b"Q\x00\x00\x00\x0aselect\x001\x00")
    with pytest.raises(pg.ProtocolViolation):
        conn.events()


def test_lone_query_respects_the_size_cap_and_the_phase() -> None:
    conn = pg.ServerConnection(max_message_size=64)
    conn.receive_data(pg.startup_message({"user": "a"}))
    conn.next_event()
    conn.receive_data(pg.query("select 1"))
    assert conn.lone_query() is None  # before login: only a password is valid
    conn.start_session()
    assert conn.lone_query() is not None
    big = pg.query("select " + "1" * 80)
    conn.receive_data(big)
    assert conn.lone_query() is None
    with pytest.raises(pg.ProtocolViolation):
        conn.events()


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "  select 1 ;  ",
        "select 1;;",
        "select 1 ; ;",
        "select ';'",
        "select 1; select 2",
        "\tselect 1\n",
        "select 'x;'",
    ],
)
def test_one_text_cuts_as_retext_does(sql: str) -> None:
    cmd = Command("postgres", "c", "select 0", frozenset({"select"}))
    retexted = Classifier._retext(sql, "select 0", (cmd,))
    text = cmdlane.one_text(sql)
    if text is None:
        # left to _retext's parser (its split): a ';' before the text's last character
        assert sql.strip().find(";") not in (-1, len(sql.strip()) - 1)
    else:
        assert retexted is not None and retexted[0].text == text


@pytest.mark.parametrize(
    ("kinds", "functions", "maybe", "opaque", "ok"),
    [
        ({"select"}, (), (), (), True),
        ({"select", "update"}, ("lower",), ("t.f",), (), True),
        ({"select"}, ("set_config",), (), (), False),
        ({"select"}, ("pg_catalog.set_config",), (), (), False),
        ({"select"}, (), ("x.set_config",), (), False),
        ({"select", "copy"}, (), (), (), False),
        ({"execute"}, (), (), (), False),
        ({"select"}, (), (), ("do",), False),
        ({"set"}, (), (), (), False),
    ],
)
def test_plain_says_which_commands_the_lane_takes(
    kinds: set[str],
    functions: tuple[str, ...],
    maybe: tuple[str, ...],
    opaque: tuple[str, ...],
    ok: bool,
) -> None:
    cmd = Command(
        "postgres",
        "c",
        "x",
        frozenset(kinds),
        functions=frozenset(functions),
        maybe_functions=frozenset(maybe),
        opaque=frozenset(opaque),
    )
    assert cmdlane.plain(cmd) is ok


# ---- the lane in the relay ---------------------------------------------------------------
async def test_a_statement_seen_before_goes_by_the_lane_with_its_own_text(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, to_agent, to_backend = relay
    # blanks and semicolons around it are part of the key: each spelling is seen once
    padded = "  " + SELECT + " ;"
    run(conn, SELECT.format(1))
    run(conn, padded.format(2))
    classifier = conn.listener.classification.classifier
    hits = classifier.hits
    lane_only(monkeypatch)
    run(conn, SELECT.format(3))
    run(conn, SELECT.format(4))
    run(conn, SELECT.format(4))  # the same text again
    assert classifier.hits == hits + 3
    assert to_backend[-3:] == [pg.query(SELECT.format(3))] + [pg.query(SELECT.format(4))] * 2
    monkeypatch.undo()
    # by its key (compiled: sqlkey) or the full path (interpreted: the shape's cache)
    run(conn, padded.format(5))
    assert to_backend[-1] == pg.query(padded.format(5))
    recorded = commands(conn)
    assert [c["text"] for c in recorded] == [SELECT.format(i) for i in (1, 2, 3, 4, 4, 5)]
    assert {c["outcome"] for c in recorded} == {"allow"}
    assert len(to_agent) == 6


async def test_the_lane_never_forwards_a_denied_shape(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    run(conn, "select v from secrets where id = 1")
    assert to_backend[-1] == pg.query(conn.marker)  # refused: the marker went instead
    lane_only(monkeypatch)
    run(conn, "select v from secrets where id = 2")
    assert to_backend[-1] == pg.query(conn.marker)
    assert not any(b"secrets" in sent for sent in to_backend)
    recorded = commands(conn)
    assert [(c["text"], c["outcome"], c["rule"]) for c in recorded] == [
        ("select v from secrets where id = 1", "deny", "no-secrets"),
        ("select v from secrets where id = 2", "deny", "no-secrets"),
    ]


async def test_the_lane_refuses_once_the_token_expired(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    run(conn, SELECT.format(1))
    run(conn, SELECT.format(2))  # cached and allowed, by the lane
    sent = len(to_backend)
    lane_only(monkeypatch)
    conn.session.clock = lambda: conn.session.identity.expires_at + 1
    run(conn, SELECT.format(3))
    assert len(to_backend) == sent  # nothing of it reached the server
    assert isinstance(ended_with(conn), AuthFailed)
    last = commands(conn)[-1]
    assert (last["text"], last["outcome"], last["reason"]) == (
        SELECT.format(3),
        "deny",
        "token expired",
    )


async def test_the_lane_forwards_nothing_whose_command_event_cannot_be_written(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    conn, _, to_backend = relay
    run(conn, SELECT.format(1))
    sent = len(to_backend)
    fill_disk(conn)
    conn._agent_data(pg.query(SELECT.format(2)))
    assert len(to_backend) == sent
    err = ended_with(conn)
    assert isinstance(err, RecordingFailed) and err.fatal


async def test_a_shape_needing_approval_waits_off_the_lane(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    conn, _, to_backend = relay
    # No approval service in this gateway: the full path refuses, saying so; the lane
    # must not have forwarded it meanwhile.
    for i in (1, 2):
        conn._agent_data(pg.query(f"delete from orders where id = {i}"))
        while conn._agent_pump.task is not None:
            await asyncio.sleep(0)
        assert to_backend[-1] == pg.query(conn.marker)
        conn._backend_data(pg.error_response("42601", "x") + pg.ready_for_query("I"))
    assert not any(b"orders" in sent for sent in to_backend)
    recorded = commands(conn)
    assert [c["outcome"] for c in recorded] == ["require_approval"] * 2


async def test_set_config_never_goes_by_the_lane(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    conn, _, _ = relay
    conn.session.scope = SearchPath("u")  # as the login sets it up
    classifier = conn.listener.classification.classifier
    first = "select set_config('search_path', 'a', false)"
    run(conn, first)
    run(conn, first)
    assert classifier.keyed(first, "db") is None
    run(conn, "select set_config('search_path', 'b', false)")
    # the scope read the second text's own literal, not the cached one's
    assert conn.session.scope.schemas == ("public", "a", "b")


async def test_a_parse_by_the_lane_holds_its_own_text_for_the_binds(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    ready = pg.ready_for_query("I")
    conn._agent_data(pg.parse("s1", SELECT.format(1), ()) + pg.sync())
    conn._backend_data(pg.parse_complete() + ready)
    lane_only(monkeypatch)
    conn._agent_data(pg.parse("s2", SELECT.format(2), ()) + pg.sync())
    conn._backend_data(pg.parse_complete() + ready)
    assert conn.prepared["s2"][0].text == SELECT.format(2)
    conn._agent_data(pg.bind("", "s2", [], [], []) + pg.execute("", 0) + pg.sync())
    assert to_backend[-1].startswith(b"B")
    conn.session.log.flush()
    binds = [e for e in read_events(conn.session.log.path) if e["type"] == "bind"]
    assert binds[-1]["text"] == SELECT.format(2)


# ---- Bind decoding (cmdlane.bind_fields) against bodies.py's checked parse --------------
def binds() -> list[bytes]:
    return [
        pg.bind("", "", [], [], []),
        pg.bind("", "P_0", [b"7"], [0], [1]),
        pg.bind("portal", "stmt", [b"1", None, b"", b"\x00\xff" * 40], [0, 1], [1, 0, 1]),
        pg.bind("\u00e9", "\u2603", [None] * 5, [1], []),
        pg.bind("p", "s", [b"x" * 70000], [], [0] * 3),
    ]


def mutants(raw: bytes, rng: random.Random) -> list[bytes]:
    out = [raw[:n] for n in range(5, len(raw), max(1, len(raw) // 40))]
    for _ in range(200):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(5, len(b)) if len(b) > 5 else 5
            if i < len(b):
                b[i] = rng.choice((0, 0xFF, 0x80, 1, 2, rng.randrange(256)))
        out.append(bytes(b))
    out.append(raw + b"\x00")
    out.append(raw[:5] + b"\xff\xfe\x00" + raw[5:])  # a portal name that is not UTF-8
    return out


def checked(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> pg.Bind | str:
    """bodies._f_bind's own parse (without the compiled fields)."""
    with monkeypatch.context() as m:
        m.setattr(bodies, "bind_fields", lambda raw: None)
        try:
            return bodies._f_bind(raw)
        except pg.ProtocolViolation as e:
            return f"{e.sqlstate} {e.message}"


def test_bind_fields_decode_as_the_checked_parse_or_leave_it_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(13)
    decoded = refused = 0
    for raw in binds():
        for data in [raw, *mutants(raw, rng)]:
            want = checked(data, monkeypatch)
            got = cmdlane.bind_fields(data)
            if isinstance(want, str):
                assert got is None, data
                refused += 1
                with pytest.raises(pg.ProtocolViolation):  # the codec still says so
                    bodies._f_bind(data)
                continue
            decoded += 1
            assert got == (
                want.portal,
                want.statement,
                want.param_formats,
                want.params,
                want.result_formats,
            )
            assert bodies._f_bind(data) == want
    assert decoded > 50 and refused > 50  # both sides exercised


async def test_the_lane_hides_a_password_in_its_own_text(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    conn.session.hide = sqlsecrets.hidden  # as the login sets it up
    call = "select dblink_connect('host={} password={}')"
    run(conn, call.format("a", "first-secret"))
    lane_only(monkeypatch)
    run(conn, call.format("b", "second-secret"))
    assert to_backend[-1] == pg.query(call.format("b", "second-secret"))  # the server's own
    recorded = conn.session.log.path.read_text()
    assert "first-secret" not in recorded and "second-secret" not in recorded
    assert [c["text"] for c in commands(conn)] == [call.format(h, "****") for h in "ab"]


# ---- ServerConnection.events (cmdlane.frontend_run) against next_event ----------------
def drive(data: bytes, size: int | None, framed: bool) -> list[str]:
    """The frontend codec over `data` in pieces: every event (or the error), taken with
    events() after login: ServerConnection's (`framed`: by cmdlane.frontend_run first)
    or the generic one, message by message (what it was before)."""
    conn = pg.ServerConnection(max_message_size=1 << 16)
    out: list[str] = []
    passwords = 0
    try:
        for piece in framedigest.chunks(data, size):
            conn.receive_data(piece)
            while True:
                if conn.phase is pg.Phase.NORMAL:
                    if framed:  # the compiled pass, in the interpreted build too
                        with mock.patch.object(cmdlane, "COMPILED", True):
                            evs = conn.events()
                    else:
                        evs = super(pg.ServerConnection, conn).events()
                    out.extend(repr(e) for e in evs)
                    break
                ev = conn.next_event()
                if ev is pg.NEED_DATA:
                    break
                out.append(repr(ev))
                if isinstance(ev, pg.PasswordMessage):  # SCRAM: logged in after the second
                    passwords += 1
                    if passwords == 2 or (passwords == 1 and b"SCRAM" not in data[:400]):
                        conn.start_session()
                        conn.opaque = frozenset(b"BDEH") if size in (None, 3) else frozenset()
    except pg.ProtocolViolation as e:
        out.append(f"violation {e.sqlstate} {e.message}")
    out.append(f"end {conn.phase.value} {conn.buffered()}")
    return out


def test_events_framed_in_one_pass_are_the_events_message_by_message() -> None:
    rng = random.Random(7)
    hostile = 0
    for name in framedigest.CAPTURES:
        front = (framedigest.FIXTURES / f"{name}.frontend.bin").read_bytes()
        for data in [front, *framedigest.mutants(front, rng)]:
            for size in (None, 1, 3, 64):
                one_by_one = drive(data, size, framed=False)
                assert drive(data, size, framed=True) == one_by_one, (name, size)
                hostile += any(e.startswith("violation") for e in one_by_one)
    assert hostile > 20  # the mutants broke the protocol in many places


# ---- the lane inside a session's other states --------------------------------------------
async def test_a_lone_query_after_an_unsynced_parse_goes_behind_hoopys_sync(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    run(conn, SELECT.format(1))  # cached
    lane_only(monkeypatch)
    conn._agent_data(pg.parse("", SELECT.format(2), ()))  # no Sync: the batch stays open
    conn._agent_data(pg.query(SELECT.format(3)))  # alone in its read
    # PostgreSQL would discard the Query after an error in the open batch: hoopy closes
    # it with a Sync of its own first (Pipeline._enter), whichever path the Query takes
    assert to_backend[-2:] == [
        pg.parse("", SELECT.format(2), ()),
        pg.sync() + pg.query(SELECT.format(3)),
    ]
    assert conn.silent_ready == {conn.batches_sent - 1}


async def test_a_lone_query_during_copy_from_stdin_ends_the_session(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    conn, _, to_backend = relay
    run(conn, SELECT.format(1))  # cached
    conn._agent_data(pg.query("copy t from stdin"))
    assert conn.copy_in_flight
    sent = len(to_backend)
    conn._agent_data(pg.query(SELECT.format(2)))
    assert len(to_backend) == sent  # the server would discard it and fail the COPY
    err = ended_with(conn)
    assert err is not None and "COPY FROM STDIN" in str(err)


async def test_a_cached_text_with_a_backslash_waits_for_the_answers_before_it(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    slashed = "SELECT abalance FROM pgbench_accounts WHERE aid = {} AND filler = E'\\\\x'"
    run(conn, slashed.format(1))  # cached
    conn._agent_data(pg.query(SELECT.format(2)))  # not answered yet
    conn._agent_data(pg.query(slashed.format(3)))
    # a switch of standard_conforming_strings by what runs before could make the server
    # read it otherwise than hoopy did: it waits (off the lane) until those are answered
    assert to_backend[-1] == pg.query(SELECT.format(2))
    assert conn._agent_pump.task is not None
    conn._backend_data(ANSWER)
    while conn._agent_pump.task is not None:
        await asyncio.sleep(0)
    assert to_backend[-1] == pg.query(slashed.format(3))


async def test_pipelined_queries_each_go_by_the_lane_with_their_own_text(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _, to_backend = relay
    run(conn, SELECT.format(1))
    run(conn, "select v from secrets where id = 1")  # denied, cached
    lane_only(monkeypatch)
    batch = (
        pg.query(SELECT.format(2))
        + pg.query("select v from secrets where id = 2")
        + pg.query(SELECT.format(3))
    )
    conn._agent_data(batch)
    assert to_backend[-1] == (
        pg.query(SELECT.format(2)) + pg.query(conn.marker) + pg.query(SELECT.format(3))
    )
    recorded = [(c["text"], c["outcome"]) for c in commands(conn)][2:]
    assert recorded == [
        (SELECT.format(2), "allow"),
        ("select v from secrets where id = 2", "deny"),
        (SELECT.format(3), "allow"),
    ]
