"""hoopy's own SSH host key: ed25519, generated once in the state folder (0600).

Agents pin it (known_hosts); it must survive restarts, so it is never regenerated
while the file exists.  Only its public half and fingerprint are ever printed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import asyncssh

KEY_NAME = "ssh_host_ed25519_key"


def host_key_path(state_dir: Path) -> Path:
    return state_dir / KEY_NAME


def ensure_host_key(state_dir: Path) -> asyncssh.SSHKey:
    """Load the gateway's host key, creating it (0600, atomically) on first run."""
    path = host_key_path(state_dir)
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="hoopy gateway")
        tmp = path.with_name(f".{KEY_NAME}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        try:
            os.link(tmp, path)  # never replaces a key another process wrote first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = asyncssh.read_private_key(str(path))
    pub = path.with_name(KEY_NAME + ".pub")
    with contextlib.suppress(OSError):
        if not pub.exists():
            pub.write_bytes(key.export_public_key())
    return key


def fingerprint(key: asyncssh.SSHKey) -> str:
    """The SHA256:… form `ssh` prints when it first meets a host."""
    return str(key.get_fingerprint("sha256"))


def known_hosts_line(key: asyncssh.SSHKey, host: str, port: int) -> str:
    """A known_hosts line an agent can use to pin this gateway."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.export_public_key().decode().strip()}"
