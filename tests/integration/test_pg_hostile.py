"""Malformed input, leaks, recordings: the session that misbehaves gets a
protocol-correct error, others are unaffected, and every recording verifies."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoopy.protocols.postgres import codec as pg
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy


def raw_connect(hoopy: Hoopy, tls: bool = True) -> socket.socket | ssl.SSLSocket:
    s = socket.create_connection(("127.0.0.1", hoopy.pg_port), timeout=10)
    if not tls:
        return s
    s.sendall(pg.ssl_request())
    assert s.recv(1) == b"S"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def login(hoopy: Hoopy, s: socket.socket) -> None:
    s.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))
    assert s.recv(9)[:1] == b"R"  # AuthenticationCleartextPassword
    s.sendall(pg.password_message(hoopy.token().encode() + b"\0"))
    got = b""
    while not got.endswith(pg.ready_for_query("I")):
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk


def test_garbage_before_startup(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy, tls=False)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = read_all(s)
    assert reply[:1] == b"E" and b"08P01" in reply


def test_oversized_message_after_login(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(b"Q" + struct.pack("!I", 0x7FFFFFF0))
    reply = read_all(s)
    assert reply[:1] == b"E" and (b"08P01" in reply or b"54000" in reply)


def test_truncated_message_then_close(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(b"Q" + struct.pack("!I", 100) + b"select")
    s.close()
    # other sessions are unaffected
    r = hoopy.psql("-At", "-c", "select 7")
    assert r.stdout.strip() == "7"


def test_wrong_message_type_for_state(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    s.sendall(pg.query("select 1"))  # a query before any startup message
    reply = read_all(s)
    assert reply[:1] == b"E" and b"08P01" in reply


def test_data_after_sslrequest_is_refused(hoopy: Hoopy) -> None:
    s = socket.create_connection(("127.0.0.1", hoopy.pg_port), timeout=10)
    s.sendall(pg.ssl_request() + pg.startup_message({"user": "x", "database": "app-db"}))
    reply = read_all(s)
    assert b"S" not in reply[:1]


def test_fastpath_function_call_of_a_non_function_refused(hoopy: Hoopy) -> None:
    """OID 1247 is pg_type's, no function's: refused (fast-path calls of functions:
    test_pg_fastpath.py)."""
    s = raw_connect(hoopy)
    login(hoopy, s)
    body = struct.pack("!Ihhh", 1247, 0, 0, 0)  # fn oid, no formats, no args, text result
    s.sendall(b"F" + struct.pack("!I", len(body) + 4) + body)
    got = b""
    while not got.endswith(pg.ready_for_query("I")):
        chunk = s.recv(65536)
        assert chunk
        got += chunk
    assert b"42501" in got and b"fast-path" in got


def test_no_secret_in_logs_recordings_or_replies(hoopy: Hoopy, backend: Backend) -> None:
    token = hoopy.token("leak-check")
    r = hoopy.psql(
        "-At",
        "-v",
        "ON_ERROR_STOP=0",
        token=token,
        input=("select current_setting('application_name');\nselect 1/0;\ndrop table orders;\n"),
    )
    assert backend.app_password not in r.stdout + r.stderr
    rec = hoopy.folder / "recordings"
    blob = "".join(p.read_text() for p in rec.rglob("*.jsonl"))
    assert blob, "no recordings written"
    assert backend.app_password not in blob
    assert token not in blob
    assert backend.app_password not in hoopy.log_text() and token not in hoopy.log_text()


def _session_files(hoopy: Hoopy) -> list[Path]:
    return sorted((hoopy.folder / "recordings").rglob("*.jsonl"))


def test_recording_holds_statements_decisions_and_results(hoopy: Hoopy) -> None:
    r = hoopy.psql(
        "-At",
        "-v",
        "ON_ERROR_STOP=0",
        token=hoopy.token("recorded-agent"),
        input="select name from customers where id = 3;\ntruncate orders;\n",
    )
    assert "Grace Hopper" in r.stdout
    listing = hoopy.cli("sessions", "list", "--subject", "recorded-agent")
    sid = listing.stdout.split()[0]
    show = hoopy.cli("sessions", "show", sid)
    events = [json.loads(line) for line in show.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "session_start" and types[-1] == "session_end"
    cmds = [e for e in events if e["type"] == "command"]
    assert cmds[0]["outcome"] == "allow" and "customers" in cmds[0]["text"]
    assert cmds[1]["outcome"] == "deny" and cmds[1]["rule"] == "no-schema-changes"
    results = [e for e in events if e["type"] == "result"]
    assert results[0]["rows"] == [["Grace Hopper"]] and results[0]["tag"] == "SELECT 1"


def test_verify_passes_then_fails_after_one_byte_changes(hoopy: Hoopy) -> None:
    hoopy.psql("-c", "select 1")
    ok = hoopy.cli("verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    victim = _session_files(hoopy)[0]
    data = bytearray(victim.read_bytes())
    i = data.index(b'"type"') + 2
    data[i] ^= 0x01
    victim.write_bytes(bytes(data))
    try:
        bad = hoopy.cli("verify")
        assert bad.returncode == 1
        assert "BROKEN" in bad.stdout
    finally:
        data[i] ^= 0x01
        victim.write_bytes(bytes(data))
    assert hoopy.cli("verify").returncode == 0


def test_broken_session_recording_is_complete(hoopy: Hoopy) -> None:
    before = set(_session_files(hoopy))
    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(b"Z" + struct.pack("!I", 4))  # a backend-only message type from the agent
    reply = read_all(s)
    assert reply[:1] == b"E"
    new = set(_session_files(hoopy)) - before
    assert new
    v = hoopy.cli("verify")
    assert v.returncode == 0, v.stdout
    events = [json.loads(x) for p in new for x in p.read_text().splitlines()]
    assert events[-1]["type"] == "session_end"


def test_recorded_results_keep_columns_rows_caps_and_order(hoopy: Hoopy) -> None:
    """What the pass-through records of each result: columns, rows as the agent got them
    (capped at record_rows, default 100), and the tag, in statement order."""
    r = hoopy.psql(
        "-At",
        "-c",
        "select i as n, 'x' || i as label from generate_series(1, 250) i; "
        "select null::text as nothing, 'é' as accent; select 1 where false",
        token=hoopy.token("results-agent"),
    )
    assert r.returncode == 0 and r.stdout.count("\n") >= 251
    sid = hoopy.cli("sessions", "list", "--subject", "results-agent").stdout.split()[0]
    events = [json.loads(x) for x in hoopy.cli("sessions", "show", sid).stdout.splitlines()]
    results = [e for e in events if e["type"] == "result"]
    assert [e["tag"] for e in results] == ["SELECT 250", "SELECT 1", "SELECT 0"]
    big, small, empty = results
    assert big["columns"] == ["n", "label"] and big["truncated"] is True
    assert len(big["rows"]) == 100 and big["rows"][:2] == [["1", "x1"], ["2", "x2"]]
    assert small["columns"] == ["nothing", "accent"] and small["rows"] == [[None, "é"]]
    assert "truncated" not in small
    assert empty["rows"] == [] and empty["columns"] == ["?column?"]


def _messages(s: socket.socket, until: bytes, count: int = 1) -> bytes:
    got = b""
    while got.count(until) < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


async def test_settings_switch_in_a_pipeline_cannot_smuggle_a_statement(
    hoopy: Hoopy, backend: Backend
) -> None:
    """With standard_conforming_strings off the server reads 'x\\' , ' as one string and
    runs the TRUNCATE after it; hoopy (which parses with it on) saw a harmless SELECT.
    The SET itself is refused (0A000, test_pg_text_settings.py); a switch hoopy cannot
    see (a function) makes the text wait for its answer, which ends the session: the
    TRUNCATE never runs."""
    conn = await backend.app_conn()
    try:
        await conn.execute("drop table if exists scs_probe; create table scs_probe (x int)")
        await conn.execute("insert into scs_probe values (1)")
        s = raw_connect(hoopy)
        login(hoopy, s)
        s.sendall(
            pg.query("SET standard_conforming_strings = off")
            + pg.query("SELECT 'x\\' , ' ; TRUNCATE scs_probe; --'")
        )
        s.sendall(pg.terminate())
        reply = read_all(s)
        assert b"0A000" in reply and b"standard_conforming_strings" in reply
        assert await conn.fetchval("select count(*) from scs_probe") == 1
        # the same through a function the policy cannot see into
        await conn.execute(
            "create or replace function scs_flip() returns int language plpgsql as $$ "
            "begin perform set_config('standard_conforming_strings', 'off', false); "
            "return 1; end $$"
        )
        s = raw_connect(hoopy)
        login(hoopy, s)
        s.sendall(
            pg.query("SELECT scs_flip()") + pg.query("SELECT 'x\\' , ' ; TRUNCATE scs_probe; --'")
        )
        reply = read_all(s)
        assert b"08P01" in reply
        assert await conn.fetchval("select count(*) from scs_probe") == 1
    finally:
        await conn.execute("drop table if exists scs_probe; drop function if exists scs_flip()")
        await conn.close()


def test_pipelined_backslash_texts_wait_and_run(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(pg.query("select 'one'") + pg.query("select 'a\\b' as v") + pg.query("select 3"))
    got = _messages(s, pg.ready_for_query("I"), 3)
    assert b"one" in got and b"a\\b" in got


def test_backslash_parse_after_an_unsynced_execute_is_refused(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(
        pg.parse("", "select 1", [])
        + pg.bind("", "", [], [], [])
        + pg.execute("", 0)
        + pg.parse("", "select E'a\\\\b'", [])
        + pg.bind("", "", [], [], [])
        + pg.execute("", 0)
        + pg.sync()
    )
    got = _messages(s, pg.ready_for_query("I"))
    assert b"42501" in got and b"backslash" in got
    s.sendall(pg.query("select 'still usable'"))
    assert b"still usable" in _messages(s, pg.ready_for_query("I"))


def test_a_query_sent_along_with_the_password_is_answered(hoopy: Hoopy) -> None:
    s = raw_connect(hoopy)
    s.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))
    assert s.recv(9)[:1] == b"R"
    s.sendall(pg.password_message(hoopy.token().encode() + b"\0") + pg.query("select 'eager'"))
    got = _messages(s, pg.ready_for_query("I"), 2)
    assert b"eager" in got


def test_codec_sqlstates_reach_the_agent(hoopy: Hoopy) -> None:
    """A protocol version hoopy does not speak is 0A000 (feature_not_supported), as
    PostgreSQL answers it, not a generic 08P01."""
    s = raw_connect(hoopy)
    body = struct.pack("!I", 4 << 16) + b"user\0agent\0database\0app-db\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    reply = read_all(s)
    assert reply[:1] == b"E" and b"0A000" in reply


def test_a_query_inside_an_unsynced_extended_batch_is_answered(hoopy: Hoopy) -> None:
    """After an error PostgreSQL discards messages up to Sync, a Query among them, which
    would then never be answered: hoopy puts a Sync of its own before the Query (its
    ReadyForQuery is not sent on), so the Query is checked, runs and is answered."""
    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(pg.parse("", "select nosuchcolumn") + pg.query("select 2") + pg.sync())
    reply = b""
    while reply.count(b"Z\0\0\0\x05") < 2:  # the Query's, then the agent's own Sync's
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    assert b"42703" in reply  # the Parse's own error
    assert b"D\0\0\0\x0b\0\x01\0\0\0\x012" in reply  # the row of select 2
    assert reply.count(b"Z\0\0\0\x05") == 2  # hoopy's own Sync's is not sent on
    s.sendall(pg.query("select 3"))
    more = b""
    while not more.endswith(b"Z\0\0\0\x05I"):
        more += s.recv(65536)
    assert b"\x013" in more  # the session goes on, in step


def test_a_newer_minor_version_is_negotiated_down_to_3_0(hoopy: Hoopy) -> None:
    """As PostgreSQL does: NegotiateProtocolVersion (newest minor 0, the _pq_ options
    not recognised), then the login carries on at 3.0."""
    s = raw_connect(hoopy)
    body = struct.pack("!I", (3 << 16) | 2) + b"user\0agent\0database\0app-db\0_pq_.x\0y\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    expect = pg.negotiate_protocol_version(0, ["_pq_.x"]) + pg.authentication_cleartext_password()
    got = b""
    while len(got) < len(expect):
        got += s.recv(65536)
    assert got == expect
    s.sendall(pg.password_message(hoopy.token().encode() + b"\0") + pg.query("select 'negotiated'"))
    assert b"negotiated" in _messages(s, pg.ready_for_query("I"), 2)


@pytest.fixture
def tiny_recordings(tmp_path: Path, backend: Backend) -> Iterator[Hoopy]:
    """hoopy whose recordings folder is a 256 KiB tmpfs, to be filled up (needs root)."""
    rec = tmp_path / "recordings"
    rec.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(rec)],
        capture_output=True,
    )
    assert mounted.returncode == 0, mounted.stderr  # CI runs as root
    h = start_hoopy(tmp_path, backend)
    try:
        yield h
    finally:
        stop_hoopy(h)
        subprocess.run(["umount", "-l", str(rec)], check=False)


async def test_a_full_recordings_disk_refuses_commands(
    tiny_recordings: Hoopy, backend: Backend
) -> None:
    """The recorder cannot write: the statement is refused (58030, FATAL: no later
    command could be recorded, so the session ends) and never runs; nothing runs
    unrecorded, and no result reaches the agent unrecorded."""
    import asyncpg

    from tests.integration.test_pg_drivers import agent

    h = tiny_recordings
    direct = await backend.app_conn()
    await direct.execute("drop table if exists rec_probe; create table rec_probe (i int)")
    conn = await agent(h)
    try:
        await conn.execute("insert into rec_probe values (0)")
        rec = h.folder / "recordings"
        free = os.statvfs(rec).f_bavail * os.statvfs(rec).f_frsize
        (rec / "filler").write_bytes(b"x" * max(free - 2048, 0))  # room for a few events
        ran, refused = 1, None
        for i in range(1, 200):
            try:
                await conn.execute(f"insert into rec_probe values ({i})")
                ran += 1
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                refused = e
                break
        assert refused is not None and "recording unavailable" in str(refused), refused
        assert conn.is_closed()
    finally:
        await conn.close()
        (h.folder / "recordings" / "filler").unlink()
    # What ran is exactly what was recorded before the disk filled: every recorded
    # insert ran (the one refused is not in the file: its write failed and was cut).
    # The agent saw `ran` of them succeed; the last recorded one may have run with its
    # result unrecorded, and then the agent never saw it succeed.
    path = next((h.folder / "recordings").glob("*/*.jsonl"))
    recorded = [
        json.loads(line)
        for line in path.read_text().splitlines()
        if '"insert into rec_probe' in line
    ]
    inserts = [e for e in recorded if e["type"] == "command" and e["outcome"] == "allow"]
    try:
        assert await direct.fetchval("select count(*) from rec_probe") == len(inserts)
    finally:
        await direct.execute("drop table if exists rec_probe")
        await direct.close()
    assert ran in (len(inserts), len(inserts) - 1)
    # the recording holds whole events only, matching the index; verify names the failure
    deadline = time.monotonic() + 20  # the session ends once hoopy sees the agent leave
    while "recording_failed" not in h.cli("sessions", "list").stdout:
        assert time.monotonic() < deadline, h.cli("sessions", "list").stdout
        time.sleep(0.05)
    v = h.cli("verify")
    assert v.returncode == 1
    assert "torn" not in v.stdout and "index says" not in v.stdout, v.stdout
    assert "the recording failed during the session" in v.stdout, v.stdout


async def test_extended_copy_with_a_sync_inside_keeps_the_session_safe(
    hoopy: Hoopy, backend: Backend
) -> None:
    """libpq's PQexecParams("COPY … FROM STDIN") sends Sync right after Execute; the
    server ignores it.  The COPY works; afterwards a pipelined text with a backslash is
    refused (hoopy cannot tell which answers are due) rather than left waiting, and
    the session stays usable."""
    direct = await backend.app_conn()
    await direct.execute("drop table if exists copy_probe; create table copy_probe (v text)")
    try:
        s = raw_connect(hoopy)
        login(hoopy, s)
        s.sendall(
            pg.parse("", "COPY copy_probe FROM STDIN", [])
            + pg.bind("", "", [], [], [])
            + pg.execute("", 0)
            + pg.sync()  # ignored: the server is in COPY mode
            + pg.copy_data(b"one\n")
            + pg.copy_data(b"two\n")
            + pg.copy_done()
            + pg.sync()
        )
        got = _messages(s, pg.ready_for_query("I"))
        assert b"COPY 2" in got
        assert await direct.fetchval("select count(*) from copy_probe") == 2
        s.sendall(pg.query("select 'plain'") + pg.query("select 'a\\b'"))
        got = _messages(s, pg.ready_for_query("I"), 2)
        assert b"plain" in got and b"42501" in got and b"COPY FROM STDIN" in got
        s.sendall(pg.query("select 'still here'"))
        assert b"still here" in _messages(s, pg.ready_for_query("I"))
    finally:
        await direct.execute("drop table if exists copy_probe")
        await direct.close()


def test_texts_of_only_comments_or_blanks_are_answered_as_empty(hoopy: Hoopy) -> None:
    """psql sends a file's trailing comment as a Query (the compat file `comments`): it
    holds no statement, and the server answers EmptyQueryResponse; hoopy used to crash."""
    s = raw_connect(hoopy)
    login(hoopy, s)
    for text in ("/* and this is the end of the file */", "-- only a comment", "  ", ""):
        s.sendall(pg.query(text))
        got = _messages(s, pg.ready_for_query("I"))
        assert got == pg.empty_query_response() + pg.ready_for_query("I"), (text, got)
    s.sendall(pg.parse("", "/* nothing */", []) + pg.bind("", "", [], [], []))
    s.sendall(pg.execute("", 0) + pg.sync())
    got = _messages(s, pg.ready_for_query("I"))
    assert pg.empty_query_response() in got and b"E" not in got[:1]
    s.sendall(pg.query("select 'still usable'"))
    assert b"still usable" in _messages(s, pg.ready_for_query("I"))
