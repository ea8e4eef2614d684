"""Binds that may not simply go: what hoopy must check before a Bind reaches the server.

A statement prepared by Parse runs at each Bind/Execute, with new values every time.
A statement that needs an approval therefore waits at each Bind, and the approver sees
the values it will run with (one approval releases one execution, as for EXECUTE of an
SQL PREPARE); a Bind of a statement hoopy does not know (a name whose meaning it lost
track of) is refused.  Pure helpers; the waiting happens in bindcheck.BindCheck.
"""

from __future__ import annotations

import struct

from hoopy.policy import Command
from hoopy.protocols.postgres import codec as pg

_I = struct.Struct("!I")


def split_run(raw: bytes, types: bytes) -> list[tuple[int, bytes]]:
    """A Passthrough run as its messages: (type byte, message)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    for t in types:
        stop = pos + 1 + _I.unpack_from(raw, pos + 1)[0]
        out.append((t, raw[pos:stop]))
        pos = stop
    return out


def single(t: int, raw: bytes) -> pg.Passthrough:
    return pg.Passthrough(bytes((t,)), raw)


def bound_command(cmd: Command, bind: pg.Bind) -> Command:
    """`cmd` with this Bind's values beside its text, whole, one string each ("$1 = …"):
    what an approver is shown.  Never spliced into the text, which the agent wrote."""
    return cmd.with_values([f"${i + 1} = {_shown(bind, i, v)}" for i, v in enumerate(bind.params)])


# Every value shows on one line, and nothing in it reads as SQL or as the next value.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x5C: "\\\\",
}


def _shown(bind: pg.Bind, i: int, value: bytes | None) -> str:
    """A value as an approver reads it.  Text format: the text, quoted and escaped.
    Binary format (drivers send most values so): its bytes in hex, which is what runs,
    then what they read as when that is plausible (hoopy does not know the type)."""
    if value is None:
        return "NULL"
    formats = bind.param_formats
    binary = (formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0) == 1
    if not binary:
        return _text(value.decode("utf-8", "replace"))
    hexed = f"x'{value.hex()}'"
    readings = []
    if len(value) in (2, 4, 8):
        readings.append(f"as integer {int.from_bytes(value, 'big', signed=True)}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():
        readings.append(f"as text {_text(text)}")
    return f"{hexed} (binary{'; ' + ', '.join(readings) if readings else ''})"


def _text(text: str) -> str:
    return "'" + text.translate(_ESCAPES).replace("'", "''") + "'"
