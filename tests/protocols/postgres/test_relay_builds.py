"""The PostgreSQL relay, compiled and interpreted (hoopy/compiled.py): the same bytes in,
the same recording and the same bytes out, byte for byte (relaydigest.py drives it:
pgbench's transactions in every protocol mode, awkward values, capped results, an
error, a refusal, whole and in 1- and 7-byte pieces)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hoopy import compiled

ROOT = Path(__file__).resolve().parents[3]


def digest(tmp_path: Path, name: str, pure: bool) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "tests.protocols.postgres.relaydigest", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out.read_text(encoding="utf-8", errors="surrogateescape")


def test_both_builds_record_and_relay_the_same_bytes(tmp_path: Path) -> None:
    said, pure = digest(tmp_path, "pure.txt", pure=True)
    installed_said, installed = digest(tmp_path, "installed.txt", pure=False)
    assert not any(said["compiled"].values()), "HOOPY_PURE=1 must load every module's .py"
    if all(compiled.extension(n) is not None for n in compiled.MODULES):
        assert all(installed_said["compiled"].values()), installed_said
    # it covers what it says: results capped, binary values, an error, a refusal
    for needle in ('"truncated":true', '{"b64":', '"type":"error"', '"outcome":"deny"'):
        assert needle in pure, needle
    assert pure.count('"type":"result"') >= 30
    if pure != installed:
        a, b = pure.splitlines(), installed.splitlines()
        first = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        raise AssertionError(f"builds differ at line {first}:\n{a[first]}\n{b[first]}")
