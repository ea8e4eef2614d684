#!/usr/bin/env python3
"""hoopy's own CPU per PostgreSQL transaction, without sockets, PostgreSQL or pgbench.

Drives one real `AgentConnection` (real codec, classifier, policy, session and
recorder writing to a temp folder) with the bytes pgbench sends and the bytes
PostgreSQL answers, through in-memory transports, and prints microseconds per
transaction for each pgbench mode.  pgbench itself (bench/pg.py) measures the whole
path; this isolates the part hoopy can change, and is repeatable to a few percent.
Usage: python3 bench/pgpath.py [--n 20000] [--profile MODE]

Instruction counts of the loop alone (deterministic, whatever the machine's load):
  valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no \
    python3 bench/pgpath.py --callgrind --rounds 1 --only 'select-only simple' --n N
"Collected" is then the loop's instructions: N=2500 minus N=500, over 2000, is per
transaction without the first statement's one-time costs.  HOOPY_PURE=1 measures the
interpreted build (see hoopy/compiled.py).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoopy.config import load_config  # noqa: E402
from hoopy.gateway import Gateway  # noqa: E402
from hoopy.identity import IdentityVerifier  # noqa: E402
from hoopy.policy import Identity  # noqa: E402
from hoopy.protocols.postgres import codec as pg  # noqa: E402
from hoopy.protocols.postgres import proxy  # noqa: E402
from hoopy.protocols.postgres import sqlsecrets as sqlsecrets  # noqa: E402
from hoopy.protocols.postgres.backend import BackendConn  # noqa: E402
from hoopy.protocols.postgres.searchpath import SearchPath  # noqa: E402
from hoopy.recorder import Recorder  # noqa: E402
from hoopy.state import StateStore  # noqa: E402

POLICY = (
    "rules:\n  - name: bench\n    effect: allow\n    match: {groups: [bench]}\n"
    "  - name: no-ddl\n    effect: deny\n    match: {sql: {statements: [drop, alter]}}\n"
)
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
ROW = pg.row_description([pg.FieldDescription("abalance", 16400, 3, 23, 4, -1, 0)])


def answer(value: int) -> bytes:
    """What PostgreSQL sends for one pgbench -S select."""
    return ROW + pg.data_row([str(value).encode()]) + pg.command_complete("SELECT 1")


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def write(self, data: Any) -> None:
        self.sent += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default


class Writer:
    def __init__(self) -> None:
        self.transport = Transport()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


def connection(folder: Path) -> proxy.AgentConnection:
    (folder / "connectors").mkdir(parents=True)
    (folder / "policies").mkdir()
    (folder / "connectors" / "bench.yaml").write_text(
        "type: postgres\naddress: 127.0.0.1:1\ndatabase: bench\nuser: bench\n"
        "password: env:PATH\nsslmode: disable\n"
    )
    (folder / "policies" / "bench.yaml").write_text(POLICY)
    (folder / "hoopy.yaml").write_text(
        "listen: {postgres: 127.0.0.1:0}\nstate: sqlite:state/state.db\nrecordings: recordings/\n"
    )
    config = load_config(folder / "hoopy.yaml")
    store = StateStore(config.state_dir / "state.db")
    gw = Gateway(config, IdentityVerifier([]), store, Recorder(config.recordings, store))
    listener = proxy.PostgresListener(gw, None)
    conn = proxy.AgentConnection(listener, None, Writer())  # type: ignore[arg-type]
    connector = config.connectors["bench"]
    conn.connector = connector  # type: ignore[assignment]
    identity = Identity("bench", frozenset({"bench"}), "dev", "fp", time.time() + 86400)
    conn.session = gw.open_session(identity, "bench", "postgres", conn.client, True)
    # what the proxy's login sets (proxy.py): secrets hidden, the search path tracked
    conn.session.hide = sqlsecrets.hidden
    conn.session.scope = SearchPath(connector.user)
    conn.codec.receive_data(pg.startup_message({"user": "agent", "database": "bench"}))
    conn.codec.next_event()
    conn.codec.start_session()
    conn.codec.opaque = frozenset(b"BDEHdc")
    codec = pg.ClientConnection()
    codec.receive_data(pg.ready_for_query("I"))
    codec.next_event()
    backend = BackendConn(connector, None, Writer(), codec)  # type: ignore[arg-type]
    conn.backend = backend
    return conn


def attach(conn: proxy.AgentConnection) -> tuple[Any, Any]:
    """What `_relay` sets up, with in-memory transports: the two data callbacks."""
    from hoopy.protocols.postgres.pump import Eager

    at, bt = conn.writer.transport, conn.backend.writer.transport  # type: ignore[union-attr]
    conn._log = conn.session.log  # type: ignore[union-attr]
    conn._log.defer()
    conn._unwritten = conn._log.pending
    conn._columns = {}
    conn._agent_write = at.write
    conn._backend_write = bt.write
    conn._agent_pump = Eager(at, conn._agent_batch, conn._agent_again, print)
    conn._backend_pump = Eager(bt, conn._backend_batch, conn._backend_again, print)
    return conn._agent_data, conn._backend_data


def workloads() -> dict[str, tuple[Any, Any]]:
    """mode → (agent bytes for transaction i, backend bytes for transaction i)."""
    ready = pg.ready_for_query("I")
    ext_ack = pg.parse_complete() + pg.bind_complete()
    return {
        "select-only simple": (
            lambda i: pg.query(SELECT.format(i % 100000 + 1)),
            lambda i: answer(i) + ready,
        ),
        "select-only extended": (
            lambda i: (
                pg.parse("", SELECT.format("$1"), (23,))
                + pg.bind("", "", [str(i % 100000 + 1).encode()], [0], [1])
                + pg.describe("P", "")
                + pg.execute("", 0)
                + pg.sync()
            ),
            lambda i: ext_ack + answer(i) + ready,
        ),
        "select-only prepared": (
            lambda i: (
                pg.bind("", "P_0", [str(i % 100000 + 1).encode()], [0], [1])
                + pg.execute("", 0)
                + pg.sync()
            ),
            lambda i: (
                pg.bind_complete()
                + pg.data_row([str(i).encode()])
                + pg.command_complete("SELECT 1")
                + ready
            ),
        ),
    }


def callgrind_toggle() -> Any:
    """A function switching callgrind's instrumentation and collection on and off (built
    from valgrind's own client-request header; does nothing outside valgrind)."""
    import ctypes
    import subprocess

    folder = Path(tempfile.mkdtemp(prefix="hoopy-cg-"))
    (folder / "cg.c").write_text(
        "#include <valgrind/callgrind.h>\n"
        "void cg_on(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }\n"
        "void cg_off(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_STOP_INSTRUMENTATION; }\n"
    )
    lib = folder / "cg.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", lib, folder / "cg.c"], check=True)
    cg = ctypes.CDLL(str(lib))
    shutil.rmtree(folder, ignore_errors=True)  # loaded: the file is no longer needed
    state = {"on": False}

    def toggle() -> None:
        (cg.cg_off if state["on"] else cg.cg_on)()
        state["on"] = not state["on"]

    return toggle


