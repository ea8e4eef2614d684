"""`hoopy demo` on embedded defaults: its printed psql command works; Ctrl-C cleans up."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path


def test_demo_prints_working_commands_and_cleans_up() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if "HOOPY_ADMIN_TOKEN=" in line and "(" in line:
                break
        text = "".join(lines)
        m = re.search(r"^\s*PGPASSWORD=(\S+) psql (\".*\")$", text, re.M)
        assert m, text
        folder = Path(re.search(r"removes (\S+)\)", text).group(1))  # type: ignore[union-attr]
        assert folder.is_dir()
        conninfo = shlex.split(m.group(2))[0]
        env = {**os.environ, "PGPASSWORD": m.group(1)}
        r = subprocess.run(
            ["psql", conninfo, "-At", "-c", "select count(*) from customers"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "4"
        r = subprocess.run(
            ["psql", conninfo, "-c", "drop table orders"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert "no-schema-changes" in r.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert not folder.exists()
