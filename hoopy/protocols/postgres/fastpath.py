"""Fast-path function calls (the FunctionCall message, 'F'): psql's \\lo_import,
\\lo_export and \\lo_unlink, libpq's large-object API.

A FunctionCall names its function by OID only, with its arguments as values.  hoopy
resolves the OID through the connector's catalog side connection (catalog.py, cached
per connector) and checks the call as what it is: `SELECT schema.name(args…)` — kind
`select`, the function qualified (a rule naming `lo_open` or `pg_catalog.lo_open`
matches), the argument values shown apart (`values`) as a Bind's are.  So deny rules
on functions apply, and an allow rule must cover the function.  What hoopy cannot
resolve (no such OID, catalog unreachable) is refused: fail closed.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from hoopy.policy import Command

MAX_VALUE_CHARS = 256  # per argument, as recorded and shown to an approver


class BadFunctionCall(ValueError):
    """A FunctionCall message that does not decode."""


@dataclass(frozen=True)
class FunctionCallInfo:
    oid: int
    values: tuple[str, ...]  # each argument as shown: text, base64 for binary, NULL


def decode_call(raw: bytes) -> FunctionCallInfo:
    """The function OID and arguments of a FunctionCall message (type byte included)."""
    try:
        pos = 5
        (oid,) = struct.unpack_from("!I", raw, pos)
        (nfmt,) = struct.unpack_from("!h", raw, pos + 4)
        pos += 6
        formats = struct.unpack_from(f"!{nfmt}h", raw, pos) if nfmt > 0 else ()
        pos += 2 * max(nfmt, 0)
        (nargs,) = struct.unpack_from("!h", raw, pos)
        pos += 2
        if nfmt < 0 or nargs < 0 or nfmt not in (0, 1, nargs):
            raise BadFunctionCall("bad argument format count")
        values: list[str] = []
        for i in range(nargs):
            (n,) = struct.unpack_from("!i", raw, pos)
            pos += 4
            if n < 0:
                values.append("NULL")
                continue
            data = raw[pos : pos + n]
            if len(data) != n:
                raise BadFunctionCall("argument runs past the message")
            pos += n
            fmt = formats[0] if nfmt == 1 else formats[i] if nfmt else 0
            values.append(_shown(data, binary=fmt != 0))
        struct.unpack_from("!h", raw, pos)  # the result's format code
        if pos + 2 != len(raw):
            raise BadFunctionCall("bytes after the result format code")
    except struct.error:
        raise BadFunctionCall("truncated FunctionCall message") from None
    return FunctionCallInfo(oid, tuple(values))


def _shown(data: bytes, binary: bool) -> str:
    if binary:
        text = "base64:" + base64.b64encode(data[:MAX_VALUE_CHARS]).decode()
    else:
        text = data[: MAX_VALUE_CHARS * 4].decode("utf-8", "replace")
    if len(data) > MAX_VALUE_CHARS:
        return text[:MAX_VALUE_CHARS] + f"… ({len(data)} bytes)"
    return text


def call_text(schema: str, name: str, nargs: int) -> str:
    params = ", ".join(f"${i + 1}" for i in range(nargs))
    return f"SELECT {_ident(schema)}.{_ident(name)}({params}) /* fast-path function call */"


def _ident(name: str) -> str:
    plain = name.isascii() and name.replace("_", "a").isalnum() and name == name.lower()
    return name if plain and not name[:1].isdigit() else '"' + name.replace('"', '""') + '"'


def call_command(connector: str, schema: str, name: str, info: FunctionCallInfo) -> Command:
    """The policy's view of a fast-path call: a SELECT of the qualified function."""
    qualified = f"{schema}.{name}"
    return Command(
        "postgres",
        connector,
        call_text(schema, name, len(info.values)),
        kinds=frozenset({"select"}),
        functions=frozenset({qualified}),
        fingerprint=f"fastpath:{qualified}/{len(info.values)}",
        values=info.values,
    )


def unresolved_text(oid: int) -> str:
    return f"fast-path function call of function OID {oid}"
