"""The state store: schema, session index round trips, filters, concurrency."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoopy.state import SCHEMA_VERSION, SessionRow, StateError, StateStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "deep" / "state" / "state.db")
    yield s
    s.close()


def row(id: str, started: float, subject: str = "alice", connector: str = "app-db") -> SessionRow:
    return SessionRow(
        id=id,
        protocol="postgres",
        connector=connector,
        subject=subject,
        groups=["agents", "dba"],
        client="127.0.0.1:40000",
        tls=True,
        started=started,
        path=f"/rec/{id}.jsonl",
    )


def test_creates_parent_dirs_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    s = StateStore(path)
    assert path.exists()
    assert s.schema_version() == SCHEMA_VERSION
    s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "meta"} <= tables


def test_meta_round_trip_and_persistence(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    assert s.get_meta("instance") is None
    s.set_meta("instance", "one")
    s.set_meta("instance", "two")
    s.close()
    s = StateStore(tmp_path / "state.db")  # migrations are not re-applied destructively
    assert s.get_meta("instance") == "two"
    assert s.schema_version() == SCHEMA_VERSION
    s.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    StateStore(tmp_path / "state.db").close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match="newer"):
        StateStore(tmp_path / "state.db")


def test_session_round_trip(store: StateStore) -> None:
    store.session_started(row("s1", 1000.0))
    got = store.get_session("s1")
    assert got == row("s1", 1000.0)
    assert got is not None and got.groups == ["agents", "dba"] and got.tls is True
    assert got.ended is None and got.outcome is None and got.events == 0 and got.head == ""

    assert store.session_ended("s1", 1005.5, "closed", 12, "ab" * 32) is True
    got = store.get_session("s1")
    assert got is not None
    assert (got.ended, got.outcome, got.events, got.head) == (1005.5, "closed", 12, "ab" * 32)
    assert store.get_session("nope") is None
    assert store.session_ended("nope", 1.0, "closed", 1, "x") is False


def test_duplicate_session_is_an_error(store: StateStore) -> None:
    store.session_started(row("s1", 1.0))
    with pytest.raises(StateError):
        store.session_started(row("s1", 2.0))


def test_list_sessions_filters_and_order(store: StateStore) -> None:
    store.session_started(row("a1", 100.0, subject="alice", connector="app-db"))
    store.session_started(row("b1", 200.0, subject="bob", connector="app-db"))
    store.session_started(row("a2", 300.0, subject="alice", connector="web-ssh"))
    store.session_started(row("b2", 400.0, subject="bob", connector="web-ssh"))
    store.session_ended("a1", 150.0, "closed", 3, "h")
    store.session_ended("b2", 450.0, "rejected", 2, "h")

    def ids(**kw: object) -> list[str]:
        return [r.id for r in store.list_sessions(**kw)]  # type: ignore[arg-type]

    assert ids() == ["b2", "a2", "b1", "a1"]  # newest first
    assert ids(subject="alice") == ["a2", "a1"]
    assert ids(connector="app-db") == ["b1", "a1"]
    assert ids(subject="bob", connector="web-ssh") == ["b2"]
    assert ids(since=200.0) == ["b2", "a2", "b1"]
    assert ids(since=200.0, until=400.0) == ["a2", "b1"]
    assert ids(limit=2) == ["b2", "a2"]
    assert ids(limit=None) == ["b2", "a2", "b1", "a1"]
    assert ids(outcome="open") == ["a2", "b1"]
    assert ids(outcome="rejected") == ["b2"]
    assert ids(subject="carol") == []


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    """`hoopy sessions list` reads while `hoopy serve` writes."""
    writer = StateStore(tmp_path / "state.db")
    reader = StateStore(tmp_path / "state.db")
    writer.session_started(row("s1", 1.0))
    assert [r.id for r in reader.list_sessions()] == ["s1"]
    writer.session_ended("s1", 2.0, "closed", 2, "h")
    got = reader.get_session("s1")
    assert got is not None and got.outcome == "closed"
    writer.close()
    reader.close()


def test_shared_connection_is_thread_safe(store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                store.session_started(row(f"t{t}-{i}", float(i)))
                store.session_ended(f"t{t}-{i}", float(i) + 1, "closed", 2, "h")
                store.list_sessions(limit=5)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = store.list_sessions(limit=None)
    assert len(rows) == 200 and all(r.outcome == "closed" for r in rows)


def test_closed_store_raises_state_error(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    s.close()
    with pytest.raises(StateError):
        s.get_session("x")


# ---- progress of open sessions, crashed sessions, migration ------------------------------
def test_progress_updates_open_sessions_only(store: StateStore) -> None:
    store.session_started(row("open1", 1.0))
    store.session_started(row("done1", 2.0))
    store.session_ended("done1", 3.0, "closed", 9, "end")
    store.sessions_progress([("open1", 4, "h4"), ("done1", 5, "h5"), ("nope", 1, "x")])
    got, done = store.get_session("open1"), store.get_session("done1")
    assert got is not None and (got.ended, got.events, got.head) == (None, 4, "h4")
    assert done is not None and (done.events, done.head) == (9, "end")  # its end stands
    store.sessions_progress([])


def test_session_crashed_ends_only_open_sessions(store: StateStore) -> None:
    store.session_started(row("c1", 1.0))
    store.session_started(row("c2", 1.0))
    store.session_ended("c2", 2.0, "closed", 3, "h")
    assert store.session_crashed("c1", 5.0, 7, "h7", "") is True
    assert store.session_crashed("c2", 5.0, 1, "x", "note") is False
    got = store.get_session("c1")
    assert got is not None and (got.ended, got.outcome, got.events, got.head) == (
        5.0,
        "crashed",
        7,
        "h7",
    )
    done = store.get_session("c2")
    assert done is not None and done.outcome == "closed" and done.note == ""
    assert [r.id for r in store.list_sessions(outcome="crashed")] == ["c1"]


def test_owner_and_note_round_trip(store: StateStore) -> None:
    r = row("o1", 1.0)
    r.owner = "host/123/" + "a" * 32
    store.session_started(r)
    store.session_crashed("o1", 2.0, 1, "h", "line 3: hash chain broken")
    got = store.get_session("o1")
    assert got is not None and got.owner == r.owner and got.note == "line 3: hash chain broken"


def test_older_schema_gains_owner_and_note(tmp_path: Path) -> None:
    from hoopy.state import _MIGRATIONS

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        for step in _MIGRATIONS[:2]:
            for sql in step:
                db.execute(sql)
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute(
            "INSERT INTO sessions (id, protocol, connector, subject, groups, client, tls, "
            "started, path) VALUES ('old', 'postgres', 'db', 'a', '[]', 'c', 1, 1.0, '/p')"
        )
    s = StateStore(path)
    got = s.get_session("old")
    assert got is not None and (got.owner, got.note) == ("", "")
    assert s.schema_version() == SCHEMA_VERSION
    s.close()


def test_older_schema_gains_issuer_and_values(tmp_path: Path) -> None:
    """Approvals and sessions stored before issue 16 read back with no issuer and no
    values; new ones keep both."""
    from hoopy.approvals import ApprovalStore
    from hoopy.state import _MIGRATIONS

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        for step in _MIGRATIONS[:3]:
            for sql in step:
                db.execute(sql)
        db.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        db.execute(
            "INSERT INTO approvals (id, session_id, protocol, connector, subject, groups, "
            "command, fingerprint, rule, approvers, state, created, expires) VALUES "
            "('apr-old', 's', 'postgres', 'db', 'a', '[]', 'delete from t', '', 'r', '[]', "
            "'pending', 1.0, 2.0)"
        )
    s = StateStore(path)
    old = ApprovalStore(s).get("apr-old")
    assert old is not None and (old.issuer, old.values) == ("", [])
    r = row("new", 1.0)
    r.issuer = "https://idp-b.example"
    s.session_started(r)
    assert s.list_sessions(issuer="https://idp-b.example")[0].id == "new"
    assert s.list_sessions(issuer="https://idp-a.example") == []
    s.close()


def test_state_file_and_folder_are_private(tmp_path: Path) -> None:
    """Issue 16: approvals' commands and values and the session index are the gateway's
    alone, whatever the umask (recordings are 0600 in 0700 folders too)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "made" / "state.db"
        s = StateStore(path)
        s.set_meta("x", "y")  # the -wal and -shm files exist now
        modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
        s.close()
    finally:
        os.umask(old)
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert modes["state.db"] == 0o600
    assert all(m == 0o600 for m in modes.values()), modes


