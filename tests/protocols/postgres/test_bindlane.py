"""The Bind lane (bindlane.py, cmdlane.bind_batch): the usual extended-protocol batch of
a statement seen before goes without an event per message, and does exactly what the
full path does with it.

Every scenario runs twice through a relay as in relaydigest.session (real codec,
classifier, policy, session and recorder; in-memory transports): once as hoopy runs,
once with the lane switched off (the codec never frames a batch for it), and both
must forward the same bytes both ways, write the same recording byte for byte, end
the same way and leave the same pipeline state.  Both builds (HOOPY_PURE=1 or not) run
these tests.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hoopy.eventline import _dumps
from hoopy.protocols.postgres import bindlane, cmdlane
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.bodies import _f_parse, decode_binds
from hoopy.session import Session
from tests.protocols.postgres import relaydigest
from tests.protocols.postgres.test_relay_recording import fill_disk

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
POLICY = (
    "rules:\n  - name: all\n    effect: allow\n    match: {groups: [g]}\n"
    "  - name: no-secrets\n    effect: deny\n    match: {sql: {tables: [secrets]}}\n"
    "  - name: ask-orders\n    effect: require_approval\n"
    "    match: {sql: {tables: [orders]}}\n    approvers: [boss]\n"
)
READY = pg.ready_for_query("I")
ROW = pg.row_description([relaydigest.field("abalance")]) + pg.data_row([b"7"])
MARKER = "hoopy_refused_0123456789abcdef"  # relaydigest's fixed marker
REFUSED = pg.error_response("42601", f'syntax error at or near "{MARKER}"') + READY
COPY_IN = pg.frame(b"G", b"\x00\x00\x00")  # CopyInResponse: text, no columns

Step = tuple[bytes, bytes]  # what the agent sends, what the server answers


def ext(sql: str, values: list[bytes | None], name: str = "") -> bytes:
    """pgbench -M extended's batch."""
    return (
        pg.parse(name, sql, ())
        + pg.bind("", name, values, [0], [1])
        + pg.describe("P", "")
        + pg.execute("", 0)
        + pg.sync()
    )


def prep(name: str, values: list[bytes | None], formats: list[int] | None = None) -> bytes:
    """pgbench -M prepared's batch."""
    return pg.bind("", name, values, [0] if formats is None else formats, [1]) + (
        pg.execute("", 0) + pg.sync()
    )


EXT_ANSWER = pg.parse_complete() + pg.bind_complete() + ROW + pg.command_complete("SELECT 1")
PREP_ANSWER = pg.bind_complete() + pg.data_row([b"7"]) + pg.command_complete("SELECT 1")


def pgbench_extended() -> list[Step]:
    return [(ext(SELECT, [str(i).encode()]), EXT_ANSWER + READY) for i in range(4)]


def pgbench_prepared() -> list[Step]:
    steps = [(pg.parse("P_0", SELECT, (23,)) + pg.sync(), pg.parse_complete() + READY)]
    values: list[bytes | None] = [
        b"1",
        None,
        b"",
        b"\x00\x01 binary",
        b"\xff not UTF-8",
        b"x" * 3000,
    ]
    for v in values:
        steps.append((prep("P_0", [v]), PREP_ANSWER + READY))
    steps.append((prep("P_0", [b"\x00\x00\x00\x07"], [1]), PREP_ANSWER + READY))  # binary
    return steps


def asyncpg_like() -> list[Step]:
    """A named Parse with Describe first; then Bind Execute (no Describe), several per
    batch (executemany), values of several formats, a named portal."""
    sql = "SELECT v FROM t WHERE a = $1 AND b = $2"
    many = (
        pg.bind("", "__a1", [b"1", b"\x00\x02"], [0, 1], [1])
        + pg.execute("", 0)
        + pg.bind("p1", "__a1", [None, None], [], [])
        + pg.describe("P", "p1")
        + pg.execute("p1", 5)
        + pg.sync()
    )
    return [
        (
            pg.parse("__a1", sql, (23, 23)) + pg.describe("S", "__a1") + pg.sync(),
            pg.parse_complete() + pg.no_data() + READY,
        ),
        (prep("__a1", [b"1", b"2"]), PREP_ANSWER + READY),
        (many, (PREP_ANSWER * 2) + READY),
        (many, (PREP_ANSWER * 2) + READY),
    ]


