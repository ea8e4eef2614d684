"""A real OpenSSH sshd for SSH tests, and `hoopy serve` with an SSH listener in front.

sshd runs from its own config in a temp dir: host key, authorized key, 127.0.0.1,
a free port, public-key only (the key only hoopy holds).  Readiness is sshd's own
"Server listening" line and hoopy's `hoopy ready` line, never a sleep.  The agent
side is the real `ssh` client: the token comes from SSH_ASKPASS (forced), hoopy's
host key is pinned in a known_hosts file of the test's own.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from hoopy import pgcluster
from hoopy.devissuer import DevIssuer
from hoopy.sshtarget import launch_sshd
from tests import serveproc

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

SSH_POLICY = """\
mode: enforce
rules:
  - name: agents-read-only
    effect: allow
    match:
      groups: [agents]
      connectors: ["web-*"]
      ssh: {commands: ["echo *", "echo", "cat", "cat *", "ls *", "ls", "true", "false", "printf *",
                       "head *", "wc *", "sleep *", "env", "exit *", "kill *", "seq *",
                       "dd *", "id", "id *", "grep *", "base64 *", "test *", "scp -f *"]}
  - name: no-rm
    effect: deny
    reason: deleting files is not allowed
    match: {ssh: {commands: ["rm *", "rm", "shutdown*", "mkfs*", "reboot*"]}}
  - name: touch-needs-ops
    effect: require_approval
    approvers: [ops]
    timeout: 30s
    match: {groups: [agents], connectors: ["web-*"], ssh: {commands: ["touch *"]}}
  - name: hide-secrets
    effect: mask
    detectors: [email, credit_card]
    match: {connectors: [web-masked]}
"""


def keygen(path: Path, comment: str = "hoopy-test") -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Sshd:
    folder: Path
    port: int
    proc: subprocess.Popen[str]
    host_pub: str  # "ssh-ed25519 AAAA… comment"
    client_key: Path  # the key only hoopy holds (authorized for root)
    log: list[str] = field(default_factory=list)

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_pub}"

    def known_hosts(self) -> asyncssh.SSHKnownHosts:
        return asyncssh.import_known_hosts(self.known_hosts_line() + "\n")

    async def connect(self) -> asyncssh.SSHClientConnection:
        """A backend connection as hoopy makes it: its key, the host key pinned."""
        return await asyncssh.connect(
            "127.0.0.1", self.port, username="root", client_keys=[str(self.client_key)],
            known_hosts=self.known_hosts(), agent_path=None, config=[],
        )  # fmt: skip

    def stop(self) -> None:
        serveproc.stop(self.proc, 10)


def start_sshd(folder: Path, extra: str = "") -> Sshd:
    """`extra`: more sshd_config lines (the benchmarks set HOME to an empty folder, so
    root's own ~/.bashrc does not run with every command)."""
    folder.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_pub = keygen(folder / "host_ed25519", "sshd-host")
    client_pub = keygen(folder / "hoopy_backend_key", "hoopy-backend")
    (folder / "authorized_keys").write_text(client_pub + "\n")
    port = pgcluster.free_port()
    cfg = folder / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_ed25519\n"
        f"PidFile {folder}/sshd.pid\nAuthorizedKeysFile {folder}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\nAcceptEnv LANG LC_* TERM HOOPY_*\n"
        "MaxSessions 200\nMaxStartups 200\nLogLevel INFO\n"
        "UseDNS no\nPrintMotd no\nPrintLastLog no\n" + extra
    )
    started = launch_sshd(SSHD, cfg)
    if started is None:
        raise RuntimeError("sshd did not start")
    proc, lines = started
    return Sshd(folder, port, proc, host_pub, folder / "hoopy_backend_key", lines)


