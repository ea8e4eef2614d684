"""`hoopy demo`'s SSH target: a throwaway OpenSSH sshd from the installed server binaries.

Its own config, host key, authorized key (the key only hoopy holds) and port live in
the demo's temp folder; it listens on 127.0.0.1 only, allows public-key logins only,
as the user running the demo (root logs in with the key only).  Not for production:
it exists so `hoopy demo` shows SSH through hoopy with nothing else to set up.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from hoopy import pgcluster

SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def sshd_binary() -> str | None:
    found = shutil.which("sshd")
    return found or next((p for p in SSHD_PATHS if os.path.exists(p)), None)


def _write_key(path: Path, key: asyncssh.SSHKey) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key.export_public_key().decode().strip()


def launch_sshd(binary: str, config: Path) -> tuple[subprocess.Popen[str], list[str]] | None:
    """`sshd -D -e -f CONFIG`, awaited on its "Server listening" line (never a sleep);
    its log lines keep arriving in the returned list.  None if it exits first."""
    proc = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in iter(proc.stderr.readline, ""):
        lines.append(line)
        if "Server listening on" in line:
            break
    else:
        proc.wait(10)
        return None
    err = proc.stderr
    threading.Thread(target=lambda: lines.extend(iter(err.readline, "")), daemon=True).start()
    return proc, lines


@dataclass
class DemoSshd:
    folder: Path
    port: int
    user: str
    proc: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path) -> DemoSshd | None:
        """A running sshd, or None when the OpenSSH server is not installed or will not
        start here (the demo then goes on without SSH)."""
        binary = sshd_binary()
        if binary is None:
            return None
        folder.mkdir(parents=True, mode=0o700)
        host_pub = _write_key(folder / "host_key", asyncssh.generate_private_key("ssh-ed25519"))
        client_pub = _write_key(folder / "hoopy_key", asyncssh.generate_private_key("ssh-ed25519"))
        (folder / "authorized_keys").write_text(client_pub + "\n")
        port = pgcluster.free_port()
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
        user = getpass.getuser()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privsep folder
        (folder / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\n"
            f"PidFile {folder}/sshd.pid\nAuthorizedKeysFile {folder}/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\n"
            f"UsePAM no\nAllowUsers {user}\nAcceptEnv LANG LC_* TERM\nLogLevel INFO\n"
        )
        started = launch_sshd(binary, folder / "sshd_config")
        if started is None:
            return None
        proc, lines = started
        return cls(folder, port, user, proc, lines)

    def connector(self) -> str:
        """connectors/demo-ssh.yaml for this sshd."""
        return (
            f"type: ssh\naddress: 127.0.0.1:{self.port}\nuser: {self.user}\n"
            f"private_key: file:{self.folder / 'hoopy_key'}\n"
            f"known_hosts: file:{self.folder / 'known_hosts'}\n"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