def refused_parse() -> list[Step]:
    """A denied statement by the extended protocol: the marker in its Parse's place,
    its Bind forwarded and recorded (the server skips it to the Sync)."""
    sql = "select v from secrets where id = $1"
    return [(ext(sql, [str(i).encode()]), REFUSED) for i in range(3)]


def unknown_statement() -> list[Step]:
    """A Bind of a name never prepared, then one DEALLOCATE made unknown: refused."""
    return [
        (prep("nope", [b"1"]), REFUSED),
        (pg.parse("P_0", SELECT, ()) + pg.sync(), pg.parse_complete() + READY),
        (prep("P_0", [b"1"]), PREP_ANSWER + READY),
        (pg.query("DEALLOCATE P_0"), pg.command_complete("DEALLOCATE") + READY),
        (prep("P_0", [b"2"]), REFUSED),
        (pg.query("DISCARD ALL"), pg.command_complete("DISCARD ALL") + READY),
        (prep("P_0", [b"3"]), REFUSED),
    ]


def needs_approval() -> list[Step]:
    """A statement whose Binds need an approval (no approval service here: refused,
    in the task): the Parse goes by the lane, the rest waits."""
    sql = "update orders set n = $1 where id = 1"
    return [(ext(sql, [str(i).encode()], "o"), pg.parse_complete() + REFUSED) for i in range(3)]


def error_mid_batch() -> list[Step]:
    """The server fails the Bind: the rest of the batch is skipped to the Sync."""
    failed = pg.parse_complete() + pg.error_response("22P02", "invalid input") + READY
    return [
        (ext(SELECT, [b"x"]), failed),
        (ext(SELECT, [b"y"]), failed),
        (ext(SELECT, [b"1"]), EXT_ANSWER + READY),
    ]


def unanswered_parses() -> list[Step]:
    """Names parsed in batches not answered yet: several candidates per Bind."""
    return [
        (pg.parse("s", SELECT, ()) + pg.sync(), b""),
        (pg.parse("s", "select v from t where a = $1", ()) + pg.sync(), b""),
        (prep("s", [b"1"]), b""),
        (b"", (pg.parse_complete() + READY) * 2 + PREP_ANSWER + READY),
        (prep("s", [b"2"]), PREP_ANSWER + READY),
    ]


def copy_from_stdin() -> list[Step]:
    """A prepared COPY FROM STDIN: its Execute starts the COPY, the Sync goes during it."""
    return [
        (pg.parse("c", "copy t from stdin", ()) + pg.sync(), pg.parse_complete() + READY),
        (prep("c", []), pg.bind_complete() + COPY_IN),
        (pg.copy_data(b"1\n") + pg.copy_done(), pg.command_complete("COPY 1") + READY),
        (prep("P_0", [b"1"]), REFUSED),
    ]


def copy_in_a_segment() -> list[Step]:
    """A segment runs COPY FROM STDIN: the next segment's Parse ends the session (the
    server would discard it and fail the COPY), as on the full path."""
    return [
        (pg.parse("c", "copy t from stdin", ()) + pg.sync(), pg.parse_complete() + READY),
        (ext(SELECT, [b"1"]), EXT_ANSWER + READY),
        (prep("c", [])[:-5] + ext(SELECT, [b"2"]), pg.bind_complete() + COPY_IN),
    ]


