"""forward.Relay's callbacks in the orders asyncssh may call them, with stand-in channels
that keep what they are told (the real-ssh paths are in tests/integration/
test_ssh_forward.py): bytes and EOF that come before the agent's side opens are
relayed, not lost; a recorder failure closes both sides; the log holds what passed."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

from hoopy.netdest import destination
from hoopy.protocols.ssh.forward import DATA_EVENT, Relay
from hoopy.recorder import RecorderError


@dataclass
class Chan:
    window: int = 2 * 1024 * 1024
    written: list[bytes] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    limits: tuple[int, int] | None = None

    def get_recv_window(self) -> int:
        return self.window

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_eof(self) -> None:
        self.calls.append("eof")

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def close(self) -> None:
        self.calls.append("close")


@dataclass
class Log:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def event(self, kind: str, **fields: Any) -> None:
        if self.fail:
            raise RecorderError("disk full")
        self.events.append((kind, fields))


class Conn:
    def __init__(self, record_bytes: int = 1 << 20) -> None:
        self.open_channels = 1
        self.session = type("S", (), {"log": Log()})()
        ssh = type("Ssh", (), {"record_bytes": record_bytes})()
        gw = type("Gw", (), {"config": type("C", (), {"ssh": ssh})()})()
        self.listener = type("L", (), {"gw": gw})()


def _relay(record_bytes: int = 1 << 20) -> tuple[Relay, Conn]:
    conn = Conn(record_bytes)
    return Relay(conn, 1, destination("db.internal", 5432)), conn  # type: ignore[arg-type]


def _stream(conn: Conn, direction: str) -> bytes:
    out = b""
    for kind, f in conn.session.log.events:
        if kind == "forward_data" and f["dir"] == direction:
            assert f["offset"] == len(out)
            out += _bytes(f)
    return out


def _bytes(f: dict[str, Any]) -> bytes:
    return f["text"].encode() if "text" in f else base64.b64decode(f["b64"])


async def test_what_comes_before_the_agent_side_opens_is_relayed() -> None:
    relay, conn = _relay()
    backend, agent = Chan(window=4 << 20), Chan()
    relay.made(False, backend)  # type: ignore[arg-type]
    relay.data(False, b"220 hello\r\n")  # the destination greets, says EOF, goes
    relay.eof(False)
    relay.lost(False, None)
    assert backend.calls == ["pause"] and conn.open_channels == 1
    relay.made(True, agent)  # type: ignore[arg-type]
    assert agent.written == [b"220 hello\r\n"]
    assert agent.calls == ["eof", "close"]
    assert agent.limits == ((4 << 20) + 256 * 1024, 256 * 1024)  # see limit_buffers
    assert backend.limits == ((2 << 20) + 256 * 1024, 256 * 1024)
    assert conn.open_channels == 0
    closes = [f for k, f in conn.session.log.events if k == "forward_close"]
    assert closes == [closes[0]] and closes[0]["bytes_from"] == 11
    assert closes[0]["closed_by"] == "destination"
    assert _stream(conn, "from") == b"220 hello\r\n"


async def test_turns_of_the_conversation_are_recorded_in_order() -> None:
    relay, conn = _relay()
    backend, agent = Chan(), Chan()
    relay.made(False, backend)  # type: ignore[arg-type]
    relay.made(True, agent)  # type: ignore[arg-type]
    for i in range(3):
        relay.data(True, b"q%d" % i)
        relay.data(False, b"\xff\x00a%d" % i)  # binary: b64
    relay.lost(True, None)
    kinds = [(k, f.get("dir")) for k, f in conn.session.log.events]
    assert kinds == [("forward_data", "to"), ("forward_data", "from")] * 3 + [
        ("forward_close", None)
    ]
    assert _stream(conn, "to") == b"q0q1q2"
    assert _stream(conn, "from") == b"\xff\x00a0\xff\x00a1\xff\x00a2"
    assert backend.written == [b"q0", b"q1", b"q2"] and backend.calls == ["resume", "close"]
    assert agent.written == [b"\xff\x00a0", b"\xff\x00a1", b"\xff\x00a2"]


async def test_big_chunks_are_split_and_capped() -> None:
    relay, conn = _relay(record_bytes=DATA_EVENT * 2 + 10)
    relay.made(False, Chan())  # type: ignore[arg-type]
    relay.made(True, Chan())  # type: ignore[arg-type]
    blob = bytes(range(256)) * (DATA_EVENT // 64)  # 4 events' worth
    relay.data(True, blob)
    sizes = [len(_bytes(f)) for k, f in conn.session.log.events if k == "forward_data"]
    assert sizes == [DATA_EVENT, DATA_EVENT, 10]
    assert [k for k, _ in conn.session.log.events][-1] == "recording_capped"
    relay.data(True, b"more")  # past the cap: counted, not recorded
    relay.lost(True, None)
    close = conn.session.log.events[-1][1]
    assert close["bytes_to"] == len(blob) + 4


async def test_a_recorder_failure_closes_both_sides_and_passes_nothing() -> None:
    relay, conn = _relay()
    backend, agent = Chan(), Chan()
    relay.made(False, backend)  # type: ignore[arg-type]
    relay.made(True, agent)  # type: ignore[arg-type]
    conn.session.log.fail = True
    relay.data(True, b"x" * (DATA_EVENT + 1))  # a whole event is due: it cannot be written
    assert backend.written == []
    assert "close" in backend.calls and "close" in agent.calls


async def test_quiet_streams_are_flushed_after_a_delay() -> None:
    relay, conn = _relay()
    relay.made(False, Chan())  # type: ignore[arg-type]
    relay.made(True, Chan())  # type: ignore[arg-type]
    relay.data(True, b"ping")
    assert conn.session.log.events == []  # coalescing
    assert relay._timer is not None
    await asyncio.wait_for(_until(lambda: bool(conn.session.log.events)), 5)
    assert _stream(conn, "to") == b"ping"


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.01)
