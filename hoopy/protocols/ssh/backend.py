"""The backend side: an asyncssh client connection per agent connection (pool.py
keeps one idle for the same identity's next connection).

Credentials (private key, password) and the pinned host keys come from the
connector only; nothing of the hoopy process's own SSH setup is used (no
~/.ssh/config, no default keys, no ssh-agent), so what the operator configured is
all a backend ever sees.  The host key must be in the connector's known_hosts:
asyncssh refuses an unknown or changed key and hoopy never trusts on first use.
Errors are turned into messages that name the connector and what to fix, and
never carry a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncssh
import asyncssh.auth
import asyncssh.connection
import asyncssh.saslprep

from hoopy.config import SshConnector
from hoopy.errors import BackendUnavailable

log = logging.getLogger("hoopy.ssh.backend")
# hoopy is the client here, so its order decides: AES-GCM costs asyncssh one
# cryptography call per packet (no separate MAC).
FAST_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
# What hoopy's listener offers agents, whose clients choose in their own order: not
# chacha20-poly1305, which asyncssh runs at ~95 us per small packet and ~170 MB/s
# against ~11 us and ~950 MB/s for AES-GCM (OpenSSH clients then take aes128-ctr with
# an ETM MAC, asyncssh and Go clients AES-GCM); no compression (CPU on hoopy for
# nothing on a LAN).  Every SSH client in use speaks AES-CTR.
AGENT_ALGS: dict[str, Any] = {"encryption_algs": FAST_CIPHERS, "compression_algs": ("none",)}


def _saslprep(s: str) -> str:
    """asyncssh's SASLprep (RFC 4013), which it runs on every password: a Python loop
    over stringprep tables, ~4.5 ms for an 800-character token.  SASLprep maps,
    normalizes and prohibits only non-ASCII and control characters, so printable ASCII
    (every JWT) comes out as it went in; anything else takes the full profile."""
    if s.isascii() and s.isprintable():
        return s
    return _full_saslprep(s)


_full_saslprep = asyncssh.saslprep.saslprep
for _module in (asyncssh.auth, asyncssh.connection):
    if getattr(_module, "saslprep", None) is _full_saslprep:
        setattr(_module, "saslprep", _saslprep)  # noqa: B010


@dataclass(frozen=True)
class Secrets:
    """What a connection to the connector is made with, read once: the pool's key is
    derived from exactly the text the host-key check and the login used."""

    known_hosts: str
    private_key: str | None
    password: str | None

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for part in (self.known_hosts, self.private_key, self.password):
            h.update(b"-" if part is None else b"+%d:%s" % (len(part), part.encode()))
        return h.digest()


def read_secrets(connector: SshConnector) -> Secrets:
    """The connector's secrets, or BackendUnavailable naming the one that cannot be read."""
    values: list[str | None] = []
    for what, secret in (
        ("known_hosts", connector.known_hosts),
        ("private_key", connector.private_key),
        ("password", connector.password),
    ):
        try:
            values.append(None if secret is None else secret.get())
        except Exception:
            raise BackendUnavailable(
                f"connector '{connector.name}': its {what} cannot be read"
            ) from None
    return Secrets(values[0] or "", values[1], values[2])


def _options(connector: SshConnector, secrets: Secrets) -> dict[str, Any]:
    try:
        known_hosts = asyncssh.import_known_hosts(secrets.known_hosts)
    except Exception:
        raise BackendUnavailable(
            f"connector '{connector.name}': its known_hosts cannot be read or parsed"
        ) from None
    keys: list[asyncssh.SSHKey] = []
    if secrets.private_key is not None:
        try:
            keys.append(asyncssh.import_private_key(secrets.private_key))
        except Exception:
            raise BackendUnavailable(
                f"connector '{connector.name}': its private_key cannot be read or parsed"
            ) from None
    password = secrets.password
    return {
        "username": connector.user,
        "known_hosts": known_hosts,
        "client_keys": keys,
        "password": password,
        "agent_path": None,
        "config": None,
        "client_host_keys": None,
        "x509_trusted_certs": None,
        "preferred_auth": "publickey,password,keyboard-interactive",
        "kbdint_auth": password is not None,
        "gss_host": None,
        "connect_timeout": connector.connect_timeout,
        "login_timeout": connector.connect_timeout,
        "keepalive_interval": connector.keepalive,
        "keepalive_count_max": 3,
        "encryption_algs": FAST_CIPHERS,
    }


class _Coalescer:
    """Send what a connection writes during one event-loop pass as one write.

    asyncssh writes each packet to the socket at once: an exec costs about sixteen
    send() calls, and on a loaded machine each may hand the CPU to the woken peer
    before hoopy goes on.  The packets an event produces (EOF, exit status and close
    for the agent; close for the backend) now leave together at the end of the pass,
    in order: every write goes through SSHConnection._send and `_transport` (asyncssh
    2.14 to 2.24); a connection without them is left as it is."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def send(self, data: bytes) -> None:
        transport = getattr(self.conn, "_transport", None)
        if transport is None:
            return  # closed: asyncssh drops it too
        if not self.pending:
            self.transport = transport
            self.loop.call_soon(self.flush)  # before the abort of a close that follows
        self.pending.append(data)

    def flush(self) -> None:
        if not self.pending or self.transport is None:
            return
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        if not self.transport.is_closing():
            with contextlib.suppress(ConnectionError):
                self.transport.write(data)


def coalesce_sends(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """`conn`'s packets leave once per event-loop pass (_Coalescer)."""
    if callable(getattr(conn, "_send", None)) and hasattr(conn, "_transport"):
        coalescer = _Coalescer(conn)
        setattr(conn, "_send", coalescer.send)  # noqa: B010 (this connection only)
        setattr(conn, "_hoopy_flush", coalescer.flush)  # noqa: B010


def flush_sends(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Send what `conn` holds now rather than at the end of the pass."""
    flush = getattr(conn, "_hoopy_flush", None)
    if flush is not None:
        flush()


async def connect(
    connector: SshConnector, secrets: Secrets | None = None
) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the connector's host, or BackendUnavailable."""
    options = _options(connector, secrets or read_secrets(connector))
    where = f"connector '{connector.name}' ({connector.host}:{connector.port})"
    try:
        async with asyncio.timeout(connector.connect_timeout + 1):
            conn = await asyncssh.connect(connector.host, connector.port, **options)
            coalesce_sends(conn)
            return conn
    except asyncssh.HostKeyNotVerifiable:
        raise BackendUnavailable(
            f"{where}: the backend's host key is not the one pinned in the connector's "
            "known_hosts (unknown or changed key; hoopy never trusts on first use)"
        ) from None
    except asyncssh.PermissionDenied:
        raise BackendUnavailable(f"{where}: the backend refused hoopy's credentials") from None
    except TimeoutError:
        raise BackendUnavailable(
            f"{where}: no answer within {connector.connect_timeout:g} s"
        ) from None
    except asyncssh.DisconnectError as e:
        raise BackendUnavailable(f"{where}: the backend disconnected ({e.reason})") from None
    except OSError as e:
        raise BackendUnavailable(
            f"{where}: cannot connect ({e.strerror or type(e).__name__})"
        ) from None