def names_changing_portal() -> list[Step]:
    """A portal of DEALLOCATE (it changes names when it runs): Executes are looked at.
    (An SQL name is folded to lower case: DEALLOCATE S0 would drop "s0", not "S0".)"""
    return [
        (pg.parse("s0", SELECT, ()) + pg.sync(), pg.parse_complete() + READY),
        (pg.parse("d", "deallocate s0", ()) + pg.sync(), pg.parse_complete() + READY),
        (
            pg.bind("dp", "d", [], [], []) + pg.sync(),
            pg.bind_complete() + pg.frame(b"T", b"\x00\x00") + READY,
        ),
        (prep("s0", [b"1"]), PREP_ANSWER + READY),
        (pg.bind("", "s0", [b"1"], [], []) + pg.execute("dp", 0) + pg.sync(), PREP_ANSWER + READY),
        (prep("s0", [b"2"]), REFUSED),
        (pg.parse("s0", SELECT, ()) + pg.sync(), pg.parse_complete() + READY),
        # a segment binds the DEALLOCATE (the Executes of its own run are not looked
        # at, as on the full path); the next segment's are: its Execute of the portal
        # runs the DEALLOCATE, s0 is unknown from there on
        (
            pg.bind("dp", "d", [], [], [])
            + pg.execute("dp", 0)
            + pg.bind("", "s0", [b"3"], [0], [1])
            + pg.execute("dp", 0)
            + ext(SELECT, [b"4"])[:-15]  # its Execute and Sync cut off
            + pg.execute("dp", 0)
            + pg.sync(),
            pg.bind_complete() * 2 + pg.parse_complete() + pg.bind_complete() + READY,
        ),
        (prep("s0", [b"5"]), REFUSED),
    ]


def backslash_waits() -> list[Step]:
    """A text with a backslash while answers are pending waits for them (off the lane)."""
    slashed = "SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND f = E'\\\\x'"
    return [
        (ext(slashed, [b"1"]), EXT_ANSWER + READY),
        (pg.query("select 1"), b""),
        (ext(slashed, [b"2"]), pg.row_description([]) + pg.command_complete("SELECT 1") + READY),
        (b"", EXT_ANSWER + READY),
    ]


def executemany() -> list[Step]:
    """psycopg's executemany and pipelines: a segment of Parse Bind Describe Execute per
    row, one Sync; a denied statement, a first sight, an unknown name and a statement
    needing an approval in the middle of one."""

    def rows(*segments: bytes) -> bytes:
        return b"".join(x[:-5] for x in segments) + pg.sync()

    ins = "insert into t (a) values ($1)"
    denied = "select v from secrets where id = $1"
    ok = pg.parse_complete() + pg.bind_complete() + pg.command_complete("INSERT 0 1")
    return [
        (rows(*(ext(ins, [str(i).encode()]) for i in range(3))), ok * 3 + READY),
        (rows(*(ext(ins, [str(i).encode()]) for i in range(4))), ok * 4 + READY),
        (rows(ext(ins, [b"1"]), ext(denied, [b"2"]), ext(ins, [b"3"])), ok + REFUSED),
        (rows(ext(ins, [b"1"]), ext("insert into u (b) values ($1)", [b"2"])), ok * 2 + READY),
        (rows(ext(ins, [b"1"]), prep("nope", [b"2"]), ext(ins, [b"3"])), ok + REFUSED),
        (rows(ext(ins, [b"1"]), ext("update orders set n = $1", [b"2"])), ok + REFUSED),
        (rows(ext(ins, [b"5"]), prep("", [b"6"]), prep("", [b"7"])), ok * 3 + READY),
    ]


def pipelined() -> list[Step]:
    """Two batches in one read, a batch in pieces, a Flush: none is the lane's shape."""
    one = ext(SELECT, [b"1"])
    return [
        (one, EXT_ANSWER + READY),
        (one + one, (EXT_ANSWER + READY) * 2),
        (one[:7], b""),
        (one[7:], EXT_ANSWER + READY),
        (one[:-5] + pg.flush() + pg.sync(), EXT_ANSWER + READY),
    ]


