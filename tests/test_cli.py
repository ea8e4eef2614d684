"""`hoopy check` reports every mistake as file:line and never prints a secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hoopy.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "hoopy.yaml").write_text("listen: {postgres: 127.0.0.1:15432}\n")
    (tmp_path / "connectors" / "db.yaml").write_text(
        "type: postgres\naddress: db:5432\ndatabase: app\nuser: u\npassword: hunter2-inline\n"
    )
    (tmp_path / "policies" / "p.yaml").write_text(
        "rules:\n  - name: a\n    efect: allow\n  - name: b\n    effect: deny\n"
        "    match: {connectors: [nope]}\n"
    )
    r = run("check", "--config", "hoopy.yaml", cwd=tmp_path)
    assert r.returncode == 1
    out = r.stdout
    assert "connectors/db.yaml:5:" in out
    assert "policies/p.yaml:3: unknown key 'efect' (did you mean 'effect'?)" in out
    assert "policies/p.yaml:6:" in out
    assert "hunter2-inline" not in out + r.stderr


def test_check_ok(tmp_path: Path) -> None:
    (tmp_path / "hoopy.yaml").write_text("listen: {postgres: 127.0.0.1:15432}\n")
    r = run("check", "--config", "hoopy.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok:")
