"""The gateway's ownership of sessions: its lock, the progress it writes to the index, and
ending the sessions of gateways proven dead (and only those) as crashed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hoopy.config import load_config
from hoopy.gateway import Gateway
from hoopy.identity import IdentityVerifier
from hoopy.policy import Identity
from hoopy.recorder import Recorder, SessionLog, verify_session
from hoopy.state import ALIVE, UNKNOWN, OwnerLock, StateStore, owner_state, owners_dir

IDENTITY = Identity("agent-1", frozenset({"agents"}), "dev", "fp", time.time() + 3600)


def make_gateway(folder: Path) -> Gateway:
    (folder / "hoopy.yaml").write_text(
        "listen: {postgres: 127.0.0.1:0}\nstate: sqlite:state/state.db\nrecordings: recordings/\n"
    )
    config = load_config(folder / "hoopy.yaml")
    store = StateStore(config.state_dir / "state.db")
    return Gateway(config, IdentityVerifier([]), store, Recorder(config.recordings, store))


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = make_gateway(tmp_path)
    g.start_flusher(interval=3600)  # flushes driven by hand below
    yield g
    await g.close()
    g.store.close()


def session_of(gw: Gateway, owner: OwnerLock | None) -> SessionLog:
    """A session recorded by another gateway process: `owner` (None: an older hoopy)."""
    gw.recorder.owner = owner.id if owner is not None else ""
    try:
        slog = gw.recorder.open_session(
            f"s-{time.monotonic_ns()}",
            protocol="postgres",
            connector="db",
            subject="agent-1",
            groups=["agents"],
            client="127.0.0.1:1",
            tls=True,
        )
    finally:
        gw.recorder.owner = gw._owner.id if gw._owner is not None else ""
    slog.event("command", text="select 1")
    return slog


async def test_sessions_are_owned_and_progress_reaches_the_index(gw: Gateway) -> None:
    session = gw.open_session(IDENTITY, "db", "postgres", "127.0.0.1:1", True)
    row = gw.store.get_session(session.id)
    assert row is not None and gw._owner is not None and row.owner == gw._owner.id
    assert owner_state(owners_dir(gw.config.state_dir), row.owner) == ALIVE
    session.log.event("command", text="select 1")
    session.log.buffer("result", tag="SELECT 1")
    gw.flush_logs()  # the flusher's tick: buffered events to disk, what is on disk to the index
    row = gw.store.get_session(session.id)
    assert row is not None and (row.events, row.head) == (3, session.log.head)


async def test_dead_owners_sessions_end_as_crashed(gw: Gateway) -> None:
    folder = owners_dir(gw.config.state_dir)
    dead = OwnerLock(folder)
    crashed = session_of(gw, dead)
    gw.store.sessions_progress([(crashed.id, crashed.events, crashed.head)])
    dead.release(keep=True)  # kill -9: the file stays, the kernel drops the lock
    alive = OwnerLock(folder)  # another replica, running
    running = session_of(gw, alive)
    legacy = session_of(gw, None)  # no owner known: cannot be judged

    gw.recover_crashed()

    row = gw.store.get_session(crashed.id)
    assert row is not None and row.outcome == "crashed" and row.ended is not None
    assert (row.events, row.head, row.note) == (crashed.events, crashed.head, "")
    assert not dead.path.exists()  # dealt with; nothing left to judge
    res = verify_session(crashed.id, gw.recorder.directory, gw.store)
    assert res.ok and res.crashed
    for slog in (running, legacy):
        kept = gw.store.get_session(slog.id)
        assert kept is not None and kept.ended is None, slog
    assert alive.path.exists() and owner_state(folder, alive.id) == ALIVE
    assert gw._owner is not None and gw._owner.path.exists()  # its own lock is held
    alive.release()


async def test_a_broken_recording_is_noted_when_recovered(gw: Gateway) -> None:
    dead = OwnerLock(owners_dir(gw.config.state_dir))
    slog = session_of(gw, dead)
    gw.store.sessions_progress([(slog.id, slog.events, slog.head)])
    dead.release(keep=True)
    slog.path.write_bytes(slog.path.read_bytes().splitlines(keepends=True)[0])  # tail cut
    gw.recover_crashed()
    row = gw.store.get_session(slog.id)
    assert row is not None and row.outcome == "crashed" and "index says 2 events" in row.note


async def test_clean_shutdown_releases_the_lock(tmp_path: Path) -> None:
    g = make_gateway(tmp_path)
    g.start_flusher()
    assert g._owner is not None
    path = g._owner.path
    await g.close()
    assert not path.exists()
    g.store.close()


async def test_shutdown_with_open_sessions_leaves_them_to_recover(tmp_path: Path) -> None:
    g = make_gateway(tmp_path)
    g.start_flusher()
    session = g.open_session(IDENTITY, "db", "postgres", "127.0.0.1:1", True)
    assert g._owner is not None
    owner, path = g._owner.id, g._owner.path
    await g.close()
    assert path.exists()  # the next gateway ends the unfinished session as crashed
    assert owner_state(path.parent, owner) != UNKNOWN
    nxt = make_gateway(tmp_path)
    nxt.start_flusher()  # what `hoopy serve` does at startup
    row = nxt.store.get_session(session.id)
    assert row is not None and row.outcome == "crashed"
    assert not path.exists()
    await nxt.close()
    g.store.close()
    nxt.store.close()
