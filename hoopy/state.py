"""The state store: the session index (and, later, approvals) shared by the gateway and the CLI.

Theory of operation
-------------------
One SQLite database file in WAL mode, so `hoopy sessions list` / `hoopy verify` can read
while `hoopy serve` writes.  One connection per store, guarded by a `threading.Lock`
(`check_same_thread=False`), in autocommit mode: every write is one short statement or an
explicit transaction.  The operations are rare (a session opening or closing) and take
microseconds, so they are called straight from asyncio code.

Portability: every SQL statement goes through `_execute()` / `_query()` / `_transaction()`,
uses `?` placeholders and portable types (TEXT, INTEGER, DOUBLE PRECISION), so a PostgreSQL
backend for replicas (DESIGN §10) is a subclass that overrides `__init__`, `close` and those
three methods (translating `?` into `$n`).  Driver errors surface as `StateError`.

Schema changes are numbered migrations in `_MIGRATIONS`, applied once under a write lock and
recorded as `schema_version` in the `meta` table.  Append new steps; never edit old ones.

Which gateway runs a session (`SessionRow.owner`) is proved with a file lock, not a
heartbeat: see `OwnerLock`.  Several replicas may share one store, so a session is only
ever ended on its owner's behalf when that owner is provably dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Each entry is one schema version: the statements that take the previous version to it.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY,
            protocol TEXT NOT NULL,
            connector TEXT NOT NULL,
            subject TEXT NOT NULL,
            groups TEXT NOT NULL,
            client TEXT NOT NULL,
            tls INTEGER NOT NULL,
            started DOUBLE PRECISION NOT NULL,
            ended DOUBLE PRECISION,
            outcome TEXT,
            events INTEGER NOT NULL DEFAULT 0,
            head TEXT NOT NULL DEFAULT '',
            path TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS sessions_subject ON sessions (subject, started)",
        "CREATE INDEX IF NOT EXISTS sessions_connector ON sessions (connector, started)",
        "CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started)",
    ),
    (
        """CREATE TABLE IF NOT EXISTS approvals (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            protocol TEXT NOT NULL,
            connector TEXT NOT NULL,
            subject TEXT NOT NULL,
            groups TEXT NOT NULL,
            command TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            rule TEXT NOT NULL,
            approvers TEXT NOT NULL,
            state TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            decided_by TEXT NOT NULL DEFAULT '',
            decided_at DOUBLE PRECISION,
            reason TEXT NOT NULL DEFAULT '',
            notice TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state, created)",
    ),
    (
        # The gateway running the session (see OwnerLock), and what was found when a
        # later gateway ended it after its owner died (outcome "crashed").
        "ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sessions ADD COLUMN note TEXT NOT NULL DEFAULT ''",
    ),
    (
        # An agent is (issuer, subject): two issuers may hand out the same subject.
        "ALTER TABLE sessions ADD COLUMN issuer TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE approvals ADD COLUMN issuer TEXT NOT NULL DEFAULT ''",
        # What runs beside the command (a Bind's values), whole, as a JSON list of
        # strings: its own field, never spliced into the agent's text.
        "ALTER TABLE approvals ADD COLUMN command_values TEXT NOT NULL DEFAULT '[]'",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "id, protocol, connector, subject, groups, client, tls, started, ended, outcome, events, "
    "head, path, owner, note, issuer"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(",")))


class StateError(Exception):
    """The state store cannot be read or written (driver error, newer schema, …)."""


@dataclass
class SessionRow:
    """One session in the index.  `events`/`head`: of the whole recording once the session
    has ended; while it is open, of what its gateway last flushed to disk (a lower bound).
    `owner`: the `OwnerLock.id` of the gateway running it ("" if unknown).  `note`: set
    when the session was ended as "crashed" and its recording did not verify then."""

    id: str
    protocol: str
    connector: str
    subject: str
    groups: list[str]
    client: str
    tls: bool
    started: float
    path: str
    ended: float | None = None
    outcome: str | None = None
    events: int = 0
    head: str = ""
    owner: str = ""
    note: str = ""
    issuer: str = ""  # the token's issuer: the agent is (issuer, subject)


