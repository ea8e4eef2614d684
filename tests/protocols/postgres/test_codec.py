"""The sans-I/O PostgreSQL codec against real wire captures and hostile input.

The fixtures under fixtures/ are byte-exact captures of real sessions (psql 15
and asyncpg against PostgreSQL 15 with SCRAM authentication, through a
recording relay): `<name>.frontend.bin` is what the client sent,
`<name>.backend.bin` what the server answered.  The password was throwaway.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hoopy.protocols.postgres import codec as pg

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURES = ["psql_simple", "psql_copy", "asyncpg_extended"]


def fixture(name: str, direction: str) -> bytes:
    return (FIXTURES / f"{name}.{direction}.bin").read_bytes()


def chunks(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def frontend_events(data: bytes, size: int | None, passwords: int = 2) -> list[Any]:
    """Drive a ServerConnection the way the proxy does: start the session after auth."""
    conn = pg.ServerConnection()
    events: list[Any] = []
    seen = 0
    for piece in chunks(data, size):
        conn.receive_data(piece)
        while (ev := conn.next_event()) is not pg.NEED_DATA:
            events.append(ev)
            if isinstance(ev, pg.PasswordMessage):
                seen += 1
                if seen == passwords:
                    conn.start_session()
    assert conn.buffered() == 0
    return events


def backend_events(data: bytes, size: int | None, ssl: bool = False) -> list[Any]:
    conn = pg.ClientConnection()
    if ssl:
        conn.expect_ssl_answer()
    events: list[Any] = []
    for piece in chunks(data, size):
        conn.receive_data(piece)
        events.extend(conn.events())
    assert conn.buffered() == 0
    return events


def expand_rows(events: Iterable[Any]) -> list[Any]:
    """DataRows coalescing depends on how bytes arrive; the rows themselves must not."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, pg.DataRows):
            rows = list(pg.iter_data_rows(ev.raw))
            assert len(rows) == ev.count
            out.extend(("row", tuple(r)) for r in rows)
        else:
            out.append(ev)
    return out


def rows_of(events: Iterable[Any]) -> list[list[bytes | None]]:
    return [list(e[1]) for e in expand_rows(events) if isinstance(e, tuple)]


def normal_server(**kw: Any) -> pg.ServerConnection:
    """A ServerConnection past startup and authentication."""
    conn = pg.ServerConnection(**kw)
    conn.receive_data(pg.startup_message({"user": "u", "database": "d"}))
    conn.receive_data(pg.password_message(b"token"))
    assert isinstance(conn.next_event(), pg.StartupMessage)
    assert isinstance(conn.next_event(), pg.PasswordMessage)
    conn.start_session()
    return conn


PRELUDE = pg.authentication_ok() + pg.ready_for_query("I")


def normal_client(**kw: Any) -> pg.ClientConnection:
    conn = pg.ClientConnection(**kw)
    conn.receive_data(PRELUDE)
    assert [type(e) for e in conn.events()] == [pg.AuthenticationOk, pg.ReadyForQuery]
    return conn


def violation(conn: pg.ServerConnection | pg.ClientConnection, data: bytes) -> pg.ProtocolViolation:
    conn.receive_data(data)
    with pytest.raises(pg.ProtocolViolation) as info:
        conn.events()
    return info.value


# ---- real captures: whole and one byte at a time -----------------------------------------
@pytest.mark.parametrize("name", CAPTURES)
def test_frontend_capture_whole_equals_bytewise(name: str) -> None:
    data = fixture(name, "frontend")
    whole = frontend_events(data, None)
    assert frontend_events(data, 1) == whole
    assert frontend_events(data, 7) == whole
    assert b"".join(e.raw for e in whole) == data


@pytest.mark.parametrize("name", CAPTURES)
def test_backend_capture_whole_equals_bytewise(name: str) -> None:
    data = fixture(name, "backend")
    ssl = name == "psql_simple"
    whole = backend_events(data, None, ssl)
    bytewise = backend_events(data, 1, ssl)
    assert expand_rows(bytewise) == expand_rows(whole)
    assert b"".join(e.raw for e in whole) == data
    assert b"".join(e.raw for e in bytewise) == data


