"""`hoopy demo` on embedded defaults: its printed psql command works; Ctrl-C cleans up."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def running_demo() -> Iterator[tuple[str, Path]]:
    """`hoopy demo` up to its banner (the text, its temp folder); Ctrl-C on leaving, which
    must end it cleanly and remove the folder."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    folder: Path | None = None
    try:
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if "HOOPY_ADMIN_TOKEN=" in line and "(" in line:
                break
        text = "".join(lines)
        found = re.search(r"removes (\S+)\)", text)
        assert found, text
        folder = Path(found.group(1))
        yield text, folder
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert folder is not None and not folder.exists()


def test_demo_prints_working_commands_and_cleans_up() -> None:
    with running_demo() as (text, folder):
        m = re.search(r"^\s*PGPASSWORD=(\S+) psql (\".*\")$", text, re.M)
        assert m, text
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
