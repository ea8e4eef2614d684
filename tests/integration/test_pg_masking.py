"""Masking that follows the data, end to end: real psql (text rows), asyncpg (binary
rows), COPY, recordings.  The raw values, and their upper-cased, reversed and base64
forms, must never reach the agent or a recording."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from hoopy.protocols.postgres import codec as pg
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy

SECRET_EMAILS = ("alice.secret@example.com", "bob.hidden@example.org")
SECRET_SSNS = ("078-05-1120", "219-09-9999")
CARD = "4111 1111 1111 1111"
NOT_A_CARD = "1234567812345678"  # 16 digits failing Luhn: an order number

SETUP = f"""
CREATE TABLE m_people (
    id int PRIMARY KEY, name text, email text, ssn varchar(11), note text,
    profile jsonb, score numeric, born date);
INSERT INTO m_people VALUES
  (1, 'Alice', '{SECRET_EMAILS[0]}', '{SECRET_SSNS[0]}',
   'call me, card {CARD}', '{{"contact": "{SECRET_EMAILS[0]}", "tier": "gold"}}', 12.5,
   '1990-01-02'),
  (2, 'Bob', '{SECRET_EMAILS[1]}', '{SECRET_SSNS[1]}', 'order {NOT_A_CARD}',
   '{{"tier": "silver"}}', 7, NULL);
CREATE TABLE m_orders (id int, person_id int, item text);
INSERT INTO m_orders VALUES (10, 1, 'book'), (11, 2, 'pen');
CREATE VIEW m_contacts AS SELECT id, email AS contact, upper(name) AS who FROM m_people;
CREATE VIEW m_contacts2 AS SELECT contact AS c2, who FROM m_contacts;
CREATE FUNCTION m_email_of(int) RETURNS text LANGUAGE sql
  AS 'SELECT email FROM m_people WHERE id = $1';
CREATE FUNCTION m_noisy(int) RETURNS int LANGUAGE plpgsql AS $$
  BEGIN RAISE NOTICE 'found %', (SELECT email FROM m_people WHERE id = $1); RETURN $1; END $$;
CREATE UNIQUE INDEX m_people_email ON m_people (email);
CREATE TABLE m_part (id int, email text) PARTITION BY RANGE (id);
CREATE TABLE m_part_1 PARTITION OF m_part FOR VALUES FROM (0) TO (100);
INSERT INTO m_part VALUES (1, '{SECRET_EMAILS[0]}');
CREATE TABLE m_base (id int, name text, email text);
CREATE TABLE m_child (extra int) INHERITS (m_base);
INSERT INTO m_child (id, name, email) VALUES (9, 'Kid', '{SECRET_EMAILS[1]}');
CREATE FUNCTION m_op_email(int, int) RETURNS text LANGUAGE sql
  AS 'SELECT email FROM m_people WHERE id = $1';
CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = m_op_email);
CREATE SCHEMA m_evil;
CREATE VIEW m_evil.m_people AS SELECT id, ssn AS name FROM public.m_people;
"""

MASK_POLICY = """\
mode: enforce
rules:
  - name: people-read
    effect: allow
    match: {groups: [analysts, auditors, hashers, scoped, viewers], connectors: [app-db]}
  - name: statistics-readers  # read_statistics is refused unless an allow names it
    effect: allow
    match: {groups: [agents], connectors: [app-db], sql: {statements: [select, read_statistics]}}
  - name: hide-pii
    effect: mask
    columns: ["m_people.email", "*.ssn", "m_part.email"]
    detectors: [email, credit_card]
    match: {groups: [agents], connectors: [app-db]}
  - name: hashers-join-on-pseudonyms
    effect: mask
    columns: ["m_people.email"]
    style: hash
    match: {groups: [hashers]}
  - name: scoped-to-the-table
    effect: mask
    columns: ["m_people.email"]
    match: {groups: [scoped], sql: {tables: [m_people]}}
  - name: viewers-no-names-via-the-view
    effect: mask
    columns: ["m_contacts.who"]
    match: {groups: [viewers]}
  - name: analysts-see-domains
    effect: mask
    columns: ["m_people.email", "m_part.email", "m_base.email"]
    style: partial
    match: {groups: [analysts]}
