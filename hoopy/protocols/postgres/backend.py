"""Connections from hoopy to the real PostgreSQL, with credentials only hoopy holds.

Theory of operation: `connect()` opens TCP, optionally TLS (per the connector's
sslmode), sends a StartupMessage with the connector's user and database plus
a whitelist of harmless client parameters, and answers SCRAM-SHA-256 (scramp),
md5 or cleartext authentication.  It returns once the server is ready for
queries, holding the ParameterStatus values and the real BackendKeyData.

`BackendPool` keeps a few authenticated idle connections per connector and
startup parameters, reset with DISCARD ALL before reuse, so agents that open
one connection per command do not pay TLS + SCRAM each time.  A pooled
connection is never shared by two live sessions.

Nothing in this module puts the backend user or password into an exception
message: callers show errors to agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field

from scramp import ScramClient

from hoopy.config import PostgresConnector
from hoopy.errors import BackendUnavailable
from hoopy.protocols.postgres import codec as pg
from hoopy.tlsutil import fast_objects

log = logging.getLogger("hoopy.postgres.backend")

# Startup parameters an agent may pass through.  Everything else is dropped:
# `replication` would bypass statement checks; `options` is read by the proxy
# (startupopts.py), which turns its safe settings into parameters of this list.
PASSTHROUGH_PARAMS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "search_path",
    }
)
CONNECT_TIMEOUT = 10.0


@dataclass(eq=False)
class BackendConn:
    connector: PostgresConnector
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    codec: pg.ClientConnection
    params: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    key: int = 0
    pool_key: tuple[str, ...] = ()
    status: str = "I"
    tls: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(self.codec.terminate())
        self.writer.close()

    async def read_events(self) -> list[pg.BackendEvent]:
        data = await self.reader.read(256 * 1024)
        if not data:
            raise BackendUnavailable("the database closed the connection")
        self.codec.receive_data(data)
        return self.codec.events()

    async def simple_query(self, sql: str) -> bytes | None:
        """Run a statement hoopy issues itself; waits for ReadyForQuery.  Returns the first
        column of its first row, if it returned one."""
        self.writer.write(self.codec.query(sql))
        error: pg.ErrorResponse | None = None
        first: bytes | None = None
        seen = False
        while True:
            for ev in await self.read_events():
                if isinstance(ev, pg.DataRows) and not seen:
                    row = next(pg.iter_data_rows(ev.raw), None)
                    first, seen = (row[0] if row else None), True
                elif isinstance(ev, pg.ErrorResponse):
                    error = ev
                elif isinstance(ev, pg.ParameterStatus):
                    self.params[ev.name] = ev.value
                elif isinstance(ev, pg.ReadyForQuery):
                    self.status = ev.status
                    if error is not None:
                        raise BackendUnavailable(f"database refused reset ({error.code})")
                    return first


def _client_params(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k.lower() in PASSTHROUGH_PARAMS}


def ssl_context(c: PostgresConnector) -> ssl.SSLContext:
    if c.sslmode == "verify-full":
        ctx = ssl.create_default_context(cafile=str(c.sslrootcert) if c.sslrootcert else None)
        return fast_objects(ctx)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return fast_objects(ctx)


async def _maybe_tls(
    c: PostgresConnector,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: pg.ClientConnection,
) -> bool:
    if c.sslmode == "disable":
        return False
    writer.write(codec.ssl_request())
    answer = await reader.readexactly(1)
    if answer == b"S":
        # Bytes after 'S' but before the handshake would be trusted as encrypted
        # (CVE-2021-23222): a man in the middle could inject them.
        if len(getattr(reader, "_buffer", b"")):
            raise BackendUnavailable(f"connector '{c.name}': unexpected data before TLS")
        await writer.start_tls(ssl_context(c), server_hostname=c.host)
        return True
    if c.sslmode in ("require", "verify-full"):
        raise BackendUnavailable(f"connector '{c.name}': the database does not offer TLS")
    return False


def _md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


class _Authenticator:
    """Answers the server's authentication requests for one connection."""

    def __init__(self, c: PostgresConnector, conn: BackendConn) -> None:
        self.c = c
        self.conn = conn
        self.scram: ScramClient | None = None

    def password(self) -> str:
        if self.c.password is None:
            raise BackendUnavailable(f"connector '{self.c.name}': no password configured")
        return self.c.password.get()

    def answer(self, ev: pg.BackendEvent) -> bytes | None:
        codec = self.conn.codec
        if isinstance(ev, pg.AuthenticationSASL):
            if "SCRAM-SHA-256" not in ev.mechanisms:
                raise BackendUnavailable("the database offers no supported SASL mechanism")
            self.scram = ScramClient(["SCRAM-SHA-256"], self.c.user, self.password())
            first = self.scram.get_client_first().encode()
            return codec.sasl_initial_response("SCRAM-SHA-256", first)
        if isinstance(ev, pg.AuthenticationSASLContinue) and self.scram is not None:
            self.scram.set_server_first(ev.data.decode())
            return codec.sasl_response(self.scram.get_client_final().encode())
        if isinstance(ev, pg.AuthenticationSASLFinal) and self.scram is not None:
            self.scram.set_server_final(ev.data.decode())  # authenticates the server too
            return None
        if isinstance(ev, pg.AuthenticationMD5Password):
            return codec.password_message(_md5_password(self.c.user, self.password(), ev.salt))
        if isinstance(ev, pg.AuthenticationCleartextPassword):
            if not self.conn.tls:
                log.warning("connector %s: database asks for a cleartext password", self.c.name)
            return codec.password_message(self.password().encode())
        if isinstance(ev, pg.AuthenticationOther):
            raise BackendUnavailable(f"unsupported database authentication method {ev.code}")
        return None


