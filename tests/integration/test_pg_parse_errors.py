"""An unparseable statement is refused (never forwarded) in the server's own shape:
the parser's message, its cursor position, SQLSTATE 42601; hoopy's words in DETAIL."""

from __future__ import annotations

import asyncpg
import pytest

from hoopy.protocols.postgres.statementcheck import UNPARSEABLE_DETAIL

from .conftest import Backend, Hoopy
from .test_pg_drivers import agent


def test_psql_shows_line_and_caret(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "select 1;\nselect 123abc")
    assert r.returncode != 0
    assert 'ERROR:  trailing junk after numeric literal at or near "123abc"' in r.stderr
    assert "LINE 2: select 123abc" in r.stderr  # psql drew the cursor from our P field
    assert "              ^" in r.stderr
    assert f"DETAIL:  {UNPARSEABLE_DETAIL}" in r.stderr


def test_end_of_input_points_at_the_end(hoopy: Hoopy) -> None:
    r = hoopy.psql("-c", "SELECT 1 + ")
    assert "ERROR:  syntax error at end of input" in r.stderr
    assert "LINE 1: SELECT 1 + \n                   ^" in r.stderr


async def test_driver_sees_sqlstate_and_position(hoopy: Hoopy, backend: Backend) -> None:
    conn = await agent(hoopy)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError) as e:
            await conn.execute("select 'é', 123abc")
        assert e.value.sqlstate == "42601"
        assert e.value.position == "13"  # characters, 1-based, as PostgreSQL counts
        assert e.value.detail == UNPARSEABLE_DETAIL
        assert await conn.fetchval("select 2") == 2  # the session stays usable
    finally:
        await conn.close()


def test_texts_without_a_statement_are_answered(hoopy: Hoopy) -> None:
    """Only a comment, a lone semicolon, blanks: the server answers EmptyQueryResponse
    (psql prints nothing) and the session goes on (such a text once crashed it)."""
    for text in ["/* only a comment */", "-- c", ";", " "]:
        r = hoopy.psql("-c", text, "-c", "select 'after'")
        assert r.returncode == 0, (text, r.stderr)
        assert "after" in r.stdout