SCENARIOS: dict[str, Callable[[], list[Step]]] = {
    f.__name__: f
    for f in (
        pgbench_extended,
        pgbench_prepared,
        asyncpg_like,
        executemany,
        refused_parse,
        unknown_statement,
        needs_approval,
        error_mid_batch,
        unanswered_parses,
        copy_from_stdin,
        copy_in_a_segment,
        names_changing_portal,
        backslash_waits,
        pipelined,
    )
}


def state(conn: Any) -> dict[str, Any]:
    """The pipeline's bookkeeping, as comparable text."""
    return {
        "prepared": {k: [c.text for c in v] for k, v in conn.prepared.items()},
        "unconfirmed": [
            (b, n, None if c is None else [x.text for x in c], p) for b, n, c, p in conn.unconfirmed
        ],
        "sent": conn.names.sent,
        "done": conn.names.done,
        "special": conn.names.special,
        "portals": sorted(conn.names.portals),
        "flags": (
            conn.copy_in_flight,
            conn.sync_in_copy,
            conn.unsynced_execute,
            conn.extended_open,
            conn.binds_unwritten,
        ),
        "silent": sorted(conn.silent_ready),
        "refusals": [(b, str(e)) for b, e in conn.refusals],
        "copies": dict(conn._portal_copies),
    }


async def settle(conn: Any) -> None:
    """Let a batch waiting in the task run as far as it can (it may wait for answers)."""
    for _ in range(200):
        if conn._agent_pump.task is None or conn._ended.done():
            return
        await asyncio.sleep(0)


async def drive(
    folder: Path, steps: list[Step], lane: bool, before: Callable[[Any], None] | None = None
) -> tuple[list[Any], int]:
    """What a relay forwards, records and ends with for `steps`; and how many batches
    went by the lane."""
    conn, to_agent, to_backend = relaydigest.started(folder)
    taken = 0
    real = conn._bind_batch

    def counted(found: tuple[Any, ...]) -> None:
        nonlocal taken
        taken += 1
        real(found)

    conn._bind_batch = counted
    if not lane:  # the codec frames Queries for their lane, never a batch for this one
        conn.codec.fast_batch = conn.codec.lone_query
    if before is not None:
        before(conn)
    seen: list[Any] = []
    for front, back in steps:
        if conn._ended.done():
            break
        if front:
            conn._agent_data(front)
        await settle(conn)
        if back and not conn._ended.done():
            conn._backend_data(back)
        await settle(conn)
        seen.append((list(to_backend), list(to_agent), state(conn)))
        to_backend.clear()
        to_agent.clear()
    ended = conn._ended.exception() if conn._ended.done() else None
    seen.append(repr(ended))
    if ended is None:
        conn.session.log.close("closed")
    seen.append(conn.session.log.path.read_bytes())
    return seen, taken


async def same_both_ways(
    tmp_path: Path, steps: list[Step], before: Callable[[Any], None] | None = None
) -> tuple[int, str]:
    """How many batches went by the lane, and how the session ended (the same both ways)."""
    monkey = pytest.MonkeyPatch()
    monkey.setattr(relaydigest, "POLICY", POLICY)
    try:
        full, none = await drive(tmp_path / "full", steps, False, before)
        lane, taken = await drive(tmp_path / "lane", steps, True, before)
    finally:
        monkey.undo()
    assert none == 0
    for i, (a, b) in enumerate(zip(full, lane, strict=True)):
        assert a == b, f"step {i}"
    return taken, full[-2]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_the_lane_does_what_the_full_path_does(tmp_path: Path, name: str) -> None:
    taken, ended = await same_both_ways(tmp_path, SCENARIOS[name]())
    assert ended == ("None" if name != "copy_in_a_segment" else ended)
    if name == "copy_in_a_segment":
        assert "COPY FROM STDIN" in ended
    if name != "pipelined":
        assert taken > 0  # the scenario exercises the lane