async def connect(
    c: PostgresConnector, client_params: dict[str, str], max_message_size: int
) -> BackendConn:
    """Open and authenticate one backend connection."""
    try:
        return await asyncio.wait_for(_connect(c, client_params, max_message_size), CONNECT_TIMEOUT)
    except BackendUnavailable:
        raise
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        log.warning("connector %s: cannot reach database: %s", c.name, type(e).__name__)
        raise BackendUnavailable(f"connector '{c.name}': database unavailable") from None
    except Exception as e:  # scramp errors, protocol violations: never echo details
        log.warning(
            "connector %s: authentication with database failed: %s", c.name, type(e).__name__
        )
        raise BackendUnavailable(f"connector '{c.name}': database login failed") from None


async def _connect(c: PostgresConnector, client_params: dict[str, str], cap: int) -> BackendConn:
    reader, writer = await asyncio.open_connection(c.host, c.port, limit=1 << 20)
    codec = pg.ClientConnection(max_message_size=cap)
    try:
        tls = await _maybe_tls(c, reader, writer, codec)
        params = {**_client_params(client_params), "user": c.user, "database": c.database}
        conn = BackendConn(c, reader, writer, codec, tls=tls, pool_key=pool_key(c, client_params))
        writer.write(codec.startup_message(params))
        auth = _Authenticator(c, conn)
        while True:
            for ev in await conn.read_events():
                if isinstance(ev, pg.ErrorResponse):
                    log.warning("connector %s: database refused login: %s", c.name, ev.code)
                    raise BackendUnavailable(f"connector '{c.name}': database login failed")
                if isinstance(ev, pg.ParameterStatus):
                    conn.params[ev.name] = ev.value
                elif isinstance(ev, pg.BackendKeyData):
                    conn.pid, conn.key = ev.pid, ev.key
                elif isinstance(ev, pg.ReadyForQuery):
                    conn.status = ev.status
                    return conn
                else:
                    reply = auth.answer(ev)
                    if reply is not None:
                        writer.write(reply)
    except BaseException:
        writer.close()
        raise


IDLE_LIFETIME = 300.0  # seconds an idle backend connection is kept


def _quiet(conn: BackendConn) -> bool:
    """Nothing arrived while idle, and the connection is open."""
    reader = conn.reader
    buffered = getattr(reader, "_buffer", b"")  # StreamReader keeps what it has read there
    return not (reader.at_eof() or buffered or conn.writer.transport.is_closing())


def pool_key(c: PostgresConnector, client_params: dict[str, str]) -> tuple[str, ...]:
    kept = _client_params(client_params)
    return (c.name, *(f"{k.lower()}={v}" for k, v in sorted(kept.items())))


