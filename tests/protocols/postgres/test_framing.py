"""The compiled fast path (hoopy/compiled.py) against the interpreted one.

Both builds must make the same events, relay runs and protocol errors of the same bytes:
framedigest.py writes a transcript of the codec over the real captures and hostile
variations of them, with HOOPY_PURE=1, as installed, and interpreted where Cython is not
installed at all (its stand-in hoopy/_cyshim.py), and the three must be identical.
When the extensions are built, the installed run must really be compiled (so CI cannot
silently test the interpreted build twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hoopy import compiled
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres import framing

ROOT = Path(__file__).resolve().parents[3]


def built() -> bool:
    return all(compiled.extension(name) is not None for name in compiled.MODULES)


def digest(
    tmp_path: Path, name: str, pure: bool, no_cython: bool = False
) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / name
    module = "tests.protocols.postgres.framedigest"
    # without Cython installed (import cython fails): its stand-in hoopy/_cyshim.py
    run = f"import sys, runpy; sys.modules['cython'] = None; sys.argv[1:] = [{str(out)!r}]; "
    run += f"runpy.run_module({module!r}, run_name='__main__')"
    cmd = ["-c", run] if no_cython else ["-m", module, str(out)]
    proc = subprocess.run(
        [sys.executable, *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out.read_text()


def test_both_builds_make_the_same_of_every_byte(tmp_path: Path) -> None:
    said, pure = digest(tmp_path, "pure.txt", pure=True)
    installed_said, installed = digest(tmp_path, "installed.txt", pure=False)
    shim_said, shim = digest(tmp_path, "shim.txt", pure=True, no_cython=True)
    assert not any(said["compiled"].values()), "HOOPY_PURE=1 must load every module's .py"
    assert shim_said["shadow"] == "hoopy._cyshim"
    if built():
        status = installed_said["compiled"]
        assert all(status.values()), f"built but not running compiled: {installed_said['build']}"
    assert pure.count("\n") > 10000 and "violation 54000" in pure  # it covers the errors
    for other in (installed, shim):
        if pure != other:
            a, b = pure.splitlines(), other.splitlines()
            first = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
            raise AssertionError(f"builds differ at line {first}:\n{a[first]}\n{b[first]}")


def test_the_compiled_modules_are_in_use_when_built() -> None:
    """What this process runs: compiled wherever an extension is built (and fresh),
    interpreted under HOOPY_PURE=1; on CI (which builds them) never interpreted."""
    status = compiled.status()
    if compiled.pure_requested():
        assert not any(status.values())
        assert compiled.describe() == "interpreted (HOOPY_PURE is set)"
        return
    for name, running in status.items():
        if compiled.extension(name) is not None:
            assert running, f"{name} is built but its .py runs: {compiled.describe()}"
        else:
            assert not os.environ.get("CI"), f"CI must build {name} (pip install -e .)"
            assert not running
    if built():
        assert compiled.describe().startswith("compiled (framing")
    else:
        assert "not built" in compiled.describe()


def test_a_length_word_with_the_top_bit_set_is_too_long_not_negative() -> None:
    """The compiled length read must not wrap: 0xFFFFFFFF is 4 GiB, over the limit."""
    conn = pg.ClientConnection(max_message_size=1 << 20)
    conn.receive_data(pg.authentication_ok() + pg.ready_for_query("I"))
    conn.events()
    for t in b"DCZT":
        buf = bytearray(bytes([t]) + b"\xff\xff\xff\xff")
        with pytest.raises(pg.ProtocolViolation) as info:
            framing.relay_run(buf, 0, 1 << 20)
        assert info.value.sqlstate == "54000" and "4294967295 bytes" in info.value.message
    conn.receive_data(b"D\x80\0\0\0")
    with pytest.raises(pg.ProtocolViolation) as info:
        conn.relay_run()
    assert info.value.message == "message of 2147483648 bytes exceeds the limit of 1048576"


def test_header_reports_incomplete_foreign_and_complete_messages() -> None:
    allowed = frozenset(b"Q")
    msg = pg.query("select 1")
    assert framing.header(bytearray(b""), 0, allowed, 1 << 20) == 0
    assert framing.header(bytearray(b"X"), 0, allowed, 1 << 20) == -1  # known from 1 byte
    for cut in range(1, len(msg)):
        assert framing.header(bytearray(msg[:cut]), 0, allowed, 1 << 20) == 0
    assert framing.header(bytearray(b"xx" + msg), 2, allowed, 1 << 20) == len(msg) - 1
    with pytest.raises(pg.ProtocolViolation, match="invalid message length"):
        framing.header(bytearray(b"Q\0\0\0\x03"), 0, allowed, 1 << 20)


def test_relay_run_marks_and_stops_where_the_proxy_must_look() -> None:
    rows = pg.data_row([b"1"]) + pg.data_row([None])
    data = (
        pg.parse_complete()
        + pg.bind_complete()
        + pg.row_description([pg.FieldDescription("a", 0, 0, 23, 4, -1, 0)])
        + rows
        + pg.command_complete("SELECT 2")
        + pg.ready_for_query("I")
        + pg.error_response("42P01", "nope")  # not relayed: the run ends before it
    )
    stop, marks = framing.relay_run(bytearray(data), 0, 1 << 20)
    assert stop == len(data) - len(pg.error_response("42P01", "nope"))
    kinds = [chr(t) for t, _, _ in marks]
    assert kinds == ["1", "T", "D", "C", "Z"]
    _, a, b = marks[2]
    assert data[a:b] == rows
    for t, a, b in marks:
        assert data[a] == t and b > a
    # a DataRow cut short ends the run at the last complete message
    stop, marks = framing.relay_run(bytearray(rows + pg.data_row([b"x"])[:-1]), 0, 1 << 20)
    assert stop == len(rows) and marks == [(0x44, 0, len(rows))]