@dataclass
class SshHoopy:
    folder: Path
    config: Path
    proc: subprocess.Popen[str]
    addresses: dict[str, str]
    issuer: DevIssuer
    host_key_line: str  # hoopy's host key, pinned by the agent
    fingerprint: str
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def ssh_port(self) -> int:
        return int(self.addresses["ssh"].rsplit(":", 1)[1])

    def token(
        self, sub: str = "agent-1", groups: tuple[str, ...] = ("agents",), ttl: float = 900
    ) -> str:
        return self.issuer.mint(sub, list(groups), ttl=ttl)

    def known_hosts(self) -> Path:
        path = self.folder / "agent_known_hosts"
        if not path.exists():
            path.write_text(f"[127.0.0.1]:{self.ssh_port} {self.host_key_line}\n")
        return path

    def ssh_argv(self, connector: str = "web-1", *options: str) -> list[str]:
        return [
            "ssh", "-p", str(self.ssh_port),
            "-o", f"UserKnownHostsFile={self.known_hosts()}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no", "-o", "BatchMode=no",
            "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
            "-F", "/dev/null", *options, f"{connector}@127.0.0.1",
        ]  # fmt: skip

    def ssh_env(self, token: str) -> dict[str, str]:
        """SSH_ASKPASS (forced) prints the token: how an agent hands ssh its password."""
        askpass = self.folder / "askpass.sh"
        if not askpass.exists():
            askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$HOOPY_TEST_TOKEN"\n')
            askpass.chmod(askpass.stat().st_mode | stat.S_IXUSR)
        return {
            **os.environ,
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
            "HOOPY_TEST_TOKEN": token,
        }

    def ssh(
        self,
        command: str,
        *options: str,
        connector: str = "web-1",
        token: str | None = None,
        input: str | bytes | None = None,
        timeout: float = 30,
        text: bool = True,
    ) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        env = self.ssh_env(token if token is not None else self.token())
        return subprocess.run(
            [*self.ssh_argv(connector, *options), command],
            capture_output=True,
            text=text,
            env=env,
            input=input,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hoopy.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TEST_ADMIN_TOKEN": ADMIN_TOKEN},
        )

    def log_text(self) -> str:
        return "".join(self.stderr_lines)


ADMIN_TOKEN = "admin-secret-token"


def write_ssh_config(
    folder: Path,
    sshd: Sshd,
    extra_policies: dict[str, str] | None = None,
    extra_yaml: str = "ssh: {failed_logins: 1000}\n",
) -> Path:
    (folder / "connectors").mkdir(parents=True)
    (folder / "policies").mkdir()
    known = folder / "backend_known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n")
    wrong = folder / "wrong_known_hosts"
    other = keygen(folder / "unrelated_host_key", "not-the-backend")
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    base = f"type: ssh\naddress: 127.0.0.1:{sshd.port}\nuser: root\n"
    key = f"private_key: file:{sshd.client_key}\n"
    for name, text in {
        "web-1": base + key + f"known_hosts: file:{known}\n",
        "web-masked": base + key + f"known_hosts: file:{known}\n",
        "web-wrongkey": base + key + f"known_hosts: file:{wrong}\n",
        "web-nokey": base + key + f"known_hosts: file:{folder / 'empty_known_hosts'}\n",
    }.items():
        (folder / "connectors" / f"{name}.yaml").write_text(text)
    (folder / "empty_known_hosts").write_text("")
    (folder / "policies" / "ssh.yaml").write_text(SSH_POLICY)
    for name, text in (extra_policies or {}).items():
        (folder / "policies" / f"{name}.yaml").write_text(text)
    cfg = folder / "hoopy.yaml"
    cfg.write_text(
        "listen:\n  ssh: 127.0.0.1:0\n  admin: 127.0.0.1:0\n"
        "state: sqlite:state/state.db\nadmin_token: env:TEST_ADMIN_TOKEN\n"
        f"dev_issuer: {{listen: 127.0.0.1:{pgcluster.free_port()}}}\n"
        "recordings: recordings/\n" + extra_yaml
    )
    return cfg


def start_ssh_hoopy(
    folder: Path, sshd: Sshd, extra_policies: dict[str, str] | None = None, **kw: str
) -> SshHoopy:
    cfg = write_ssh_config(folder, sshd, extra_policies, **kw)
    env = {**os.environ, "TEST_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONUNBUFFERED": "1"}
    before: list[str] = []
    proc, addresses, stderr_lines = serveproc.launch(cfg, env, before_ready=before)
    fingerprint = next(
        (ln.split()[-1] for ln in before if ln.startswith("hoopy ssh host key ")), ""
    )
    pub = (folder / "state" / "ssh_host_ed25519_key.pub").read_text().strip()
    issuer = DevIssuer(folder / "state", addresses["dev_issuer"])
    return SshHoopy(folder, cfg, proc, addresses, issuer, pub, fingerprint, stderr_lines)


def stop(proc: subprocess.Popen[str]) -> None:
    serveproc.stop(proc)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def ssh_hoopy(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(tmp_path_factory.mktemp("hoopy-ssh"), sshd)
    try:
        yield h
    finally:
        stop(h.proc)
