"""The SSH listener: an asyncssh server whose users are connectors and whose passwords
are OIDC tokens, bridged to an asyncssh client per agent connection.

Theory of operation: `AgentConnection` is asyncssh's SSHServer for one TCP connection.
Authentication accepts only `password` and `keyboard-interactive`, both carrying the
token; it goes through the gateway's verifier and admission exactly as PostgreSQL's
login does, and a failure of any kind (bad token, unknown connector, not admitted)
gets the same SSH answer, is recorded with the gateway's bounded refusal records and
counts against the source address's failure budget.  Once in, the connection has one
`Session` (protocol "ssh") and one backend connection, opened at once in the
background so the first exec does not wait for two handshakes in a row (or taken
idle from pool.py, where a clean ending parks it for the same identity's next
connection); it is never used by two agent connections at once, nor by another identity.

Session channels are `channel.Bridge`s.  A direct-tcpip channel (`ssh -L`, `ssh -W`)
is a `forward.Relay` where policy allows its destination (forward.py); forwarding of
any other kind (remote -R, Unix sockets, agent, X11, tun/tap) is refused and recorded.
Interactive shells and SFTP go to `Hooks` (interactive.py): a PTY shell whose typed
lines are each checked, and an SFTP bridge whose operations are; each only where
policy allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from hoopy import shellsecrets
from hoopy.config import SshConnector
from hoopy.errors import BackendUnavailable, CommandDenied, HoopyError
from hoopy.gateway import Gateway
from hoopy.policy import Identity
from hoopy.protocols.ssh import backend as be
from hoopy.protocols.ssh.ca import CertificateLogin, SshCA
from hoopy.protocols.ssh.channel import Bridge, notify_current
from hoopy.protocols.ssh.forward import SHOWN_TARGET, open_forward
from hoopy.protocols.ssh.interactive import run_sftp, run_shell
from hoopy.protocols.ssh.pool import BackendPool
from hoopy.session import Session

log = logging.getLogger("hoopy.ssh")

MAX_CHANNELS = 64  # open session channels per agent connection

LOGIN_TIMEOUT = 30.0
MAX_ADDRESSES = 10000  # source addresses whose failed logins are remembered


async def _refuse_shell(bridge: Bridge) -> None:
    bridge.conn.session.record("refused", channel=bridge.number, what="shell")
    raise CommandDenied(
        "interactive shells are not allowed through hoopy; run a command instead: "
        "ssh <connector>@<gateway> 'command'"
    )


async def _refuse_sftp(bridge: Bridge) -> None:
    bridge.conn.session.record("refused", channel=bridge.number, what="sftp")
    raise CommandDenied("SFTP is not allowed through hoopy on this gateway")


@dataclass
class Hooks:
    """Where PTY shells and the SFTP subsystem go (interactive.py: the line editor and
    the SFTP bridge, each only where policy allows it).  Each gets the Bridge after the
    agent's request was accepted; raising a HoopyError answers on stderr with its exit
    status.  `_refuse_shell` / `_refuse_sftp` turn one off entirely."""

    shell: Callable[[Bridge], Awaitable[None]] = run_shell
    sftp: Callable[[Bridge], Awaitable[None]] = run_sftp


@dataclass
class FailureBudget:
    """Failed logins per source address in a sliding window (bounded memory)."""

    allowed: int = 10
    window: float = 60.0
    _seen: dict[str, list[float]] = field(default_factory=dict)

    def blocked(self, host: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        times = self._seen.get(host)
        if not times:
            return False
        times[:] = [t for t in times if now - t < self.window]
        if not times:
            del self._seen[host]
        return len(times) >= self.allowed

    def failed(self, host: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._seen) > MAX_ADDRESSES and host not in self._seen:
            # a flood from many addresses: keep the most recent half (amortised O(1))
            recent = sorted(self._seen.items(), key=lambda kv: kv[1][-1], reverse=True)
            self._seen = dict(recent[: MAX_ADDRESSES // 2])
        times = self._seen.setdefault(host, [])
        if len(times) < self.allowed:
            times.append(now)
        else:
            times[-1] = now


class SshListener:
    def __init__(self, gw: Gateway, host_key: asyncssh.SSHKey, hooks: Hooks | None = None) -> None:
        self.gw = gw
        self.host_key = host_key
        self.hooks = hooks or Hooks()
        settings = gw.config.ssh
        self.failures = FailureBudget(settings.failed_logins, settings.failed_login_window)
        # hoopy's SSH user CA: certificates from `hoopy ssh-cert` log in without a password
        self.ca = SshCA.open(gw.config.state_dir)
        # idle backend connections for the same identity's next connection (pool.py)
        self.pool = BackendPool(settings.backend_idle, settings.backend_pool, lambda: gw.config)
        self.connections: set[AgentConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncssh.SSHAcceptor | None = None
        # asyncssh logs every connection and channel at INFO: hoopy records those itself
        if logging.getLogger("asyncssh").level == logging.NOTSET:
            logging.getLogger("asyncssh").setLevel(logging.WARNING)

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncssh.create_server(
            lambda: AgentConnection(self),
            host,
            port,
            server_host_keys=[self.host_key],
            authorized_client_keys=self.ca.authorized_keys(),  # this CA and nothing else
            encoding=None,
            line_editor=False,
            allow_pty=True,
            x11_forwarding=False,
            agent_forwarding=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=60,
            server_version="hoopy",
            allow_scp=False,
            config=None,
            **be.AGENT_ALGS,
        )
        return int(self._server.get_port())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for c in list(self.connections):
            c.outcome = "shutdown"
            if c.conn is not None:
                c.conn.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=10)
        self.pool.close()


class AgentConnection(asyncssh.SSHServer):
    """One agent's TCP connection: its login, Session and backend connection."""

    def __init__(self, listener: SshListener) -> None:
        self.listener = listener
        self.gw = listener.gw
        self.conn: asyncssh.SSHServerConnection | None = None
        self.client = "?"
        self.host = "?"
        self._session: Session | None = None
        self.connector: SshConnector | None = None
        self._backend: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self.channels = 0  # numbered from 1, never reused in a connection
        self.open_channels = 0
        self.forward_tasks: set[asyncio.Task[Any]] = set()  # direct-tcpip opens being checked
        self.outcome = "closed"

    @property
    def session(self) -> Session:
        assert self._session is not None, "no session before authentication"
        return self._session

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self.listener.spawn(coro)

    # ---- connection ------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        be.coalesce_sends(conn)
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.host = str(peer[0])
        self.client = f"{peer[0]}:{peer[1]}"
        self.listener.connections.add(self)
        self._certificate_login(conn)
        self._refuse_x11_and_agent(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if exc is not None and self.outcome == "closed":
            self.outcome = "disconnected"
        for task in list(self.forward_tasks):
            task.cancel()  # e.g. stop waiting for an approval nobody will use
        self.spawn(self._cleanup())

    async def _cleanup(self) -> None:
        if self._backend is not None:
            if not self._backend.done():
                self._backend.cancel()
            with contextlib.suppress(BaseException):
                backend = await self._backend
                # parked for this identity, or closed: its channels end first, so their
                # exit events are recorded
                await self.listener.pool.release(backend, reusable=self.outcome == "closed")
        if self._session is not None:
            slog = self._session.log
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(asyncio.to_thread(slog.close, self.outcome))

    # ---- authentication -----------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        return True  # every connection authenticates

    def password_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def gss_host(self) -> None:
        return None

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._login(username, password)

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return ("hoopy", "Your OIDC token is your password.", "", [("Token: ", False)])

    async def validate_kbdint_response(self, username: str, responses: Any) -> bool:
        if not isinstance(responses, list | tuple) or len(responses) != 1:
            return False
        return await self._login(username, str(responses[0]))

    def _certificate_login(self, conn: asyncssh.SSHServerConnection) -> None:
        """Public keys: only certificates from hoopy's CA (asyncssh checks signature,
        validity and key proof against `authorized_client_keys`; `CertificateLogin`
        checks them against the CA and reads the identity, groups and expiry from the
        certificate); then the same admission as a token login."""
        login = CertificateLogin(self.listener.ca).attach(conn)
        checked = conn.validate_public_key

        async def validate(username: str, key_data: bytes, msg: bytes, sig: bytes) -> bool:
            if self._session is not None:
                return False  # one identity per connection
            if self.listener.failures.blocked(self.host):
                self._reject(username, "too many failed logins from this address; try again later")
                return False
            login.refusal = ""
            if not await checked(username, key_data, msg, sig):
                if login.refusal and login.refusal != "not a certificate hoopy issues":
                    self.listener.failures.failed(self.host)  # a bad, expired or forged one
                    self._reject(username, f"certificate refused: {login.refusal}")
                return False
            if not msg:
                return True  # "would you accept this key?": the signed request follows
            assert login.identity is not None
            return self._admit(login.identity, username)

        setattr(conn, "validate_public_key", validate)  # noqa: B010 (this connection only)

    async def _login(self, username: str, token: str) -> bool:
        if self._session is not None:
            return False  # one identity per connection
        if self.listener.failures.blocked(self.host):
            self._reject(username, "too many failed logins from this address; try again later")
            return False
        try:
            identity = await self.gw.authenticate(token.strip())
        except HoopyError as e:
            self.listener.failures.failed(self.host)
            self._reject(username, e.message)
            return False
        return self._admit(identity, username)

    def _admit(self, identity: Identity, username: str) -> bool:
        try:
            connector = self.gw.admit(identity, username, "ssh")
            assert isinstance(connector, SshConnector)
            session = self._open(identity, username)
        except HoopyError as e:
            self.listener.failures.failed(self.host)
            self._reject(username, e.message)
            return False
        self.connector = connector
        self._session = session
        # Both handshakes at once: the backend's runs while the agent opens its channel.
        self._backend = asyncio.get_running_loop().create_task(
            self.listener.pool.acquire(connector, identity)
        )
        self._backend.add_done_callback(self._backend_ready)
        return True

    def _open(self, identity: Identity, username: str) -> Session:
        assert self.conn is not None
        session = self.gw.open_session(
            identity,
            username,
            "ssh",
            self.client,
            False,
            extra={"client_version": str(self.conn.get_extra_info("client_version", ""))},
        )
        session.notify = notify_current
        session.hide = shellsecrets.hidden
        return session

    def _reject(self, connector: str, reason: str) -> None:
        self.gw.record_rejection("ssh", self.client, connector, reason, False)

    def _backend_ready(self, task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
        if task.cancelled() or self._session is None:
            return
        exc = task.exception()
        with contextlib.suppress(Exception):
            if exc is None:
                reused = self.listener.pool.reused(task.result())
                self._session.record("backend", connected=True, reused=reused)
            else:
                message = exc.message if isinstance(exc, HoopyError) else type(exc).__name__
                self._session.record("backend", connected=False, error=message)

    async def backend(self) -> asyncssh.SSHClientConnection:
        """This connection's backend connection (BackendUnavailable with the reason)."""
        assert self._backend is not None
        try:
            return await asyncio.shield(self._backend)
        except HoopyError:
            raise
        except Exception as e:
            log.error("backend connection failed: %s", type(e).__name__)
            raise BackendUnavailable("cannot reach the backend") from None

    # ---- channels ------------------------------------------------------------------------------
    def session_requested(self) -> Bridge | bool:
        if self._session is None or self.open_channels >= MAX_CHANNELS:
            return False
        self.channels += 1
        self.open_channels += 1
        return Bridge(self, self.channels)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """direct-tcpip: asyncssh awaits the check (and approval) before it answers."""
        if self._session is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "")
        if self.open_channels >= MAX_CHANNELS:
            self._refuse_forward(
                "direct-tcpip", f"{dest_host}:{dest_port}"[:300], reason="too many open channels"
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, f"hoopy: at most {MAX_CHANNELS} open channels"
            )
        self.open_channels += 1  # open_forward gives it back if the channel does not open
        return open_forward(self, dest_host, dest_port, orig_host, orig_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._refuse_forward("tcpip-forward", f"{listen_host}:{listen_port}")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._refuse_forward("direct-streamlocal", dest_path)
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "socket forwarding is not allowed by hoopy"
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        self._refuse_forward("streamlocal-forward", listen_path)
        return False

    def tun_requested(self, unit: int | None) -> bool:
        self._refuse_forward("tun", "any" if unit is None else str(unit))  # `ssh -w`
        return False

    def tap_requested(self, unit: int | None) -> bool:
        self._refuse_forward("tap", "any" if unit is None else str(unit))
        return False

    def _refuse_forward(self, what: str, target: str, **fields: Any) -> None:
        self.gw.metrics.inc(f'ssh_forwarding_refused_total|kind="{what}"')
        # the agent's text, bounded and escaped: a refusal must not cost the recorder
        # what the agent can pack in a packet, request after request
        if len(target) > SHOWN_TARGET:
            target = target[:SHOWN_TARGET] + "…"
        target = ascii(target)[1:-1]
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.record("refused", what=what, target=target, **fields)

    def _refuse_x11_and_agent(self, conn: asyncssh.SSHServerConnection) -> None:
        """X11 and agent forwarding stay off (the listener turns them off); these make
        asyncssh's refusals of `x11-req` and `auth-agent-req` recorded ones."""

        async def no_agent() -> bool:
            self._refuse_forward("auth-agent", "")
            return False

        async def no_x11(chan: object, proto: bytes, data: bytes, screen: int) -> None:
            self._refuse_forward("x11", f"screen {screen}")  # never the cookie

        setattr(conn, "create_agent_listener", no_agent)  # noqa: B010 (this connection only)
        setattr(conn, "attach_x11_listener", no_x11)  # noqa: B010