async def test_an_expired_token_stops_a_bind_by_the_lane(tmp_path: Path) -> None:
    def expire_at_the_third_batch(conn: Any) -> None:
        ticks = iter(range(1000))
        limit = conn.session.identity.expires_at
        # each batch asks the clock twice (the Parse's check, the Bind's check_alive)
        conn.session.clock = lambda: limit + (1 if next(ticks) >= 5 else -1)

    taken, ended = await same_both_ways(tmp_path, pgbench_extended(), expire_at_the_third_batch)
    assert taken >= 3 and "AuthFailed" in ended


async def test_an_expired_token_stops_a_prepared_bind(tmp_path: Path) -> None:
    def expire_after_two(conn: Any) -> None:
        ticks = iter(range(1000))
        limit = conn.session.identity.expires_at
        conn.session.clock = lambda: limit + (1 if next(ticks) >= 3 else -1)

    taken, ended = await same_both_ways(tmp_path, pgbench_prepared(), expire_after_two)
    assert taken >= 2 and "AuthFailed" in ended


async def test_an_unwritable_recording_forwards_nothing(tmp_path: Path) -> None:
    steps = pgbench_prepared()
    calls = iter(range(1000))

    def full_disk_later(conn: Any) -> None:
        real = conn._agent_data

        def data(b: bytes) -> None:
            if next(calls) == 3:
                fill_disk(conn)
            real(b)

        conn._agent_data = data

    monkey = pytest.MonkeyPatch()
    monkey.setattr(relaydigest, "POLICY", POLICY)
    try:
        full, _ = await drive(tmp_path / "full", steps, False, full_disk_later)
        calls = iter(range(1000))
        lane, _ = await drive(tmp_path / "lane", steps, True, full_disk_later)
    finally:
        monkey.undo()
    assert full[:-1] == lane[:-1]  # the file itself: both cut where the disk filled
    assert "RecordingFailed" in full[-2]
    assert not any(sent[:1] == b"B" for step in full[3:-2] for sent in step[0])


# ---- cmdlane.bind_batch against the codec's own events ----------------------------------
def codec(opaque: bytes = b"BDEHdc", cap: int = 1 << 16) -> pg.ServerConnection:
    conn = pg.ServerConnection(max_message_size=cap)
    conn.receive_data(pg.startup_message({"user": "a"}))
    conn.next_event()
    conn.start_session()
    conn.opaque = frozenset(opaque)
    return conn


def batches() -> list[bytes]:
    return [
        ext(SELECT, [b"1"]),
        ext("select 1", [], "n\u00e9"),
        prep("P_0", [b"1", None, b"\x00" * 40], [0, 1]),
        pg.bind("", "s", [], [], []) + pg.execute("", 0) + pg.sync(),
        pg.bind("", "s", [b"1"], [], [])
        + pg.execute("", 0)
        + pg.bind("p", "s")
        + pg.describe("P", "p")
        + pg.execute("p", 1)
        + pg.sync(),
        # executemany, pipelines: segments of a Parse and its runs, one Sync
        ext(SELECT, [b"1"])[:-5] + ext(SELECT, [b"2"])[:-5] + ext("select 1", [], "n")[:-5]
        + pg.bind("", "P_0", [b"1"], [0], [1]) + pg.execute() + pg.sync(),
    ]  # fmt: skip


def lane_events(lane: list[tuple[Any, ...]]) -> list[str]:
    return [repr(e) for e in bindlane._events(lane)]