async def cancel(c: PostgresConnector, pid: int, key: int) -> None:
    """Send a CancelRequest for a backend this connector owns."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(c.host, c.port), 5.0)
    except (TimeoutError, OSError):
        log.warning("connector %s: cannot reach database to cancel", c.name)
        return
    codec = pg.ClientConnection()
    writer.write(codec.cancel_request(pid, key))
    with contextlib.suppress(Exception):
        await writer.drain()
        await asyncio.wait_for(reader.read(1), 5.0)
    writer.close()


class BackendPool:
    """Idle authenticated connections, keyed by connector + startup parameters.

    At most `size` idle connections per connector whatever their startup parameters
    (an agent varying application_name must not pile up backends until the database
    refuses everyone), none kept longer than IDLE_LIFETIME, and none handed out that
    heard from the server while idle (a backend that died says so, then closes)."""

    def __init__(self, size: int, max_message_size: int) -> None:
        self.size = size
        self.cap = max_message_size
        # pool key -> [(connection, when it became idle)], oldest first
        self.idle: dict[tuple[str, ...], list[tuple[BackendConn, float]]] = {}
        self._resets: set[asyncio.Task[None]] = set()
        # (pid, key) → cancel requests under way for that backend: it is not reset (and
        # handed to another session) until they are done, or a late cancel could stop
        # the next agent's query.
        self._cancelling: dict[tuple[int, int], int] = {}
        self._cancelled = asyncio.Event()
        self.hits = 0
        self.misses = 0

    async def cancel(self, c: PostgresConnector, pid: int, key: int) -> None:
        """Send a CancelRequest for a backend a live session holds.

        Counted as under way from the first line (the caller has just looked the session
        up, with no await since): the backend's reset waits for it."""
        ident = (pid, key)
        self._cancelling[ident] = self._cancelling.get(ident, 0) + 1
        try:
            await cancel(c, pid, key)
        finally:
            left = self._cancelling.pop(ident) - 1
            if left:
                self._cancelling[ident] = left
            self._cancelled.set()
            self._cancelled = asyncio.Event()

    async def _cancels_done(self, conn: BackendConn) -> None:
        while (conn.pid, conn.key) in self._cancelling:
            await self._cancelled.wait()

    async def acquire(self, c: PostgresConnector, client_params: dict[str, str]) -> BackendConn:
        conns = self.idle.get(pool_key(c, client_params))
        now = time.monotonic()
        while conns:
            conn, since = conns.pop()
            if conn.connector == c and now - since < IDLE_LIFETIME and _quiet(conn):
                self.hits += 1
                return conn
            conn.close()
        self.misses += 1
        return await connect(c, client_params, self.cap)

    def release(self, conn: BackendConn, reusable: bool) -> None:
        """Give a connection back; it is reset in the background before reuse."""
        if not reusable or self.size <= 0 or conn.status != "I":
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._reset(conn))
        self._resets.add(task)
        task.add_done_callback(self._resets.discard)

    async def _reset(self, conn: BackendConn) -> None:
        try:
            # cancel() gives up within ~10 s: a backend still waited on by then is closed
            await asyncio.wait_for(self._cancels_done(conn), 15.0)
            await asyncio.wait_for(conn.simple_query("DISCARD ALL"), 5.0)
            # DISCARD ALL keeps random()'s state: setseed() by one agent would make the
            # next one's random() predictable.  A secret seed makes it unknowable again.
            seed = secrets.randbelow(2**52) / 2**52 * 2 - 1
            await asyncio.wait_for(conn.simple_query(f"SELECT setseed({seed!r})"), 5.0)
            # A backend that ever used temporary objects keeps its temporary schema, which
            # changes what the next agent sees (PREPARE TRANSACTION after touching
            # temporary objects succeeds where a fresh backend refuses it): not as new.
            used_temp = await asyncio.wait_for(
                conn.simple_query("SELECT pg_catalog.pg_my_temp_schema() <> 0"), 5.0
            )
        except Exception:
            conn.close()
            return
        if used_temp != b"f" or conn.status != "I" or not _quiet(conn):
            conn.close()
            return
        self._make_room(conn.connector.name)
        self.idle.setdefault(conn.pool_key, []).append((conn, time.monotonic()))

    def _make_room(self, connector: str) -> None:
        """Close the stale and the oldest idle connections of `connector` until one more
        fits within `size`."""
        now = time.monotonic()
        mine = [(since, key) for key, bucket in self.idle.items() if key[0] == connector
                for _, since in bucket]  # fmt: skip
        excess = len(mine) - self.size + 1
        cutoff = sorted(mine)[excess - 1][0] if excess > 0 else -1.0
        for key in [k for k in self.idle if k[0] == connector]:
            keep = []
            for conn, since in self.idle[key]:
                if since <= cutoff or now - since >= IDLE_LIFETIME:
                    conn.close()
                else:
                    keep.append((conn, since))
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]

    def close(self) -> None:
        for bucket in self.idle.values():
            for conn, _ in bucket:
                conn.close()
        self.idle.clear()
        for t in self._resets:
            t.cancel()
