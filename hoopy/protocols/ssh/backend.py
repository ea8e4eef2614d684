"""The backend side: one asyncssh client connection per agent connection.

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
import logging
from typing import Any

import asyncssh

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


def _options(connector: SshConnector) -> dict[str, Any]:
    try:
        known_hosts = asyncssh.import_known_hosts(
            connector.known_hosts.get() if connector.known_hosts else ""
        )
    except Exception:
        raise BackendUnavailable(
            f"connector '{connector.name}': its known_hosts cannot be read or parsed"
        ) from None
    keys: list[asyncssh.SSHKey] = []
    if connector.private_key is not None:
        try:
            keys.append(asyncssh.import_private_key(connector.private_key.get()))
        except Exception:
            raise BackendUnavailable(
                f"connector '{connector.name}': its private_key cannot be read or parsed"
            ) from None
    password = None
    if connector.password is not None:
        try:
            password = connector.password.get()
        except Exception:
            raise BackendUnavailable(
                f"connector '{connector.name}': its password cannot be read"
            ) from None
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


async def connect(connector: SshConnector) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the connector's host, or BackendUnavailable."""
    options = _options(connector)
    where = f"connector '{connector.name}' ({connector.host}:{connector.port})"
    try:
        async with asyncio.timeout(connector.connect_timeout + 1):
            return await asyncssh.connect(connector.host, connector.port, **options)
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