"""


def forbidden() -> list[str]:
    out: list[str] = []
    for v in (*SECRET_EMAILS, *SECRET_SSNS):
        out += [v, v.upper(), v[::-1], base64.b64encode(v.encode()).decode()]
        out.append(base64.b64encode(v.encode()).decode()[:12])
    out += ["alice.secret", "bob.hidden", "4111 1111", "4111111111111111"]
    return out


def assert_clean(text: str) -> None:
    for f in forbidden():
        assert f not in text, f"leaked {f!r}"


@pytest.fixture(scope="module")
def masked(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    async def seed() -> None:
        conn = await backend.app_conn()
        await conn.execute(SETUP)
        await conn.close()

    asyncio.run(seed())
    h = start_hoopy(tmp_path_factory.mktemp("masked"), backend, policies={"mask": MASK_POLICY})
    try:
        yield h
    finally:
        stop_hoopy(h)


def psql_rows(h: Hoopy, sql: str, groups: tuple[str, ...] = ("agents",)) -> str:
    r = h.psql("-A", "-t", "-F", "|", "-c", sql, token=h.token(groups=groups))
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---- lineage forms: every output value of the expression is masked ---------------------

LINEAGE_FORMS = [
    "email",
    "(SELECT s.e FROM (SELECT p.email AS e) s)",
    "p.email",
    "email::varchar(200)",
    "CAST(ssn AS text)",
    "upper(email)",
    "lower(upper(email))",
    "reverse(email)",
    "substr(ssn, 1, 3)",
    "left(email, 5)",
    "encode(convert_to(email, 'UTF8'), 'base64')",
    "email || ''",
    "concat(name, email)",
    "format('%s', email)",
    "md5(email)",
    "coalesce(email, 'x')",
    "CASE WHEN id > 0 THEN email END",
    "(SELECT email FROM m_people q WHERE q.id = p.id)",
    "row_to_json(p)::text",
    "to_jsonb(p)::text",
    "p::text",
    "(p).email",
    "jsonb_build_object('e', email)::text",
    "array[email]::text",
    "m_email_of(p.id)",
]


@pytest.mark.parametrize("expr", LINEAGE_FORMS)
def test_psql_expressions_of_masked_columns_are_masked(masked: Hoopy, expr: str) -> None:
    out = psql_rows(masked, f"SELECT {expr} AS x, id FROM m_people p ORDER BY id")
    assert_clean(out)
    rows = [line.split("|") for line in out.splitlines()]
    assert [r[-1] for r in rows] == ["1", "2"]  # unmasked columns untouched
    for r in rows:
        assert r[0] in ("****", "", '"****"'), r


WHOLE_QUERIES = [
    "SELECT string_agg(email, ',') FROM m_people",
    "SELECT json_agg(p)::text FROM m_people p",
    "SELECT array_agg(ssn)::text FROM m_people",
    "SELECT e FROM (SELECT email AS e FROM m_people) s",
    "WITH c AS (SELECT email AS e, ssn FROM m_people) SELECT e, ssn FROM c",
    "WITH RECURSIVE r(e, n) AS (SELECT email, 1 FROM m_people UNION ALL "
    "SELECT e || '!', n + 1 FROM r WHERE n < 2) SELECT e FROM r",
    "SELECT name FROM m_people UNION SELECT email FROM m_people",
    "SELECT email FROM m_people UNION ALL SELECT 'x'",
    "SELECT p FROM m_people p",
    "SELECT m_people FROM m_people",
    "SELECT * FROM m_people",
    "SELECT p.* FROM m_people p",
    "SELECT o.item, p.* FROM m_orders o JOIN m_people p ON p.id = o.person_id",
    "SELECT * FROM m_orders JOIN m_people USING (id)",
    "SELECT x.e FROM m_orders o, "
    "LATERAL (SELECT email AS e FROM m_people WHERE id = o.person_id) x",
    "SELECT contact, who FROM m_contacts",
    "SELECT * FROM m_contacts",
    "SELECT c2 FROM m_contacts2",
    "SELECT upper(c2) FROM m_contacts2",
    "SELECT u FROM unnest(ARRAY(SELECT email FROM m_people)) AS u",
    "SELECT v FROM m_people p, jsonb_each_text(to_jsonb(p)) AS j(k, v)",
    "SELECT email FROM m_people WHERE email LIKE 'alice%'",
    "VALUES ((SELECT email FROM m_people LIMIT 1))",
]


@pytest.mark.parametrize("sql", WHOLE_QUERIES)
def test_psql_query_forms_never_show_masked_values(masked: Hoopy, sql: str) -> None:
    assert_clean(psql_rows(masked, sql))


def test_a_rule_may_name_a_view_column(masked: Hoopy) -> None:
    through_view = psql_rows(masked, "SELECT who, id FROM m_contacts ORDER BY id", ("viewers",))
    assert through_view.split() == ["****|1", "****|2"]
    assert psql_rows(masked, "SELECT lower(who) FROM m_contacts", ("viewers",)).split() == [
        "****",
        "****",
    ]
    table = psql_rows(masked, "SELECT upper(name) FROM m_people ORDER BY id", ("viewers",))
    assert table.split() == ["ALICE", "BOB"]  # the rule names the view, not the table


def test_user_defined_operators_are_masked(masked: Hoopy) -> None:
    out = psql_rows(masked, "SELECT id ### 0, id FROM m_people ORDER BY id", ("analysts",))
    assert "alice.secret" not in out and "bob.hidden" not in out
    assert out.split() == ["****@example.com|1", "****@example.org|2"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT email FROM m_part_1",
        "SELECT upper(email) FROM m_part_1",
        "SELECT * FROM m_part",
        "SELECT email, upper(email) FROM m_child",
        "SELECT name FROM m_child",
    ],
)
def test_partitions_and_inheriting_tables_are_masked_like_their_parent(
    masked: Hoopy, sql: str
) -> None:
    # only the parents are named by rules; no detector would catch these: use analysts
    out = psql_rows(masked, sql, groups=("analysts",))
    assert "alice.secret" not in out and "bob.hidden" not in out
    if "name" not in sql:
        assert "****@example" in out.lower()


def test_unmasked_columns_are_byte_identical_and_counts_unchanged(
    masked: Hoopy, backend: Backend
) -> None:
    sql = "SELECT id, name, score, born, profile->>'tier' FROM m_people ORDER BY id"
    through = masked.psql("-c", sql, token=masked.token())
    assert through.returncode == 0, through.stderr
    assert "Alice" in through.stdout and "(2 rows)" in through.stdout
    import os
    import subprocess

    direct = subprocess.run(
        [
            "psql",
            "-X",
            f"host=127.0.0.1 port={backend.cluster.port} dbname=app user=app_rw",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": backend.app_password},
        check=True,
    )
    assert through.stdout == direct.stdout


def test_filtering_on_masked_columns_still_works(masked: Hoopy) -> None:
    out = psql_rows(masked, "SELECT id, email FROM m_people WHERE email LIKE '%@example.org'")
    assert out.strip() == "2|****"


def test_detectors_mask_values_in_other_columns(masked: Hoopy) -> None:
    out = psql_rows(masked, "SELECT note, profile FROM m_people ORDER BY id")
    assert_clean(out)
    assert "card ****" in out
    assert NOT_A_CARD in out  # fails Luhn: not a card
    assert '"tier": "gold"' in out or '"tier":"gold"' in out


def test_mask_rules_are_scoped_by_group(masked: Hoopy) -> None:
    analysts = psql_rows(masked, "SELECT email FROM m_people ORDER BY id", groups=("analysts",))
    assert analysts.split() == ["****@example.com", "****@example.org"]
    auditors = psql_rows(masked, "SELECT email FROM m_people ORDER BY id", groups=("auditors",))
    assert auditors.split() == list(SECRET_EMAILS)


def test_hash_style_is_stable_across_sessions_and_hides_values(masked: Hoopy) -> None:
    sql = "SELECT email FROM m_people ORDER BY id"
    first = psql_rows(masked, sql, groups=("hashers",)).split()
    second = psql_rows(masked, sql, groups=("hashers",)).split()
    assert first == second and len(set(first)) == 2
    assert all(v.startswith("h:") for v in first)
    assert_clean(" ".join(first))
    joined = psql_rows(
        masked,
        "SELECT a.email = b.email FROM m_people a JOIN m_people b ON a.id = b.id",
        groups=("hashers",),
    )
    assert joined.split() == []  # a boolean computed from a masked column: NULL


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT contact FROM m_contacts ORDER BY id",
        "SELECT c2 FROM m_contacts2",
        "SELECT upper(contact) FROM m_contacts",
        "SELECT v FROM (SELECT contact AS v FROM m_contacts) s",
    ],
)
def test_views_are_traced_to_their_base_columns(masked: Hoopy, sql: str) -> None:
    """hashers mask m_people.email with no detector: only lineage through the view's
    definition (pg_class.relkind 'v') can find the email behind m_contacts.contact."""
    out = psql_rows(masked, sql, groups=("hashers",)).split()
    assert len(out) == 2 and all(v.startswith("h:") for v in out), out
    assert_clean(" ".join(out))


def test_copy_to_stdout_is_masked(masked: Hoopy) -> None:
    for sql in (
        "COPY m_people TO STDOUT",
        "COPY m_people (id, email) TO STDOUT",
        "COPY (SELECT upper(email), ssn FROM m_people) TO STDOUT",
        "COPY m_people TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY (SELECT p FROM m_people p) TO STDOUT (FORMAT csv)",
    ):
        out = psql_rows(masked, sql)
        assert_clean(out)
        assert "****" in out, sql
    header = psql_rows(masked, "COPY m_people (id, email) TO STDOUT WITH (FORMAT csv, HEADER)")
    assert header.splitlines() == ["id,email", "1,****", "2,****"]


def test_binary_copy_is_refused_while_masks_apply(masked: Hoopy) -> None:
    r = masked.psql("-c", "COPY m_people TO STDOUT (FORMAT binary)", token=masked.token())
    assert r.returncode != 0
    assert "binary COPY cannot be masked" in r.stderr


@pytest.mark.parametrize(
    ("sql", "expect"),
    [
        ("SELECT email::int FROM m_people", "invalid input syntax"),
        ("SELECT email::regclass FROM m_people", "withheld"),  # "cross-database references…"
        ("SELECT current_setting('x\"' || email) FROM m_people", "withheld"),
        ("SELECT email::regoper FROM m_people", "withheld"),
        ("SELECT ssn::date FROM m_people", "date"),
        ("INSERT INTO m_people (id, email) SELECT 99, email FROM m_people WHERE id = 1", "Key"),
        ("SELECT m_noisy(id) FROM m_people WHERE id = 1", "withheld"),
        # the XML parser's DETAIL shows the document's line, unquoted
        ("SELECT xmlparse(document ssn) FROM m_people", "withheld"),
        ("SELECT xmlparse(content '<a>' || ssn) FROM m_people", "withheld"),
    ],
)
def test_errors_and_notices_do_not_echo_masked_values(masked: Hoopy, sql: str, expect: str) -> None:
    r = masked.psql("-c", sql, token=masked.token(groups=("analysts",)))
    assert expect in r.stderr, r.stderr
    assert_clean(r.stderr + r.stdout)


def test_errors_keep_what_the_agent_wrote(masked: Hoopy) -> None:
    r = masked.psql("-c", "SELECT emial FROM m_people", token=masked.token())
    assert 'column "emial" does not exist' in r.stderr


# ---- names that resolve differently for the agent than for hoopy's catalog ------------


def clean_run(h: Hoopy, commands: list[str]) -> str:
    """psql with each command its own Query message; it succeeds and shows no secret."""
    args = [a for c in commands for a in ("-c", c)]
    r = h.psql("-A", "-t", *args, token=h.token())
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    return r.stdout


SHADOWING = [  # each command is sent as its own Query message
    ["SET search_path = m_evil, public", "SELECT upper(name) FROM m_people"],
    [
        "CREATE TEMP VIEW m_people AS SELECT id, ssn AS name FROM public.m_people",
        "SELECT upper(name) FROM m_people",
    ],
    [
        "BEGIN",
        # (CREATE OR REPLACE of a view counts as alter, which this policy denies: a new
        # view shows the same thing, a definition the catalog connection cannot see yet)
        "CREATE VIEW m_contacts_uncommitted AS SELECT id, email AS contact, upper(ssn) AS who "
        "FROM m_people",
        "SELECT lower(who), who FROM m_contacts_uncommitted",
        "ROLLBACK",
    ],
]


@pytest.mark.parametrize("commands", SHADOWING)
def test_shadowed_names_and_uncommitted_views_stay_masked(
    masked: Hoopy, commands: list[str]
) -> None:
    assert "****" in clean_run(masked, commands)


SHADOWED_COLUMNS = [  # after each of these, plain columns are shadowed by a temp view
    "CREATE TEMP VIEW m_people AS SELECT id, ssn AS name, 1 AS n FROM public.m_people",
    "SET search_path = m_evil, public",
]


@pytest.mark.parametrize("shadow", SHADOWED_COLUMNS)
def test_shadowing_views_are_traced_by_oid(masked: Hoopy, shadow: str) -> None:
    r = masked.psql("-A", "-t", "-c", shadow, "-c", "SELECT name FROM m_people ORDER BY id",
                    "-c", "SELECT m_people FROM m_people", token=masked.token())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert "Alice" not in r.stdout and "****" in r.stdout


def test_a_temporary_table_leaves_other_results_readable(masked: Hoopy) -> None:
    """Temporary relations shadow relation names only: columns the server names by table
    OID are still traced, and what reads no column (count(*), constants) stays clear."""
    commands = [
        "CREATE TEMP TABLE m_scratch (id int, email text, note text)",
        "INSERT INTO m_scratch VALUES (1, 'x@example.com', 'plain')",
        "SELECT name, email FROM m_people WHERE id = 1",
        "SELECT count(*), 42 AS answer FROM m_people",
        "SELECT note, email FROM m_scratch",
        "SELECT upper(name) FROM m_people WHERE id = 1",
        "INSERT INTO m_scratch (id, note) SELECT id, name FROM m_people",
    ]
    args = [a for c in commands for a in ("-c", c)]
    r = masked.psql("-A", "-t", *args, token=masked.token())
    assert_clean(r.stdout + r.stderr)
    out = r.stdout.splitlines()
    assert "Alice|****" in out  # by OID: name is clear, email masked
    assert "2|42" in out
    assert "plain|****" in out  # the temp table's own email column matches no rule
    assert "ALICE" not in out  # an expression over a name that may be shadowed: masked
    assert "cannot trace what it writes" in r.stderr


def test_cursor_rows_are_masked_even_by_rules_scoped_to_tables(masked: Hoopy) -> None:
    commands = [
        "BEGIN",
        "DECLARE c CURSOR FOR SELECT upper(email), email, id FROM m_people ORDER BY id",
        "FETCH ALL FROM c",
        "COMMIT",
    ]
    args = [a for c in commands for a in ("-c", c)]
    r = masked.psql("-A", "-t", *args, token=masked.token(groups=("scoped",)))
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert "****|****|1" in r.stdout


# ---- asyncpg: binary result format -------------------------------------------------------


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _agent(h: Hoopy, groups: tuple[str, ...] = ("agents",)) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=h.pg_port,
        user="agent",
        database="app-db",
        password=h.token(groups=groups),
        ssl=_ssl(),
    )


async def test_asyncpg_binary_rows_decode_masked(masked: Hoopy) -> None:
    conn = await _agent(masked)
    try:
        rows = await conn.fetch(
            "SELECT id, name, email, ssn, note, profile, score, born FROM m_people ORDER BY id"
        )
        assert [r["id"] for r in rows] == [1, 2]
        assert [r["name"] for r in rows] == ["Alice", "Bob"]
        assert [r["email"] for r in rows] == ["****", "****"]
        assert [r["ssn"] for r in rows] == ["****", "****"]
        assert "card ****" in rows[0]["note"]
        assert json.loads(rows[0]["profile"])["contact"] == "****"
        assert float(rows[0]["score"]) == 12.5
        assert_clean(repr([dict(r) for r in rows]))
        # prepared once, executed many times: the plan is reused, values stay masked
        stmt = await conn.prepare("SELECT upper(email) AS u, id FROM m_people WHERE id = $1")
        for i in (1, 2, 1):
            row = await stmt.fetchrow(i)
            assert row is not None and row["u"] == "****" and row["id"] == i
    finally:
        await conn.close()


@pytest.mark.parametrize("expr", LINEAGE_FORMS)
async def test_asyncpg_expressions_are_masked(masked: Hoopy, expr: str) -> None:
    conn = await _agent(masked)
    try:
        rows = await conn.fetch(f"SELECT {expr} AS x, id FROM m_people p ORDER BY id")
        assert [r["id"] for r in rows] == [1, 2]
        assert_clean(repr([tuple(r) for r in rows]))
    finally:
        await conn.close()


@pytest.mark.parametrize("sql", WHOLE_QUERIES)
async def test_asyncpg_query_forms_are_masked(masked: Hoopy, sql: str) -> None:
    conn = await _agent(masked)
    try:
        assert_clean(repr([tuple(r) for r in await conn.fetch(sql)]))
    finally:
        await conn.close()


async def test_large_masked_results_arrive_in_many_reads(masked: Hoopy) -> None:
    """A result far larger than one socket read: every partial message left in the
    buffer must wait for its rest, not spin (regression: the masking pump livelocked
    with reading paused)."""
    conn = await _agent(masked)
    try:
        sql = (
            "SELECT i, 'user' || i || '@example.com' AS contact, repeat('x', 200) AS pad "
            "FROM generate_series(1, 20000) i"
        )
        rows = await asyncio.wait_for(conn.fetch(sql), 60)
        assert len(rows) == 20000 and rows[-1]["i"] == 20000
        assert {r["contact"] for r in rows[:100]} == {"****"}  # the email detector
    finally:
        await conn.close()


async def test_asyncpg_copy_is_masked(masked: Hoopy, tmp_path: Path) -> None:
    conn = await _agent(masked)
    try:
        out = tmp_path / "out.txt"
        await conn.copy_from_query("SELECT id, email, note FROM m_people", output=str(out))
        text = out.read_text()
        assert_clean(text)
        assert text.splitlines()[0].startswith("1\t****\t")
    finally:
        await conn.close()


# ---- recordings ---------------------------------------------------------------------------


async def test_masking_sessions_record_binds_and_limited_fetches_masked(masked: Hoopy) -> None:
    """A masking session records each execution's values, and the rows of an Execute
    with a row limit (asyncpg's fetchrow ends in PortalSuspended) as the agent got them."""
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=masked.pg_port,
        user="agent",
        database="app-db",
        password=masked.token("masked-binds"),
        ssl=_ssl(),
    )
    try:
        stmt = await conn.prepare("SELECT email, id FROM m_people WHERE id = $1")
        assert [(await stmt.fetchrow(i))["email"] for i in (1, 2)] == ["****", "****"]
    finally:
        await conn.close()
    sid = masked.cli("sessions", "list", "--subject", "masked-binds").stdout.split()[0]
    events = [json.loads(x) for x in masked.cli("sessions", "show", sid).stdout.splitlines()]
    flow = [e for e in events if e["type"] in ("bind", "result")]
    assert [e["type"] for e in flow] == ["bind", "result", "bind", "result"]
    assert [e["params"] for e in flow[::2]] == [[{"b64": "AAAAAQ=="}], [{"b64": "AAAAAg=="}]]
    assert [e["rows"][0][0] for e in flow[1::2]] == ["****", "****"]
    assert all(e.get("suspended") is True for e in flow[1::2])
    for f in forbidden():
        assert f not in json.dumps(events)


