"""Idle backend connections kept for the same identity's next agent connection.

An agent that runs `ssh gateway cmd` again and again would otherwise pay a full SSH
handshake with the backend (key exchange, login, and on OpenSSH a fresh sshd process)
for every command.  When an agent connection ends cleanly, its backend connection is
parked here for `ssh.backend_idle` seconds (0: never) and handed to the next agent
connection of the *same* identity.  What "same" means is the key:

- the connector as configured (address, user, secret references) and a digest of the
  secrets' text the connection was made with: a changed known_hosts, key or password
  means the parked connection's host-key check and login happened under another
  configuration, so it is not reused;
- the token's issuer, subject and groups (what policy decides on); a connection never
  goes to another identity, nor to the same subject with other groups;
- the gateway's Config object, so a reloaded configuration never sees connections
  made under the old one.

A connection is parked only when it is idle (no channel open on it) and alive; it is
closed when its idle time runs out, when the backend closes it, when the pool is full
(oldest first; `ssh.backend_pool` in all, PER_KEY per identity) and when the listener
stops.  Nothing is ever shared while in use: a parked connection has one owner at a
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from hoopy.config import SshConnector
from hoopy.policy import Identity
from hoopy.protocols.ssh import backend as be

log = logging.getLogger("hoopy.ssh.pool")

PER_KEY = 4  # idle connections kept per identity and connector
CLOSE_WAIT = 5.0  # s to wait for a closed connection to end (its channels' last events)

PoolKey = tuple[SshConnector, bytes, str, str, frozenset[str]]


@dataclass
class _Lease:
    key: PoolKey | None
    config: object
    reused: bool


@dataclass
class _Idle:
    conn: asyncssh.SSHClientConnection
    key: PoolKey
    config: object
    since: float
    timer: asyncio.TimerHandle | None = None
    watch: asyncio.Future[None] | None = None


def _channels(conn: asyncssh.SSHClientConnection) -> int:
    """Channels open on `conn`; asyncssh has no public count, and a connection whose
    count cannot be read counts as busy (never parked)."""
    chans = getattr(conn, "_channels", None)
    return len(chans) if isinstance(chans, dict) else 1


class BackendPool:
    def __init__(self, idle: float, size: int, config: Callable[[], object]) -> None:
        self.idle_time = idle
        self.size = size
        self.config = config  # the gateway's current Config
        self.idle: dict[PoolKey, list[_Idle]] = {}
        self.leases: dict[asyncssh.SSHClientConnection, _Lease] = {}
        self.hits = 0
        self.misses = 0
        self.closed = False  # the listener stopped: nothing parks any more

    @property
    def enabled(self) -> bool:
        return self.idle_time > 0 and self.size > 0 and not self.closed

    def count(self) -> int:
        return sum(len(b) for b in self.idle.values())

    async def acquire(
        self, connector: SshConnector, identity: Identity
    ) -> asyncssh.SSHClientConnection:
        """A parked connection of this identity, else a new one (BackendUnavailable)."""
        secrets = be.read_secrets(connector)
        config = self.config()
        key: PoolKey | None = None
        if self.enabled:
            key = (
                connector,
                secrets.digest(),
                identity.issuer,
                identity.subject,
                frozenset(identity.groups),
            )
            bucket = self.idle.get(key)
            while bucket:
                entry = bucket.pop()  # the most recently used: the likeliest alive
                if not bucket:
                    del self.idle[key]
                self._unpark(entry)
                # the idle timer may not have run yet on a busy loop: the age decides
                fresh = time.monotonic() - entry.since < self.idle_time
                if fresh and entry.config is config and not entry.conn.is_closed():
                    self.hits += 1
                    self.leases[entry.conn] = _Lease(key, config, True)
                    return entry.conn
                entry.conn.close()
        self.misses += 1
        conn = await be.connect(connector, secrets)
        self.leases[conn] = _Lease(key, config, False)
        return conn

    def reused(self, conn: asyncssh.SSHClientConnection) -> bool:
        lease = self.leases.get(conn)
        return lease is not None and lease.reused

    async def release(self, conn: asyncssh.SSHClientConnection, reusable: bool) -> None:
        """The agent connection that held `conn` ended: park it, or close it and wait
        (bounded) for it to end so its channels' last events are recorded first."""
        lease = self.leases.pop(conn, None)
        if (
            reusable
            and lease is not None
            and lease.key is not None
            and self.enabled
            and lease.config is self.config()
            and not conn.is_closed()
            and _channels(conn) == 0
        ):
            self._park(conn, lease.key, lease.config)
            return
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), CLOSE_WAIT)

    def _park(self, conn: asyncssh.SSHClientConnection, key: PoolKey, config: object) -> None:
        bucket = self.idle.setdefault(key, [])
        while len(bucket) >= PER_KEY:
            self._drop(bucket[0])
        while self.count() >= self.size:
            oldest = min((b[0] for b in self.idle.values()), key=lambda e: e.since)
            self._drop(oldest)
        entry = _Idle(conn, key, config, time.monotonic())
        entry.timer = asyncio.get_running_loop().call_later(self.idle_time, self._drop, entry)
        entry.watch = asyncio.ensure_future(conn.wait_closed())
        entry.watch.add_done_callback(lambda _: self._drop(entry))  # the backend closed it
        self.idle.setdefault(key, []).append(entry)

    def _unpark(self, entry: _Idle) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.watch is not None:
            entry.watch.cancel()

    def _drop(self, entry: _Idle) -> None:
        """Take `entry` out of the pool (if still there) and close its connection."""
        bucket = self.idle.get(entry.key)
        if bucket is None or entry not in bucket:
            return
        bucket.remove(entry)
        if not bucket:
            del self.idle[entry.key]
        self._unpark(entry)
        entry.conn.close()

    def close(self) -> None:
        """Close every parked connection and park no more (the listener stops)."""
        self.closed = True
        for bucket in list(self.idle.values()):
            for entry in list(bucket):
                self._drop(entry)
