"""The relay and its recording, without sockets (relaydigest.session: the real codec,
classifier, policy, session and recorder, in-memory transports): one write per
forwarded batch, and nothing forwarded or shown whose events could not be written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hoopy.errors import RecordingFailed
from hoopy.protocols.postgres import codec as pg
from hoopy.recorder import read_events
from tests.protocols.postgres import relaydigest

ANSWER = (
    pg.row_description([relaydigest.field("v")])
    + pg.data_row([b"secret-result"])
    + pg.command_complete("SELECT 1")
    + pg.ready_for_query("I")
)


@pytest.fixture
async def relay(tmp_path: Path) -> tuple[Any, list[bytes], list[bytes]]:
    return relaydigest.started(tmp_path)


def fill_disk(conn: Any) -> None:
    """Every later write to the recording fails with ENOSPC."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, conn.session.log.fileno())
    os.close(full)


def ended_with(conn: Any) -> BaseException | None:
    return conn._ended.exception() if conn._ended.done() else None


async def test_each_direction_writes_its_events_once_before_forwarding(
    relay: tuple[Any, list[bytes], list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hoopy.recorder as rec

    conn, _, _ = relay
    path = conn.session.log.path
    writes: list[str] = []
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        events = bytes(data).count(b"\n")
        writes.append(f"file {events} events")
        return real_write(fd, data)

    monkeypatch.setattr(rec.os, "write", write)
    conn._agent_write = lambda data: writes.append("agent")
    conn._backend_write = lambda data: writes.append("backend")
    extended = (
        pg.parse("", "select $1::int", (23,))
        + pg.bind("", "", [b"1"], [0], [0])
        + pg.execute("", 0)
        + pg.sync()
    )
    conn._agent_data(extended)
    conn._backend_data(pg.parse_complete() + pg.bind_complete() + ANSWER[ANSWER.index(b"D") :])
    conn._agent_data(pg.query("select 1; select 2"))
    conn._backend_data(ANSWER[:-6] + ANSWER)
    assert writes == [
        "file 2 events",  # the Parse's command and the Bind
        "backend",
        "file 1 events",  # the result
        "agent",
        "file 2 events",  # both statements of the Query
        "backend",
        "file 2 events",  # both results
        "agent",
    ]
    monkeypatch.undo()
    types = [e["type"] for e in read_events(path)]
    assert types[1:] == ["command", "bind", "result", "command", "command", "result", "result"]


async def test_a_result_whose_event_cannot_be_written_never_reaches_the_agent(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    conn, to_agent, to_backend = relay
    conn._agent_data(pg.query("select 'x'"))
    assert to_backend == [pg.query("select 'x'")]  # its command event written first
    fill_disk(conn)
    conn._backend_data(ANSWER)
    assert to_agent == []  # not a byte of the result
    err = ended_with(conn)
    assert isinstance(err, RecordingFailed) and err.fatal and err.sqlstate == "58030"
    assert "secret-result" not in str(err)
    text = conn.session.log.path.read_text()
    assert "secret-result" not in text and text.count("\n") == 2  # start, command


async def test_a_command_whose_event_cannot_be_written_never_reaches_the_server(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    conn, to_agent, to_backend = relay
    fill_disk(conn)
    conn._agent_data(pg.query("delete from orders"))
    assert to_backend == [] and to_agent == []
    err = ended_with(conn)
    assert isinstance(err, RecordingFailed) and err.fatal
    assert conn.session.log.failed
    # what still arrives before the session is torn down is refused: the server gets
    # hoopy's marker (a statement that cannot run), never the agent's text
    conn._agent_data(pg.query("select 1"))
    assert to_backend == [pg.query(conn.marker)]
    assert conn.session.log.path.read_text().count("\n") == 1  # session_start only
