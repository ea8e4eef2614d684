"""What the agent sees is in the recording file before the agent sees it: a result's
event (and an error's) is written before its bytes are sent, a statement's before the
server gets it.  The recording is one write per relayed batch, so these are checked
at the moment the client has its answer, before it sends anything else."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import asyncpg
import pytest

from tests.integration.conftest import Hoopy
from tests.integration.test_pg_drivers import agent


def recording_of(hoopy: Hoopy, subject: str) -> Path:
    """The open recording of `subject`'s (only) session, found by its session_start."""
    for path in (hoopy.folder / "recordings").glob("*/*.jsonl"):
        with path.open() as f:
            if json.loads(f.readline()).get("subject") == subject:
                return path
    raise AssertionError(f"no recording of {subject}")


def events(path: Path) -> list[dict[str, object]]:
    # Whole lines only: a line still being written would not parse (it cannot be,
    # here: the agent waits for the answer that follows the write).
    return [json.loads(line) for line in path.read_text().splitlines()]


def last(path: Path, kind: str) -> dict[str, object]:
    found = [e for e in events(path) if e["type"] == kind]
    assert found, f"no {kind} event on disk yet"
    return found[-1]


async def test_results_and_errors_are_on_disk_before_the_agent_has_them(hoopy: Hoopy) -> None:
    subject = "order-agent"
    conn = await agent(hoopy, hoopy.token(subject))
    try:
        path = recording_of(hoopy, subject)
        # simple protocol (a Query message): rows, tag and all are on disk already
        await conn.execute("select 'simple-marker' as v")
        result = last(path, "result")
        assert result["rows"] == [["simple-marker"]] and result["tag"] == "SELECT 1"
        assert last(path, "command")["text"] == "select 'simple-marker' as v"
        # extended protocol (Parse/Bind/Execute/Sync): the bind and the result
        assert await conn.fetchval("select $1::text || '-marker'", "extended") == (
            "extended-marker"
        )
        # (asyncpg sends text in binary format: recorded as its bytes)
        assert last(path, "bind")["params"] == [{"b64": base64.b64encode(b"extended").decode()}]
        assert last(path, "result")["rows"] == [["extended-marker"]]
        # a statement the server fails: its error event before the agent's error
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("select 1 / 0")
        assert last(path, "error")["code"] == "22012"
        # several statements in one Query: each result before the answer goes out
        await conn.execute("select 'one'; select 'two', 'three'")
        results = [e for e in events(path) if e["type"] == "result"]
        assert [r["rows"] for r in results[-2:]] == [[["one"]], [["two", "three"]]]
    finally:
        await conn.close()


def test_a_statement_waiting_for_approval_is_on_disk_while_it_waits(hoopy: Hoopy) -> None:
    """The relay writes events per forwarded batch; a wait for an approval (minutes,
    maybe) is not a batch: the waiting statement's event is written before it waits."""
    import os
    import subprocess

    from tests.integration.test_pg_approvals import admin, wait_pending

    subject = "order-approval-agent"
    env = {**os.environ, "PGPASSWORD": hoopy.token(subject)}
    sql = "update orders set status = 'order-probe' where id = 1"
    p = subprocess.Popen(
        ["psql", hoopy.conninfo(), "-X", "-At", "-c", sql],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        a = wait_pending(hoopy, "order-probe")
    except BaseException:
        p.kill()
        p.communicate(timeout=30)
        raise
    try:
        assert p.poll() is None  # still waiting
        waiting = last(recording_of(hoopy, subject), "command")
        assert waiting["text"] == sql and waiting["outcome"] == "require_approval"
    finally:
        admin(hoopy, "POST", f"/api/approvals/{a['id']}/deny", {"reason": "test"})
        p.communicate(timeout=30)
    assert p.returncode != 0