def test_recordings_hold_only_masked_values(masked: Hoopy) -> None:
    psql_rows(masked, "SELECT email, upper(email), ssn, note FROM m_people")
    psql_rows(masked, "COPY (SELECT email FROM m_people) TO STDOUT")
    files = [p for p in (masked.folder / "recordings").rglob("*.jsonl") if p.is_file()]
    masked_sessions = 0
    counted = []
    for path in files:
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        start = next((e for e in events if e.get("type") == "session_start"), {})
        if "auditors" in json.dumps(start):
            continue  # auditors are not masked: their recordings hold what they saw
        masked_sessions += 1
        for e in events:
            if e.get("type") == "command":
                continue  # the agent's own statement text, not data it received
            text = json.dumps(e)
            for f in forbidden():
                assert f not in text, (f, e)
        counted += [e for e in events if e.get("type") == "masking"]
    assert masked_sessions > 5
    assert any(e["masked"].get("hide-pii", {}).get("column", 0) >= 2 for e in counted)
    for f in forbidden():
        assert f not in masked.log_text()


# ---- configured refusal ------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing(
    backend: Backend, masked: Hoopy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("refusing"),
        backend,
        policies={"mask": MASK_POLICY},
        unknown_lineage="refuse",
    )
    try:
        yield h
    finally:
        stop_hoopy(h)


