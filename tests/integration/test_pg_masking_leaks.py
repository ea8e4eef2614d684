"""Masking leaks found by probing from outside (issue 17 §2, §3): COPY options hoopy
read differently from the server, and messages of database code (RAISE) under
SQLSTATEs hoopy let through.  Real psql, asyncpg and a raw protocol client against
the mask rule `columns: [ml_customers.email, "*.ssn"]`, `detectors: [credit_card]`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from hoopy.protocols.postgres import codec as pg
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy

EMAILS = ("ada.leak@example.com", "alan.leak@example.org", "grace.leak@example.net")
SSNS = ("078-05-1120", "219-09-9999", "457-55-5462")
CARDS = ("4111 1111 1111 1111", "5500-0000-0000-0004", "6011000000000004")

SETUP = "CREATE TABLE ml_customers (id int PRIMARY KEY, name text, email text UNIQUE, " + (
    "ssn text, card text); INSERT INTO ml_customers VALUES "
    + ", ".join(
        f"({i + 1}, 'Name{i + 1}', '{EMAILS[i]}', '{SSNS[i]}', '{CARDS[i]}')" for i in range(3)
    )
    + "; CREATE TABLE ml_kv (k text PRIMARY KEY)"
)

POLICY = """\
mode: enforce
rules:
  - name: leak-probe-mask
    effect: mask
    columns: ["ml_customers.email", "*.ssn"]
    detectors: [credit_card]
    match: {groups: [agents], connectors: [app-db]}
