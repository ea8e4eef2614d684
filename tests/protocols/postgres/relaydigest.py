"""What the PostgreSQL relay makes of a set of sessions' bytes: the recording file and
the bytes it forwards both ways, to compare the compiled and the interpreted build.

`python -m tests.protocols.postgres.relaydigest OUT` drives real `AgentConnection`s
(codec, classifier, policy, session, recorder writing to a temp folder; fixed session
ids and a fixed clock) through in-memory transports with pgbench's transactions in
every protocol mode and results with awkward values (NULLs, binary, invalid UTF-8,
escapes, more rows and bytes than a recording keeps, errors), whole and in small
chunks, writes everything to OUT and prints `{"compiled": {module: bool}}`.  Run with
HOOPY_PURE=1 and without, the two files must be identical (test_relay_builds.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hoopy import compiled, gateway
from hoopy.config import load_config
from hoopy.gateway import Gateway
from hoopy.identity import IdentityVerifier
from hoopy.policy import Identity
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres import proxy
from hoopy.protocols.postgres.backend import BackendConn
from hoopy.protocols.postgres.pump import Eager
from hoopy.recorder import Recorder
from hoopy.state import StateStore

POLICY = (
    "rules:\n  - name: all\n    effect: allow\n    match: {groups: [g]}\n"
    "  - name: no-ddl\n    effect: deny\n    match: {sql: {statements: [drop, alter]}}\n"
)
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
VALUES: list[bytes | None] = [
    b"plain",
    None,
    b"",
    b"\x00\x01\x02 binary",
    b"\xff\xfe not UTF-8",
    "unicode \u00e9 \u2603 \U0001f600".encode(),
    b'quote " backslash \\ slash / tab \t newline \n',
    b"\x1b[31m escape",
    b"x" * 3000,
]


class Transport(asyncio.Transport):
    def __init__(self, sink: list[bytes]) -> None:
        super().__init__()
        self.sink = sink

    def write(self, data: Any) -> None:
        self.sink.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default


class Writer:
    def __init__(self, sink: list[bytes]) -> None:
        self.transport = Transport(sink)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


def clock() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: 1_700_000_000.0 + next(ticks) / 8  # exact in binary: no rounding


def started(folder: Path) -> tuple[Any, list[bytes], list[bytes]]:
    """A relay as `Relay._relay` sets it up (inside a running loop), and the bytes it
    sends the agent and the backend."""
    to_agent: list[bytes] = []
    to_backend: list[bytes] = []
    conn = session(folder, "s-1", to_agent, to_backend)
    loop = asyncio.get_running_loop()
    conn._ended = loop.create_future()
    conn._agent_closed = loop.create_future()
    return conn, to_agent, to_backend


def session(folder: Path, sid: str, to_agent: list[bytes], to_backend: list[bytes]) -> Any:
    (folder / "connectors").mkdir(parents=True)
    (folder / "policies").mkdir()
    (folder / "connectors" / "db.yaml").write_text(
        "type: postgres\naddress: 127.0.0.1:1\ndatabase: db\nuser: u\n"
        "password: env:PATH\nsslmode: disable\n"
    )
    (folder / "policies" / "p.yaml").write_text(POLICY)
    (folder / "hoopy.yaml").write_text(
        "listen: {postgres: 127.0.0.1:0}\nstate: sqlite:state/state.db\nrecordings: recordings/\n"
        "postgres: {record_rows: 5, record_bytes: 2000}\n"
    )
    config = load_config(folder / "hoopy.yaml")
    store = StateStore(config.state_dir / "state.db")
    recorder = Recorder(config.recordings, store, clock())
    gw = Gateway(config, IdentityVerifier([]), store, recorder)
    conn = proxy.AgentConnection(proxy.PostgresListener(gw, None), None, Writer(to_agent))  # type: ignore[arg-type]
    connector = config.connectors["db"]
    conn.connector = connector  # type: ignore[assignment]
    conn.marker = "hoopy_refused_0123456789abcdef"  # a random nonce per session otherwise
    identity = Identity("agent", frozenset({"g"}), "dev", "fp", 4_000_000_000.0)
    saved = gateway.new_session_id
    gateway.new_session_id = lambda now=None: sid  # type: ignore[assignment]
    try:
        conn.session = gw.open_session(identity, "db", "postgres", conn.client, True)
    finally:
        gateway.new_session_id = saved  # type: ignore[assignment]
    conn.codec.receive_data(pg.startup_message({"user": "agent", "database": "db"}))
    conn.codec.next_event()
    conn.codec.start_session()
    conn.codec.opaque = frozenset(b"BDEHdc")
    codec = pg.ClientConnection()
    codec.receive_data(pg.ready_for_query("I"))
    codec.next_event()
    conn.backend = BackendConn(connector, None, Writer(to_backend), codec)  # type: ignore[arg-type]
    # what Relay._relay sets up around the transports
    at, bt = conn.writer.transport, conn.backend.writer.transport  # type: ignore[union-attr]
    conn._log = conn.session.log
    conn._log.defer()
    conn._unwritten = conn._log.pending
    conn._columns = {}
    conn._agent_write = at.write
    conn._backend_write = bt.write
    conn._agent_pump = Eager(at, conn._agent_batch, conn._agent_again, print)
    conn._backend_pump = Eager(bt, conn._backend_batch, conn._backend_again, print)
    return conn


def field(name: str) -> pg.FieldDescription:
    return pg.FieldDescription(name, 0, 0, 25, -1, -1, 0)


def rows_answer(n: int) -> bytes:
    """A text result of `n` rows of every awkward value, with its description."""
    desc = pg.row_description([field(f"c{i}") for i in range(len(VALUES))])
    body = b"".join(pg.data_row(VALUES[i % 3 :] + VALUES[: i % 3]) for i in range(n))
    return desc + body + pg.command_complete(f"SELECT {n}")


def exchanges() -> Iterator[tuple[str, bytes, bytes]]:
    """(name, what the agent sends, what the server answers), one batch each."""
    ready = pg.ready_for_query("I")
    for i in range(3):
        one = pg.row_description([field("abalance")]) + pg.data_row([str(i).encode()])
        yield (
            "simple",
            pg.query(SELECT.format(i + 1)),
            one + pg.command_complete("SELECT 1") + ready,
        )
        yield (
            "extended",
            pg.parse("", SELECT.format("$1"), (23,))
            + pg.bind("", "", [str(i).encode()], [0], [1])
            + pg.describe("P", "")
            + pg.execute("", 0)
            + pg.sync(),
            pg.parse_complete()
            + pg.bind_complete()
            + one
            + pg.command_complete("SELECT 1")
            + ready,
        )
    # the cached-statement lane (cmdlane.py): other literals, blanks and semicolons
    # around the statement, the same text again, a ';' inside a literal
    for i, sql in enumerate(
        (
            "  " + SELECT.format(7) + " ;; ",
            SELECT.format(7),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 8 ",
            "SELECT abalance FROM pgbench_accounts WHERE aid = ';'",
        )
    ):
        one = pg.row_description([field("abalance")]) + pg.data_row([str(i).encode()])
        yield "lane", pg.query(sql), one + pg.command_complete("SELECT 1") + ready
    yield "rows", pg.query("select * from t -- \u00e9\u2603"), rows_answer(12) + ready
    yield "few rows", pg.query('select "x" from t'), rows_answer(2) + ready
    yield (
        "two statements",
        pg.query("select 1; select 'two'"),
        rows_answer(1) + rows_answer(3) + ready,
    )
    yield (
        "error",
        pg.query("select 1/0"),
        pg.error_response("22012", "division by zero \u00e9") + ready,
    )
    yield "denied", pg.query("drop table t"), b""
    yield (
        "prepare",
        pg.parse("P_0", SELECT.format("$1"), (23,)) + pg.sync(),
        pg.parse_complete() + ready,
    )
    for i in range(3):
        yield (
            "prepared",
            pg.bind("", "P_0", [VALUES[i] or b"7"], [1], [0]) + pg.execute("", 0) + pg.sync(),
            pg.bind_complete()
            + pg.data_row([VALUES[i + 3]])
            + pg.command_complete("SELECT 1")
            + ready,
        )
    # the Bind lane (bindlane.py) with several Binds, every awkward value, text and
    # binary formats, more bytes than a recording keeps
    one = pg.bind_complete() + pg.data_row([b"1"]) + pg.command_complete("SELECT 1")
    yield (
        "binds",
        pg.bind("", "P_0", [VALUES[8]], [0], [0])
        + pg.execute("", 0)
        + pg.bind("p", "P_0", VALUES, [0, 1, 0, 1, 0, 1, 0, 0, 1], [1])
        + pg.describe("P", "p")
        + pg.execute("p", 0)
        + pg.sync(),
        one + one + ready,
    )


def pieces(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def digest(folder: Path) -> list[str]:
    out: list[str] = []
    for size in (None, 1, 7):
        to_agent: list[bytes] = []
        to_backend: list[bytes] = []
        conn = session(folder / f"s{size}", f"session-{size}", to_agent, to_backend)
        for name, front, back in exchanges():
            out.append(f"== {name} size={size}")
            for piece in pieces(front, size):
                conn._agent_data(piece)
            if not back:  # refused: the server answers hoopy's marker
                sent = b"".join(to_backend[-1:])
                out.append(f"marker sent {sent[:1]!r}")
                back = pg.error_response("42601", f"syntax error at {conn.marker}")
                back += pg.ready_for_query("I")
            for piece in pieces(back, size):
                conn._backend_data(piece)
            out.append(f"backend {b''.join(to_backend)!r}")
            out.append(f"agent {b''.join(to_agent)!r}")
            to_agent.clear()
            to_backend.clear()
        conn.session.log.close("closed")
        path = conn.session.log.path
        out.append(f"recording {path.name}")
        out.extend(path.read_text(encoding="utf-8", errors="surrogateescape").splitlines())
    return out


async def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lines = digest(Path(tmp))
    target.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    print(json.dumps({"compiled": compiled.status()}))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
