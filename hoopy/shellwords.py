"""Shell words as bash would see them after quote removal (for hoopy.shell).

A word is literal when its value is known before the line runs: quoting and escaping
(`r''m`, `\\rm`, `"rm"`, `$'\\x72m'`, `$"rm"`) are undone here.  A word holding a
parameter, command or arithmetic expansion is not literal: its value is None and the
reader shows its source text instead.  Unquoted glob, brace and tilde characters make
a literal word *expand* (`r*`, `{rm,x}`, `~/x`): `Arg.expands` says so.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from tree_sitter import Node


@dataclass(frozen=True)
class Arg:
    """One word of a simple command."""

    value: str | None  # after quote removal; None when only running the line tells
    source: str  # as written
    expands: bool = False  # unquoted glob / brace / tilde: the shell turns it into others
    # the value with quoted characters as NUL, where expansions are looked for
    pattern: str = field(default="", compare=False, repr=False)

    @property
    def shown(self) -> str:
        """What policy globs see: the value when known, else the source text."""
        return self.value if self.value is not None and not self.expands else self.source

    @property
    def literal(self) -> str | None:
        """The value when it is exactly what the program receives."""
        return None if self.expands else self.value


def splits(a: Arg) -> bool:
    """May this word become zero or several words when the line runs: a glob, or an
    expansion outside double quotes (`$x`, `` `x` ``, `"$x"*`)?"""
    if a.value is not None:
        return a.expands
    s = a.source
    i, n = 0, len(s)
    double = False
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            double = not double
        elif not double and c == "'":
            end = s.find("'", i + 1)
            i = n if end < 0 else end + 1
            continue
        elif not double and c in "$`*?[{~":
            return True
        i += 1
    return False


def plain(value: str) -> Arg:
    """A word that was never shell text (an argv element, a split string)."""
    return Arg(value, value)


# The code being read.  tree-sitter is given an ASCII copy (see shell._Reader.parse), so
# a node's own text is not the agent's: read it from here.
_source = threading.local()


def set_source(data: bytes | None) -> bytes | None:
    """Make `data` the code nodes' text comes from; returns the one it replaces."""
    old: bytes | None = getattr(_source, "data", None)
    _source.data = data
    return old


def raw(n: Node) -> bytes:
    data: bytes | None = getattr(_source, "data", None)
    return data[n.start_byte : n.end_byte] if data is not None else (n.text or b"")


def text(n: Node) -> str:
    return raw(n).decode("utf-8", "surrogateescape")


# --- decoding ---------------------------------------------------------------------

_DQ_ESCAPES = frozenset('$`"\\\n')


def _unescape_unquoted(s: str) -> tuple[str, str]:
    """An unquoted word's value, and its "pattern" (quoted chars replaced by NUL) on
    which globs and braces are looked for."""
    if "\\" not in s:
        return s, s
    out: list[str] = []
    pat: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            i += 2
            if nxt != "\n":
                out.append(nxt)
                pat.append("\0")
            continue
        out.append(c)
        pat.append(c)
        i += 1
    return "".join(out), "".join(pat)