def test_unknown_lineage_can_be_refused(refusing: Hoopy) -> None:
    ok = refusing.psql("-A", "-t", "-c", "SELECT upper(email) FROM m_people ORDER BY id")
    assert ok.returncode == 0 and ok.stdout.split() == ["****", "****"]
    r = refusing.psql("-c", "SELECT m_email_of(id) FROM m_people")
    assert r.returncode != 0
    assert "42501" in r.stderr or "cannot trace" in r.stderr
    assert_clean(r.stderr + r.stdout)


# ---- writes must not store masked data where masks do not reach ----------------------------

COPYING_WRITES = [
    "INSERT INTO m_orders (id, person_id, item) SELECT id + 100, id, email FROM m_people",
    "INSERT INTO m_orders VALUES (200, 1, (SELECT upper(email) FROM m_people LIMIT 1))",
    "CREATE TABLE m_leak AS SELECT email FROM m_people",
    "SELECT email INTO m_leak2 FROM m_people",
    "WITH x AS (INSERT INTO m_orders SELECT 300, id, email FROM m_people RETURNING 1) "
    "SELECT count(*) FROM x",
    "SELECT set_config('my.leak', email, false) FROM m_people",
    "UPDATE m_orders SET item = p.email FROM m_people p WHERE p.id = m_orders.person_id",
]


