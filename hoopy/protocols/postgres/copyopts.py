"""COPY … TO options read exactly as PostgreSQL reads them — pure, no I/O.

Masking rewrites COPY rows, so it must split them as the server wrote them: which
format, delimiter, NULL string, quote and escape, and whether the first line is a
header of column names.  A misread is a leak: a HEADER hoopy believes on and the
server does not makes hoopy pass the first data row on as "column names".  So each
option value is read the way the server's ProcessCopyOptions reads it (defGetString,
defGetBoolean, defGetCopyHeaderChoice: libpg_query hands `0` over as an empty Integer
node), and a COPY with an option or value hoopy does not know is refused, not guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hoopy.protocols.postgres import pgquery


class UnreadableCopy(ValueError):
    """A COPY whose options hoopy cannot read as the server does (str: why)."""


@dataclass(frozen=True)
class CopyFormat:
    """COPY TO options that shape its rows (defaults as PostgreSQL's)."""

    csv: bool = False
    delimiter: bytes = b"\t"
    null: bytes = b"\\N"
    quote: bytes = b'"'
    escape: bytes = b'"'
    header: bool = False  # the first CopyData is a line of column names
    binary: bool = False


# Encodings PostgreSQL can hold on the server: ASCII-compatible, and no byte of a
# multibyte character is ASCII, so delimiters and escapes are found as in UTF-8.
# Names as PostgreSQL's clean_encoding_name leaves them (alphanumerics, lower case).
SAFE_ENCODINGS = frozenset(
    {"utf8", "unicode", "sqlascii", "eucjp", "euccn", "euckr", "euctw", "eucjis2004"}
    | {"muleinternal", "koi8", "koi8r", "koi8u", "alt", "win", "abc", "tcvn", "tcvn5712"}
    | {"vscii", "win866", "win874", "windows866", "windows874"}
    | {f"latin{i}" for i in range(1, 11)}
    | {f"iso8859{i}" for i in range(1, 11)}
    | {"iso885913", "iso885914", "iso885915", "iso885916"}
    | {f"win{n}" for n in range(1250, 1259)}
    | {f"windows{n}" for n in range(1250, 1259)}
)

# Options that change nothing in what COPY TO writes, read only to check them.
_BOOLEAN_ONLY = frozenset({"freeze"})


def copy_format(sql: str) -> CopyFormat | None:
    """The output format of a COPY … TO statement (None: not a COPY TO).

    Raises UnreadableCopy when an option cannot be read as the server reads it."""
    try:
        tree = json.loads(pgquery.parse_json(sql))
        stmt = tree["stmts"][0]["stmt"]
    except Exception as e:  # libpg_query cannot parse what the server might
        raise UnreadableCopy("hoopy cannot parse this COPY statement") from e
    copy = stmt.get("CopyStmt") if isinstance(stmt, dict) else None
    if copy is None:
        raise UnreadableCopy("hoopy cannot find the COPY statement in this text")
    if copy.get("is_from"):
        return None
    return read_options(copy.get("options") or [])


def read_options(options: list[Any]) -> CopyFormat:
    """CopyFormat from a CopyStmt's options (libpg_query JSON DefElem nodes)."""
    seen: dict[str, Any] = {}
    for o in options:
        d = o.get("DefElem") if isinstance(o, dict) else None
        if not isinstance(d, dict) or not isinstance(d.get("defname"), str):
            raise UnreadableCopy("hoopy cannot read an option of this COPY")
        name = d["defname"]  # compared as the server does: case-sensitively
        if name in seen:
            raise UnreadableCopy(f"COPY option {name} is given twice")
        seen[name] = d.get("arg")
    fmt = _string(seen, "format", "text")
    if fmt not in ("text", "csv", "binary"):
        raise UnreadableCopy(f"COPY format {fmt!r} is not one hoopy knows")
    csv = fmt == "csv"
    delimiter = _char(seen, "delimiter", "," if csv else "\t")
    null = _string(seen, "null", "" if csv else "\\N")
    quote = _char(seen, "quote", '"')
    escape = _char(seen, "escape", quote)
    header = _header(seen)
    if "force_quote" in seen:
        arg = seen["force_quote"]
        if not (isinstance(arg, dict) and ("A_Star" in arg or "List" in arg)):
            raise UnreadableCopy("COPY option force_quote needs * or a list of columns")
    if "encoding" in seen:
        enc = _string(seen, "encoding", "")
        cleaned = "".join(c for c in enc.lower() if c.isalnum())
        if not enc.isascii() or cleaned not in SAFE_ENCODINGS:
            raise UnreadableCopy(
                f"COPY encoding {enc!r} cannot be masked (an encoding whose characters "
                "may hold ASCII bytes, or one hoopy does not know)"
            )
    for name in _BOOLEAN_ONLY & seen.keys():
        _boolean(seen[name], name)
    unknown = seen.keys() - {"format", "delimiter", "null", "quote", "escape", "header"}
    unknown -= {"force_quote", "encoding"} | _BOOLEAN_ONLY
    if unknown:
        raise UnreadableCopy(f"COPY option {sorted(unknown)[0]} is not one hoopy can mask")
    return CopyFormat(
        csv=csv,
        delimiter=delimiter.encode(),
        null=null.encode(),
        quote=quote.encode(),
        escape=escape.encode(),
        header=header,
        binary=fmt == "binary",
    )


def arg_string(arg: Any, name: str) -> str:
    """defGetString: the value as text, whatever node the parser made of it."""
    if not isinstance(arg, dict) or len(arg) != 1:
        raise UnreadableCopy(f"COPY option {name} needs a value hoopy can read")
    kind, node = next(iter(arg.items()))
    node = node if isinstance(node, dict) else {}
    if kind == "Integer":  # libpg_query leaves out a zero: {"Integer": {}} is 0
        ival = node.get("ival", 0)
        if isinstance(ival, int) and not isinstance(ival, bool):
            return str(ival)
    elif kind == "Float" and isinstance(node.get("fval"), str):
        return str(node["fval"])  # as written: `null 1.50` is "1.50"
    elif kind == "Boolean":  # old-style `CSV HEADER`; libpg_query leaves out false
        return "true" if node.get("boolval", False) is True else "false"
    elif kind == "String" and isinstance(node.get("sval", ""), str):
        return str(node.get("sval", ""))
    elif kind == "A_Star":
        return "*"
    raise UnreadableCopy(f"COPY option {name} has a value hoopy cannot read")


def _string(seen: dict[str, Any], name: str, default: str) -> str:
    if name not in seen:
        return default
    return arg_string(seen[name], name)


def _char(seen: dict[str, Any], name: str, default: str) -> str:
    """Delimiter, quote, escape: PostgreSQL wants one byte; hoopy one ASCII character."""
    v = _string(seen, name, default)
    if len(v) != 1 or not v.isascii():
        raise UnreadableCopy(f"COPY {name} must be a single ASCII character for masking")
    return v


def _ascii_lower(s: str) -> str:
    """pg_strcasecmp folds A-Z only (Python's lower() folds more: the Kelvin sign)."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def _boolean(arg: Any, name: str) -> bool:
    """defGetBoolean: no value is true; integers 0 and 1; true/false/on/off in any case.
    Nothing else (PostgreSQL refuses `yes`, `t`, prefixes here, unlike in SET)."""
    if arg is None:
        return True
    if isinstance(arg, dict) and "Integer" in arg:
        v = arg_string(arg, name)
        if v in ("0", "1"):
            return v == "1"
        raise UnreadableCopy(f"COPY option {name} needs a Boolean value, not {v}")
    v = _ascii_lower(arg_string(arg, name))
    if v in ("true", "on"):
        return True
    if v in ("false", "off"):
        return False
    raise UnreadableCopy(f"COPY option {name} needs a Boolean value, not {v!r}")


def _header(seen: dict[str, Any]) -> bool:
    """defGetCopyHeaderChoice for COPY TO: a Boolean (`match` is for COPY FROM only)."""
    if "header" not in seen:
        return False
    return _boolean(seen["header"], "header")