def test_psql_simple_frontend() -> None:
    events = frontend_events(fixture("psql_simple", "frontend"), None)
    assert isinstance(events[0], pg.SSLRequest)
    startup = events[1]
    assert isinstance(startup, pg.StartupMessage)
    assert startup.protocol == 196608
    assert (startup.user, startup.database) == ("postgres", "postgres")
    assert startup.params["application_name"] == "psql"
    assert events[2].data.startswith(b"SCRAM-SHA-256\0")  # SASLInitialResponse
    queries = [e.sql for e in events if isinstance(e, pg.Query)]
    assert queries[0].startswith("SELECT g AS n, 'row ' || g AS label")
    assert queries[-3:] == ["BEGIN;", "SELECT 1;", "COMMIT;"]
    assert isinstance(events[-1], pg.Terminate)


def test_psql_simple_backend() -> None:
    events = backend_events(fixture("psql_simple", "backend"), None, ssl=True)
    assert events[0] == pg.SSLAnswer(False, b"N")
    assert events[1].mechanisms == ("SCRAM-SHA-256",)
    assert isinstance(events[2], pg.AuthenticationSASLContinue)
    assert events[2].data.startswith(b"r=")
    assert isinstance(events[3], pg.AuthenticationSASLFinal)
    assert isinstance(events[4], pg.AuthenticationOk)
    params = {e.name: e.value for e in events if isinstance(e, pg.ParameterStatus)}
    assert params["server_encoding"] == "UTF8"
    assert params["standard_conforming_strings"] == "on"
    assert any(isinstance(e, pg.BackendKeyData) and e.pid > 0 for e in events)

    desc = next(e for e in events if isinstance(e, pg.RowDescription))
    assert [f.name for f in desc.fields] == ["n", "label", "nothing"]
    assert [f.type_oid for f in desc.fields] == [23, 25, 25]
    assert desc.fields[0].type_size == 4 and desc.fields[1].type_size == -1
    first = next(e for e in events if isinstance(e, pg.DataRows))
    assert first.count == 300
    rows = list(pg.iter_data_rows(first.raw))
    assert rows[0] == [b"1", b"row 1", None]
    assert rows[299] == [b"300", b"row 300", None]

    tags = [e.tag for e in events if isinstance(e, pg.CommandComplete)]
    assert tags == ["SELECT 300", "DO", "LISTEN", "NOTIFY", "BEGIN", "SELECT 1", "COMMIT"]
    notice = next(e for e in events if isinstance(e, pg.NoticeResponse))
    assert (notice.message, notice.code, notice.severity) == ("hello notice", "00000", "NOTICE")
    note = next(e for e in events if isinstance(e, pg.NotificationResponse))
    assert (note.channel, note.payload) == ("ch", "payload")
    error = next(e for e in events if isinstance(e, pg.ErrorResponse))
    assert (error.code, error.message, error.severity) == ("22012", "division by zero", "ERROR")
    assert any(isinstance(e, pg.EmptyQueryResponse) for e in events)
    statuses = [e.status for e in events if isinstance(e, pg.ReadyForQuery)]
    assert statuses[-3:] == ["T", "T", "I"]


def test_psql_copy() -> None:
    front = frontend_events(fixture("psql_copy", "frontend"), None)
    copy_in = [e for e in front if isinstance(e, pg.CopyData | pg.CopyDone)]
    assert copy_in[0].data == b"1\talice\n2\tbob\n3\t\\N\n\\.\n"  # psql 15 sends the \.
    assert isinstance(copy_in[1], pg.CopyDone)

    back = backend_events(fixture("psql_copy", "backend"), None)
    cin = next(e for e in back if isinstance(e, pg.CopyInResponse))
    cout = next(e for e in back if isinstance(e, pg.CopyOutResponse))
    assert (cin.format, cin.column_formats) == (0, (0, 0))
    assert (cout.format, cout.column_formats) == (0, (0, 0))
    out = [e.data for e in back if isinstance(e, pg.CopyData)]
    assert out == [b"1\talice\n", b"2\tbob\n", b"3\t\\N\n"]
    assert any(isinstance(e, pg.CopyDone) for e in back)