def run(
    mode: str, n: int, folder: Path, profile: bool, dry: bool = False, toggle: Any = None
) -> float:
    conn = connection(folder)
    agent_data, backend_data = attach(conn)
    make_agent, make_backend = workloads()[mode]
    if mode.endswith("prepared"):  # pgbench prepares once per connection
        agent_data(pg.parse("P_0", SELECT.format("$1"), (23,)) + pg.sync())
        backend_data(pg.parse_complete() + pg.ready_for_query("I"))
    agent = [make_agent(i) for i in range(n)]
    backend = [make_backend(i) for i in range(n)]
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    if toggle:
        toggle()
    t0 = time.process_time()
    for a, b in zip([] if dry else agent, backend, strict=False):
        agent_data(a)
        backend_data(b)
    spent = time.process_time() - t0
    if toggle:
        toggle()
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(
            int(__import__("os").environ.get("PGPATH_TOP", "30"))
        )
    assert conn.batches_done == conn.batches_sent, "every transaction answered"
    conn.session.log.close("closed")  # type: ignore[union-attr]
    return spent / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", default="", help="cProfile one run of this mode")
    ap.add_argument("--only", default="", help="run only modes containing this")
    ap.add_argument(
        "--dry", action="store_true", help="prepare the bytes but skip the loop (for callgrind)"
    )
    ap.add_argument(
        "--callgrind", action="store_true", help="collect only the loop (see the usage above)"
    )
    a = ap.parse_args()
    toggle = callgrind_toggle() if a.callgrind else None
    with tempfile.TemporaryDirectory() as tmp:
        k = 0
        for mode in workloads():
            if (a.profile and a.profile not in mode) or (a.only and a.only not in mode):
                continue
            times = []
            for _ in range(1 if a.profile else a.rounds):
                k += 1
                times.append(run(mode, a.n, Path(tmp) / str(k), bool(a.profile), a.dry, toggle))
            print(f"{mode:<24} {statistics.median(times):6.1f} us/txn (median of {len(times)})")


if __name__ == "__main__":
    asyncio.run(main())
