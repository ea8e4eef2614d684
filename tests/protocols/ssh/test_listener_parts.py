"""The SSH listener's pure parts: host key persistence and the failed-login budget."""

from __future__ import annotations

import stat
from pathlib import Path

from hoopy.protocols.ssh.hostkey import ensure_host_key, fingerprint, host_key_path
from hoopy.protocols.ssh.proxy import FailureBudget


def test_host_key_is_created_once_private_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ensure_host_key(state)
    path = host_key_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fingerprint(first).startswith("SHA256:")
    again = ensure_host_key(state)
    assert fingerprint(again) == fingerprint(first)
    pub = path.with_name(path.name + ".pub").read_text()
    assert pub.startswith("ssh-ed25519 ") and "PRIVATE" not in pub


def test_failure_budget_blocks_per_address_and_forgets_with_time() -> None:
    b = FailureBudget(allowed=3, window=60)
    for t in (0.0, 1.0, 2.0):
        assert not b.blocked("10.0.0.1", t)
        b.failed("10.0.0.1", t)
    assert b.blocked("10.0.0.1", 3.0)
    assert not b.blocked("10.0.0.2", 3.0)  # other addresses are not punished
    assert not b.blocked("10.0.0.1", 61.0)  # the oldest failure left the window


def test_failure_budget_memory_is_bounded() -> None:
    b = FailureBudget(allowed=2, window=10)
    for i in range(30000):
        b.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", float(i) / 1000)
    for _ in range(100):
        b.failed("192.0.2.1", 100.0)
    assert len(b._seen) <= 10001
    assert b.blocked("192.0.2.1", 100.0)  # the newest offender is remembered
    assert all(len(v) <= 2 for v in b._seen.values())
