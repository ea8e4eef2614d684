"""`hoopy serve` as a subprocess, for the test fixtures, benchmarks and the compatibility
run: started on a config file, awaited on its `hoopy ready {json}` line (never a sleep),
its stderr collected by a thread, and stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hoopy.devissuer import DevIssuer


@dataclass
class Served:
    """A running `hoopy serve` as a fixture hands it to tests (protocol fixtures add
    their own helpers): its folder, config, process, listening addresses, dev issuer."""

    folder: Path
    config: Path
    proc: subprocess.Popen[str]
    addresses: dict[str, str]
    issuer: DevIssuer
    stderr_lines: list[str] = field(default_factory=list)

    def token(
        self, sub: str = "agent-1", groups: tuple[str, ...] = ("agents",), ttl: float = 900
    ) -> str:
        return self.issuer.mint(sub, list(groups), ttl=ttl)


class ServeFailed(RuntimeError):
    pass


def launch(
    config: Path,
    env: dict[str, str],
    python_args: Sequence[str] = ("-m", "hoopy.cli"),
    stderr: IO[str] | None = None,
    before_ready: list[str] | None = None,
) -> tuple[subprocess.Popen[str], dict[str, str], list[str]]:
    """Start `hoopy serve --config CONFIG`; return the process, the listeners' addresses
    from its ready line, and the list its stderr lines go to (empty when `stderr`, a
    file, takes them instead).  `before_ready` gets the stdout lines before that one
    (the SSH host key's fingerprint)."""
    proc = subprocess.Popen(
        [sys.executable, *python_args, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    err = proc.stderr
    if err is not None:
        threading.Thread(target=lambda: lines.extend(iter(err.readline, "")), daemon=True).start()
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("hoopy ready "):
            return proc, json.loads(line[len("hoopy ready ") :]), lines
        if before_ready is not None:
            before_ready.append(line)
    proc.wait(10)
    raise ServeFailed("hoopy serve did not start:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str], timeout: float = 15) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
