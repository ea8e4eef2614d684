"""`hoopy demo` with its SSH target: the printed ssh line works as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from tests.integration.test_demo import running_demo


def test_demo_prints_a_working_ssh_line() -> None:
    with running_demo() as (text, folder):
        m = re.search(r"^\s*(SSH_ASKPASS=.* ssh .*) 'uptime; ls /'$", text, re.M)
        assert m, text
        assert re.search(r"host key\s+SHA256:\S+", text)
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