def test_asyncpg_extended_pipeline() -> None:
    front = frontend_events(fixture("asyncpg_extended", "frontend"), None)
    assert front[0].params["client_encoding"] == "'utf-8'"
    kinds = [type(e).__name__ for e in front[3:9]]
    assert kinds == ["Parse", "Describe", "Flush", "Bind", "Execute", "Sync"]
    parse, describe, _, bind, execute, _ = front[3:9]
    assert (parse.name, parse.sql) == (
        "__asyncpg_stmt_1__",
        "SELECT $1::int + 1 AS x, $2::text AS y",
    )
    assert (describe.kind, describe.name) == ("S", "__asyncpg_stmt_1__")
    assert (bind.portal, bind.statement) == ("", "__asyncpg_stmt_1__")
    assert (execute.portal, execute.max_rows) == ("", 0)
    cursor = [e for e in front if isinstance(e, pg.Execute) and e.max_rows]
    assert [(e.portal, e.max_rows) for e in cursor] == [("__asyncpg_portal_3__", 3)]

    back = backend_events(fixture("asyncpg_extended", "backend"), None)
    described = next(e for e in back if isinstance(e, pg.ParameterDescription))
    assert described.type_oids == (23, 25)
    assert any(isinstance(e, pg.ParseComplete) for e in back)
    assert any(isinstance(e, pg.BindComplete) for e in back)
    assert any(isinstance(e, pg.PortalSuspended) for e in back)
    rows = rows_of(back)
    assert rows[0] == [b"\x00\x00\x00\x2a", b"a"]  # binary int4 42, text 'a'
    assert rows[1:] == [[b"\x00\x00\x00\x01"], [b"\x00\x00\x00\x02"], [b"\x00\x00\x00\x03"]]


# ---- startup phase ------------------------------------------------------------------------
def test_ssl_request_leaves_pipelined_bytes_visible() -> None:
    """The proxy must see bytes that arrived before the TLS handshake (CVE-2021-23214)."""
    conn = pg.ServerConnection()
    conn.receive_data(pg.ssl_request() + pg.startup_message({"user": "u"}))
    assert isinstance(conn.next_event(), pg.SSLRequest)
    assert conn.buffered() > 0


def test_gssenc_then_ssl_then_startup() -> None:
    data = pg.gssenc_request() + pg.ssl_request() + pg.startup_message({"user": "u"})
    events = frontend_events(data, None)
    assert [type(e) for e in events] == [pg.GSSENCRequest, pg.SSLRequest, pg.StartupMessage]
    assert events[2].database == ""


def test_cancel_request() -> None:
    conn = pg.ServerConnection()
    conn.receive_data(pg.cancel_request(1234, 0xDEADBEEF))
    ev = conn.next_event()
    assert ev == pg.CancelRequest(1234, 0xDEADBEEF, pg.cancel_request(1234, 0xDEADBEEF))
    assert "DEADBEEF".lower() not in repr(ev).lower() and str(0xDEADBEEF) not in repr(ev)
    assert violation(conn, b"\0").sqlstate == "08P01"  # nothing may follow a cancel


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello without SSLRequest
        b"\x00\x00\x00\x07\x00\x03\x00",  # shorter than 8
        b"\x00\x00\x27\x11",  # 10001 > 10000
        b"\xff\xff\xff\xff",
        b"Q\x00\x00\x00\x0dSELECT 1\x00",  # a typed message before startup
    ],
)
def test_garbage_before_startup(data: bytes) -> None:
    conn = pg.ServerConnection()
    assert violation(conn, data).sqlstate == "08P01"


def test_unsupported_protocol_version() -> None:
    v2 = pg.startup_message({"user": "u"}, protocol=0x20000)
    assert violation(pg.ServerConnection(), v2).sqlstate == "0A000"
    v4 = pg.startup_message({"user": "u"}, protocol=0x40000)
    assert violation(pg.ServerConnection(), v4).sqlstate == "0A000"


def test_newer_minor_versions_start_up_for_negotiation() -> None:
    conn = pg.ServerConnection()
    raw = pg.startup_message({"user": "u", "_pq_.x": "1"}, protocol=0x30002)
    conn.receive_data(raw)
    assert conn.events() == [pg.StartupMessage(0x30002, {"user": "u", "_pq_.x": "1"}, raw)]
    assert conn.phase is pg.Phase.AUTH


def test_negotiate_protocol_version_bytes() -> None:
    assert pg.negotiate_protocol_version(0, ["_pq_.a", "_pq_.b"]) == (
        b"v" + struct.pack("!III", 26, 0, 2) + b"_pq_.a\0_pq_.b\0"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"user\0u\0",  # no final terminator
        b"user\0u\0user\0v\0\0",  # duplicate parameter
        b"user\0u\0\0\0",  # bytes after the terminator
        b"user\0",  # name without value
        b"",  # nothing at all
        b"user\0\xff\xfe\0\0",  # not UTF-8
    ],
)
def test_malformed_startup_packet(body: bytes) -> None:
    packet = (len(body) + 8).to_bytes(4, "big") + (196608).to_bytes(4, "big") + body
    with pytest.raises(pg.ProtocolViolation):
        frontend_events(packet, None)


