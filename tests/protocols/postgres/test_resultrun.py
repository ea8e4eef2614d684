"""resultrun.py, the compiled backend → agent path: its rare turns leave it for the
Python path, with the same recording (a log holding FLUSH_BYTES unwritten, a log that
failed between the command and its result, results split in every possible place),
and what it sends the agent is what the server sent, less hoopy's own ReadyForQuery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hoopy.errors import RecordingFailed
from hoopy.eventchain import FLUSH_BYTES
from hoopy.protocols.postgres import codec as pg
from hoopy.recorder import read_events
from tests.protocols.postgres import relaydigest
from tests.protocols.postgres.test_relay_recording import ANSWER, ended_with


@pytest.fixture
async def relay(tmp_path: Path) -> tuple[Any, list[bytes], list[bytes]]:
    return relaydigest.started(tmp_path)


def results(conn: Any) -> list[dict[str, Any]]:
    conn.session.log.flush()
    return [e for e in read_events(conn.session.log.path) if e["type"] == "result"]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 11, len(ANSWER)])
async def test_an_answer_in_pieces_is_recorded_and_sent_whole(
    relay: tuple[Any, list[bytes], list[bytes]], step: int
) -> None:
    conn, to_agent, _ = relay
    conn._agent_data(pg.query("select 'secret-result' as v"))
    for i in range(0, len(ANSWER), step):
        conn._backend_data(ANSWER[i : i + step])
    assert b"".join(to_agent) == ANSWER and ended_with(conn) is None
    (result,) = results(conn)
    assert result["tag"] == "SELECT 1" and result["rows"] == [["secret-result"]]
    assert result["columns"] == ["v"]


async def test_a_full_buffer_takes_the_python_path_with_the_same_event(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    """FLUSH_BYTES unwritten: the result event goes through session.record_later, which
    writes (the fast path never writes in the middle of a run)."""
    conn, to_agent, _ = relay
    log = conn.session.log
    conn._agent_data(pg.query("select 'secret-result' as v"))
    log.buffer("note", text="x" * FLUSH_BYTES)  # one event: chained, not written
    assert len(log.pending) >= FLUSH_BYTES
    conn._backend_data(ANSWER)
    assert not log.pending and b"".join(to_agent) == ANSWER
    (result,) = results(conn)
    assert result["rows"] == [["secret-result"]] and result["columns"] == ["v"]


async def test_a_log_that_failed_after_the_command_shows_nothing(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    """The recording failed (another writer saw it) between the command and its answer:
    the result takes the Python path, whose error ends the session before a byte of
    the answer reaches the agent."""
    conn, to_agent, _ = relay
    conn._agent_data(pg.query("select 'secret-result' as v"))
    conn.session.log._failed = "No space left on device"
    conn._backend_data(ANSWER)
    assert to_agent == []
    assert isinstance(ended_with(conn), RecordingFailed)


async def test_hoopys_own_ready_for_query_is_cut_from_the_run(
    relay: tuple[Any, list[bytes], list[bytes]],
) -> None:
    """A batch that ends with hoopy's own Sync (silent_ready): its ReadyForQuery is not
    sent, whatever surrounds it in the run; the rest is sent byte for byte."""
    conn, to_agent, _ = relay
    conn._agent_data(pg.query("select 'secret-result' as v"))
    done = conn.names.done
    conn.silent_ready.add(done + 2)  # the second batch's ReadyForQuery is hoopy's
    conn.names.sent += 2
    second = pg.command_complete("SELECT 0") + pg.ready_for_query("I")
    third = pg.command_complete("SELECT 0") + pg.ready_for_query("T")
    conn._backend_data(ANSWER + second + third)
    assert b"".join(to_agent) == ANSWER + pg.command_complete("SELECT 0") + third
    assert conn.names.done == done + 3 and conn.backend.status == "T"
    assert done + 2 not in conn.silent_ready
    assert [r["tag"] for r in results(conn)] == ["SELECT 1", "SELECT 0", "SELECT 0"]


@pytest.mark.parametrize(
    "bad",
    [
        b"Z\x00\x00\x00\x05X",  # ReadyForQuery with a status that does not exist
        b"C\x00\x00\x00\x08AB\x00C",  # CommandComplete whose tag ends before the message
        b"n\x00\x00\x00\x05\x00",  # NoData with a body
        b"D\x00\x00\x00\x02",  # a length shorter than its own word
    ],
)
async def test_a_malformed_message_in_a_run_ends_the_session_unsent(
    relay: tuple[Any, list[bytes], list[bytes]], bad: bytes
) -> None:
    """resultrun frames the run itself (the codec's relay_run, inline): a broken message
    anywhere in it fails the codec for good, and nothing of the run reaches the agent."""
    conn, to_agent, _ = relay
    conn._agent_data(pg.query("select 'secret-result' as v"))
    conn._backend_data(ANSWER[: ANSWER.index(b"C")] + bad + ANSWER[ANSWER.index(b"C") :])
    assert to_agent == []
    err = ended_with(conn)
    assert isinstance(err, pg.ProtocolViolation) and "secret" not in str(err)
    with pytest.raises(pg.ProtocolViolation, match="already failed"):
        conn.backend.codec.receive_data(b"")
    assert results(conn) == []
