"""Passwords an agent writes into SQL (ALTER ROLE … PASSWORD, conninfo and URI strings)
reach the server as written, but never a recording, an approval request, the state
store or hoopy's log (sqlsecrets.py), with the real psql through hoopy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import cli_decide, wait_pending
from tests.integration.test_pg_drivers import agent
from tests.integration.test_pg_psql import app_count


@pytest.fixture(scope="module")
def h(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    hoopy = start_hoopy(tmp_path_factory.mktemp("sqlsecrets"), backend)
    try:
        yield hoopy
    finally:
        stop_hoopy(hoopy)


def _psql(h: Hoopy, sql: str, sub: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", h.conninfo(), "-X", "-At", "-c", sql],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGPASSWORD": h.token(sub)},
    )  # fmt: skip


def _kept(h: Hoopy) -> str:
    """Everything hoopy keeps: recordings, the state store, its log."""
    parts = [
        p.read_bytes().decode("utf-8", "replace") for p in Path(h.folder).rglob("*") if p.is_file()
    ]
    return "\n".join(parts) + h.log_text()


def _commands(h: Hoopy, sub: str) -> list[str]:
    sid = h.cli("sessions", "list", "--subject", sub).stdout.split()[0]
    events = [json.loads(x) for x in h.cli("sessions", "show", sid).stdout.splitlines()]
    return [e["text"] for e in events if e["type"] == "command"]


def test_role_password_denied_statement_is_recorded_without_it(h: Hoopy) -> None:
    secret = "Rolepw-7f3kq"
    r = _psql(h, f"ALTER ROLE app_rw WITH ENCRYPTED PASSWORD '{secret}'", "secrets-role")
    assert r.returncode != 0 and "no-schema-changes" in r.stderr  # denied by the policy
    assert _commands(h, "secrets-role") == ["ALTER ROLE app_rw WITH ENCRYPTED PASSWORD '****'"]
    assert secret not in _kept(h)


def test_conninfo_and_uri_passwords_run_as_written_and_are_recorded_hidden(
    h: Hoopy, backend: Backend
) -> None:
    a, b = "Connpw-91xz", "Uripw-q81c"
    conninfo, uri = f"host=db user=u password={a} dbname=x", f"postgresql://u:{b}@db/x"
    sql = f"select length('{conninfo}') + length('{uri}')"
    r = _psql(h, sql, "secrets-conn")
    assert r.returncode == 0, r.stderr
    # the server read the literals as the agent wrote them
    assert r.stdout.strip() == str(len(conninfo) + len(uri))
    (text,) = _commands(h, "secrets-conn")
    assert "password=****" in text and "postgresql://u:****@db/x" in text
    kept = _kept(h)
    assert a not in kept and b not in kept


def test_approval_request_shows_the_statement_without_the_password(
    h: Hoopy, backend: Backend
) -> None:
    secret = "Apprpw-4m2n"
    value = f"postgresql://svc:{secret}@db/app"
    p = subprocess.Popen(
        ["psql", h.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c",
         f"update orders set status = '{value}' where id = 6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PGPASSWORD": h.token("secrets-approval")},
    )  # fmt: skip
    a = wait_pending(h, "postgresql://svc:****@db/app")
    assert secret not in json.dumps(a)
    assert cli_decide(h, "approve", a["id"]).returncode == 0
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    # what ran is what the agent wrote, password included
    assert app_count(backend, f"select count(*) from orders where status = '{value}'") == 1
    assert secret not in _kept(h)


def test_unparseable_statement_hides_its_password_too(h: Hoopy) -> None:
    secret = "Brokenpw-z8w1"
    r = _psql(h, f"ALTER ROLE app_rw PASSWORD '{secret}", "secrets-broken")
    assert r.returncode != 0 and "unterminated" in r.stderr
    texts = _commands(h, "secrets-broken")
    assert texts and all("****" in t for t in texts)
    assert secret not in _kept(h)


def test_extended_protocol_parse_and_bind_events_hide_it(h: Hoopy) -> None:
    """asyncpg: Parse, then a Bind event that names the statement's text."""
    secret = "Extpw-6tq0"

    async def go() -> int:
        conn = await agent(h, h.token("secrets-ext"))
        try:
            return int(await conn.fetchval(f"select length('password={secret}') + $1::int", 1))
        finally:
            await conn.close()

    assert asyncio.run(go()) == len(f"password={secret}") + 1
    sid = h.cli("sessions", "list", "--subject", "secrets-ext").stdout.split()[0]
    shown = h.cli("sessions", "show", sid).stdout
    assert '"type":"bind"' in shown.replace(" ", "") and "password=****" in shown
    assert secret not in _kept(h)