@pytest.mark.parametrize("sql", COPYING_WRITES)
def test_writes_that_copy_masked_columns_are_refused(masked: Hoopy, sql: str) -> None:
    r = masked.psql("-c", sql, token=masked.token(groups=("analysts",)))
    assert r.returncode != 0, r.stdout
    assert "mask rule" in r.stderr and ("masked column" in r.stderr or "keeps it" in r.stderr)
    check = psql_rows(masked, "SELECT count(*) FROM m_orders WHERE id >= 100", ("auditors",))
    assert check.strip() == "0"


def test_writes_of_unmasked_data_still_work(masked: Hoopy) -> None:
    token = masked.token(groups=("analysts",))
    r = masked.psql(
        "-c", "INSERT INTO m_orders SELECT 500, id, name FROM m_people WHERE email LIKE 'a%'",
        "-c", "DELETE FROM m_orders WHERE id = 500",
        token=token,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "INSERT 0 1" in r.stdout


# ---- a raw client that never describes what it executes -----------------------------------


def test_rows_of_undescribed_statements_are_masked_whole(masked: Hoopy) -> None:
    from hoopy.protocols.postgres import codec as pg
    from tests.integration.test_pg_hostile import login, raw_connect

    s = raw_connect(masked)
    login(masked, s)
    # Parse / Bind / Execute / Sync with no Describe: hoopy never sees the columns
    s.sendall(
        pg.parse("", "SELECT email, upper(email), id FROM m_people ORDER BY id")
        + pg.bind("", "", [], [], [])
        + pg.execute("")
        + pg.sync()
    )
    reply = b""
    while not reply.endswith(pg.ready_for_query("I")):
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    s.close()
    assert b"C\x00\x00\x00\x0dSELECT 2\x00" in reply  # the rows arrived, counted as usual
    assert_clean(reply.decode("latin-1"))
    assert b"\xff\xff\xff\xff" in reply  # as NULLs


def test_masked_counts_are_exported_as_metrics(masked: Hoopy) -> None:
    import time
    import urllib.request

    psql_rows(masked, "SELECT email FROM m_people")
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:  # the session's end is recorded just after psql exits
        url = f"http://{masked.addresses['admin']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        if 'masked_values_total{rule="hide-pii",kind="column"}' in text:
            break
        time.sleep(0.05)
    assert 'masked_values_total{rule="hide-pii",kind="column"}' in text
    assert_clean(text)


def test_approval_waits_work_in_masking_sessions(masked: Hoopy) -> None:
    from tests.integration.test_pg_approvals import admin, start_psql, wait_pending

    p = start_psql(
        masked, "UPDATE m_orders SET item = 'approved-mask' WHERE id = 10 RETURNING item, id"
    )
    a = wait_pending(masked, "approved-mask")
    assert p.poll() is None  # still waiting, in a masking session
    status, _ = admin(masked, "POST", f"/api/approvals/{a['id']}/approve", {"by": "alice"})
    assert status == 200
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "approved-mask|10" in out
    # and the session's masking still holds afterwards
    assert_clean(psql_rows(masked, "SELECT email FROM m_people"))


def _read_until_ready(s: socket.socket) -> bytes:
    got = b""
    while pg.ready_for_query("I") not in got and pg.ready_for_query("T") not in got:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return got


def _raw_agent(h: Hoopy) -> socket.socket:
    """A logged-in TLS socket, for messages no driver sends."""
    from tests.integration.test_pg_hostile import login, raw_connect

    s = raw_connect(h)
    login(h, s)
    return s


def test_a_refused_reparse_of_a_statement_name_keeps_its_masks(masked: Hoopy) -> None:
    """PostgreSQL refuses a Parse of a name in use (42P05) and keeps the first
    statement: hoopy must keep masking what the name really runs."""
    s = _raw_agent(masked)
    s.sendall(pg.parse("s1", "select upper(ssn) as e from m_people where id = 1") + pg.sync())
    assert b"E" not in _read_until_ready(s)[:1]
    s.sendall(pg.parse("s1", "select 'nothing'::text as e") + pg.sync())
    assert b"42P05" in _read_until_ready(s)
    for raw in (pg.describe("S", "s1"), b""):  # described or not: masked
        s.sendall(pg.bind("", "s1", [], [], []) + raw + pg.execute("", 0) + pg.sync())
        got = _read_until_ready(s)
        assert b"****" in got or b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xff" in got, got
        assert_clean(got.decode("latin-1"))
    s.close()


async def test_planner_statistics_do_not_show_masked_values(
    masked: Hoopy, backend: Backend
) -> None:
    """pg_stats keeps copies of column values (histogram bounds, common values): its
    output is masked like a column hoopy cannot trace."""
    conn = await backend.app_conn()
    try:
        await conn.execute("analyze m_people")
        direct = await conn.fetchval(
            "select histogram_bounds::text from pg_stats "
            "where tablename = 'm_people' and attname = 'ssn'"
        )
        assert direct is not None and SECRET_SSNS[0] in direct  # the leak being closed
    finally:
        await conn.close()
    out = psql_rows(
        masked,
        "select attname, histogram_bounds::text, most_common_vals::text from pg_stats "
        "where tablename = 'm_people'",
    )
    assert out.strip()
    assert_clean(out)


def test_a_sync_inside_copy_from_stdin_ends_a_masked_session(masked: Hoopy) -> None:
    """PostgreSQL ignores a Sync during COPY FROM STDIN (or answers it when the COPY
    failed to start): results would be attributed to the wrong statements, so a
    masking session refuses to guess."""
    s = _raw_agent(masked)
    s.sendall(pg.query("COPY m_orders FROM STDIN") + pg.sync())
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    assert b"08P01" in got and b"COPY FROM STDIN" in got


# ---- untraceable writes, name resolution spellings, stale plans, NOTIFY, data errors ------


def _events(h: Hoopy, subject: str) -> list[dict[str, object]]:
    sid = h.cli("sessions", "list", "--subject", subject).stdout.split()[0]
    return [json.loads(x) for x in h.cli("sessions", "show", sid).stdout.splitlines()]


def _exists(h: Hoopy, relation: str) -> bool:
    out = psql_rows(h, f"SELECT to_regclass('{relation}') IS NOT NULL", ("auditors",))
    return out.strip() == "t"


def test_a_table_created_from_a_prepared_statement_is_refused(masked: Hoopy) -> None:
    """CREATE TABLE … AS EXECUTE: hoopy cannot trace what EXECUTE returns, so it cannot
    show the new table holds no masked column."""
    for create in ("CREATE TABLE m_from_prepared", "CREATE TEMP TABLE m_from_prepared"):
        r = masked.psql("-A", "-t",
                        "-c", "PREPARE p AS SELECT id, email, ssn FROM m_people",
                        "-c", f"{create} (a, b, c) AS EXECUTE p",
                        "-c", "SELECT a, replace(b, '@', ' AT '), c FROM m_from_prepared",
                        token=masked.token())  # fmt: skip
        assert r.returncode != 0
        assert "cannot trace what it writes" in r.stderr, r.stderr
        assert_clean(r.stdout + r.stderr)
    assert not _exists(masked, "m_from_prepared")


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO m_orders VALUES (800, 1, m_email_of(1))",
        "INSERT INTO m_orders VALUES (801, 2, 2 ### 0)",
        "INSERT INTO m_orders SELECT 802, id, m_email_of(id) FROM m_orders",
        "UPDATE m_orders SET item = m_email_of(person_id) WHERE id >= 10",
        "SELECT set_config('my.fn', m_email_of(1), false)",
        "SELECT pg_notify('pii', m_email_of(1))",
        "SELECT lo_from_bytea(0, convert_to(m_email_of(2), 'UTF8'))",
    ],
)
def test_writes_and_sinks_of_untraceable_values_are_refused(masked: Hoopy, sql: str) -> None:
    r = masked.psql("-c", sql, token=masked.token(groups=("analysts",)))  # no approvals
    assert r.returncode != 0, r.stdout
    assert "mask rule" in r.stderr and "cannot trace" in r.stderr, r.stderr
    assert_clean(r.stdout + r.stderr)
    check = psql_rows(
        masked, "SELECT count(*) FROM m_orders WHERE id >= 800 OR item LIKE '%@%'", ("auditors",)
    )
    assert check.strip() == "0"