def test_repeated_ssl_request_is_refused() -> None:
    conn = pg.ServerConnection()
    conn.receive_data(pg.ssl_request())
    assert isinstance(conn.next_event(), pg.SSLRequest)
    assert violation(conn, pg.ssl_request()).sqlstate == "08P01"


# ---- phases -------------------------------------------------------------------------------
def test_only_password_messages_during_auth() -> None:
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "u"}))
    assert isinstance(conn.next_event(), pg.StartupMessage)
    assert conn.phase is pg.Phase.AUTH
    err = violation(conn, pg.query("SELECT 1"))
    assert "'Q'" in err.message and "authentication" in err.message


def test_a_huge_password_is_refused_from_its_header() -> None:
    """Before login nobody may make hoopy buffer more than PostgreSQL itself would."""
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "u"}))
    conn.next_event()
    err = violation(conn, b"p" + struct.pack("!I", 60_000_000) + b"x" * 10)
    assert err.sqlstate == "54000"
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "u"}))
    conn.next_event()
    token = b"t" * 60_000 + b"\0"  # a long token still fits
    conn.receive_data(pg.password_message(token))
    assert isinstance(conn.next_event(), pg.PasswordMessage)


def test_after_login_the_session_limit_applies() -> None:
    conn = normal_server()
    big = "SELECT '" + "x" * 200_000 + "'"
    conn.receive_data(pg.query(big))
    assert conn.next_event().sql == big  # type: ignore[union-attr]


def test_password_after_start_session_is_a_violation() -> None:
    conn = normal_server()
    err = violation(conn, pg.password_message(b"hunter2-secret"))
    assert "hunter2" not in err.message and "hunter2" not in str(err)


def test_start_session_only_from_auth() -> None:
    with pytest.raises(RuntimeError):
        pg.ServerConnection().start_session()
    conn = normal_server()
    with pytest.raises(RuntimeError):
        conn.start_session()


@pytest.mark.parametrize("t", [b"z", b"p", b"\x00", b"T", b"R"])
def test_unknown_frontend_type_in_normal_phase(t: bytes) -> None:
    assert violation(normal_server(), pg.frame(t, b"x")).sqlstate == "08P01"


def test_type_is_checked_from_the_first_byte() -> None:
    conn = normal_server()
    conn.receive_data(b"z")
    with pytest.raises(pg.ProtocolViolation):
        conn.next_event()


def test_data_after_terminate() -> None:
    conn = normal_server()
    conn.receive_data(pg.terminate())
    assert isinstance(conn.next_event(), pg.Terminate)
    assert conn.next_event() is pg.NEED_DATA
    violation(conn, pg.sync())


@pytest.mark.parametrize(
    "data",
    [
        pg.data_row([b"1"]),  # rows before the session is ready
        pg.row_description([pg.FieldDescription("a")]),
        pg.frame(b"z"),
    ],
)
def test_backend_types_checked_during_startup(data: bytes) -> None:
    violation(pg.ClientConnection(), data)


@pytest.mark.parametrize(
    "data", [pg.authentication_ok(), pg.backend_key_data(1, 2), pg.frame(b"?")]
)
def test_backend_types_checked_after_startup(data: bytes) -> None:
    violation(normal_client(), data)


def test_startup_error_from_server() -> None:
    data = pg.error_response("28P01", "password authentication failed", severity="FATAL")
    [ev] = backend_events(data, None)
    assert isinstance(ev, pg.ErrorResponse)
    assert (ev.code, ev.severity, ev.message) == (
        "28P01",
        "FATAL",
        "password authentication failed",
    )


def test_ssl_answer() -> None:
    conn = pg.ClientConnection()
    conn.expect_ssl_answer()
    assert conn.next_event() is pg.NEED_DATA
    conn.receive_data(b"S")
    assert conn.next_event() == pg.SSLAnswer(True, b"S")
    conn.expect_ssl_answer()
    assert violation(conn, b"E").sqlstate == "08P01"


# ---- sizes and malformed bodies -----------------------------------------------------------
def test_oversize_message_is_refused_from_its_header() -> None:
    conn = normal_server(max_message_size=1024)
    conn.receive_data(b"Q" + (1025).to_bytes(4, "big"))  # body never sent
    with pytest.raises(pg.ProtocolViolation) as info:
        conn.next_event()
    assert info.value.sqlstate == "54000"


def test_message_at_the_limit_is_accepted() -> None:
    sql = "x" * (1024 - 5)
    conn = normal_server(max_message_size=1024)
    conn.receive_data(pg.query(sql))
    assert conn.next_event() == pg.Query(sql, pg.query(sql))


