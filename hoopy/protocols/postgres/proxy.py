"""The PostgreSQL session: agent ⇄ hoopy ⇄ PostgreSQL; login here, the relay in relay.py.

Theory of operation
-------------------
Startup (asyncio streams): SSLRequest → TLS (GSSENCRequest → 'N'), StartupMessage
(`database` names the connector), a cleartext password that is the agent's OIDC token
(only over TLS unless explicitly allowed), admission by policy, then a backend
connection authenticated with credentials only hoopy holds (pooled).  A CancelRequest
is forwarded to the backend its (remapped) key names.  Then `Relay._relay` takes both
sockets over until the session ends; any error becomes the agent's ErrorResponse in
`_fail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections import deque

from hoopy.config import PostgresConnector
from hoopy.errors import HoopyError, ProtocolError, StartupRefused, TLSRequired
from hoopy.gateway import CancelTarget, Gateway
from hoopy.policy import Command, may_mask
from hoopy.protocols.postgres import backend as be
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres import sqlsecrets
from hoopy.protocols.postgres.answers import error_bytes
from hoopy.protocols.postgres.catalog import Catalog
from hoopy.protocols.postgres.classcache import Classifier
from hoopy.protocols.postgres.classworker import OffLoop
from hoopy.protocols.postgres.maskplan import MaskSettings, Planner, StatementMasks
from hoopy.protocols.postgres.maskwire import count_tree, default_path
from hoopy.protocols.postgres.namespaces import Namespaces
from hoopy.protocols.postgres.relay import READ_SIZE, Relay
from hoopy.protocols.postgres.resultlog import ResultLog
from hoopy.protocols.postgres.results import ResultTracker
from hoopy.protocols.postgres.searchpath import SearchPath
from hoopy.protocols.postgres.startupopts import OptionsError, parse_options
from hoopy.protocols.postgres.textsettings import unsafe_encoding
from hoopy.session import Session

log = logging.getLogger("hoopy.postgres")

AUTH_TIMEOUT = 30.0
# The whole of startup (TLS, StartupMessage, password, backend): PostgreSQL's own
# authentication_timeout.  Without it a silent client holds a socket for ever.
STARTUP_TIMEOUT = 60.0


class PostgresListener:
    """Accepts agent connections for every postgres connector."""

    def __init__(self, gw: Gateway, tls: ssl.SSLContext | None) -> None:
        self.gw = gw
        self.tls = tls
        s = gw.config.postgres
        self.pool = be.BackendPool(s.pool_size, s.max_message_size)
        self.classifier = Classifier()
        self.classification = OffLoop(self.classifier, s)
        self.active: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.more_servers: list[asyncio.Server] = []
        self.catalogs: dict[str, Catalog] = {}  # per connector, shared by its sessions

    def catalog(self, connector: PostgresConnector) -> Catalog:
        cat = self.catalogs.get(connector.name)
        if cat is None or cat.connector != connector:
            cat = self.catalogs[connector.name] = Catalog(connector)
        return cat

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        self.server = await asyncio.start_server(
            self._on_connect, host, port, limit=1 << 20, reuse_port=reuse_port or None
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def serve_socket(self, sock: socket.socket) -> None:
        """Accept on `sock` too: a worker process's listening socket, bound with
        SO_REUSEPORT beside the gateway process's (postgres.workers)."""
        server = await asyncio.start_server(self._on_connect, sock=sock, limit=1 << 20)
        self.more_servers.append(server)

    async def cancel_here(self, pid: int, key: int) -> None:
        """Act on a CancelRequest for a session of this process (nothing if none holds
        the key)."""
        target = self.gw.cancels.get((pid, key))
        if target is None:
            return
        # a statement waiting for approval is cancelled by hoopy; the server is told only
        # if it still runs something sent before, or its cancel could land on the
        # agent's next statement
        stopped = target.interrupt is not None and target.interrupt()
        if stopped and target.busy is not None and not target.busy():
            return
        if isinstance(target.connector, PostgresConnector):
            # no await between the lookup and the pool counting this cancel as under
            # way: the session's backend cannot be reset and handed on in between
            await self.pool.cancel(target.connector, target.pid, target.key)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.active.add(task)
        try:
            await AgentConnection(self, reader, writer).run()
        finally:
            self.active.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for server in self.more_servers:
            server.close()
        for t in list(self.active):
            t.cancel()
        if self.active:
            await asyncio.gather(*self.active, return_exceptions=True)
        self.pool.close()
        self.classification.close()
        for cat in self.catalogs.values():
            await cat.close()