def test_an_existing_readable_state_file_is_narrowed(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # a folder hoopy did not make (it may be shared): left as it is
    path = tmp_path / "state.db"
    StateStore(path).close()
    path.chmod(0o644)
    StateStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert tmp_path.stat().st_mode & 0o777 == 0o755


# ---- gateway ownership locks ------------------------------------------------------------
def test_owner_lock_alive_then_dead_then_gone(tmp_path: Path) -> None:
    from hoopy.state import ALIVE, DEAD, UNKNOWN, OwnerLock, lock_owner, owner_state

    folder = tmp_path / "gateways"
    lock = OwnerLock(folder)
    assert lock.path.exists() and list(folder.iterdir()) == [lock.path]  # no temp file left
    assert lock.id.endswith("/" + lock.path.stem) and str(os.getpid()) in lock.id
    assert owner_state(folder, lock.id) == ALIVE  # even from the same process
    lock.release(keep=True)  # what a kill -9 leaves: the file, no lock
    assert owner_state(folder, lock.id) == DEAD
    with lock_owner(folder, lock.id) as state:
        assert state == DEAD
        assert owner_state(folder, lock.id) == ALIVE  # held by the one acting on it
    lock.path.unlink()
    assert owner_state(folder, lock.id) == UNKNOWN  # no file here: proves nothing
    lock.release()  # idempotent


def test_clean_release_removes_the_lock(tmp_path: Path) -> None:
    from hoopy.state import UNKNOWN, OwnerLock, owner_state

    lock = OwnerLock(tmp_path)
    lock.release()
    assert not lock.path.exists() and owner_state(tmp_path, lock.id) == UNKNOWN


def test_malformed_owners_are_unknown(tmp_path: Path) -> None:
    from hoopy.state import UNKNOWN, owner_state, owner_token

    (tmp_path / "x.lock").write_text("")
    (tmp_path / "sub").mkdir()
    for owner in ("", "x", "host/1/../x", "../../etc/passwd", "h/1/" + "A" * 32):
        assert owner_token(owner) is None
        assert owner_state(tmp_path / "sub", owner) == UNKNOWN
    assert owner_token("h/1/" + "a" * 32) == "a" * 32
