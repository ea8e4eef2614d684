"""A real OpenSSH sshd on 127.0.0.1 for the SFTP bridge tests.

Own config, host key and authorized key in a temp dir, a free port, public-key only,
root login with the key (the one hoopy would hold), `internal-sftp`.  Readiness is
sshd's own "Server listening" line, never a sleep.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from hoopy import pgcluster

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class Sshd:
    folder: Path
    port: int
    proc: subprocess.Popen[str]
    host_pub: str
    client_key: Path
    log: list[str] = field(default_factory=list)

    def known_hosts(self) -> asyncssh.SSHKnownHosts:
        return asyncssh.import_known_hosts(f"[127.0.0.1]:{self.port} {self.host_pub}\n")

    async def connect(self) -> asyncssh.SSHClientConnection:
        """A backend connection as hoopy makes it: its key, the host key pinned."""
        return await asyncssh.connect(
            "127.0.0.1", self.port, username="root", client_keys=[str(self.client_key)],
            known_hosts=self.known_hosts(), agent_path=None, config=[],
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_sshd(folder: Path) -> Sshd:
    folder.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_pub = keygen(folder / "host_ed25519", "sshd-host")
    client_pub = keygen(folder / "backend_key", "hoopy-backend")
    (folder / "authorized_keys").write_text(client_pub + "\n")
    port = pgcluster.free_port()
    cfg = folder / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_ed25519\n"
        f"PidFile {folder}/sshd.pid\nAuthorizedKeysFile {folder}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\n"
        "UsePAM no\nSubsystem sftp internal-sftp\nLogLevel INFO\n"
    )
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(cfg)],
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
        raise RuntimeError("sshd did not start:\n" + "".join(lines))
    stderr = proc.stderr
    threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True).start()
    return Sshd(folder, port, proc, host_pub, folder / "backend_key", lines)


@pytest.fixture(scope="session")
def backend_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH server missing (apt-get install openssh-server)")
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield s
    finally:
        s.stop()
