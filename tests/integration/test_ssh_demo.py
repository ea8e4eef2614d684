"""`hoopy demo` with its SSH target: the printed ssh line works as printed."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path


def test_demo_prints_a_working_ssh_line() -> None:
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
        m = re.search(r"^\s*(SSH_ASKPASS=.* ssh .*) 'uptime; ls /'$", text, re.M)
        assert m, text
        assert re.search(r"host key\s+SHA256:\S+", text)
        folder = Path(re.search(r"removes (\S+)\)", text).group(1))  # type: ignore[union-attr]
        words = shlex.split(m.group(1))
        env = dict(os.environ)
        while "=" in words[0]:
            k, v = words.pop(0).split("=", 1)
            env[k] = v
        ok = subprocess.run(
            [*words, "echo via-hoopy"], capture_output=True, text=True, env=env, timeout=30
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == "via-hoopy\n"
        marker = folder / "keep-me"
        marker.write_text("x")
        denied = subprocess.run(
            [*words, f"rm -f {marker}"], capture_output=True, text=True, env=env, timeout=30
        )
        assert denied.returncode == 126 and "no-deleting" in denied.stderr
        assert marker.exists()
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert not folder.exists()
