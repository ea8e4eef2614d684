"""Exec through hoopy with the real OpenSSH client and a real sshd behind it."""

from __future__ import annotations

from tests.integration.sshd import SshHoopy, Sshd, sshd, ssh_hoopy  # noqa: F401


def test_allowed_exec_relays_output_and_exit_status(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("echo hello; echo oops >&2; exit 3")
    assert r.stdout == "hello\n"
    assert r.stderr.endswith("oops\n")
    assert r.returncode == 3
