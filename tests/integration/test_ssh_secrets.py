"""Credentials written into an SSH command line (PGPASSWORD=…, --password=…, a URI's
user:…@) run as written on the host but never reach the session's event log, the
state store or hoopy's log (shellsecrets.py), with the real ssh and sshd."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.integration.sshd import SshHoopy

pytest_plugins = ["tests.integration.sshd"]


def _log_with(h: SshHoopy, needle: str) -> str:
    """The finished event log (not the terminal stream) whose commands hold `needle`."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if needle in text and '"type":"session_end"' in text:
                return text
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {needle!r}")


def _kept(h: SshHoopy) -> str:
    """Event logs, the state store and hoopy's log: everything but terminal streams."""
    files = [p for p in Path(h.folder).rglob("*") if p.is_file() and p.suffix != ".cast"]
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files) + "".join(
        h.stderr_lines
    )


def test_allowed_line_runs_with_its_credential_and_is_recorded_without_it(
    ssh_hoopy: SshHoopy,
) -> None:
    secret = "Sshtok-7c2q"
    r = ssh_hoopy.ssh(f'API_TOKEN={secret} test -n "$API_TOKEN"; echo ssh-secret-ran-1')
    assert r.returncode == 0 and "ssh-secret-ran-1" in r.stdout, r.stderr
    log = _log_with(ssh_hoopy, "ssh-secret-ran-1")
    commands = [json.loads(x) for x in log.splitlines() if '"type":"command"' in x]
    assert commands and "API_TOKEN=****" in commands[0]["text"]
    assert secret not in _kept(ssh_hoopy)


def test_denied_line_is_recorded_without_its_credential(ssh_hoopy: SshHoopy) -> None:
    secret = "Sshpw-d3n1"
    r = ssh_hoopy.ssh(f"rm -rf /tmp/nothing-here --password={secret} https://u:{secret}x@h/")
    assert r.returncode == 126 and "no-rm" in r.stderr
    log = _log_with(ssh_hoopy, "nothing-here")
    assert "--password=****" in log and "https://u:****@h/" in log
    assert secret not in _kept(ssh_hoopy)
