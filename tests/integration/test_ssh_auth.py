"""SSH logins: failed logins are recorded (bounded) and rate-limited per source address."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.sshd import Sshd, SshHoopy, start_ssh_hoopy, stop

pytest_plugins = ["tests.integration.sshd"]


@pytest.fixture
def strict_hoopy(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(
        tmp_path_factory.mktemp("hoopy-strict"), sshd,
        extra_yaml="ssh: {failed_logins: 3, failed_login_window: 10m}\n",
    )  # fmt: skip
    try:
        yield h
    finally:
        stop(h.proc)


def test_failed_logins_are_rate_limited_and_recorded(strict_hoopy: SshHoopy) -> None:
    h = strict_hoopy
    assert h.ssh("echo in").returncode == 0
    for _ in range(2):  # each ssh run tries password then keyboard-interactive: 2 failures
        assert h.ssh("echo in", token="bad-token").returncode == 255
    r = h.ssh("echo in")  # a good token from a blocked address is refused unchecked
    assert r.returncode == 255 and r.stdout == ""
    reasons = [
        json.loads(x).get("reason", "")
        for f in (h.folder / "recordings").rglob("*.jsonl")
        for x in f.read_text().splitlines()
        if '"type":"rejected"' in x
    ]
    assert any("token rejected" in r for r in reasons), reasons
    assert any("too many failed logins" in r for r in reasons), reasons
    assert "bad-token" not in "".join(reasons)
    assert h.cli("verify").returncode == 0