"""


def forbidden() -> list[str]:
    out: list[str] = []
    for v in (*EMAILS, *SSNS):
        out += [v, v.upper(), v.split("@")[0]]
    out += [c.replace(" ", "").replace("-", "") for c in CARDS] + list(CARDS)
    return out


def assert_clean(text: str) -> None:
    for f in forbidden():
        assert f not in text, f"leaked {f!r} in {text!r}"


@pytest.fixture(scope="module")
def leaky(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    async def seed() -> None:
        conn = await backend.app_conn()
        await conn.execute(SETUP)
        await conn.close()
        dba = await asyncpg.connect(backend.cluster.dsn.rsplit("/", 1)[0] + "/app")
        await dba.execute(DBA_FUNCTIONS)
        await dba.close()

    asyncio.run(seed())
    h = start_hoopy(tmp_path_factory.mktemp("leaks"), backend, policies={"mask": POLICY})
    try:
        yield h
    finally:
        stop_hoopy(h)


def psql(h: Hoopy, *commands: str) -> tuple[int, str, str]:
    args = [a for c in commands for a in ("-c", c)]
    r = h.psql("-A", "-t", *args, token=h.token())
    return r.returncode, r.stdout, r.stderr


# ---- §2: COPY options read as the server reads them ---------------------------------

MASKED_COPIES = [
    # header 0 arrives from libpg_query as an empty Integer node: it means no header
    ("COPY ml_customers TO STDOUT (HEADER 0)", 3),
    ("COPY ml_customers TO STDOUT (FORMAT csv, HEADER 0)", 3),
    ("COPY ml_customers TO STDOUT (HEADER false)", 3),
    ("COPY ml_customers TO STDOUT (HEADER 'OFF')", 3),
    ("COPY ml_customers TO STDOUT (HEADER +0)", 3),
    ("COPY (SELECT email, ssn FROM ml_customers WHERE id = 1) TO STDOUT (HEADER 0)", 1),
    ("COPY ml_customers TO STDOUT (HEADER 1)", 4),
    ("COPY ml_customers TO STDOUT (HEADER On)", 4),
    ("COPY ml_customers TO STDOUT (FORMAT csv, HEADER)", 4),
    # delimiters and NULL strings given as numbers: defGetString prints them
    ("COPY ml_customers TO STDOUT (FORMAT csv, DELIMITER 0)", 3),
    ("COPY ml_customers TO STDOUT (FORMAT csv, DELIMITER 1, NULL 2)", 3),
    ("COPY ml_customers TO STDOUT (NULL 0)", 3),
    ("COPY ml_customers TO STDOUT (NULL -1.5)", 3),
    # old-style options
    ("COPY ml_customers TO STDOUT WITH CSV HEADER", 4),
    ("COPY ml_customers TO STDOUT WITH CSV", 3),
    ("COPY ml_customers TO STDOUT WITH DELIMITER AS '|' NULL AS 'x'", 3),
    ("COPY ml_customers TO STDOUT WITH CSV HEADER QUOTE AS '''' ESCAPE AS '\\' FORCE QUOTE *", 4),
    ("COPY ml_customers TO STDOUT WITH CSV FORCE QUOTE email, ssn", 3),
    ("COPY ml_customers TO STDOUT (FORMAT csv, ENCODING 'LATIN1', FREEZE false)", 3),
    ("COPY ml_customers TO STDOUT (HEADER 1); COPY ml_customers TO STDOUT (HEADER 0)", 7),
    ("COPY/**/ml_customers/**/TO/**/STDOUT/**/(HEADER/**/0,/**/FORMAT/**/csv)", 3),
    ('COPY ml_customers TO STDOUT ("header" 0, FORMAT csv, FORCE_QUOTE *)', 3),
    ("\\copy ml_customers to stdout (header 0)", 3),
    ("\\copy ml_customers to stdout (format csv, header 0)", 3),
]


@pytest.mark.parametrize(("sql", "lines"), MASKED_COPIES)
def test_copy_options_are_read_as_the_server_reads_them(leaky: Hoopy, sql: str, lines: int) -> None:
    rc, out, err = psql(leaky, sql)
    assert rc == 0, err
    assert_clean(out)
    assert len(out.splitlines()) == lines, out
    assert "****" in out


REFUSED_COPIES = [
    "COPY ml_customers TO STDOUT (HEADER match)",  # COPY FROM only
    "COPY ml_customers TO STDOUT (HEADER 2)",
    "COPY ml_customers TO STDOUT (HEADER yes)",  # defGetBoolean takes no yes/no
    "COPY ml_customers TO STDOUT (HEADER 1.0)",
    "COPY ml_customers TO STDOUT (HEADER '0')",  # the server takes no quoted digits
    'COPY ml_customers TO STDOUT ("HEADER" 0)',  # option names are case-sensitive
    "COPY ml_customers TO STDOUT (HEADER 1, HEADER 0)",
    "COPY ml_customers TO STDOUT WITH BINARY CSV",
    "COPY ml_customers TO STDOUT (FORMAT 'CSV')",
    "COPY ml_customers TO STDOUT (ENCODING 'SJIS')",
    "COPY ml_customers TO STDOUT (ENCODING 'M S-Kanji')",  # an alias of SJIS
    "COPY ml_customers TO STDOUT (CONVERT_SELECTIVELY (email))",
    "COPY BINARY ml_customers TO STDOUT",
    "COPY ml_customers TO STDOUT (FORMAT binary)",
    "COPY ml_customers TO STDOUT (DELIMITER 'é')",
]


@pytest.mark.parametrize("sql", REFUSED_COPIES)
def test_copy_options_hoopy_cannot_read_are_refused(leaky: Hoopy, sql: str) -> None:
    rc, out, err = psql(leaky, sql)
    assert rc != 0
    assert "mask rule(s) leak-probe-mask apply to this COPY" in err, err
    assert_clean(out + err)


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _raw(h: Hoopy) -> ssl.SSLSocket:
    s = socket.create_connection(("127.0.0.1", h.pg_port), timeout=10)
    s.sendall(pg.ssl_request())
    assert s.recv(1) == b"S"
    t = _ssl().wrap_socket(s)
    t.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))
    assert t.recv(9)[:1] == b"R"
    t.sendall(pg.password_message(h.token().encode() + b"\0"))
    _until_ready(t)
    return t


def _until_ready(s: ssl.SSLSocket, got: bytes = b"") -> bytes:
    while not any(got.endswith(pg.ready_for_query(x)) for x in "IET"):
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return got


def _copy_rows(raw: bytes) -> list[bytes]:
    rows, pos = [], 0
    while pos < len(raw):
        kind, n = raw[pos : pos + 1], struct.unpack_from("!I", raw, pos + 1)[0]
        if kind == b"d":
            rows.append(raw[pos + 5 : pos + 1 + n])
        pos += 1 + n
    return rows


@pytest.mark.parametrize(
    ("sql", "header"),
    [
        ("copy ml_customers to stdout (header 0)", False),
        ("copy ml_customers to stdout (format csv, header 0)", False),
        ("copy ml_customers to stdout with delimiter as ',' null as ''", False),
        ("copy ml_customers to stdout with csv header", True),
        ("copy ml_customers to stdout (header 'oFF', format csv)", False),
    ],
)
def test_extended_protocol_copy_with_header_0_is_masked(
    leaky: Hoopy, sql: str, header: bool
) -> None:
    s = _raw(leaky)
    try:
        s.sendall(pg.parse("", sql) + pg.bind("", "") + pg.execute("") + pg.sync())
        got = _until_ready(s)
        rows = _copy_rows(got)
        assert len(rows) == 3 + header, got
        assert_clean(got.decode("latin-1"))
        assert all(b"****" in r for r in rows[header:]), rows
        # the same prepared COPY twice: each run's rows are read on their own
        s.sendall(pg.parse("c2", sql) + pg.sync())
        _until_ready(s)
        for _ in range(2):
            s.sendall(pg.bind("", "c2") + pg.execute("") + pg.sync())
            got = _until_ready(s)
            rows = _copy_rows(got)
            assert len(rows) == 3 + header
            assert_clean(got.decode("latin-1"))
            assert all(b"****" in r for r in rows[header:]), rows
    finally:
        s.close()


@pytest.mark.parametrize(
    "sql",
    [
        "copy ml_customers to stdout (header 2)",
        "copy binary ml_customers to stdout",
        "copy ml_customers to stdout with binary",
        "copy ml_customers to stdout (encoding 'big5')",
    ],
)
def test_extended_protocol_copy_with_options_it_cannot_read_is_refused(
    leaky: Hoopy, sql: str
) -> None:
    s = _raw(leaky)
    try:
        s.sendall(pg.parse("", sql) + pg.bind("", "") + pg.execute("") + pg.sync())
        got = _until_ready(s)
        assert b"apply to this COPY" in got, got
        assert not _copy_rows(got)
        assert_clean(got.decode("latin-1"))
    finally:
        s.close()


async def test_asyncpg_copy_without_header_is_masked(leaky: Hoopy, tmp_path: Path) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=leaky.pg_port,
        user="agent",
        database="app-db",
        password=leaky.token(),
        ssl=_ssl(),
    )
    try:
        for header in (False, True):
            out = tmp_path / f"out-{header}.csv"
            await conn.copy_from_table("ml_customers", output=str(out), format="csv", header=header)
            text = out.read_text()
            assert_clean(text)
            assert len(text.splitlines()) == 3 + header
    finally:
        await conn.close()


def test_text_copy_values_holding_the_delimiter_keep_their_columns(leaky: Hoopy) -> None:
    rc, out, err = psql(
        leaky,
        "COPY (SELECT 'a,b' AS x, email FROM ml_customers WHERE id = 1) TO STDOUT (DELIMITER ',')",
    )
    assert rc == 0, err
    assert out == "a\\,b,****\n"


def test_copy_null_string_equal_to_a_value_is_an_equality_oracle(leaky: Hoopy) -> None:
    """Documented, not closed: in text COPY a value equal to the NULL string is written
    bare, so a masked value equal to it reads as NULL — what `WHERE email = '…'` tells
    too.  CSV quotes such a value, and hoopy tells them apart."""
    rc, out, err = psql(
        leaky, f"COPY (SELECT email FROM ml_customers ORDER BY id) TO STDOUT (NULL '{EMAILS[0]}')"
    )
    assert rc == 0, err
    assert out.splitlines() == [EMAILS[0], "****", "****"]  # the NULL string, as asked
    rc, out, err = psql(
        leaky,
        f"COPY (SELECT email FROM ml_customers ORDER BY id) TO STDOUT "
        f"(FORMAT csv, NULL '{EMAILS[0]}')",
    )
    assert rc == 0, err
    assert_clean(out)
    assert out.splitlines() == ["****"] * 3


# ---- §3: messages of database code are withheld whatever their SQLSTATE --------------

DBA_FUNCTIONS = """
CREATE FUNCTION ml_raise(lvl text, code text, i int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE v text := (SELECT email || ' ' || ssn || ' ' || card FROM ml_customers WHERE id = i);
BEGIN
  IF lvl = 'notice' THEN RAISE NOTICE USING MESSAGE = v, ERRCODE = code, DETAIL = v, HINT = v;
  ELSIF lvl = 'warning' THEN RAISE WARNING USING MESSAGE = v, ERRCODE = code, DETAIL = v;
  ELSIF lvl = 'info' THEN RAISE INFO USING MESSAGE = v, ERRCODE = code;
  ELSE RAISE EXCEPTION USING MESSAGE = v, ERRCODE = code, DETAIL = v, HINT = v;
  END IF;
  RETURN i;
END $$;
CREATE FUNCTION ml_raise_fields(i int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE v text := (SELECT email FROM ml_customers WHERE id = i);
BEGIN
  RAISE EXCEPTION USING MESSAGE = 'fields', ERRCODE = '23505', COLUMN = v, CONSTRAINT = v,
    DATATYPE = v, TABLE = v, SCHEMA = v;
END $$;
CREATE FUNCTION ml_assert(i int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN ASSERT false, (SELECT email FROM ml_customers WHERE id = i); RETURN i; END $$;
CREATE FUNCTION ml_dup(i int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ml_kv SELECT email FROM ml_customers WHERE id = i;
  INSERT INTO ml_kv SELECT email FROM ml_customers WHERE id = i;
  RETURN i;
END $$;
CREATE FUNCTION ml_dyn(i int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'SELECT ' || (SELECT email FROM ml_customers WHERE id = i); RETURN i; END $$;
CREATE TABLE ml_trig (id int);
CREATE FUNCTION ml_trig_f() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v text := (SELECT email FROM ml_customers WHERE id = NEW.id);
BEGIN
  EXECUTE 'SELECT 1 FROM ml_kv WHERE k = ' || quote_literal(v);  -- v, a constant
  RAISE NOTICE USING MESSAGE = v, ERRCODE = '01001';
  RETURN NEW;
END $$;
CREATE TRIGGER ml_trig_t BEFORE INSERT ON ml_trig FOR EACH ROW EXECUTE FUNCTION ml_trig_f();
GRANT ALL ON ml_trig TO app_rw;
CREATE TABLE ml_trig2 (id int);
CREATE FUNCTION ml_trig2_f() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM get_byte('\\x00'::bytea,
    replace((SELECT ssn FROM ml_customers WHERE id = NEW.id), '-', '')::int);
  RETURN NEW;
END $$;
CREATE TRIGGER ml_trig2_t BEFORE INSERT ON ml_trig2 FOR EACH ROW EXECUTE FUNCTION ml_trig2_f();
GRANT ALL ON ml_trig2 TO app_rw;
CREATE FUNCTION ml_name(i int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('application_name', (SELECT email FROM ml_customers WHERE id = i), false);
  RETURN i;
END $$;
CREATE FUNCTION ml_imm(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RAISE NOTICE USING MESSAGE = (SELECT email FROM ml_customers WHERE id = i), ERRCODE = '01001';
  RETURN i;
END $$;
CREATE TABLE ml_defer (k text UNIQUE DEFERRABLE INITIALLY DEFERRED);
GRANT ALL ON ml_defer TO app_rw;
CREATE FUNCTION ml_defer_twice(i int) RETURNS int LANGUAGE sql AS $$
  INSERT INTO ml_defer SELECT email FROM ml_customers WHERE id = i;
  INSERT INTO ml_defer SELECT email FROM ml_customers WHERE id = i;
  SELECT i;
$$;
"""

RAISES = [
    (lvl, code)
    for lvl in ("notice", "warning", "exception", "info")
    for code in ("22000", "01001", "42501", "23505", "P0001", "00000", "01000", "42601")
]


@pytest.mark.parametrize(("lvl", "code"), RAISES)
def test_raise_output_is_withheld_whatever_its_sqlstate(leaky: Hoopy, lvl: str, code: str) -> None:
    r = leaky.psql(
        "-v", "VERBOSITY=verbose", "-c", f"SELECT ml_raise('{lvl}', '{code}', 1)",
        token=leaky.token(),
    )  # fmt: skip
    assert_clean(r.stdout + r.stderr)
    assert "withheld by hoopy" in r.stderr, r.stderr
    if code != "00000":  # (PL/pgSQL makes 00000 01000 or P0001 above NOTICE)
        assert code in r.stderr  # the SQLSTATE stays


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ml_raise_fields(1)",  # COLUMN, CONSTRAINT, DATATYPE, TABLE, SCHEMA fields
        "SELECT ml_assert(1)",
        "SELECT 1 FROM ml_customers WHERE ml_raise('notice', '01001', id) = 1",
        "SELECT id FROM ml_customers WHERE id = 1 AND ml_raise('exception', '23505', id) = 1",
        "INSERT INTO ml_trig VALUES (1)",  # a trigger: nothing in the text shows it
        "SELECT ml_dyn(1)",  # the dynamic statement shows as internal query and context
    ],
)
def test_database_code_cannot_carry_data_in_other_fields(leaky: Hoopy, sql: str) -> None:
    r = leaky.psql("-v", "VERBOSITY=verbose", "-c", sql, token=leaky.token())
    assert_clean(r.stdout + r.stderr)


def test_data_errors_raised_in_triggers_are_withheld(leaky: Hoopy) -> None:
    """The INSERT's text reads no masked column; its trigger does, and the server's own
    data error shows the SSN's digits unquoted (`index 78051120 out of valid range`)."""
    r = leaky.psql("-c", "INSERT INTO ml_trig2 VALUES (1)", token=leaky.token())
    assert r.returncode != 0
    assert "78051120" not in r.stderr and "withheld by hoopy" in r.stderr, r.stderr
    assert "2202E" in r.stderr


def test_log_and_debug_messages_are_withheld(leaky: Hoopy) -> None:
    """debug_print_parse sends each parse tree to a client asking for LOG messages: a
    trigger's dynamic query holding a value it read shows it as a constant's bytes."""
    r = leaky.psql(
        "-c", "SET client_min_messages = debug5", "-c", "SET debug_print_parse = on",
        "-c", "INSERT INTO ml_trig VALUES (3)", token=leaky.token(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    consts = re.findall(r":constvalue \d+ \[([-\d\s]+)\]", r.stderr)
    shown = b" ".join(bytes(int(x) & 0xFF for x in c.split()) for c in consts)
    assert_clean(r.stdout + r.stderr + shown.decode("latin-1"))
    assert "withheld by hoopy" in r.stderr


def test_raw_client_sees_no_field_of_a_raise(leaky: Hoopy) -> None:
    s = _raw(leaky)
    try:
        s.sendall(pg.query("SELECT ml_raise_fields(2)"))
        got = _until_ready(s)
        assert_clean(got.decode("latin-1"))
        s.sendall(
            pg.parse("", "SELECT ml_raise('notice', '42501', $1::int)")
            + pg.bind("", "", [b"3"], [], [])
            + pg.execute("")
            + pg.sync()
        )
        got = _until_ready(s)
        assert b"N" in got and b"withheld by hoopy" in got
        assert_clean(got.decode("latin-1"))
    finally:
        s.close()


def test_server_composed_integrity_errors_keep_their_constraint_name(leaky: Hoopy) -> None:
    """A unique violation the server composes keeps its message (the constraint's
    name); its key values are masked, the one the agent wrote stays."""
    r = leaky.psql("-v", "VERBOSITY=verbose", "-c", "SELECT ml_dup(2)", token=leaky.token())
    assert 'violates unique constraint "ml_kv_pkey"' in r.stderr, r.stderr
    assert_clean(r.stdout + r.stderr)
    r = leaky.psql(
        "-v", "VERBOSITY=verbose",
        "-c", "INSERT INTO ml_kv VALUES ('mine') ON CONFLICT DO NOTHING",
        "-c", "INSERT INTO ml_kv VALUES ('mine')", token=leaky.token(),
    )  # fmt: skip
    assert 'violates unique constraint "ml_kv_pkey"' in r.stderr, r.stderr
    assert "Key (k)=(mine) already exists." in r.stderr, r.stderr


def test_withheld_messages_are_recorded_withheld(leaky: Hoopy) -> None:
    subject = "raise-recorded"
    leaky.psql("-c", "SELECT ml_raise('exception', '23505', 1)", token=leaky.token(subject))
    sid = leaky.cli("sessions", "list", "--subject", subject).stdout.split()[0]
    text = leaky.cli("sessions", "show", sid).stdout
    events = [json.loads(x) for x in text.splitlines()]
    assert any(e["type"] == "error" for e in events)
    assert_clean(text)


def test_messages_outside_any_statement_are_masked(leaky: Hoopy) -> None:
    """Messages hoopy cannot place in a statement: a RAISE of an immutable function the
    planner folds while a Bind plans (between ParseComplete and BindComplete), and a
    deferred unique violation checked when a Sync commits."""
    s = _raw(leaky)
    try:
        s.sendall(pg.parse("", "SELECT ml_imm(2)") + pg.bind("", "") + pg.execute("") + pg.sync())
        got = _until_ready(s)
        assert b"withheld by hoopy" in got, got
        assert_clean(got.decode("latin-1"))
        sql = "SELECT ml_defer_twice(3)"
        s.sendall(pg.parse("", sql) + pg.bind("", "") + pg.execute("") + pg.sync())
        got = _until_ready(s)
        assert b"23505" in got and b"ml_defer_k_key" in got, got
        assert_clean(got.decode("latin-1"))
    finally:
        s.close()


async def test_asyncpg_sees_raises_withheld(leaky: Hoopy) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=leaky.pg_port,
        user="agent",
        database="app-db",
        password=leaky.token(),
        ssl=_ssl(),
    )
    notices: list[str] = []
    conn.add_log_listener(lambda _c, msg: notices.append(repr(msg.as_dict())))
    try:
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.fetchval("SELECT ml_raise('exception', $1, 1)", "42501")
        assert err.value.sqlstate == "42501"
        assert "withheld by hoopy" in str(err.value)
        assert_clean(repr(err.value.as_dict()))
        # (the function's result is masked too: hoopy cannot trace it)
        assert await conn.fetchval("SELECT ml_raise('warning', $1, 2)", "23505") is None
        assert await conn.fetchval("SELECT ml_raise('notice', $1, 3)", "01001") is None
        # the listeners were called back before the results that followed the notices
        assert len(notices) == 2 and all("withheld by hoopy" in n for n in notices)
        assert_clean(" ".join(notices))
    finally:
        await conn.close()


async def test_reported_parameters_set_by_database_code_are_masked(leaky: Hoopy) -> None:
    """A function sets application_name to an email; the server reports it to the
    client in a ParameterStatus."""
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=leaky.pg_port,
        user="agent",
        database="app-db",
        password=leaky.token(),
        ssl=_ssl(),
    )
    try:
        await conn.fetchval("SELECT ml_name(1)")
        assert conn.get_settings().application_name == "****"
        await conn.execute("SET application_name = 'nightly-report'")  # its own: kept
        assert conn.get_settings().application_name == "nightly-report"
        assert await conn.fetchval("SELECT 1 + 1") == 2
    finally:
        await conn.close()