def test_writes_of_literals_and_builtins_still_work_while_masks_apply(masked: Hoopy) -> None:
    r = masked.psql(
        "-c", "INSERT INTO m_orders VALUES (850, 1, upper('lamp')), (851, 2, 'x'::text)",
        "-c", "UPDATE m_orders SET item = DEFAULT WHERE id = 851",
        "-c", "SELECT set_config('my.ok', 'plain', false)",
        "-c", "DELETE FROM m_orders WHERE id IN (850, 851)",
        token=masked.token(groups=("analysts",)),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "INSERT 0 2" in r.stdout and "UPDATE 1" in r.stdout and "DELETE 2" in r.stdout


async def test_planner_statistics_are_not_copied_into_settings(
    masked: Hoopy, backend: Backend
) -> None:
    conn = await backend.app_conn()
    try:
        await conn.execute("analyze m_people")
    finally:
        await conn.close()
    r = masked.psql(
        "-A", "-t",
        "-c", "SELECT set_config('my.y', histogram_bounds::text, false) FROM pg_stats "
              "WHERE tablename = 'm_people' AND attname = 'ssn'",
        "-c", "SELECT current_setting('my.y', true)",
        token=masked.token(),
    )  # fmt: skip
    assert "function that keeps it" in r.stderr, r.stderr
    assert_clean(r.stdout + r.stderr)


async def test_large_objects_read_with_loread_are_masked(masked: Hoopy, backend: Backend) -> None:
    conn = await backend.app_conn()
    try:
        oid = await conn.fetchval(
            "SELECT lo_from_bytea(0, convert_to($1, 'UTF8'))", SECRET_EMAILS[1]
        )
    finally:
        await conn.close()
    out = psql_rows(masked, f"SELECT loread(lo_open({oid}, 262144), 1000), 1")
    assert SECRET_EMAILS[1].encode().hex() not in out
    assert out.strip() == "|1"  # bytea masked whole: NULL


NAME_SPELLINGS = [  # each command is its own Query message
    ["SET SCHEMA 'm_evil'", "SELECT upper(name) FROM m_people", "SELECT name || '' FROM m_people"],
    ['SET U&"s\\0065arch_path" = m_evil, public', "SELECT upper(name) FROM m_people"],
    [
        'CREATE VIEW U&"pg_t\\0065mp".m_orders AS '
        "SELECT id, id AS person_id, ssn::text AS item FROM public.m_people",
        "SELECT upper(item) FROM m_orders",
        "SELECT item || '' FROM m_orders",
    ],
]


@pytest.mark.parametrize("commands", NAME_SPELLINGS)
def test_other_spellings_of_search_path_and_pg_temp_stay_masked(
    masked: Hoopy, commands: list[str]
) -> None:
    out = clean_run(masked, commands)
    assert out.split().count("****") == 2 * (len(commands) - 1), out


@pytest.mark.parametrize(
    "shadow",
    [
        "SET search_path = m_evil, public",
        "CREATE TEMP VIEW m_people AS SELECT id, ssn::text AS name FROM public.m_people",
    ],
)
async def test_statements_prepared_before_names_change_are_planned_again(
    masked: Hoopy, shadow: str
) -> None:
    """PostgreSQL re-analyses a prepared statement when search_path changes (or a
    temporary relation first shadows a name): its old mask plan no longer fits."""
    conn = await _agent(masked)
    try:
        st = await conn.prepare("SELECT upper(name) AS u, id FROM m_people ORDER BY id")
        assert [r["u"] for r in await st.fetch()] == ["ALICE", "BOB"]
        await conn.execute(shadow)
        rows = await st.fetch()
        assert_clean(repr(rows))
        assert [r["id"] for r in rows] == [1, 2]
    finally:
        await conn.close()


async def test_notifications_are_masked_and_recorded(masked: Hoopy, backend: Backend) -> None:
    got: list[str] = []
    seen: list[str] = []
    listener = await asyncpg.connect(
        host="127.0.0.1", port=masked.pg_port, user="agent", database="app-db",
        password=masked.token("notify-listener"), ssl=_ssl(),
    )  # fmt: skip
    auditor = await asyncpg.connect(
        host="127.0.0.1", port=masked.pg_port, user="agent", database="app-db",
        password=masked.token("notify-auditor", groups=("auditors",)), ssl=_ssl(),
    )  # fmt: skip
    direct = await backend.app_conn()
    try:
        await listener.add_listener("pii", lambda *a: got.append(a[3]))
        await auditor.add_listener("pii", lambda *a: seen.append(a[3]))
        # another (unmasked) session, and an application connection
        await auditor.fetch("SELECT pg_notify('pii', email || ' ' || ssn) FROM m_people")
        await direct.execute(f"NOTIFY pii, 'direct {SECRET_SSNS[0]} {SECRET_EMAILS[0]}'")
        await direct.execute("NOTIFY pii")
        for _ in range(100):
            if len(got) >= 4 and len(seen) >= 4:
                break
            await asyncio.sleep(0.05)
        await listener.fetchval("SELECT 1")  # still a working session
    finally:
        for c in (listener, auditor, direct):
            await c.close()
    assert got == ["****", "****", "****", ""]
    assert SECRET_EMAILS[0] in seen[0]  # auditors are not masked
    events = _events(masked, "notify-listener")
    notes = [e for e in events if e["type"] == "notification"]
    assert [(e["channel"], e["payload"]) for e in notes] == [("pii", p) for p in got]
    assert_clean(json.dumps(events))
    audited = [e for e in _events(masked, "notify-auditor") if e["type"] == "notification"]
    assert [e["payload"] for e in audited] == seen


@pytest.mark.parametrize(
    ("sql", "leak"),
    [
        ("SELECT get_byte('\\x00'::bytea, 1000000000 + replace(ssn, '-', '')::int) "
         "FROM m_people WHERE id = 1", "1078051120"),
        ("SELECT set_bit('\\x00'::bytea, replace(ssn, '-', '')::bigint, 1) "
         "FROM m_people WHERE id = 2", "219099999"),
        ("SELECT make_date(substr(ssn, 1, 3)::int, substr(ssn, 5, 2)::int, 40) "
         "FROM m_people WHERE id = 1", "78-05"),
        ("SELECT chr(2000000 + substr(replace(ssn, '-', ''), 4)::int) "
         "FROM m_people WHERE id = 1", "2051120"),
        ("SELECT 1 FROM m_people WHERE id = 2 "
         "AND get_byte('\\x00'::bytea, replace(ssn, '-', '')::int) = 0", "219099999"),
    ],
)  # fmt: skip
def test_data_errors_of_statements_reading_masked_columns_are_withheld(
    masked: Hoopy, sql: str, leak: str
) -> None:
    subject = f"data-error-{abs(hash(sql))}"
    r = masked.psql("-v", "VERBOSITY=verbose", "-c", sql, token=masked.token(subject))
    assert r.returncode != 0
    assert leak not in r.stderr, r.stderr
    assert "withheld by hoopy" in r.stderr
    assert any(f"SQLSTATE {c}" in r.stderr for c in ("2202E", "22008", "54000")), r.stderr
    errors = [e for e in _events(masked, subject) if e["type"] == "error"]
    assert len(errors) == 1 and "withheld by hoopy" in str(errors[0]["message"])
    assert leak not in json.dumps(errors)


def test_data_errors_that_read_no_masked_column_keep_their_message(masked: Hoopy) -> None:
    sql = "SELECT get_byte('\\x00'::bytea, 1000000000 + id) FROM m_orders WHERE id = 10"
    r = masked.psql("-c", sql, token=masked.token())
    assert "index 1000000010 out of valid range" in r.stderr, r.stderr


def test_a_skipped_reparse_cannot_lend_its_mask_plan(masked: Hoopy) -> None:
    """The unnamed statement reads SSNs; a re-Parse of it after an error is skipped by the
    server, so a Bind pipelined behind it still runs the SSN query: masked."""
    from tests.integration.test_pg_hostile import raw_connect
    from tests.integration.test_pg_statements import _answers, _round, login

    s = raw_connect(masked)
    login(s, masked.token())
    _round(s, pg.parse("", "SELECT ssn || '' FROM m_people ORDER BY id") + pg.sync())
    reply = _round(
        s,
        pg.parse("skip_e", "SELECT 1/0")
        + pg.bind("skip_p", "skip_e")
        + pg.execute("skip_p")
        + pg.parse("", "SELECT 'harmless'::text")
        + pg.sync()
        + pg.bind("", "")
        + pg.describe("P", "")
        + pg.execute("")
        + pg.sync(),
    )
    reply = _answers(s, 2, reply)
    assert b"22012" in reply  # the division by zero that skipped the re-Parse
    assert_clean(reply.decode("latin-1"))
    s.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_try_advisory_lock(replace(ssn, '-', '')::bigint) FROM m_people",
        "SELECT pg_advisory_xact_lock_shared(replace(ssn, '-', '')::bigint) FROM m_people",
        "SELECT lo_create(replace(ssn, '-', '')::oid) FROM m_people",
    ],
)
def test_locks_and_large_object_ids_are_sinks(masked: Hoopy, sql: str) -> None:
    """Advisory lock keys and chosen large-object OIDs show in pg_locks and
    pg_largeobject_metadata: a masked value must not go there."""
    r = masked.psql("-c", sql, token=masked.token())
    assert r.returncode != 0 and "42501" not in r.stdout
    assert "mask rule" in r.stderr, r.stderr