def test_bind_batch_frames_what_the_codec_frames_or_leaves_it_to_it() -> None:
    rng = random.Random(10)
    framed = left = 0
    for batch in batches():
        data = [batch]
        data += [batch[:n] for n in range(0, len(batch), 3)]  # incomplete
        data += [batch + pg.sync(), pg.sync() + batch, batch + batch[:6], batch[:-5] + pg.flush()]
        for _ in range(300):  # hostile bytes
            b = bytearray(batch)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] = rng.choice(
                    (0, 0xFF, 0x80, 4, 0x42, 0x45, rng.randrange(256))
                )
            data.append(bytes(b))
        for d in data:
            conn = codec()
            conn.receive_data(d)
            lane = conn.bind_batch()
            other = codec()
            other.receive_data(d)
            try:
                events = [repr(e) for e in other.events()]
            except pg.ProtocolViolation as e:
                events = [f"violation {e.message}"]
            fast = codec()
            fast.receive_data(d)
            assert fast.fast_batch() == lane and fast.buffered() == conn.buffered()
            if lane is None:
                left += 1
                assert conn.buffered() == len(d)  # nothing consumed
                continue
            framed += 1
            assert conn.buffered() == 0
            assert lane_events(lane) == events, d
            for parse, name, sql, run, types, binds in lane:
                want = decode_binds(run, types)
                assert [
                    (b.portal, b.statement, b.param_formats, b.params, b.result_formats)
                    for b in want
                ] == binds
                if parse is not None:
                    parsed = _parse(parse)
                    assert (name, sql) == (parsed.name, parsed.sql)
    assert framed > 5 and left > 500


def test_fast_batch_is_lone_query_for_a_query() -> None:
    q = pg.query("select 1")
    for data in (q, q + pg.sync(), q[:-1], b"Q\x00\x00\x00\x0aselect\x001\x00", b"", pg.sync()):
        one, other = codec(), codec()
        one.receive_data(data)
        other.receive_data(data)
        assert one.fast_batch() == other.lone_query()
        assert one.buffered() == other.buffered()
    conn = codec(b"BDEHdcQ")  # a Query the codec frames as opaque: never the lane's
    conn.receive_data(q)
    assert conn.fast_batch() is None and conn.buffered() == len(q)


def test_bind_batch_takes_only_the_lanes_shapes() -> None:
    p = pg.parse("", "select 1", ())
    b, d, e, s = pg.bind("", ""), pg.describe("P", ""), pg.execute(), pg.sync()
    for data, ok in [
        (p + b + d + e + s, True),
        (b + e + s, True),
        (b + d + e + b + e + s, True),
        (p + b + d + e + p + b + e + b + e + s, True),  # segments
        (b + e + p + b + e + s, True),
        (p + b + e + p + s, False),  # a Parse without a Bind at the end
        (p + b + p + e + s, False),  # a Parse inside a Bind's run
        (p + b + d + p + e + s, False),
        (p + s, False),  # nothing bound
        (p + b + s, False),  # no Execute
        (p + b + d + s, False),
        (b + e + e + s, False),
        (d + b + e + s, False),
        (p + p + b + e + s, False),
        (b + e + pg.flush() + s, False),
        (b + e + pg.close("S", "x") + s, False),
        (b + e + s + s, False),
        (b + e + s[:-1] + b"\x05\x00", False),  # a Sync with a body
        (pg.query("select 1") + b + e + s, False),
    ]:
        conn = codec()
        conn.receive_data(data)
        assert (conn.bind_batch() is not None) is ok, data


def test_bind_batch_keeps_to_the_codecs_state() -> None:
    data = ext(SELECT, [b"1"])
    for opaque in (b"", b"BD", b"BDEP", b"BDES"):  # what the codec frames apart differs
        conn = codec(opaque)
        conn.receive_data(data)
        assert conn.bind_batch() is None
    conn = codec(cap=40)  # a message over the size cap: the codec's error
    conn.receive_data(data)
    assert conn.bind_batch() is None
    with pytest.raises(pg.ProtocolViolation):
        conn.events()
    conn = pg.ServerConnection()  # before login
    conn.receive_data(pg.startup_message({"user": "a"}))
    conn.next_event()
    conn.receive_data(data)
    assert conn.bind_batch() is None