class AgentConnection(Relay):
    def __init__(
        self,
        listener: PostgresListener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.listener = listener
        self.gw = listener.gw
        self.settings = self.gw.config.postgres
        self.reader = reader
        self.writer = writer
        self.codec = pg.ServerConnection(max_message_size=self.settings.max_message_size)
        peer = writer.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        self.tls = False
        self.session: Session | None = None
        self.backend: be.BackendConn | None = None
        self.connector: PostgresConnector | None = None
        self.cancel_key: tuple[int, int] | None = None
        self.prepared: dict[str, tuple[Command, ...]] = {}
        self.marker = f"hoopy_refused_{secrets.token_hex(8)}"
        self.refusals: deque[tuple[int, HoopyError]] = deque()
        self.names = Namespaces()  # portals and batch counts, shared with masking
        self.batches_sent = 0
        self.binds_unwritten = False  # Bind events chained but not yet written
        self.unsynced_execute = False
        self.extended_open = False
        self.copy_in_flight = False
        self.sync_in_copy = False
        self.copy_batch = 0
        self._portal_copies: dict[str, bool] = {}
        self.unconfirmed: deque[tuple[int, str, tuple[Command, ...] | None, bool]] = deque()
        self.batch_failed = False
        self.silent_ready: set[int] = set()
        self._bind_statics = {}
        self._gates = {}
        self._settled: asyncio.Future[None] | None = None
        self.batches_done = 0
        self.result = ResultLog(self.settings.record_rows, self.settings.record_bytes)
        self.scrub_words: tuple[str, ...] = ()
        self.outcome = "closed"
        # Masking sessions only (a mask rule may apply to this identity and connector):
        self.tracker: ResultTracker | None = None
        self.planner: Planner | None = None
        self._masks: list[StatementMasks | None] = []  # of the message being checked
        self._agent_events: list[pg.FrontendEvent] = []  # parsed, not yet handled
        self._backend_events: list[pg.BackendEvent] = []  # (masking sessions)

    # ---- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        try:
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT):
                    started = await self._startup()
            except TimeoutError:
                raise ProtocolError("the agent did not complete its login in time") from None
            if started:
                await self._relay()
        except HoopyError as e:
            self.outcome = type(e).__name__
            self._fail(e)
        except pg.ProtocolViolation as e:
            self.outcome = "protocol_violation"
            err = ProtocolError(f"protocol violation: {e.message}")
            err.sqlstate = e.sqlstate  # 54000 too large, 22021 bad UTF-8, 0A000 version
            self._fail(err)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            self.outcome = "disconnected"
        except asyncio.CancelledError:
            self.outcome = "shutdown"
            self._fail(ProtocolError("hoopy is shutting down"))
        except Exception:
            log.exception("postgres session %s crashed", self.session.id if self.session else "-")
            self.outcome = "internal_error"
            self._fail(ProtocolError("internal error in hoopy"))
        finally:
            await self._cleanup()

    def _fail(self, e: HoopyError) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.log.event("error", code=e.sqlstate, message=e.message)
        with contextlib.suppress(Exception):
            self.writer.write(error_bytes(e))

    async def _cleanup(self) -> None:
        if self.cancel_key is not None:
            self.gw.cancels.pop(self.cancel_key, None)
        if self.backend is not None:
            clean = self.batches_done == self.batches_sent and not self.refusals
            self.listener.pool.release(self.backend, reusable=clean and self.outcome == "closed")
        if self.session is not None and self.planner is not None and self.planner.counts:
            with contextlib.suppress(Exception):
                self.session.record("masking", masked=count_tree(self.planner.counts))
            for (rule, what), n in self.planner.counts.items():
                self.gw.metrics.inc(f'masked_values_total|rule="{rule}",kind="{what}"', n)
        if self.session is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                # close() fsyncs: keep the event loop free meanwhile; a shutdown that
                # cancels us must not cut the recording's end off
                await asyncio.shield(asyncio.to_thread(self.session.log.close, self.outcome))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.drain(), 2.0)
        self.writer.close()

    # ---- startup ---------------------------------------------------------------------
    async def _next_event(self) -> pg.FrontendEvent:
        while True:
            ev = self.codec.next_event()
            if ev is not pg.NEED_DATA:
                return ev
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise ConnectionError("agent closed the connection")
            self.codec.receive_data(data)

    async def _startup(self) -> bool:
        while True:
            ev = await self._next_event()
            if isinstance(ev, pg.SSLRequest):
                await self._start_tls()
            elif isinstance(ev, pg.GSSENCRequest):
                self.writer.write(b"N")
            elif isinstance(ev, pg.CancelRequest):
                await self._cancel(ev)
                return False
            elif isinstance(ev, pg.StartupMessage):
                await self._login(ev)
                return True

    async def _start_tls(self) -> None:
        if self.codec.buffered():
            # Bytes sent before the TLS handshake would be trusted as if encrypted.
            raise ProtocolError("unexpected data after SSLRequest")
        if self.listener.tls is None or self.tls:
            self.writer.write(b"N")
            return
        self.writer.write(b"S")
        await self.writer.drain()
        await self.writer.start_tls(self.listener.tls)
        self.tls = True

    async def _cancel(self, ev: pg.CancelRequest) -> None:
        if (ev.pid, ev.key) not in self.gw.cancels and self.gw.cancel_elsewhere is not None:
            await self.gw.cancel_elsewhere(ev.pid, ev.key)  # another process's session
        else:
            await self.listener.cancel_here(ev.pid, ev.key)
        self.outcome = "cancel_request"

    async def _login(self, startup: pg.StartupMessage) -> None:
        params = dict(startup.params)
        dbname = startup.database or startup.user
        if not self.tls and not self.settings.allow_cleartext_without_tls:
            self._reject(dbname, "TLS required")
            raise TLSRequired("hoopy requires TLS: connect with sslmode=require")
        bad = self._bad_params(params)
        if bad:
            self._reject(dbname, bad)
            raise ProtocolError(bad)
        try:  # its safe settings become parameters; anything else refuses the login
            params.update(parse_options(params.pop("options", "")))
        except OptionsError as e:
            self._reject(dbname, str(e))
            raise StartupRefused(str(e)) from None
        # PostgreSQL's answer to a newer 3.x minor or to protocol options: carry on at 3.0
        options = sorted(k for k in params if k.startswith("_pq_."))
        if startup.protocol != pg.PROTOCOL_3_0 or options:
            self.writer.write(pg.negotiate_protocol_version(0, options))
        for k in options:
            del params[k]
        self.writer.write(pg.authentication_cleartext_password())
        ev = await asyncio.wait_for(self._next_event(), AUTH_TIMEOUT)
        if not isinstance(ev, pg.PasswordMessage):
            raise ProtocolError("expected a password message")
        token = ev.data.rstrip(b"\0").decode("utf-8", "replace").strip()
        try:
            identity = await self.gw.authenticate(token)
            connector = self.gw.admit(identity, dbname, "postgres")
        except HoopyError as e:
            self._reject(dbname, e.message)
            raise
        assert isinstance(connector, PostgresConnector)
        self.connector = connector
        self.session = self.gw.open_session(
            identity,
            dbname,
            "postgres",
            self.client,
            self.tls,
            extra={"user": startup.user, "application_name": params.get("application_name", "")},
        )
        self.session.notify = self._notice
        self.session.hide = sqlsecrets.hidden
        self.session.scope = SearchPath(connector.user)
        if may_mask(self.session.policies, identity, connector.name):
            self.tracker = ResultTracker(self.names)
            settings = MaskSettings(self.gw.mask_key, self.gw.config.masking.redact_numeric)
            self.planner = Planner(self.listener.catalog(connector), settings)
        self._startup_search_path(params, dbname)
        await self._attach_backend(params)

    def _startup_search_path(self, params: dict[str, str], dbname: str) -> None:
        """A search_path given at startup moves unqualified names as a SET would."""
        assert self.session is not None
        for name, value in params.items():
            if name.lower() == "search_path":
                text = f"SET search_path TO {value}"
                kinds = frozenset({"set", "set_search_path"})
                self.session.observe(Command("postgres", dbname, text, kinds=kinds))
                if self.planner is not None and not default_path(text):
                    self.planner.names_untrusted = True  # the catalog connection's differs
                    self.session.record(
                        "masking_conservative",
                        reason="startup search_path: names may resolve differently",
                    )

    def _notice(self, message: str) -> None:
        """An asynchronous NoticeResponse: allowed between any two messages."""
        with contextlib.suppress(Exception):
            self.writer.write(pg.notice_response(message, severity="NOTICE"))

    def _bad_params(self, params: dict[str, str]) -> str:
        if params.get("replication", "false").lower() not in ("false", "off", "0", "no"):
            return "replication connections are not allowed through hoopy"
        for key, value in params.items():  # the server reads parameter names in any case
            if key.lower() == "client_encoding" and unsafe_encoding(value):
                return f"client_encoding {value} is not supported; use UTF8"
        return ""

    def _reject(self, connector: str, reason: str) -> None:
        self.gw.record_rejection("postgres", self.client, connector, reason, self.tls)

    async def _attach_backend(self, params: dict[str, str]) -> None:
        assert self.connector is not None and self.session is not None
        backend = await self.listener.pool.acquire(self.connector, params)
        self.backend = backend
        pw = ""
        with contextlib.suppress(Exception):
            pw = self.connector.password.get() if self.connector.password else ""
        self.scrub_words = tuple(w for w in (pw, self.connector.user) if w)
        self.cancel_key = self.gw.register_cancel(
            CancelTarget(
                self.connector,
                backend.pid,
                backend.key,
                self.session.interrupt,
                self._answers_pending,
            )
        )
        out = [pg.authentication_ok()]
        for name, value in backend.params.items():
            self._check_param(name, value)
            out.append(pg.parameter_status(name, self._scrub_param(name, value)))
        out.append(pg.backend_key_data(*self.cancel_key))
        out.append(pg.ready_for_query(backend.status))
        self.writer.write(b"".join(out))
        self.codec.start_session()
        if self.tracker is None:
            # forwarded verbatim and never looked into: Bind, Describe, Execute, Flush,
            # CopyData, CopyDone (masking sessions track them)
            self.codec.opaque = frozenset(b"BDEHdc")
        self.session.record("backend", pooled=self.listener.pool.hits > 0, tls=backend.tls)
