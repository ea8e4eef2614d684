"""Fast-path function calls (the FunctionCall message, 'F'): psql's \\lo_import,
\\lo_export and \\lo_unlink, libpq's large-object API.

A FunctionCall names its function by OID only, with its arguments as values.  hoopy
resolves the OID through the connector's catalog side connection (catalog.py, cached
per connector) and checks the call as what it is: `SELECT schema.name($1, …)`, read by
the SQL classifier like any other text (so the function's own kinds apply: a call of
query_to_xml is `dynamic_sql`), the function qualified (a rule naming `lo_open` or
`pg_catalog.lo_open` matches), the argument values shown apart (`values`) as a Bind's
are.  So deny rules on functions apply, and an allow rule must cover the function.
What hoopy cannot resolve (no such OID, catalog unreachable) is refused: fail closed.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hoopy.errors import CommandDenied
from hoopy.policy import Command
from hoopy.protocols.postgres.catalog import Catalog, CatalogUnavailable

if TYPE_CHECKING:
    from hoopy.session import Session

MAX_VALUE_CHARS = 256  # per argument, as recorded and shown to an approver


class BadFunctionCall(ValueError):
    """A FunctionCall message that does not decode."""


@dataclass(frozen=True)
class FunctionCallInfo:
    oid: int
    args: tuple[tuple[bytes | None, bool], ...]  # (value or None for NULL, binary?)

    def values(self, argtypes: tuple[int, ...] = ()) -> tuple[str, ...]:
        """Each argument as shown: text as is, binary values of common types decoded
        (`argtypes`: the function's, from the catalog), other binary as base64."""
        out = []
        for i, (data, binary) in enumerate(self.args):
            typ = argtypes[i] if i < len(argtypes) else 0
            out.append("NULL" if data is None else _shown(data, binary, typ))
        return tuple(out)


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
        args: list[tuple[bytes | None, bool]] = []
        for i in range(nargs):
            (n,) = struct.unpack_from("!i", raw, pos)
            pos += 4
            fmt = formats[0] if nfmt == 1 else formats[i] if nfmt else 0
            if n < 0:
                args.append((None, fmt != 0))
                continue
            data = raw[pos : pos + n]
            if len(data) != n:
                raise BadFunctionCall("argument runs past the message")
            pos += n
            args.append((data, fmt != 0))
        struct.unpack_from("!h", raw, pos)  # the result's format code
        if pos + 2 != len(raw):
            raise BadFunctionCall("bytes after the result format code")
    except struct.error:
        raise BadFunctionCall("truncated FunctionCall message") from None
    return FunctionCallInfo(oid, tuple(args))


# binary forms an approver can read: int2, int4, oid, int8, float4, float8, bool
_BINARY = {21: "!h", 23: "!i", 26: "!I", 20: "!q", 700: "!f", 701: "!d"}


def _shown(data: bytes, binary: bool, typ: int = 0) -> str:
    if binary:
        form = _BINARY.get(typ)
        if form is not None and len(data) == struct.calcsize(form):
            return str(struct.unpack(form, data)[0])
        if typ == 16 and len(data) == 1:
            return "true" if data != b"\0" else "false"
        if typ in (25, 1043, 19):  # text, varchar, name: their binary form is the text
            return _shown(data, False)
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


def call_command(connector: str, schema: str, name: str, values: tuple[str, ...]) -> Command:
    """The policy's view of a fast-path call: a SELECT of the qualified function."""
    qualified = f"{schema}.{name}"
    return Command(
        "postgres",
        connector,
        call_text(schema, name, len(values)),
        kinds=frozenset({"select"}),
        functions=frozenset({qualified}),
        fingerprint=f"fastpath:{qualified}/{len(values)}",
        values=values,
    )


def unresolved_text(oid: int) -> str:
    return f"fast-path function call of function OID {oid}"


async def checked_call(
    info: FunctionCallInfo,
    session: Session,
    catalog: Catalog,
    masked: bool,
    classify: Callable[[str], tuple[Command, ...]] | None = None,
) -> Command:
    """The Command a fast-path call is checked as; raises CommandDenied (recorded) for
    a call hoopy cannot resolve: fail closed.  `masked`: the session has mask rules,
    and what loread & co. return cannot be traced to a column.  `classify`: the SQL
    classifier, which reads the call's text as it reads any SQL calling the function,
    so a call's own kinds apply alike (query_to_xml is `dynamic_sql`,
    pg_terminate_backend `signal_backend`, pg_sleep_for counts as pg_sleep)."""
    reason = ""
    found = None
    if masked:
        reason = "fast-path function calls cannot be masked, so masked sessions refuse them"
    else:
        try:
            found = await catalog.function_name(info.oid)
        except CatalogUnavailable:
            reason = "the catalog side connection is unavailable"
        if found is None and not reason:
            reason = f"no function has OID {info.oid}"
    if found is None:
        text = unresolved_text(info.oid)
        session.record(
            "command", text=text, kinds=["select"], values=list(info.values()),
            outcome="deny", reason=reason,
        )  # fmt: skip
        raise CommandDenied(f"{text} refused: {reason}")
    values = info.values(found.argtypes)
    cmd = call_command(catalog.connector.name, found.schema, found.name, values)
    if classify is None:
        return cmd
    try:
        read = classify(cmd.text)
    except Exception as e:  # never let an unread call through
        reason = f"hoopy cannot read the call ({type(e).__name__})"
        session.record(
            "command", text=cmd.text, kinds=["select"], values=list(values),
            outcome="deny", reason=reason,
        )  # fmt: skip
        raise CommandDenied(f"{cmd.text} refused: {reason}") from None
    if len(read) != 1:
        raise CommandDenied(f"{cmd.text} refused: not one statement")  # pragma: no cover
    return replace(
        read[0],
        functions=read[0].functions | cmd.functions,
        fingerprint=cmd.fingerprint + "|" + read[0].fingerprint,
        values=values,
    )
