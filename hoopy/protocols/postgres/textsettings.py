"""Settings that change how the server reads the text of later statements.

hoopy parses every statement as PostgreSQL does with `standard_conforming_strings = on`
and a client encoding whose bytes can never look like ASCII quotes or backslashes.
A session that switched either would make the server split a text where hoopy does
not (`'x\\' ; TRUNCATE t; --'` is one string to hoopy, a TRUNCATE to the server).

So a statement that would switch them is refused *as a statement* (SQLSTATE 0A000,
the setting named; the session goes on): `SET [LOCAL]`, `SET NAMES`, `set_config(…)`
and `UPDATE pg_settings` of `standard_conforming_strings` to anything but on, or of
`client_encoding` to a client-only encoding.  Setting them to what hoopy reads
passes, and so do `RESET` and `SET … TO DEFAULT`: they return to the session's login
values, which hoopy checked at login.  `ALTER SYSTEM SET` of them is refused too: at
the next reload it reaches every session that did not set them.  `ALTER ROLE/DATABASE
… SET` does not reach this session; a login that gets such a default is refused at
startup.
A change hoopy cannot see coming (a function body, a `set_config` with a computed
name) still ends the session when the server reports it (answers._check_param).

`backslash_quote` is not among them: it decides only whether the server *rejects*
`\\'` in an `E''` string, never where a string ends (its lexer reads `\\'` as an escaped
quote either way), so under a safe client encoding the server runs what hoopy read
or refuses it.
"""

from __future__ import annotations

from typing import Any

import postgast
from postgast import nodes as ast

from hoopy.errors import CommandDenied
from hoopy.policy import Command
from hoopy.protocols.postgres.pgtree import VariableSetKind, parse_statements, walk

# Client-only encodings whose trailing bytes can be ASCII quote/backslash:
# hoopy's parse of the text would differ from the server's.
UNSAFE_ENCODINGS = frozenset({"BIG5", "GBK", "SJIS", "SHIFT_JIS_2004", "GB18030", "UHC", "JOHAB"})
# Every name PostgreSQL accepts for them (pg_encname_tbl in src/common/encnames.c), as
# its clean_encoding_name() spells it: ASCII letters and digits only, lower case.
_UNSAFE_NAMES = frozenset(
    {"big5", "win950", "windows950", "gbk", "win936", "windows936", "sjis", "shiftjis"}
    | {"mskanji", "win932", "windows932", "shiftjis2004", "gb18030", "uhc", "win949"}
    | {"windows949", "johab"}
)


def _norm_enc(name: str) -> str:
    """An encoding name as PostgreSQL looks it up: `Shift_JIS`, `SHIFT-JIS` → shiftjis."""
    return "".join(c for c in name if c.isascii() and c.isalnum()).lower()


def unsafe_encoding(name: str) -> bool:
    """Is `name` (any spelling PostgreSQL accepts) one of UNSAFE_ENCODINGS?"""
    return _norm_enc(name) in _UNSAFE_NAMES


SCS = "standard_conforming_strings"
ENCODING = "client_encoding"
_SETTINGS = frozenset({SCS, ENCODING})
# PostgreSQL's parse_bool spellings of true (unique prefixes of true/yes, on, 1)
_TRUE = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})


class SettingRefused(CommandDenied):
    """A statement that would change how the server reads later texts."""

    sqlstate = "0A000"  # feature_not_supported: no policy rule can allow it


def _candidate(cmd: Command) -> bool:
    if "set" in cmd.kinds or "alter_system" in cmd.kinds:
        return True
    for names in (cmd.functions, cmd.maybe_functions):
        for f in names:
            if f.endswith("set_config") and f.rsplit(".", 1)[-1] == "set_config":
                return True
    return False


def refusal(cmd: Command) -> str:
    """Why this statement may not run ("" when it may): see the module docstring."""
    if not _candidate(cmd):
        return ""
    try:
        stmts = parse_statements(cmd.text)
    except postgast.PgQueryError:
        return ""  # the classifier read it; a statement it could not is refused there
    except Exception:  # a tree too deep to decode, a NUL: never pass it unread
        return (
            "a statement that may set a setting hoopy cannot read is not supported through "
            "hoopy (its parse tree could not be read)"
        )
    for stmt in stmts:
        reason = _statement(stmt)
        if reason:
            return reason
    return ""


def _variable_set(stmt: ast.VariableSetStmt, how: str) -> str:
    name = stmt.name.lower()
    if name not in _SETTINGS:
        return ""
    if stmt.kind in (VariableSetKind.VAR_SET_DEFAULT, VariableSetKind.VAR_RESET):
        return ""
    args = stmt.args
    if stmt.kind != VariableSetKind.VAR_SET_VALUE or len(args) != 1:
        return _reason(name, None, how)
    return _check_value(name, _const(args[0]), how)


def _statement(stmt: Any) -> str:
    if isinstance(stmt, ast.VariableSetStmt):
        return _variable_set(stmt, "SET")
    if isinstance(stmt, ast.AlterSystemStmt) and stmt.setstmt is not None:
        # reaches every session that has not set it, this one too, at the next reload
        return _variable_set(stmt.setstmt, "ALTER SYSTEM SET")
    if isinstance(stmt, ast.CreateFunctionStmt):
        return ""  # a function's SET clause or body runs later: the server's report decides
    pg_settings = isinstance(stmt, ast.UpdateStmt | ast.InsertStmt | ast.DeleteStmt) and (
        getattr(stmt.relation, "relname", None) == "pg_settings"
    )
    for node in walk(stmt):
        if pg_settings and isinstance(node, ast.A_Const):
            written = _const(node)
            if written is not None and written.strip().lower() in _SETTINGS:
                return _reason(written.strip().lower(), "", "an UPDATE of pg_settings")
        if isinstance(node, ast.FuncCall) and _func(node) == "set_config":
            args = node.args
            setting = _const(args[0]) if args else None
            if setting is None or setting.strip().lower() not in _SETTINGS:
                continue  # another setting, or a computed name: the server's report decides
            value = _const(args[1]) if len(args) > 1 else None
            reason = _check_value(setting.strip().lower(), value, "set_config")
            if reason:
                return reason
    return ""


def _check_value(name: str, value: str | None, how: str = "SET") -> str:
    if value is None:
        return _reason(name, None, how)
    if name == SCS and value.strip().lower() not in _TRUE:
        return _reason(name, value, how)
    if name == ENCODING and unsafe_encoding(value):
        return _reason(name, value, how)
    return ""


def _reason(name: str, value: str | None, how: str = "SET") -> str:
    what = f"{how} of {name}"
    if value != "":
        what += f" to {value!r}" if value is not None else " to a computed value"
    if name == SCS:
        why = "hoopy reads every statement with standard_conforming_strings on"
    else:
        why = "hoopy reads every statement in an encoding no client-only encoding can mimic"
    return (
        f"{what} is not supported through hoopy ({why}; the server would read later "
        "statements differently)"
    )


def _const(node: Any) -> str | None:
    """The value of a constant (string, number, boolean), else None."""
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.String):
        return str(val.sval)
    if isinstance(val, ast.Integer):
        return str(val.ival)
    if isinstance(val, ast.Boolean):
        return "on" if val.boolval else "off"
    if isinstance(val, ast.Float):
        return str(val.fval)
    return None


def _func(node: ast.FuncCall) -> str:
    names = node.funcname
    last = names[-1] if names else None
    return last.sval.lower() if isinstance(last, ast.String) else ""