class StateStore:
    """SQLite state store; see the module docstring for the PostgreSQL extension points."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            _private_file(self.path)
            self._db = sqlite3.connect(
                str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"cannot open state store {self.path}: {e}") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- the three driver seams --------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._lock:
            try:
                return self._db.execute(sql, params).rowcount
            except sqlite3.Error as e:
                raise StateError(f"state store: {e}") from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise StateError(f"state store: {e}") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (taken at once, so concurrent migrations serialise)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StateError(f"state store: {e}") from None

    # ---- schema ------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StateError(
                    f"state store {self.path} has schema version {current}, newer than this "
                    f"hoopy understands ({SCHEMA_VERSION}); upgrade hoopy"
                )
            for statements in _MIGRATIONS[current:]:
                for sql in statements:
                    db.execute(sql)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def schema_version(self) -> int:
        value = self.get_meta("schema_version")
        return int(value) if value is not None else 0

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ---- sessions ----------------------------------------------------------------------
    def session_started(self, row: SessionRow) -> None:
        self._execute(
            f"INSERT INTO sessions ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
            (
                row.id,
                row.protocol,
                row.connector,
                row.subject,
                json.dumps(list(row.groups)),
                row.client,
                int(row.tls),
                row.started,
                row.ended,
                row.outcome,
                row.events,
                row.head,
                row.path,
                row.owner,
                row.note,
                row.issuer,
            ),
        )

    def session_ended(self, id: str, ended: float, outcome: str, events: int, head: str) -> bool:
        """Record how a session ended; False when the index does not know the session."""
        changed = self._execute(
            "UPDATE sessions SET ended = ?, outcome = ?, events = ?, head = ? WHERE id = ?",
            (ended, outcome, events, head, id),
        )
        return changed > 0

    def sessions_progress(self, progress: Sequence[tuple[str, int, str]]) -> None:
        """(id, events, head) on disk of open sessions, in one transaction; a session that
        has ended meanwhile keeps the values of its end."""
        if not progress:
            return
        with self._transaction() as db:
            for id_, events, head in progress:
                db.execute(
                    "UPDATE sessions SET events = ?, head = ? WHERE id = ? AND ended IS NULL",
                    (events, head, id_),
                )

    def session_crashed(self, id: str, ended: float, events: int, head: str, note: str) -> bool:
        """End a session whose gateway died (outcome "crashed") with what its recording
        held then; False if it had ended meanwhile."""
        changed = self._execute(
            "UPDATE sessions SET ended = ?, outcome = 'crashed', events = ?, head = ?, note = ? "
            "WHERE id = ? AND ended IS NULL",
            (ended, events, head, note, id),
        )
        return changed > 0

    def get_session(self, id: str) -> SessionRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (id,))
        return _row(rows[0]) if rows else None

    def list_sessions(
        self,
        subject: str | None = None,
        connector: str | None = None,
        since: float | None = None,
        limit: int | None = 100,
        *,
        outcome: str | None = None,
        until: float | None = None,
        owner: str | None = None,
        issuer: str | None = None,
    ) -> list[SessionRow]:
        """Newest first.  `outcome="open"` lists sessions that have not ended;
        `limit=None` lists all of them; `owner`: those of one gateway process."""
        where: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("subject", "=", subject),
            ("connector", "=", connector),
            ("started", ">=", since),
            ("started", "<", until),
            ("owner", "=", owner),
            ("issuer", "=", issuer),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        if outcome == "open":
            where.append("ended IS NULL")
        elif outcome is not None:
            where.append("outcome = ?")
            params.append(outcome)
        sql = f"SELECT {_COLUMNS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(int(limit), 0))
        return [_row(r) for r in self._query(sql, params)]


def _private_file(path: Path) -> None:
    """The state file readable by its owner alone (0600; SQLite gives its -wal and -shm
    files the same mode), in a folder made 0700 when hoopy creates it: it holds
    approvals' commands and values and who ran what.  An existing folder is left as it
    is (it may be shared, as /var/lib is); an existing file is narrowed to 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in ("-wal", "-shm"):  # made by an older hoopy with the umask's mode
        side = path.with_name(path.name + extra)
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)


