"""The state store: schema, session index round trips, filters, concurrency."""

from __future__ import annotations

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