@pytest.mark.parametrize("length", [0, 3, 0x80000000, 0xFFFFFFFF])
def test_short_and_negative_lengths(length: int) -> None:
    header = b"S" + length.to_bytes(4, "big")
    violation(normal_server(), header)
    violation(normal_client(), header)


def test_oversize_data_row_in_a_run() -> None:
    conn = normal_client(max_message_size=1024)
    good = pg.data_row([b"a"])
    violation(conn, good + b"D" + (4096).to_bytes(4, "big"))


def test_unparsed_buffer_is_capped() -> None:
    sync = pg.sync()
    flood = sync * ((1 << 20) // len(sync) + 1000)
    conn = normal_server(max_message_size=1024)
    with pytest.raises(pg.ProtocolViolation) as info:
        conn.receive_data(flood)
    assert info.value.sqlstate == "54000"
    drained = normal_server(max_message_size=1024)
    n = 0
    for piece in chunks(flood, 65536):
        drained.receive_data(piece)
        n += len(drained.events())
    assert n == len(flood) // len(sync)


@pytest.mark.parametrize(
    "data",
    [
        pg.frame(b"Q", b"SELECT 1"),  # no terminator
        pg.frame(b"Q", b"SELECT 1\0; DROP TABLE t\0"),  # smuggled second string
        pg.frame(b"Q", b"SELECT '\xff'\0"),  # not UTF-8
        pg.frame(b"S", b"x"),  # Sync has no body
        pg.frame(b"D", b"Xname\0"),  # Describe kind
        pg.frame(b"P", b"s\0SELECT 1\0\x00\x02\x00\x00\x00\x17"),  # 2 types, 1 sent
        pg.frame(b"E", b"\0\0\0"),  # Execute row count cut short
        pg.frame(b"B", b"\0s\0\x00\x00\x00\x01\x00\x00\x00\x09abc\x00\x00"),  # value overruns
    ],
)
def test_malformed_frontend_bodies(data: bytes) -> None:
    violation(normal_server(), data)


def test_non_utf8_sql_has_its_own_sqlstate() -> None:
    assert violation(normal_server(), pg.frame(b"Q", b"SELECT '\xe9'\0")).sqlstate == "22021"


@pytest.mark.parametrize(
    "data",
    [
        pg.frame(b"Z", b"X"),  # transaction status
        pg.frame(b"Z", b""),
        pg.frame(b"T", b"\x00\x01a\0\0\0"),  # field cut short
        pg.frame(b"E", b"Mno terminator"),
        pg.frame(b"K", b"\0\0\0\1"),
        pg.frame(b"1", b"x"),
        pg.frame(b"t", b"\x00\x02\x00\x00\x00\x17"),
    ],
)
def test_malformed_backend_bodies(data: bytes) -> None:
    violation(normal_client(), data)


def test_connection_stays_failed() -> None:
    conn = normal_server()
    violation(conn, pg.frame(b"z"))
    with pytest.raises(pg.ProtocolViolation, match="already failed"):
        conn.receive_data(pg.sync())
    with pytest.raises(pg.ProtocolViolation, match="already failed"):
        conn.next_event()


# ---- DataRows fast path -------------------------------------------------------------------
def test_data_rows_coalesce_complete_rows_only() -> None:
    rows = [[b"1", b"alice"], [None, b""], [b"3", b"\x00\xff"]]
    stream = b"".join(pg.data_row(r) for r in rows)
    conn = normal_client()
    conn.receive_data(stream + pg.data_row([b"partial"])[:-2])
    [ev] = conn.events()
    assert ev == pg.DataRows(stream, 3)
    assert list(pg.iter_data_rows(ev.raw)) == rows
    conn.receive_data(b"al" + pg.command_complete("SELECT 4"))
    more = conn.events()
    assert [type(e) for e in more] == [pg.DataRows, pg.CommandComplete]
    assert more[0].count == 1 and more[1].tag == "SELECT 4"


def test_million_rows_parse_fast_and_in_few_events() -> None:
    row = pg.data_row([b"12345", b"some text value", None])
    stream = PRELUDE + row * 1_000_000 + pg.command_complete("SELECT")
    conn = pg.ClientConnection()
    start = time.perf_counter()
    rows = events = 0
    for piece in chunks(stream, 256 * 1024):
        conn.receive_data(piece)
        for ev in conn.events():
            events += 1
            if type(ev) is pg.DataRows:
                rows += ev.count
    elapsed = time.perf_counter() - start
    assert rows == 1_000_000
    assert events <= len(stream) // (256 * 1024) + 4
    assert elapsed < 1.5, f"1M DataRows took {elapsed:.2f} s"


@pytest.mark.parametrize(
    "raw",
    [
        b"D\x00\x00\x00\x06\x00\x01",  # one column announced, none sent
        b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x05ab",  # value overruns the message
        b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xfe",  # length -2
        # length -8 would step back onto the first value and re-read it as a third column
        b"D\x00\x00\x00\x12\x00\x03" + b"\x00\x00\x00\x04" * 2 + b"\xff\xff\xff\xf8",
        b"D\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00",  # bytes after the last column
        b"C\x00\x00\x00\x04",  # not a DataRow
        b"D\x00\x00\x00\x40\x00\x00",  # message longer than the chunk
    ],
)
def test_iter_data_rows_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(pg.ProtocolViolation):
        list(pg.iter_data_rows(raw))


# ---- encoders -----------------------------------------------------------------------------
def test_server_side_encoders_round_trip() -> None:
    fields = (
        pg.FieldDescription("id", 16384, 1, 23, 4, -1, 0),
        pg.FieldDescription("naïve", 0, 0, 25, -1, -1, 1),
    )
    parts = [
        pg.parameter_status("server_version", "15.4"),
        pg.backend_key_data(0xFFFFFFFF, 7),
        pg.row_description(fields),
        pg.data_row([b"1", None]),
        pg.command_complete("SELECT 1"),
        pg.empty_query_response(),
        pg.parse_complete(),
        pg.bind_complete(),
        pg.close_complete(),
        pg.no_data(),
        pg.notice_response("waiting for approval 42"),
        pg.error_response("42501", "denied by rule x", detail="why", hint="ask"),
        pg.ready_for_query("E"),
    ]
    conn = pg.ClientConnection()
    conn.receive_data(pg.authentication_cleartext_password() + pg.authentication_ok())
    conn.receive_data(b"".join(parts[:2]) + pg.ready_for_query("I") + b"".join(parts[2:]))
    ev = conn.events()
    assert isinstance(ev[0], pg.AuthenticationCleartextPassword)
    assert (ev[2].name, ev[2].value) == ("server_version", "15.4")
    assert (ev[3].pid, ev[3].key) == (0xFFFFFFFF, 7)
    assert ev[5].fields == fields
    assert list(pg.iter_data_rows(ev[6].raw)) == [[b"1", None]]
    assert ev[-3].fields == {
        "S": "NOTICE",
        "V": "NOTICE",
        "C": "00000",
        "M": "waiting for approval 42",
    }
    error = ev[-2].fields
    assert error == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "denied by rule x",
        "D": "why",
        "H": "ask",
    }
    assert ev[-1].status == "E"
    assert b"".join(e.raw for e in ev[2:]) == b"".join(parts[:2]) + pg.ready_for_query() + b"".join(
        parts[2:]
    )


