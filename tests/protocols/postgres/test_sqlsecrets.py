"""sqlsecrets: passwords written into SQL are hidden, everything else is left as written."""

from __future__ import annotations

import pytest

from hoopy.protocols.postgres import pgquery
from hoopy.protocols.postgres.sqlsecrets import hidden, redact

CASES = [
    ("ALTER ROLE x WITH ENCRYPTED PASSWORD 'se''cret' VALID UNTIL '2030-01-01'",
     "ALTER ROLE x WITH ENCRYPTED PASSWORD '****' VALID UNTIL '2030-01-01'", "se''cret"),
    ("create user u password E'p\\'w'", "create user u password E'****'", "p\\'w"),
    ("CREATE ROLE r LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi'",  # psql's \password
     "CREATE ROLE r LOGIN PASSWORD '****'", "SCRAM-SHA-256$4096:abc$def:ghi"),
    ("create user mapping for u server s options (user 'a', password $$pw$$)",
     "create user mapping for u server s options (user 'a', password $$****$$)", "pw"),
    ("alter user mapping for u server s options (SET \"password\" 'pw2')",
     "alter user mapping for u server s options (SET \"password\" '****')", "pw2"),
    ("create server s foreign data wrapper f options (host 'h', sslpassword 'k')",
     "create server s foreign data wrapper f options (host 'h', sslpassword '****')", "k"),
    ("select dblink_connect('host=h password=p3 dbname=x')",
     "select dblink_connect('host=h password=**** dbname=x')", "p3"),
    ("create subscription s connection 'host=x password=''a b'' dbname=d' publication p",
     "create subscription s connection 'host=x password=**** dbname=d' publication p", "a b"),
    ("select * from t where url = 'postgresql://bob:hunter2@db/x'",
     "select * from t where url = 'postgresql://bob:****@db/x'", "hunter2"),
    ("set app.secret = 'zzz'", "set app.secret = '****'", "zzz"),
    ("set app.secret to 'zzz'", "set app.secret to '****'", "zzz"),
    ("alter role x password $q$abc$q$ -- c", "alter role x password $q$****$q$ -- c", "abc"),
    ("create role r password /* c */ -- x\n 'pw'",
     "create role r password /* c */ -- x\n '****'", "pw"),
    ("ALTER ROLE x PASSWORD 'unterminated", "ALTER ROLE x PASSWORD '****'", "unterminated"),
    ("alter role x password 'ok' valid until 'oops",
     "alter role x password '****' valid until 'oops", "ok"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "shown", "secret"), CASES)
def test_secret_hidden_rest_as_written(sql: str, shown: str, secret: str) -> None:
    out, secrets = hidden(sql)
    assert out == shown
    assert any(secret in s for s in secrets)  # scrubbed from fields quoting it


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "select * from passengers where bypass = 'x'",  # hint words, nothing to hide
        "select 'password'",  # a literal that merely says password
        "insert into logins(password_hash) values ('x')",  # a column is data: masking's job
        "alter role x password null",
        "select 'http://example.com/a'",
        "select '' , $$ $$",
    ],
)
def test_nothing_to_hide_is_left_alone(sql: str) -> None:
    assert hidden(sql) == (sql, ())


def test_hidden_statement_still_reads_as_sql() -> None:
    """What approvers and auditors read scans as the same statement shape."""
    for sql, _, _ in CASES:
        try:
            before = [t.name for t in pgquery.scan(sql)]
        except pgquery.ParseError:
            continue
        after = [t.name for t in pgquery.scan(redact(sql))]
        assert after == before, sql


def test_the_first_look_knows_every_hint() -> None:
    from hoopy.protocols.postgres.sqlsecrets import _HINTS, might_hold_secret

    for hint in _HINTS:
        assert might_hold_secret(f"select 1 /* {hint.upper()} */")
    assert not might_hold_secret("select abalance from pgbench_accounts where aid = 1")
