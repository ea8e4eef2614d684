"""A throwaway PostgreSQL cluster from the installed server binaries.

Used by `hoopy demo`, the test fixtures and the benchmarks.  initdb/pg_ctl
refuse to run as root, so when hoopy runs as root the cluster belongs to the
`postgres` OS user (via runuser).  Only SCRAM-SHA-256 over TCP on 127.0.0.1 is
accepted; no Unix socket is opened.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class ClusterError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The folder holding initdb/pg_ctl/postgres (PATH first, then Debian's layout)."""
    found = shutil.which("initdb")
    if found:
        real = Path(found).resolve().parent
        if (real / "pg_ctl").exists():
            return real
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)
    for c in candidates:
        if (Path(c) / "initdb").exists():
            return Path(c)
    raise ClusterError("PostgreSQL server binaries (initdb) not found; install postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _owner() -> str | None:
    """The OS user the server runs as: postgres when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root needs a 'postgres' OS user to own the cluster"
        ) from None
    return "postgres"


def _run(cmd: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
    full = ["runuser", "-u", user, "--", *cmd] if user else cmd
    proc = subprocess.run(full, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise ClusterError(f"{Path(cmd[0]).name} failed: {proc.stderr.strip()[-2000:]}")
    return proc


@dataclass
class PgCluster:
    base: Path  # temp folder holding data/ and the log
    bindir: Path
    port: int
    superuser: str
    password: str
    user: str | None  # OS user owning it
    extra_options: str = ""  # more `-c name=value` server settings

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.superuser}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            "-c unix_socket_directories='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200 -c log_min_messages=warning "
            + self.extra_options
        )
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.base / "server.log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            self.user,
        )

    def stop(self) -> None:
        with contextlib.suppress(ClusterError):
            _run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                self.user,
            )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def create(port: int = 0, base: Path | None = None, extra_options: str = "") -> PgCluster:
    """initdb a SCRAM-only cluster into a fresh temp folder and start it."""
    bindir = find_bindir()
    user = _owner()
    base = base or Path(tempfile.mkdtemp(prefix="hoopy-pg-"))
    base.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if user:
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    os.chmod(pwfile, 0o600)
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(base / "data"),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        user,
    )
    pwfile.unlink()
    cluster = PgCluster(
        base, bindir, port or free_port(), "postgres", password, user, extra_options
    )
    cluster.start()
    return cluster