def test_client_side_encoders_round_trip() -> None:
    client = pg.ClientConnection()
    startup = client.startup_message({"user": "app", "database": "db", "application_name": "x"})
    server = pg.ServerConnection()
    server.receive_data(startup + client.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))
    server.receive_data(client.sasl_response(b"c=biws,r=abc,p=xyz"))
    ev = [server.next_event() for _ in range(3)]
    assert ev[0].params == {"user": "app", "database": "db", "application_name": "x"}
    assert ev[1].data == b"SCRAM-SHA-256\0\x00\x00\x00\x0bn,,n=,r=abc"
    assert ev[2].data == b"c=biws,r=abc,p=xyz"
    server.start_session()
    server.receive_data(client.query("SELECT 1") + client.sync() + client.terminate())
    assert [type(e) for e in server.events()] == [pg.Query, pg.Sync, pg.Terminate]
    assert client.ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert client.cancel_request(1, 2)[8:] == b"\0\0\0\1\0\0\0\2"
    assert pg.password_message(b"pw") == b"p\x00\x00\x00\x07pw\x00"


def test_frontend_encoders_round_trip() -> None:
    data = [
        pg.parse("s1", "SELECT $1", [23]),
        pg.bind("p1", "s1", [b"42", None], [1], [0, 1]),
        pg.describe("P", "p1"),
        pg.execute("p1", 10),
        pg.close("S", "s1"),
        pg.flush(),
        pg.copy_data(b"1\tx\n"),
        pg.copy_done(),
        pg.copy_fail("client gave up"),
    ]
    conn = normal_server()
    conn.receive_data(b"".join(data))
    expected = [
        pg.Parse("s1", "SELECT $1", (23,), data[0]),
        pg.Bind("p1", "s1", data[1], (0, 1), (1,), (b"42", None)),
        pg.Describe("P", "p1", data[2]),
        pg.Execute("p1", 10, data[3]),
        pg.Close("S", "s1", data[4]),
        pg.Flush(data[5]),
        pg.CopyData(b"1\tx\n", data[6]),
        pg.CopyDone(data[7]),
        pg.CopyFail("client gave up", data[8]),
    ]
    assert conn.events() == expected