# ---- ordinary agent work stays readable (false positives a QA probe found) -----------


def test_setting_the_default_search_path_leaves_results_readable(masked: Hoopy) -> None:
    out = clean_run(
        masked,
        [
            "SET search_path = public",  # JDBC setSchema("public"), ORMs
            "SELECT count(*), 1 + 1 FROM m_orders",
            "SELECT upper(name) FROM m_people WHERE id = 1",
            "RESET search_path",
            "SELECT upper(email) FROM m_people WHERE id = 1",
        ],
    )
    assert out.splitlines() == ["SET", "2|2", "ALICE", "RESET", "****"]


def test_information_schema_names_are_not_masked(masked: Hoopy) -> None:
    out = clean_run(
        masked,
        [
            "SELECT table_name FROM information_schema.tables WHERE table_name = 'm_orders'",
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'm_orders' AND column_name = 'item'",
        ],
    )
    assert out.splitlines() == ["m_orders", "item"]


async def test_drivers_casting_parameters_to_enums_can_insert(
    masked: Hoopy, backend: Backend
) -> None:
    conn = await backend.app_conn()
    await conn.execute(
        "DO $$ BEGIN CREATE TYPE m_mood AS ENUM ('ok', 'bad'); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$; "
        "CREATE TABLE IF NOT EXISTS m_moods (who text, mood m_mood); "
        "CREATE TABLE IF NOT EXISTS m_kv (k text PRIMARY KEY)"
    )
    await conn.close()
    agent = await _agent(masked)
    try:
        await agent.execute("INSERT INTO m_moods VALUES ($1, $2::m_mood)", "probe", "ok")
        assert await agent.fetchval("SELECT count(*) FROM m_moods WHERE who = 'probe'") >= 1
    finally:
        await agent.close()


def test_integrity_errors_keep_their_constraint_names(masked: Hoopy) -> None:
    r = masked.psql(
        "-c", "INSERT INTO m_kv VALUES ('dup') ON CONFLICT DO NOTHING",
        "-c", "INSERT INTO m_kv VALUES ('dup')", token=masked.token(),
    )  # fmt: skip
    assert 'violates unique constraint "m_kv_pkey"' in r.stderr, r.stderr
