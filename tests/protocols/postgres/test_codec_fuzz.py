"""Property tests for the PostgreSQL codec: hostile bytes and random valid streams."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopy.protocols.postgres import codec as pg

FIXTURES = Path(__file__).parent / "fixtures"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ASYNCPG_FRONT = (FIXTURES / "asyncpg_extended.frontend.bin").read_bytes()
PSQL_BACK = (FIXTURES / "psql_simple.backend.bin").read_bytes()[1:]  # without the SSL answer


def feed(
    conn: pg.ServerConnection | pg.ClientConnection, data: bytes, size: int, passwords: int = 1
) -> list[Any]:
    """Feed in pieces; only ProtocolViolation may escape, and parsing always terminates."""
    events: list[Any] = []
    seen = 0
    try:
        for i in range(0, len(data), size):
            conn.receive_data(data[i : i + size])
            while (ev := conn.next_event()) is not pg.NEED_DATA:
                events.append(ev)
                assert len(events) <= len(data)  # every event consumes at least one byte
                if isinstance(conn, pg.ServerConnection) and isinstance(ev, pg.PasswordMessage):
                    seen += 1
                    if seen == passwords:
                        conn.start_session()
    except pg.ProtocolViolation as e:
        assert e.sqlstate in ("08P01", "54000", "0A000", "22021")
        return events
    for ev in events:
        if isinstance(ev, pg.DataRows):
            # Framing is checked on arrival, row contents only when decoded.
            with contextlib.suppress(pg.ProtocolViolation):
                assert len(list(pg.iter_data_rows(ev.raw))) == ev.count
    return events


def server_in(phase: str) -> pg.ServerConnection:
    conn = pg.ServerConnection(max_message_size=4096)
    if phase != "startup":
        conn.receive_data(pg.startup_message({"user": "u"}))
        conn.next_event()
    if phase == "normal":
        conn.receive_data(pg.password_message(b"t"))
        conn.next_event()
        conn.start_session()
    return conn


def client_in(phase: str) -> pg.ClientConnection:
    conn = pg.ClientConnection(max_message_size=4096)
    if phase == "ssl":
        conn.expect_ssl_answer()
    elif phase == "normal":
        conn.receive_data(pg.authentication_ok() + pg.ready_for_query())
        conn.events()
    return conn


@SETTINGS
@given(
    st.sampled_from(["startup", "auth", "normal"]),
    st.binary(max_size=600),
    st.integers(1, 64),
)
def test_server_survives_arbitrary_bytes(phase: str, data: bytes, size: int) -> None:
    feed(server_in(phase), data, size)


@SETTINGS
@given(st.sampled_from(["ssl", "startup", "normal"]), st.binary(max_size=600), st.integers(1, 64))
def test_client_survives_arbitrary_bytes(phase: str, data: bytes, size: int) -> None:
    feed(client_in(phase), data, size)


def mutate(base: bytes, at: int, cut: int, insert: bytes) -> bytes:
    at %= len(base)
    return base[:at] + insert + base[at + cut :]


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 8), st.binary(max_size=8), st.integers(1, 300))
def test_server_survives_mutated_capture(at: int, cut: int, insert: bytes, size: int) -> None:
    data = mutate(ASYNCPG_FRONT, at, cut, insert)
    feed(pg.ServerConnection(max_message_size=4096), data, size, passwords=2)


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 8), st.binary(max_size=8), st.integers(1, 300))
def test_client_survives_mutated_capture(at: int, cut: int, insert: bytes, size: int) -> None:
    feed(pg.ClientConnection(max_message_size=4096), mutate(PSQL_BACK, at, cut, insert), size)


@SETTINGS
@given(st.binary(max_size=300))
def test_iter_data_rows_survives_arbitrary_bytes(data: bytes) -> None:
    for raw in (data, b"D" + data):
        with contextlib.suppress(pg.ProtocolViolation):
            list(pg.iter_data_rows(raw))


# ---- random valid streams -----------------------------------------------------------------
text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)
values = st.lists(st.none() | st.binary(max_size=10), max_size=4)
int16 = st.integers(0, 0xFFFF)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
kind = st.sampled_from("SP")


def _bind(p: str, s: str, v: list[bytes | None], pf: list[int], rf: list[int]) -> pg.Bind:
    return pg.Bind(p, s, pg.bind(p, s, v, pf, rf), tuple(rf), tuple(pf), tuple(v))


frontend_message = st.one_of(
    st.builds(lambda s: pg.Query(s, pg.query(s)), text),
    st.builds(
        lambda n, s, t: pg.Parse(n, s, tuple(t), pg.parse(n, s, t)),
        text,
        text,
        st.lists(uint32, max_size=3),
    ),
    st.builds(_bind, text, text, values, st.lists(int16, max_size=3), st.lists(int16, max_size=3)),
    st.builds(lambda k, n: pg.Describe(k, n, pg.describe(k, n)), kind, text),
    st.builds(lambda k, n: pg.Close(k, n, pg.close(k, n)), kind, text),
    st.builds(lambda p, n: pg.Execute(p, n, pg.execute(p, n)), text, int32),
    st.builds(lambda d: pg.CopyData(d, pg.copy_data(d)), st.binary(max_size=20)),
    st.builds(lambda m: pg.CopyFail(m, pg.copy_fail(m)), text),
    st.sampled_from([pg.Sync(pg.sync()), pg.Flush(pg.flush()), pg.CopyDone(pg.copy_done())]),
)

field = st.builds(
    pg.FieldDescription,
    text,
    uint32,
    st.integers(-(2**15), 2**15 - 1),
    uint32,
    st.integers(-(2**15), 2**15 - 1),
    int32,
    st.integers(0, 1),
)


def _error(code: str, msg: str, detail: str | None) -> pg.ErrorResponse:
    raw = pg.error_response(code, msg, detail=detail)
    fields = {"S": "ERROR", "V": "ERROR", "C": code, "M": msg}
    if detail is not None:
        fields["D"] = detail
    return pg.ErrorResponse(fields, raw)


backend_message = st.one_of(
    st.builds(lambda r: pg.DataRows(pg.data_row(r), 1), values),
    st.builds(
        lambda f: pg.RowDescription(tuple(f), pg.row_description(f)), st.lists(field, max_size=3)
    ),
    st.builds(lambda t: pg.CommandComplete(t, pg.command_complete(t)), text),
    st.builds(lambda n, v: pg.ParameterStatus(n, v, pg.parameter_status(n, v)), text, text),
    st.builds(lambda s: pg.ReadyForQuery(s, pg.ready_for_query(s)), st.sampled_from("ITE")),
    st.builds(_error, text, text, st.none() | text),
    st.sampled_from(
        [
            pg.EmptyQueryResponse(pg.empty_query_response()),
            pg.ParseComplete(pg.parse_complete()),
            pg.BindComplete(pg.bind_complete()),
            pg.CloseComplete(pg.close_complete()),
            pg.NoData(pg.no_data()),
        ]
    ),
)


def rows_expanded(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, pg.DataRows):
            out.extend(("row", tuple(r)) for r in pg.iter_data_rows(ev.raw))
        else:
            out.append(ev)
    return out


@SETTINGS
@given(st.lists(frontend_message, max_size=25), st.integers(1, 40))
def test_random_frontend_streams_round_trip(expected: list[Any], size: int) -> None:
    data = b"".join(e.raw for e in expected)
    conn = server_in("normal")
    got = feed(conn, data, size)
    assert got == expected
    assert conn.buffered() == 0


@SETTINGS
@given(st.lists(backend_message, max_size=25), st.integers(1, 40))
def test_random_backend_streams_round_trip(expected: list[Any], size: int) -> None:
    data = b"".join(e.raw for e in expected)
    got = feed(client_in("normal"), data, size)
    assert rows_expanded(got) == rows_expanded(expected)
    assert b"".join(e.raw for e in got) == data


def relay_feed(data: bytes, size: int) -> tuple[bytes, list[Any]]:
    """Feed in pieces, taking relay runs first and events where a run stops."""
    conn = client_in("normal")
    passed, events = b"", []
    for i in range(0, len(data), size):
        conn.receive_data(data[i : i + size])
        while True:
            run = conn.relay_run()
            if run is not None:
                raw, marks = run
                assert all(0 <= a < b <= len(raw) for _, a, b in marks)
                passed += raw
                continue
            ev = conn.next_event()
            if ev is pg.NEED_DATA:
                break
            events.append(ev)
            passed += ev.raw
    assert conn.buffered() == len(data) - len(passed)
    return passed, events


@SETTINGS
@given(st.lists(backend_message, max_size=25), st.integers(1, 40))
def test_relay_runs_and_events_together_carry_every_byte(expected: list[Any], size: int) -> None:
    data = b"".join(e.raw for e in expected)
    passed, events = relay_feed(data, size)
    assert passed == data
    relayed = (pg.DataRows, pg.RowDescription, pg.CommandComplete, pg.ReadyForQuery)
    relayed += (pg.EmptyQueryResponse, pg.ParseComplete, pg.BindComplete, pg.CloseComplete)
    relayed += (pg.NoData,)
    # what a run does not take comes as the events it is, nothing else
    assert [e for e in expected if not isinstance(e, relayed)] == events


@SETTINGS
@given(st.binary(max_size=600), st.integers(1, 64))
def test_relay_run_survives_arbitrary_bytes(data: bytes, size: int) -> None:
    try:
        relay_feed(pg.ready_for_query("I") + data, size)
    except pg.ProtocolViolation as e:
        assert e.sqlstate in ("08P01", "54000")