def _row(r: tuple[Any, ...]) -> SessionRow:
    (
        id_,
        protocol,
        connector,
        subject,
        groups,
        client,
        tls,
        started,
        ended,
        outcome,
        events,
        head,
        path,
        owner,
        note,
        issuer,
    ) = r
    try:
        group_list = [str(g) for g in json.loads(groups)]
    except (TypeError, ValueError):
        group_list = []
    return SessionRow(
        id=id_,
        protocol=protocol,
        connector=connector,
        subject=subject,
        groups=group_list,
        client=client,
        tls=bool(tls),
        started=float(started),
        path=path,
        ended=None if ended is None else float(ended),
        outcome=outcome,
        events=int(events),
        head=head or "",
        owner=owner or "",
        note=note or "",
        issuer=issuer or "",
    )


# ---- which gateway runs a session --------------------------------------------------------
# A gateway holds an exclusive flock on `<owners dir>/<token>.lock` from before its first
# session until it exits; the kernel drops the lock when the process dies, kill -9 included,
# so whoever *can* take that lock has proof the owner is gone.  A lock file that is not
# there proves nothing (a replica on another host with its own state folder, an older
# hoopy): such sessions are left as they are.  The folder sits beside the SQLite state
# file, which every replica sharing that file sees too.
ALIVE = "alive"
DEAD = "dead"
UNKNOWN = "unknown"
_TOKEN_RE = re.compile(r"[0-9a-f]{32}\Z")
_LOCK_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


def owners_dir(state_dir: Path) -> Path:
    """Where gateways sharing the state folder keep their ownership locks."""
    return Path(state_dir) / "gateways"


class OwnerLock:
    """This gateway process's ownership lock; `id` (host/pid/token) goes into the index
    rows of the sessions it runs."""

    def __init__(self, directory: Path) -> None:
        token = secrets.token_hex(16)
        self.id = f"{socket.gethostname()}/{os.getpid()}/{token}"
        self.path = Path(directory) / f"{token}.lock"
        tmp = self.path.with_name(f".{token}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise StateError(f"cannot create gateway lock {tmp}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps({"owner": self.id, "started": time.time()}).encode())
            # In place only once locked: nobody may find it free and take it for a dead one.
            os.rename(tmp, self.path)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateError(f"cannot take gateway lock {self.path}: {e.strerror}") from None
        self._fd: int | None = fd

    def release(self, keep: bool = False) -> None:
        """Drop the lock (idempotent).  `keep` leaves the file behind, so the next gateway
        to start ends the sessions this one could not finish as crashed."""
        if self._fd is None:
            return
        if not keep:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def owner_token(owner: str) -> str | None:
    """The lock-file token of an `OwnerLock.id` (or of a bare token); None if malformed."""
    token = owner.rpartition("/")[2]
    return token if _TOKEN_RE.match(token) else None


@contextmanager
def lock_owner(directory: Path, owner: str) -> Iterator[str]:
    """ALIVE, DEAD or UNKNOWN for the gateway `owner`.  While DEAD is yielded its lock is
    held here, so no other process acts on that dead owner at the same moment."""
    token = owner_token(owner)
    fd = _open_lock(Path(directory) / f"{token}.lock") if token else None
    if fd is None:
        yield UNKNOWN
        return
    try:
        yield _try_lock(fd)
    finally:
        os.close(fd)


def owner_state(directory: Path, owner: str) -> str:
    with lock_owner(directory, owner) as state:
        return state


def _open_lock(path: Path) -> int | None:
    for flags in (_LOCK_FLAGS, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW):
        try:
            return os.open(path, flags)
        except PermissionError:  # another user's gateway: try read-only (flock allows it)
            continue
        except OSError:
            return None
    return None


def _try_lock(fd: int) -> str:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return ALIVE
    except OSError:  # e.g. a file system without flock: cannot tell
        return UNKNOWN
    return DEAD