def _unescape_double(s: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in _DQ_ESCAPES:
            if s[i + 1] != "\n":
                out.append(s[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


_ANSI_SIMPLE = {
    "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r",
    "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?",
}  # fmt: skip
_ANSI_RE = re.compile(
    r"\\(?:([abeEfnrtv\\'\"?])|([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{1,4})"
    r"|U([0-9a-fA-F]{1,8})|c(.))",
    re.DOTALL,
)


def ansi_c(body: str) -> str:
    """The value of $'…' (bash's escapes; a NUL ends the string, as in bash)."""

    def one(m: re.Match[str]) -> str:
        simple, octal, hx, u4, u8, ctl = m.groups()
        if simple:
            return _ANSI_SIMPLE[simple]
        if ctl is not None:
            return chr(ord(ctl.upper()) ^ 0x40) if ctl != "?" else "\x7f"
        num = int(octal, 8) & 0xFF if octal else int(hx or u4 or u8, 16)
        try:
            return chr(num)
        except (ValueError, OverflowError):
            return "\ufffd"

    return _ANSI_RE.sub(one, body).split("\0", 1)[0]


_EXTGLOB = re.compile(r"[?*+@!]\(")


def _expands(pattern: str) -> bool:
    """Would bash expand this unquoted text (quoted characters are NUL)?  Linear time,
    and erring towards yes."""
    if "*" in pattern or "?" in pattern or pattern.startswith("~"):
        return True
    first = pattern.find("[")
    if first >= 0 and pattern.find("]", first + 2) >= 0:
        return True
    if _EXTGLOB.search(pattern):
        return True
    return _brace(pattern)


def _brace(pattern: str) -> bool:
    """A brace expansion {a,b} or {1..3} (quoted characters inside it do not stop it).
    Erring towards yes: a `{`, then a `,` or `..`, then a `}` (bash reads `{x},y}` as
    {x} and y, an earlier `}` with no comma before it being literal)."""
    opened = listed = False
    for i, c in enumerate(pattern):
        if c == "{":
            opened = True
        elif opened and (c == "," or (c == "." and pattern[i + 1 : i + 2] == ".")):
            listed = True
        elif c == "}" and listed:
            return True
    return False


def decode(n: Node) -> Arg:
    """The word a node stands for."""
    value, pattern = _decode(n)
    return Arg(value, text(n), value is not None and _expands(pattern), pattern)


def joined(first: Arg, second: Arg, sep: str) -> Arg:
    """Two nodes bash reads as one word (see shell._Reader.join_continued)."""
    if first.value is None or second.value is None:
        return Arg(None, first.source + sep + second.source)
    pattern = first.pattern + second.pattern
    return Arg(
        first.value + second.value, first.source + sep + second.source, _expands(pattern), pattern
    )


def _decode(n: Node) -> tuple[str | None, str]:
    t = n.type
    if t == "command_name":
        kids = n.named_children
        return _decode(kids[0]) if len(kids) == 1 else (None, "")
    if t in ("word", "number"):
        return _unescape_unquoted(text(n))
    if t == "raw_string":
        v = text(n)[1:-1]
        return v, "\0" * len(v)
    if t == "string":
        if any(c.is_named and c.type != "string_content" for c in n.children):
            return None, ""
        v = _unescape_double(text(n)[1:-1])
        return v, "\0" * len(v)
    if t == "ansi_c_string":
        v = ansi_c(text(n)[2:-1])
        return v, "\0" * len(v)
    if t == "translated_string":  # $"…": the message catalog could change it
        inner = [c for c in n.children if c.type == "string"]
        return _decode(inner[0]) if inner else (None, "")
    if t == "concatenation":
        values: list[str] = []
        patterns: list[str] = []
        for c in n.children:
            cv, cp = _decode(c)
            if cv is None:
                return None, ""
            values.append(cv)
            patterns.append(cp)
        return "".join(values), "".join(patterns)
    return None, ""


# --- scanners over raw text -------------------------------------------------------


def history_expansion(line: str) -> str:
    """The first history expansion an interactive bash would perform (`!!`, `!rm`,
    `^a^b`), or "".  It rewrites the line before parsing, so hoopy cannot see it."""
    if line.startswith("^"):
        return line.split("\n", 1)[0][:20]
    single = double = False
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if single:
            single = c != "'"
        elif c == "\\":
            i += 1
        elif c == "'" and not double:
            single = True
        elif c == '"':
            double = not double
        elif c == "!" and i + 1 < n:
            nxt = line[i + 1]
            prev = line[max(0, i - 2) : i]
            if nxt not in ' \t\r\n=("' and not prev.endswith("$") and not prev.endswith("${"):
                return line[i : i + 20].split()[0]
        i += 1
    return ""


# Text bash evaluates as an array subscript in arithmetic (`$((x))`, `[[ x -eq 1 ]]`,
# `${!x}`, `read`, `printf -v`, `unset`, `test -v`) runs the command substitutions
# inside it, even when the text was quoted where it was written.
def subscript_code(value: str) -> bool:
    """Is there a `$(` or a backquote after a `[` not yet closed (linear time)?"""
    if "[" not in value or ("$(" not in value and "`" not in value):
        return False
    inside = False
    for i, c in enumerate(value):
        if c == "[":
            inside = True
        elif c == "]":
            inside = False
        elif inside and (c == "`" or (c == "$" and value[i + 1 : i + 2] == "(")):
            return True
    return False


# --- small languages that can run commands ----------------------------------------

_AWK_RUNS = re.compile(r"\bsystem\s*\(|@load|@include|\bextension\s*\(")
_AWK_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# a regex literal where an operand may start: after ( , ~ ! { } ; & | or at the start
_AWK_REGEX = re.compile(r"(^|[(,~!{};&|]\s*)/(?:[^/\\\n]|\\.)*/")


def awk_runs(program: str) -> bool:
    """May this awk program run commands: system(), or a pipe to or from a command
    (`print | "sh"`, `"cmd" | getline`) once strings and regex literals are set aside?"""
    if _AWK_RUNS.search(program):
        return True
    code = _AWK_REGEX.sub(r"\1//", _AWK_STRING.sub('""', program))
    return "|" in code.replace("||", "")


_SED_TEXT_CMDS = frozenset("aic")
_SED_FILE_CMDS = frozenset("rRwW")
_SED_LABEL_CMDS = frozenset(":btT")


def sed_runs(script: str) -> bool:
    """Does this sed script use GNU sed's `e` command or the `e` flag of `s`?  An
    unexpected construct counts as yes."""
    i, n = 0, len(script)
    while i < n:
        c = script[i]
        if c in " \t\n;{}!":
            i += 1
            continue
        if c.isdigit() or c in "$,~+":
            i += 1
            continue
        if c in "/\\":  # an address /re/ or \cREc
            if c == "\\":
                i += 1
                if i >= n:
                    return True
            delim = script[i]
            i = _sed_skip(script, i + 1, delim)
            if i < 0:
                return True
            while i < n and script[i] in "IM":
                i += 1
            continue
        if c == "e":
            return True
        if c in "sy":
            if i + 1 >= n:
                return True
            delim = script[i + 1]
            i = _sed_skip(script, i + 2, delim)
            i = _sed_skip(script, i, delim) if i >= 0 else -1
            if i < 0:
                return True
            while i < n and script[i] not in ";\n}":
                if script[i] == "e" and c == "s":
                    return True
                if script[i] in "wW" and c == "s":  # w FILE: the rest of the line
                    break
                i += 1
            while i < n and script[i] != "\n" and script[i] not in ";}":
                i += 1
            continue
        if c in _SED_TEXT_CMDS or c in _SED_FILE_CMDS:
            while i < n and script[i] != "\n":
                i += 1
            continue
        if c in _SED_LABEL_CMDS:
            while i < n and script[i] not in ";\n":
                i += 1
            continue
        if c.isalpha() or c == "=" or c == "#":
            if c == "#":  # a comment to the end of the line
                while i < n and script[i] != "\n":
                    i += 1
            i += 1
            continue
        return True
    return False


def _sed_skip(s: str, i: int, delim: str) -> int:
    """Index after the next unescaped `delim` from i, or -1."""
    n = len(s)
    while i < n:
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == delim:
            return i + 1
        if s[i] == "\n" and delim != "\n":
            return -1
        i += 1
    return -1