def test_parse_fields_accept_what_the_codecs_parse_accepts() -> None:
    rng = random.Random(3)
    for raw in (
        pg.parse("", SELECT, (23,)),
        pg.parse("n\u00e9", "select 1", ()),
        pg.parse("", "", ()),
    ):
        for _ in range(300):
            b = bytearray(raw)
            for _ in range(rng.randint(0, 2)):
                b[rng.randrange(5, len(b))] = rng.choice((0, 0xFF, 1, rng.randrange(256)))
            data = bytes(b)
            got = cmdlane.parse_fields(data)
            try:
                parsed = _parse(data)
            except pg.ProtocolViolation:
                assert got is None
                continue
            assert got == (parsed.name, parsed.sql)


def _parse(raw: bytes) -> pg.Parse:
    return _f_parse(raw)


# ---- Bind values (cmdlane.bind_values), as the recording keeps them ----------------------
def p(params: list[Any], count: int = 0) -> dict[str, Any]:
    """A Bind event's values (`count`: truncated, of so many)."""
    out: dict[str, Any] = {"portal": "p", "params": params}
    return {**out, "truncated": True, "param_count": count} if count else out


@pytest.mark.parametrize(
    ("formats", "values", "max_bytes", "want"),
    [
        ((), (b"1", None, b""), 100, p(["1", None, ""])),
        ((1,), (b"\x00\x01", None), 100, p([{"b64": "AAE="}, None])),
        ((0, 1), (b"a\tb\n\r", b"\x07"), 100, p(["a\tb\n\r", {"b64": "Bw=="}])),
        (
            (),
            (b"\x1b[0m", b"\xff", b"\x7f"),
            100,
            p([{"b64": "G1swbQ=="}, {"b64": "/w=="}, "\x7f"]),
        ),
        ((), (b"abcdef", b"gh"), 4, p(["abcd"], 2)),
        ((), (b"ab", b"cdef", b"x"), 4, p(["ab", "cd"], 3)),
        ((), (b"ab", b"cd", b"x"), 4, p(["ab", "cd", ""], 3)),
    ],
)
def test_bind_values_record_text_as_text_and_the_rest_as_base64(
    formats: tuple[int, ...], values: tuple[bytes | None, ...], max_bytes: int, want: dict[str, Any]
) -> None:
    assert cmdlane.bind_values("p", formats, values, max_bytes) == want


def test_every_control_byte_makes_a_value_base64() -> None:
    for c in range(256):
        v = bytes([0x41, c, 0x42])
        plain = c >= 0x20 or c in (9, 10, 13)
        got = cmdlane.shown(v)
        if plain and c < 0x80:
            assert got == v.decode()
        elif not plain:
            assert isinstance(got, dict)


def test_bind_members_are_what_the_encoder_writes() -> None:
    rng = random.Random(5)
    pool: list[bytes | None] = [
        None,
        b"",
        b"plain",
        b'quote " backslash \\ slash / tab \t newline \n',
        "unicode \u00e9 \u2603 \U0001f600 \u2028".encode(),
        b"\x00\x01 binary",
        b"\xff\xfe not UTF-8",
        b"\x1b[31m",
        b"\x7f del",
    ]
    for _ in range(300):
        values = tuple(rng.choice(pool) for _ in range(rng.randint(0, 6)))
        formats = tuple(rng.choice((0, 1)) for _ in range(rng.choice((0, 1, len(values)))))
        portal = rng.choice(("", "p", '\u00e9"\\'))
        fields = cmdlane.bind_values(portal, formats, values, rng.choice((4, 20, 2000)))
        assert cmdlane.bind_members(fields) == b"," + _dumps(fields)[1:-1]


