"""Legacy scp (`scp -O`: the `scp -t` / `scp -f` exec) is a command like any other."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.sshd import Sshd, SshHoopy

pytest_plugins = ["tests.integration.sshd"]


def _scp(h: SshHoopy, *args: str) -> subprocess.CompletedProcess[str]:
    argv = h.ssh_argv()[:-1]  # the options, without the destination
    argv[0:3] = ["scp", "-O", "-P", str(h.ssh_port)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, env=h.ssh_env(h.token()), timeout=30
    )


def test_scp_download_allowed_upload_refused(
    ssh_hoopy: SshHoopy, sshd: Sshd, tmp_path: Path
) -> None:
    source = sshd.folder / "report.txt"
    source.write_text("quarterly numbers\n")
    got = tmp_path / "report.txt"
    r = _scp(ssh_hoopy, f"web-1@127.0.0.1:{source}", str(got))
    assert r.returncode == 0, r.stderr
    assert got.read_text() == "quarterly numbers\n"
    upload = tmp_path / "payload.sh"
    upload.write_text("#!/bin/sh\necho pwned\n")
    target = sshd.folder / "payload.sh"
    r = _scp(ssh_hoopy, str(upload), f"web-1@127.0.0.1:{target}")
    assert r.returncode != 0
    assert "denied" in r.stderr
    assert not target.exists()