def test_encoders_refuse_nul_in_identifiers_and_sql() -> None:
    with pytest.raises(ValueError):
        pg.query("SELECT 1\0; DROP TABLE t")
    with pytest.raises(ValueError):
        pg.parameter_status("a\0", "b")
    with pytest.raises(ValueError):
        pg.startup_message({"user": "a\0database\0postgres"})
    with pytest.raises(ValueError):
        pg.describe("X", "name")
    # Error texts are shown, never parsed for meaning: NUL is dropped, fields stay framed.
    conn = pg.ClientConnection()
    conn.receive_data(pg.error_response("42501", "bad\0Cinjected"))
    [ev] = conn.events()
    assert ev.fields["M"] == "badCinjected" and ev.code == "42501"


def test_reprs_leave_out_secrets_and_payloads() -> None:
    pw = pg.password_message(b"eyJhbGciOi.secret-token")
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "u"}) + pw)
    conn.next_event()
    ev = conn.next_event()
    assert isinstance(ev, pg.PasswordMessage) and ev.data == b"eyJhbGciOi.secret-token\0"
    assert "secret" not in repr(ev)
    assert repr(pg.DataRows(b"D" * 10, 3)) == "DataRows(count=3)"


@pytest.mark.parametrize("step", [None, 1, 7])
def test_opaque_types_pass_through_unparsed_but_framed(step: int | None) -> None:
    conn = normal_server()
    conn.opaque = frozenset(b"BDEH")
    data = [
        pg.parse("s1", "SELECT $1", (23,)),
        pg.bind("p1", "s1", [b"1"], [0], [1]),
        pg.describe("P", "p1"),
        pg.execute("p1", 0),
        pg.flush(),
        pg.sync(),
    ]
    stream = b"".join(data)
    events: list[Any] = []
    chunks = (
        [stream] if step is None else [stream[i : i + step] for i in range(0, len(stream), step)]
    )
    for chunk in chunks:
        conn.receive_data(chunk)
        events.extend(conn.events())
    names = [type(e).__name__ for e in events]
    assert names[0] == "Parse" and names[-1] == "Sync"
    middle = events[1:-1]
    assert {type(e) for e in middle} == {pg.Passthrough}
    if step is None:
        assert len(middle) == 1  # complete consecutive opaque messages come as one run
    assert b"".join(e.raw for e in events) == stream
    assert b"".join(e.types for e in middle) == b"BDEH"
    assert all(len(e.types) >= 1 for e in middle)


def test_opaque_run_stops_at_an_incomplete_message() -> None:
    conn = normal_server()
    conn.opaque = frozenset(b"BE")
    bind, execute = pg.bind("", "", [], [], []), pg.execute("", 0)
    conn.receive_data(bind + execute[:-1])
    (ev,) = conn.events()
    assert isinstance(ev, pg.Passthrough) and ev.types == b"B" and ev.raw == bind
    conn.receive_data(execute[-1:] + pg.sync())
    ev, sync = conn.events()
    assert isinstance(ev, pg.Passthrough) and ev.raw == execute and isinstance(sync, pg.Sync)


def test_opaque_types_keep_length_limits_and_phase_checks() -> None:
    conn = normal_server(max_message_size=64)
    conn.opaque = frozenset(b"B")
    conn.receive_data(b"B" + struct.pack("!I", 10_000))
    with pytest.raises(pg.ProtocolViolation):
        conn.events()
    fresh = pg.ServerConnection()
    fresh.opaque = frozenset(b"B")
    fresh.receive_data(pg.bind("", "", [], [], []))  # before any startup message
    with pytest.raises(pg.ProtocolViolation):
        fresh.events()