@pytest.mark.parametrize("name", ["pgbench_prepared", "asyncpg_like"])
async def test_binds_recorded_through_record_later_when_much_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """cmdlane.record_bind leaves a log holding FLUSH_BYTES unwritten to record_later
    (which writes it then): the same recording."""
    calls: list[str] = []
    record_later = Session.record_later

    def counted(self: Session, *args: Any) -> None:
        calls.append(args[0])
        record_later(self, *args)

    monkeypatch.setattr(Session, "record_later", counted)
    monkeypatch.setattr(cmdlane, "FLUSH_BYTES", 0)
    taken, ended = await same_both_ways(tmp_path, SCENARIOS[name]())
    assert taken > 0 and ended == "None" and "bind" in calls


def random_steps(seed: int) -> list[Step]:
    """Batches of the lane's shape over names that exist, do not, or change, texts that
    are allowed, denied, need an approval or change names; answered with success or an
    error (the server skips the rest of the batch)."""
    rng = random.Random(seed)
    texts = [
        SELECT,
        "select v from secrets where id = $1",
        "update orders set n = $1 where id = 1",
        "select v from t where a = $1",
        "deallocate P_0",
        "select 1; select 2",
    ]
    names = ["", "P_0", "x", "nope"]
    steps: list[Step] = [(pg.parse("P_0", SELECT, ()) + pg.sync(), pg.parse_complete() + READY)]
    for _ in range(30):
        if rng.random() < 0.15:  # a name prepared, dropped or reset by SQL
            sql = rng.choice(["DEALLOCATE P_0", "DISCARD ALL", "PREPARE x AS select 1"])
            steps.append((pg.query(sql), pg.command_complete("OK") + READY))
            continue
        batch = b""
        answer = b""
        for _ in range(rng.choice((1, 1, 1, 2, 3))):  # segments
            parsed = rng.random() < 0.6
            name = rng.choice(names[:3])
            if parsed:
                batch += pg.parse(name, rng.choice(texts), ())
            binds = rng.randint(1, 3)
            for _ in range(binds):
                portal = rng.choice(["", "p"])
                statement = name if parsed and rng.random() < 0.8 else rng.choice(names)
                values = [rng.choice([b"1", None, b"\x00\xff", b"x" * rng.randint(0, 2500)])]
                batch += pg.bind(portal, statement, values, [rng.choice((0, 1))], [1])
                if rng.random() < 0.5:
                    batch += pg.describe("P", portal)
                batch += pg.execute(portal, 0)
            answer += pg.parse_complete() * parsed + PREP_ANSWER * binds
        batch += pg.sync()
        if rng.random() < 0.3:
            answer = pg.error_response("42P01", "failed") + READY
        else:
            answer += READY
        steps.append((batch, answer))
    return steps


@pytest.mark.parametrize("seed", range(8))
async def test_random_batches_do_what_the_full_path_does(tmp_path: Path, seed: int) -> None:
    taken, _ = await same_both_ways(tmp_path, random_steps(seed))
    assert taken > 0


async def test_portal_names_bound_are_not_kept_without_end(tmp_path: Path) -> None:
    """Only portals of a COPY FROM STDIN are remembered for their Execute: an agent
    binding ever new portal names leaves nothing behind per name."""
    conn, _, to_backend = relaydigest.started(tmp_path)
    conn._agent_data(pg.parse("P_0", SELECT, ()) + pg.parse("c", "copy t from stdin", ()))
    conn._agent_data(pg.sync())
    conn._backend_data(pg.parse_complete() * 2 + READY)
    for i in range(300):
        conn._agent_data(
            pg.bind(f"p{i}", "P_0", [b"1"], [0], [1]) + pg.execute(f"p{i}") + pg.sync()
        )
        conn._backend_data(PREP_ANSWER + READY)
    assert conn._portal_copies == {}
    conn._agent_data(pg.bind("cp", "c", [], [], []) + pg.sync())
    assert conn._portal_copies == {"cp": True}
    conn._agent_data(pg.bind("cp", "P_0", [b"1"], [0], [1]) + pg.sync())  # rebound
    assert conn._portal_copies == {}
    assert not conn._ended.done() and len(to_backend) == 304