# ---- ClientConnection.relay_run: the pass-through of sessions without masking -------------
RESULT = (
    pg.parse_complete()
    + pg.bind_complete()
    + pg.row_description([pg.FieldDescription("a", 0, 0, 23, 4, -1, 0)])
    + pg.data_row([b"1"])
    + pg.data_row([None])
    + pg.data_row([b"3"])
    + pg.command_complete("SELECT 3")
    + pg.empty_query_response()
    + pg.ready_for_query("T")
)


def relay_all(conn: pg.ClientConnection, chunks: list[bytes]) -> tuple[bytes, list[Any]]:
    """Feed chunks; collect what relay_run passes and the marks, re-based on the stream."""
    passed, marks, offset = b"", [], 0
    for chunk in chunks:
        conn.receive_data(chunk)
        while (run := conn.relay_run()) is not None:
            raw, run_marks = run
            marks += [(t, offset + a, offset + b) for t, a, b in run_marks]
            passed += raw
            offset += len(raw)
    return passed, marks


def merged(marks: list[Any]) -> list[Any]:
    """Adjacent DataRow marks (split only by chunking) as one."""
    out: list[Any] = []
    for t, a, b in marks:
        if out and t == ord("D") and out[-1][0] == t and out[-1][2] == a:
            out[-1] = (t, out[-1][1], b)
        else:
            out.append((t, a, b))
    return out


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_relay_run_passes_results_through_with_marks(step: int | None) -> None:
    chunks = (
        [RESULT] if step is None else [RESULT[i : i + step] for i in range(0, len(RESULT), step)]
    )
    conn = normal_client()
    passed, marks = relay_all(conn, chunks)
    assert passed == RESULT and conn.buffered() == 0
    kinds = [chr(t) for t, _, _ in merged(marks)]
    # ParseComplete marked (prepared statements count from it), BindComplete not
    assert kinds == ["1", "T", "D", "C", "I", "Z"]
    (rows,) = [(a, b) for t, a, b in merged(marks) if t == ord("D")]
    assert list(pg.iter_data_rows(RESULT, *rows)) == [[b"1"], [None], [b"3"]]
    (c,) = [(a, b) for t, a, b in marks if t == ord("C")]
    assert RESULT[c[0] + 5 : c[1] - 1] == b"SELECT 3"
    (z,) = [a for t, a, _ in marks if t == ord("Z")]
    assert RESULT[z + 5 : z + 6] == b"T"


def test_relay_run_stops_at_other_messages_and_leaves_them_to_next_event() -> None:
    conn = normal_client()
    notice = pg.notice_response("hello")
    conn.receive_data(pg.data_row([b"1"]) + notice + pg.ready_for_query("I"))
    raw, marks = conn.relay_run() or (b"", [])
    assert raw == pg.data_row([b"1"]) and [chr(t) for t, _, _ in marks] == ["D"]
    assert conn.relay_run() is None  # a NoticeResponse is not passed through blindly
    assert isinstance(conn.next_event(), pg.NoticeResponse)
    raw, _ = conn.relay_run() or (b"", [])
    assert raw == pg.ready_for_query("I") and conn.relay_run() is None


def test_relay_run_is_off_before_the_session_and_on_incomplete_messages() -> None:
    fresh = pg.ClientConnection()
    fresh.receive_data(pg.ready_for_query("I"))
    assert fresh.relay_run() is None  # startup phase: events only
    conn = normal_client()
    conn.receive_data(pg.ready_for_query("I")[:-1])
    assert conn.relay_run() is None and conn.next_event() is pg.NEED_DATA


@pytest.mark.parametrize(
    "bad",
    [
        b"Z" + struct.pack("!I", 5) + b"X",  # ReadyForQuery with an unknown status
        b"Z" + struct.pack("!I", 6) + b"II",
        b"1" + struct.pack("!I", 5) + b"x",  # a bodiless message with a body
        b"C" + struct.pack("!I", 8) + b"a\0b\0",  # a NUL inside CommandComplete
        b"C" + struct.pack("!I", 6) + b"ab",  # no terminator
        b"D" + struct.pack("!I", 2),  # length below 4
        b"D" + struct.pack("!I", 1 << 30),  # over the message size cap
    ],
)
def test_relay_run_refuses_malformed_messages(bad: bytes) -> None:
    conn = normal_client(max_message_size=1 << 20)
    conn.receive_data(pg.data_row([b"1"]) + bad + b"\0" * 8)
    with pytest.raises(pg.ProtocolViolation):
        while conn.relay_run() is not None:
            pass
    with pytest.raises(pg.ProtocolViolation):
        conn.relay_run()  # the connection stays failed
